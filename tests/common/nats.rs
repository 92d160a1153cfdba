//! A nats-server for a test: single, clustered or from a config file, on free loopback
//! ports, with its log shown when a test fails; and a plain HTTP GET for monitor endpoints.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A nats-server with JetStream on free loopback ports, store dir `<dir>/nats-store`.
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    mon: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Arguments after the defaults (`start_custom`): cluster flags, `-c FILE`, `-n NAME`.
    extra: Vec<String>,
    /// `-js -sd <store>` (false: a server without JetStream, e.g. a leaf).
    jetstream: bool,
}

impl NatsServer {
    pub fn start(dir: &Path) -> NatsServer {
        let [port, mon] = free_ports::<2>();
        let mut s = NatsServer {
            bin: nats_server_bin(),
            port,
            mon,
            store: dir.join("nats-store"),
            log: dir.join("nats-server.log"),
            child: None,
            extra: Vec::new(),
            jetstream: true,
        };
        s.spawn();
        s
    }

    /// A nats-server on the given ports with store `<dir>/<name>-store` and log
    /// `<dir>/<name>.log`; `-js -sd <store>` when `jetstream`, then `extra` (e.g. `-n NAME`,
    /// cluster flags, `-c FILE`; command-line flags override the config file). Waits until `/jsz`
    /// answers (for a cluster that is before a meta leader exists: see `wait_meta_leader`).
    pub fn start_custom(
        dir: &Path,
        name: &str,
        port: u16,
        mon: u16,
        jetstream: bool,
        extra: &[String],
    ) -> NatsServer {
        let mut s = NatsServer {
            bin: nats_server_bin(),
            port,
            mon,
            store: dir.join(format!("{name}-store")),
            log: dir.join(format!("{name}.log")),
            child: None,
            extra: extra.to_vec(),
            jetstream,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        let (out, err) = append_log(&self.log);
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-m",
                &self.mon.to_string(),
            ])
            .args(if self.jetstream {
                vec!["-js".into(), "-sd".into(), self.store.display().to_string()]
            } else {
                Vec::new()
            })
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + NATS_READY_TIMEOUT;
        loop {
            if http_get_ok(self.mon, "/jsz") {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nats-server exited early ({st}):\n{}",
                    tail(&read_lossy(&self.log), 40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "nats-server: /jsz on port {} did not answer within {NATS_READY_TIMEOUT:?}:\n{}",
                    self.mon,
                    tail(&read_lossy(&self.log), 40)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn monitor_port(&self) -> u16 {
        self.mon
    }

    /// SIGTERM, then kill after `STOP_TIMEOUT`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, "TERM");
        }
    }

    /// Stop, then start again on the same port with the same store dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGKILL (no clean shutdown), e.g. a server lost with its machine.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again after `stop` or `kill9`: same ports, same store, same arguments.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// The server's log (all runs).
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Polls `/jsz` until this server reports a JetStream meta leader (a clustered server has
    /// none for a moment after start, and after losing the leader).
    pub fn wait_meta_leader(&self, timeout: Duration) {
        wait_until_or(
            &format!(
                "nats-server on port {} reports a JetStream meta leader",
                self.port
            ),
            timeout,
            || self.meta_leader().is_some(),
            || {
                format!(
                    "/jsz: {}\n{}",
                    self.monitor("/jsz").unwrap_or_default(),
                    tail(&self.log(), 30)
                )
            },
        );
    }

    /// The `meta_cluster.leader` of `/jsz`, if any.
    pub fn meta_leader(&self) -> Option<String> {
        let body = self.monitor("/jsz")?;
        let meta = &body[body.find("\"meta_cluster\"")?..];
        let key = "\"leader\":";
        let rest = meta[meta.find(key)? + key.len()..].trim_start();
        let name = rest.strip_prefix('"')?.split('"').next()?;
        (!name.is_empty()).then(|| name.to_string())
    }

    /// GET a monitoring endpoint (e.g. `/jsz?streams=1`), returning the body.
    pub fn monitor(&self, path: &str) -> Option<String> {
        http_get(self.mon, path)
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- nats-server log (last 15 lines) ----\n{}",
                tail(&read_lossy(&self.log), 15)
            );
        }
    }
}

/// Plain HTTP/1.0 GET on 127.0.0.1:port; returns (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

fn http_get_ok(port: u16, path: &str) -> bool {
    matches!(http_get(port, path), Some((200, _)))
}
