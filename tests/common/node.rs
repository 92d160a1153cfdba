//! Nodes: the real `harmonylite` binary as a process per node, its config, its log, start,
//! stop and restart; one-off runs of the binary; the processes a test left behind.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::*;

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
    /// A command the binary runs under (`set_wrapper`: `prlimit --as=N`), kept across restarts.
    wrapper: Vec<String>,
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
            wrapper: Vec::new(),
        };
        n.spawn();
        n
    }

    /// Like `start`, with the config file's whole text given (a config the helpers do not
    /// write, such as HarmonyLite-Go's).
    pub fn start_config(dir: &Path, name: &str, config_text: &str) -> Node {
        let config = dir.join(format!("{name}.toml"));
        fs::write(&config, config_text).unwrap();
        let mut n = Node {
            name: name.to_string(),
            db: dir.join(format!("{name}.db")),
            config,
            log_path: dir.join(format!("{name}.log")),
            child: None,
            log_start: 0,
            env: Vec::new(),
            wrapper: Vec::new(),
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
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
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

    /// Runs the binary under `argv` from the next spawn on (`["prlimit", "--as=N"]`: the
    /// wrapper must exec the binary, so `pid` stays the node's).
    pub fn set_wrapper(&mut self, argv: &[&str]) {
        self.wrapper = argv.iter().map(|a| a.to_string()).collect();
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
