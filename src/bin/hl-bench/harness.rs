//! The processes and files of one benchmark run: a scratch folder, a nats-server on a free
//! loopback port, `harmonylite` nodes as child processes, and readings from `/proc`.
//!
//! Every wait polls until a named deadline and checks the interrupt flag, so Ctrl-C or SIGTERM
//! ends the run at once and the guards' `Drop` stops every child and removes the folder.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Deadline for nats-server to accept TCP connections after it was started.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline for a node to log `node ready` and `connected to nats`.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped child may take to exit after SIGTERM before it is killed (a node flushes
/// its outbox for up to 5 s on the first signal).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(8);

/// Set by SIGINT/SIGTERM; every wait loop gives up when it is set.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn watch_signals() -> Result<(), String> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, &INTERRUPTED)
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    Ok(())
}

pub fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err("interrupted by a signal".into())
    } else {
        Ok(())
    }
}

/// Calls `probe` every `every` until it returns `Some`, the deadline passes (an error naming
/// `what`), or a signal arrives.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        if let Some(v) = probe()? {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "{what}: not done after {:.0} s",
                timeout.as_secs_f64()
            ));
        }
        thread::sleep(every.min(deadline - now));
    }
}

/// Sleeps for `d` in short steps, returning early with an error when a signal arrives.
pub fn pause(d: Duration) -> Result<(), String> {
    let deadline = Instant::now() + d;
    loop {
        check_interrupted()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// The first three fields of `/proc/loadavg`: how busy the machine was (other work skews rates).
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A folder for databases, configs and logs; removed on drop unless `HL_KEEP_TMP=1`.
pub struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub fn new() -> Result<Scratch, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("hl-bench-{}-{nanos:08x}", std::process::id()));
        fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create scratch folder {}: {e}", path.display()))?;
        let keep = std::env::var("HL_KEEP_TMP").is_ok_and(|v| v == "1");
        Ok(Scratch { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("hl-bench: kept {} (HL_KEEP_TMP=1)", self.path.display());
        } else if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!(
                "hl-bench: warning: cannot remove {}: {e}",
                self.path.display()
            );
        }
    }
}

/// A port nobody listens on right now, from 12000..32000: below Linux's ephemeral range, so
/// no outgoing connection takes it between choosing it and the server binding it (a port the
/// OS picks with `bind(0)` can be). A counter started from the pid spreads the choices.
pub fn free_port() -> Result<u16, String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 12_000;
    const SPAN: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::SeqCst) == u32::MAX {
        let start = std::process::id().wrapping_mul(7919) % SPAN;
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    }
    (0..SPAN)
        .map(|_| (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .ok_or_else(|| "no free port on 127.0.0.1 in 12000..32000".to_string())
}

/// `NATS_SERVER`, else the copy `scripts/tools.sh` installs, else `nats-server` on PATH.
pub fn find_nats_server() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("NATS_SERVER") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("NATS_SERVER={} is not a file", p.display()))
        };
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/py/bin/nats-server");
    if tools.is_file() {
        return Ok(tools);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| "nats-server not found: run `bash scripts/tools.sh` (it installs one into .tools/) or set NATS_SERVER=/path/to/nats-server".into())
}

/// `HL_NODE_BIN` (e.g. the static musl build of cross/build.sh), else the `harmonylite` binary
/// built next to this one.
pub fn find_node_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HL_NODE_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("HL_NODE_BIN={} is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot locate hl-bench's own executable: {e}"))?;
    let bin = exe.with_file_name("harmonylite");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it first with `cargo build --release --bins`",
            bin.display()
        ))
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM, then SIGKILL after `timeout`; always reaps the child.
fn stop_child(child: &mut Child, timeout: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A nats-server with JetStream on a free loopback port, its store in the scratch folder.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub url: String,
    pub log: PathBuf,
}

impl Server {
    pub fn start(bin: &Path, dir: &Path) -> Result<Server, String> {
        let port = free_port()?;
        let store = dir.join("nats-store");
        let log = dir.join("nats-server.log");
        let out =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut server = Server {
            pid: child.id(),
            child,
            url: format!("nats://127.0.0.1:{port}"),
            log,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(
            "nats-server accepting connections",
            SERVER_START_TIMEOUT,
            Duration::from_millis(20),
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    return Err(format!(
                        "nats-server exited with {status}:\n{}",
                        log_tail(&server.log, 20)
                    ));
                }
                Ok(
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                        .ok()
                        .map(|_| ()),
                )
            },
        )?;
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop_child(&mut self.child, STOP_TIMEOUT);
    }
}

/// What a node needs to know; one stream and subject per scenario keeps scenarios apart.
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub db: &'a Path,
    pub node_id: u64,
    pub stream: &'a str,
    pub subject: &'a str,
    pub poll_ms: u64,
    /// Serve `/metrics` on this loopback port (it also turns on the node's statement count).
    pub metrics_port: Option<u16>,
    /// More TOML appended to the config (e.g. `[table.readings]` sections); empty for none.
    pub extra: &'a str,
}

/// A running `harmonylite --config` process, logging to `<name>.log`.
pub struct NodeProc {
    pub name: String,
    pub db: PathBuf,
    pub pid: u32,
    pub metrics_port: Option<u16>,
    log: PathBuf,
    child: Child,
}

