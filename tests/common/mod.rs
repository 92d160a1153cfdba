//! Shared helpers for the integration tests: a temp dir, a nats-server on free local ports,
//! nodes running the real binary, the "application" (tests/app.py, a separate process), exact
//! table dumps, and waits that poll until a named deadline.
//!
//! This file: temp dir, ports, process helpers, a seeded PRNG. `nats.rs`: nats-server (single,
//! clustered or from a config file). `node.rs`: nodes running the real binary. `sql.rs`: the app (one process per script, or a long-lived
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
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod sql;
pub use sql::*;
mod nats;
#[allow(unused_imports)] // not every test file starts a server
pub use nats::*;
mod node;
#[allow(unused_imports)]
pub use node::*;
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
