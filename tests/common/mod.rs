//! Shared helpers for the integration tests: a temp dir, a nats-server on free local ports,
//! nodes running the real binary, the "application" (tests/app.py, a separate process), exact
//! table dumps, and waits that poll until a named deadline.
//!
//! This file: temp dir, ports, processes, nats-server (single, clustered or from a config file),
//! nodes, a seeded PRNG. `sql.rs`: the app (one process per script, or a long-lived
//! `AppSession`), dumps, waits. `proxy.rs`: a fault-injecting TCP proxy (pass, delay, blackhole,
//! stall, reset, flap) to put between a node and its server or between a leaf and its hub.
//! `workload.rs`: apps writing numbered rows and knowing what they committed, the rows every
//! node must then hold, log checks (for the fault tests).
//!
//! Every test owns its temp dir and its nats-server. Declare the `TestDir` first so it is
//! dropped last (locals drop in reverse order): nodes and servers are killed before the dir goes.
//!
//! Environment:
//! - `NATS_SERVER`: the nats-server binary (scripts/tools.sh exports it); else `nats-server` on PATH.
//! - `HL_KEEP_TMP=1`: keep each test's temp dir (DBs, configs, logs) and print its path.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod sql;
pub use sql::*;
pub mod proxy;
#[allow(unused_imports)] // only the fault tests use it
pub use proxy::Proxy;
pub mod workload;
#[allow(unused_imports)] // only the fault tests use it
pub use workload::*;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_harmonylite");

/// How long nats-server may take until `/jsz` answers.
pub const NATS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take to print `node ready`.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval of every wait.
pub const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Temp dir

/// A fresh directory under the system temp dir, removed on drop unless `HL_KEEP_TMP=1`.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "hl-test-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var("HL_KEEP_TMP").as_deref() == Ok("1") {
            eprintln!("HL_KEEP_TMP=1: kept {}", self.path.display());
        } else {
            if std::thread::panicking() {
                eprintln!("(set HL_KEEP_TMP=1 to keep the test dir with DBs and logs)");
            }
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and processes

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// N distinct ports that were free a moment ago on 127.0.0.1.
///
/// They come from 12000..32000, below Linux's ephemeral range (32768..60999): a port the OS
/// picked (`bind(0)`) is also the source port of some outgoing connection soon after, so a
/// nats-server told to listen there later can find it taken (CI lost a run to exactly this:
/// a monitor port taken between choosing and binding). Ports in this range are only ever
/// handed out here; a counter keeps the tests of one process apart and a start derived from
/// the pid keeps test processes apart, and each port is still checked by binding it.
pub fn free_ports<const N: usize>() -> [u16; N] {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 12_000;
    const SPAN: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::SeqCst) == u32::MAX {
        let start = (std::process::id().wrapping_mul(7919)) % SPAN;
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    }
    let mut ports = [0u16; N];
    for p in ports.iter_mut() {
        *p = (0..SPAN)
            .map(|_| (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16)
            .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
            .expect("no free port in 127.0.0.1:12000..32000");
    }
    ports
}

/// True when something accepts TCP connections on 127.0.0.1:port.
pub fn port_open(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The nats-server binary: `$NATS_SERVER`, else `nats-server` on PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "NATS_SERVER={} is not a file", p.display());
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nats-server");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no nats-server: set NATS_SERVER=/path/to/nats-server or put nats-server on PATH \
         (bash scripts/test.sh installs the pinned one into .tools/)"
    );
}

fn append_log(path: &Path) -> (Stdio, Stdio) {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let g = f.try_clone().unwrap();
    (Stdio::from(f), Stdio::from(g))
}

fn send_signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {} failed", child.id());
}

/// Signal, wait up to `STOP_TIMEOUT`, then SIGKILL. Returns the exit status and whether it
/// exited within the deadline.
fn stop_child(child: &mut Child, sig: &str) -> (ExitStatus, bool) {
    if let Some(st) = child.try_wait().unwrap() {
        return (st, true);
    }
    send_signal(child, sig);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return (st, true);
        }
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    (child.wait().unwrap(), false)
}

fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// nats-server

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

// ---------------------------------------------------------------------------------------------
// Nodes

/// One `harmonylite --config <dir>/<name>.toml` process; DB `<dir>/<name>.db`,
/// log `<dir>/<name>.log` (stdout and stderr, appended across restarts).
pub struct Node {
    pub name: String,
    pub db: PathBuf,
    pub config: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// Length of the log when the current process was spawned: `wait_ready` looks after it.
    log_start: u64,
    /// Extra environment of the process (`start_with_env`).
    env: Vec<(String, String)>,
}

/// The TOML `Node::start` writes: `db_path` and `polling_interval = 50` (unless `extra` sets them),
/// `extra` verbatim, and `urls = [nats_url]` in `[nats]` (inside `extra`'s `[nats]` table when
/// it has one).
pub fn node_toml(db: &Path, extra: &str, nats_url: Option<&str>) -> String {
    let sets = |key: &str| {
        extra.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
        })
    };
    let mut top = if sets("db_path") {
        String::new() // the test puts the database elsewhere
    } else {
        format!("db_path = {}\n", toml_str(&db.display().to_string()))
    };
    if !sets("polling_interval") {
        top.push_str("polling_interval = 50\n");
    }
    let mut extra = extra.to_string();
    if let Some(url) = nats_url {
        let urls = format!("urls = [{}]", toml_str(url));
        if let Some(pos) = extra.lines().position(|l| l.trim() == "[nats]") {
            let mut lines: Vec<String> = extra.lines().map(String::from).collect();
            lines.insert(pos + 1, urls);
            extra = lines.join("\n");
        } else {
            extra = format!("{extra}\n[nats]\n{urls}\n");
        }
    }
    format!("{top}{extra}\n")
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Node {
    /// Writes the config and spawns the binary. The DB (with the app's tables) should exist.
    pub fn start(dir: &Path, name: &str, extra_toml: &str, nats_url: Option<&str>) -> Node {
        Node::start_with_env(dir, name, extra_toml, nats_url, &[])
    }

    /// Like `start`, with extra environment variables for the process (kept across restarts).
    pub fn start_with_env(
        dir: &Path,
        name: &str,
        extra_toml: &str,
        nats_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Node {
        let db = dir.join(format!("{name}.db"));
        let config = dir.join(format!("{name}.toml"));
        fs::write(&config, node_toml(&db, extra_toml, nats_url)).unwrap();
        let mut n = Node {
            name: name.to_string(),
            db,
            config,
            log_path: dir.join(format!("{name}.log")),
            child: None,
            log_start: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        n.spawn();
        n
    }

    /// Start and wait for `node ready`.
    pub fn start_ready(dir: &Path, name: &str, extra_toml: &str, nats_url: Option<&str>) -> Node {
        let mut n = Node::start(dir, name, extra_toml, nats_url);
        n.wait_ready();
        n
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        self.log_start = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let (out, err) = append_log(&self.log_path);
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        self.child = Some(child);
    }

    /// Sets (or replaces) an environment variable for the next spawn (`restart`).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Spawn again with the same config (after `stop` or `kill9`).
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn restart_ready(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Log text written since the current process was spawned.
    pub fn current_log(&self) -> String {
        let all = read_lossy(&self.log_path);
        let start = (self.log_start as usize).min(all.len());
        // The log may hold multi-byte characters; fall back to the whole log if the offset
        // is not on a char boundary after lossy decoding.
        all.get(start..).unwrap_or(&all).to_string()
    }

    /// Polls the log until the current process printed `node ready`.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            if self.current_log().contains("node ready") {
                return;
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "{} exited before `node ready` ({st}); log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no `node ready` within {NODE_READY_TIMEOUT:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls the log until the current process printed `connected to nats` (after `node ready`,
    /// which comes once the triggers are installed, the connection may take a moment).
    pub fn wait_connected(&mut self) {
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            if self.current_log().contains("connected to nats") {
                return;
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "{} exited before `connected to nats` ({st}); log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no `connected to nats` within {NODE_READY_TIMEOUT:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The whole log (all runs).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGTERM, wait up to `STOP_TIMEOUT`, then SIGKILL. Panics if it had to be killed.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// Like `stop` with another signal name (`INT`).
    pub fn stop_with(&mut self, sig: &str) -> ExitStatus {
        let mut c = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let (st, in_time) = stop_child(&mut c, sig);
        assert!(
            in_time,
            "{} did not exit within {STOP_TIMEOUT:?} after SIG{sig}; log tail:\n{}",
            self.name,
            tail(&self.log(), 60)
        );
        st
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the log contains `fragment` (any run).
    pub fn wait_log(&self, fragment: &str, timeout: Duration) {
        wait_until_or(
            &format!("{} log contains {fragment:?}", self.name),
            timeout,
            || self.log().contains(fragment),
            || tail(&self.log(), 60),
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM first, so an embedded nats-server child is stopped with the node.
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(c.id().to_string())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(POLL);
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} log {} (last 60 lines) ----\n{}",
                self.name,
                self.log_path.display(),
                tail(&self.log(), 60)
            );
        }
    }
}

/// Creates `<dir>/<name>.db` for each name with `schema` (run by the app), starts a node on
/// each with `extra_toml`, and waits until all are ready.
pub fn start_cluster(
    dir: &Path,
    nats_url: &str,
    names: &[&str],
    schema: &str,
    extra_toml: &str,
) -> Vec<Node> {
    for name in names {
        app(&dir.join(format!("{name}.db")), schema);
    }
    let mut nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::start(dir, n, extra_toml, Some(nats_url)))
        .collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    nodes
}

/// Runs the binary with `args` to completion (killed after `timeout`).
pub fn run_bin(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    // Read both pipes on threads so a chatty process cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t2 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = t2.join().unwrap();
            panic!(
                "harmonylite {args:?} still running after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

/// `harmonylite status --json --config CONFIG` (read from the database, works while the node
/// runs); panics unless it succeeds.
pub fn status_json(config: &Path) -> String {
    let out = run_bin(
        &["status", "--json", "--config", config.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "status --json failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The raw value of a top-level scalar `"key":value` in a flat JSON object (`true`, `12`,
/// `null`), without parsing the rest.
pub fn json_scalar<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("\"{key}\":");
    let rest = &json[json.find(&k)? + k.len()..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// Command lines of running processes, split into arguments (scans /proc; zombies skipped).
pub fn processes() -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue;
        }
        let args = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, args));
    }
    out
}

/// Pids of nats-server processes that belong to a test: an argument equals `port` or ends with
/// `:port`, or an argument mentions the test's dir (store dir or config file next to the DB).
pub fn nats_servers_of(port: u16, dir: &Path) -> Vec<u32> {
    let p = port.to_string();
    let colon = format!(":{port}");
    let d = dir.display().to_string();
    processes()
        .into_iter()
        .filter(|(_, args)| {
            args.first()
                .is_some_and(|a0| a0.rsplit('/').next().unwrap_or(a0).contains("nats-server"))
                && args[1..]
                    .iter()
                    .any(|a| *a == p || a.ends_with(&colon) || a.contains(&d))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// On drop, SIGKILLs the nats-servers `nats_servers_of(port, dir)` finds (e.g. an embedded
/// nats-server left behind by a node killed with -9).
pub struct Reaper {
    pub port: u16,
    pub dir: PathBuf,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in nats_servers_of(self.port, &self.dir) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness

/// A tiny deterministic PRNG (xorshift64*), so workloads and fault timing are reproducible
/// from a printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Mix the seed so nearby seeds give unrelated sequences; never zero.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A duration uniform in `lo..hi` (milliseconds).
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }
}