impl NodeProc {
    pub fn start(bin: &Path, dir: &Path, url: &str, spec: &NodeSpec) -> Result<NodeProc, String> {
        let config = dir.join(format!("{}.toml", spec.name));
        let log = dir.join(format!("{}.log", spec.name));
        let text = format!(
            // Snapshots are measured on their own (`--snapshot`): an hourly save that falls
            // into a 30 s idle window would say nothing about the idle node.
            "db_path = {}\nnode_id = {}\npolling_interval = {}\n[snapshot]\nenabled = false\n[nats]\nurls = [{}]\nstream_prefix = {}\nsubject_prefix = {}\n",
            toml_str(&spec.db.display().to_string()),
            spec.node_id,
            spec.poll_ms,
            toml_str(url),
            toml_str(spec.stream),
            toml_str(spec.subject),
        );
        let text = match spec.metrics_port {
            Some(port) => {
                format!("{text}[prometheus]\nenable = true\nbind = \"127.0.0.1:{port}\"\n")
            }
            None => text,
        };
        let mut text = format!("{text}{}", spec.extra);
        // HL_BENCH_COMPRESS=false|true sets [replication_log] compress on every node (default:
        // the node's default), for A/B runs of the same build
        if let Ok(v) = std::env::var("HL_BENCH_COMPRESS") {
            let line = format!("compress = {}\n", v == "true" || v == "1");
            match text.find("[replication_log]\n") {
                Some(at) => text.insert_str(at + "[replication_log]\n".len(), &line),
                None => text += &format!("\n[replication_log]\n{line}"),
            }
        }
        fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let err =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(NodeProc {
            name: spec.name.to_string(),
            db: spec.db.to_path_buf(),
            pid: child.id(),
            metrics_port: spec.metrics_port,
            log,
            child,
        })
    }

    /// Waits until the node installed capture (`node ready`) and reached NATS.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let mut seen = String::new();
        let mut offset = 0u64;
        let what = format!("node {} ready and connected", self.name);
        wait_for(&what, NODE_READY_TIMEOUT, Duration::from_millis(10), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "node {} exited with {status}:\n{}",
                    self.name,
                    log_tail(&self.log, 20)
                ));
            }
            // read only what was appended since the last look
            if let Ok(mut f) = File::open(&self.log) {
                if f.seek(SeekFrom::Start(offset)).is_ok() {
                    let mut more = String::new();
                    if let Ok(n) = f.read_to_string(&mut more) {
                        offset += n as u64;
                        seen.push_str(&more);
                    }
                }
            }
            Ok((seen.contains("node ready") && seen.contains("connected to nats")).then_some(()))
        })
        .map_err(|e| {
            format!(
                "{e}\nlog {}:\n{}",
                self.log.display(),
                log_tail(&self.log, 20)
            )
        })
    }
}

impl NodeProc {
    /// The value of counter `name` (without the `harmonylite_` prefix) from the node's `/metrics`.
    pub fn counter(&self, name: &str) -> Result<f64, String> {
        let port = self
            .metrics_port
            .ok_or_else(|| format!("node {} serves no metrics", self.name))?;
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("metrics of {}: {e}", self.name))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .map_err(|e| format!("metrics of {}: {e}", self.name))?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("metrics of {}: {e}", self.name))?;
        let key = format!("harmonylite_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("metrics of {}: no {key}", self.name))
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        stop_child(&mut self.child, STOP_TIMEOUT);
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Write counters of `/proc/PID/io` (`None`: this process).
#[derive(Debug, Clone, Copy, Default)]
pub struct Io {
    /// Bytes passed to write-like syscalls (files, sockets, pipes alike).
    pub wchar: u64,
    /// Bytes of page cache this process dirtied on a block device (page granular; a page
    /// dirtied again before writeback is counted once; sockets never count).
    pub write_bytes: u64,
}

impl std::ops::Sub for Io {
    type Output = Io;
    fn sub(self, o: Io) -> Io {
        Io {
            wchar: self.wchar.saturating_sub(o.wchar),
            write_bytes: self.write_bytes.saturating_sub(o.write_bytes),
        }
    }
}

fn proc_file(pid: Option<u32>, name: &str) -> PathBuf {
    match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}/{name}")),
        None => PathBuf::from(format!("/proc/self/{name}")),
    }
}

fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn read_io(pid: Option<u32>) -> Result<Io, String> {
    let path = proc_file(pid, "io");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match (field(&text, "wchar"), field(&text, "write_bytes")) {
        (Some(wchar), Some(write_bytes)) => Ok(Io { wchar, write_bytes }),
        _ => Err(format!("{}: no wchar/write_bytes lines", path.display())),
    }
}

/// A `kB` line of `/proc/PID/status`, e.g. `VmHWM` or `VmRSS`.
pub fn status_kib(pid: u32, key: &str) -> Result<u64, String> {
    let path = proc_file(Some(pid), "status");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    field(&text, key).ok_or_else(|| format!("{}: no {key} line", path.display()))
}

/// CPU time of the live threads of a process: the sum of `/proc/PID/task/*/schedstat` (ns
/// resolution, for short idle windows), or [`process_cpu_time`] when schedstat is missing.
/// Threads that already ended are not counted, so a window must not span thread exits: a
/// node's threads live as long as its NATS connection.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let mut total = 0u64;
    let mut found = false;
    if let Ok(dir) = fs::read_dir(&tasks) {
        for entry in dir.flatten() {
            if let Ok(text) = fs::read_to_string(entry.path().join("schedstat")) {
                if let Some(ns) = text
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    total += ns;
                    found = true;
                }
            }
        }
    }
    if found {
        return Ok(Duration::from_nanos(total));
    }
    process_cpu_time(pid)
}

/// `utime + stime` of `/proc/PID/stat`: every thread, ended ones included, in clock ticks
/// (10 ms here), for windows of seconds.
pub fn process_cpu_time(pid: u32) -> Result<Duration, String> {
    let path = proc_file(Some(pid), "stat");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // fields after the command name, which may contain spaces: state is field 3, utime 14, stime 15
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Ok(Duration::from_millis(ticks * 1000 / clock_ticks()))
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}
