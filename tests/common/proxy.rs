//! A fault-injecting TCP proxy for the tests (std only, threads): put it between a node and its
//! nats-server, or between a leaf server and its hub, and switch its mode while they run.
//!
//! Modes (see [`Proxy`]): `pass`, `delay(d)`, `blackhole` (connections are accepted and kept,
//! nothing is forwarded either way; bytes already read are held, not dropped, so the byte
//! stream stays intact as TCP would keep it), `stall`, `reset` (every current connection is
//! shut down at once, new ones are closed right after accept) and `flap(up, down, until)` (pass
//! for `up`, reset for `down`, repeated until `until`, then pass).
//!
//! `stall` is the most common fault of a cellular modem or NAT box: packets stop, no FIN or RST
//! comes, the TCP connection stays established and every write into it blocks. The proxy stops
//! reading from both sides of every connection, so the peers' kernel buffers fill and their
//! writes block (with a write timeout: `TimedOut`/`WouldBlock`); chunks already read are held,
//! even one half written; no connection is closed. A connection accepted during the stall gets
//! no byte, nothing of it is read and it is not connected upstream, but it stays open. `pass()`
//! resumes everything where it stopped: each byte stream continues intact, in order, nothing
//! lost or repeated. On loopback a writer blocks after about 4.3 MB (measured by
//! `tests/proxy.rs`). `blackhole` does not read either, so its writers block the same way;
//! `stall` is the mode whose contract is tested, and it also holds a chunk half written.
//!
//! Bounded: every socket has a short timeout and every loop checks the stop flag, so all
//! threads end (and are joined) when the `Proxy` is dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the accept loop, the flap schedule and held (blackholed) data look again.
const TICK: Duration = Duration::from_millis(5);
/// Socket read timeout: how long a pump blocks before it re-checks mode and stop flag.
const IO_TIMEOUT: Duration = Duration::from_millis(20);
/// Deadline for connecting to the upstream.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the proxy does; `Flap` is resolved to `Pass` or `Reset` by the clock.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Pass,
    Delay(Duration),
    Blackhole,
    Stall,
    Reset,
    Flap {
        start: Instant,
        up: Duration,
        down: Duration,
        until: Instant,
    },
}

/// The mode in force right now.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Now {
    Pass,
    Delay(Duration),
    Blackhole,
    Stall,
    Reset,
}

struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    stop: AtomicBool,
    /// Open proxied connections: (client side, upstream side), shut down by `reset`.
    conns: Mutex<HashMap<u64, (TcpStream, Option<TcpStream>)>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    forwarded: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn now(&self) -> Now {
        match *self.mode.lock().unwrap() {
            Mode::Pass => Now::Pass,
            Mode::Delay(d) => Now::Delay(d),
            Mode::Blackhole => Now::Blackhole,
            Mode::Stall => Now::Stall,
            Mode::Reset => Now::Reset,
            Mode::Flap {
                start,
                up,
                down,
                until,
            } => {
                let t = Instant::now();
                if t >= until {
                    return Now::Pass;
                }
                let period = (up + down).as_nanos().max(1);
                let phase = (t - start).as_nanos() % period;
                if phase < up.as_nanos() {
                    Now::Pass
                } else {
                    Now::Reset
                }
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Shuts down every open connection (both sides, both directions).
    fn kill_all(&self) {
        let conns: Vec<_> = self.conns.lock().unwrap().drain().collect();
        for (_, (client, upstream)) in conns {
            let _ = client.shutdown(Shutdown::Both);
            if let Some(u) = upstream {
                let _ = u.shutdown(Shutdown::Both);
            }
        }
    }

    fn spawn(self: &Arc<Self>, name: &str, f: impl FnOnce() + Send + 'static) {
        let h = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .expect("spawn proxy thread");
        let mut threads = self.threads.lock().unwrap();
        threads.retain(|t| !t.is_finished());
        threads.push(h);
    }
}

/// A TCP proxy on 127.0.0.1:<port> forwarding to `upstream`; see the module doc for modes.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port, in `pass` mode.
    pub fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_on(0, upstream)
    }

    /// Listens on 127.0.0.1:`port` (0: a free one), in `pass` mode.
    pub fn start_on(port: u16, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("proxy: bind 127.0.0.1:{port}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(Mode::Pass),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, s))
            .unwrap();
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.addr.port())
    }

    fn set(&self, m: Mode) {
        *self.shared.mode.lock().unwrap() = m;
    }

    /// Forward everything as it comes.
    pub fn pass(&self) {
        self.set(Mode::Pass);
    }

    /// Forward each chunk `d` after it was read (latency, not a throughput cap).
    pub fn delay(&self, d: Duration) {
        self.set(Mode::Delay(d));
    }

    /// Accept and keep connections, forward nothing either way (until another mode).
    pub fn blackhole(&self) {
        self.set(Mode::Blackhole);
    }

    /// Stall every connection, current and new, until another mode: nothing is read from either
    /// side (the peers' writes block once their buffers are full), nothing is written, nothing
    /// is closed; see the module doc.
    pub fn stall(&self) {
        self.set(Mode::Stall);
    }

    /// Close every current connection now and close new ones at once, until `pass()`.
    pub fn reset(&self) {
        self.set(Mode::Reset);
        self.shared.kill_all();
    }

    /// Alternate `up` of pass and `down` of reset, starting with pass, until `until`; then pass.
    pub fn flap(&self, up: Duration, down: Duration, until: Instant) {
        self.set(Mode::Flap {
            start: Instant::now(),
            up,
            down,
            until,
        });
    }

    /// Connections accepted since start (including those closed at once by `reset`).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now (connected upstream).
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Bytes forwarded so far, both directions.
    pub fn forwarded_bytes(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.kill_all();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        // Every thread re-checks the stop flag within IO_TIMEOUT. A thread registers what it
        // spawns before it ends, so joining until the list stays empty joins them all.
        loop {
            let threads: Vec<_> = self.shared.threads.lock().unwrap().drain(..).collect();
            if threads.is_empty() {
                break;
            }
            for h in threads {
                let _ = h.join();
            }
            self.shared.kill_all();
        }
    }
}

fn accept_loop(listener: TcpListener, s: Arc<Shared>) {
    let mut was_reset = false;
    while !s.stopped() {
        // The flap schedule closes connections when it enters a reset period.
        let now = s.now();
        if now == Now::Reset && !was_reset {
            s.kill_all();
        }
        was_reset = now == Now::Reset;
        match listener.accept() {
            Ok((client, _)) => {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                if now == Now::Reset {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let s2 = s.clone();
                s.spawn("proxy-conn", move || handle(client, s2));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

/// One accepted connection: wait out a blackhole, connect upstream, pump both ways.
fn handle(client: TcpStream, s: Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    let id = s.next_id.fetch_add(1, Ordering::SeqCst);
    s.conns
        .lock()
        .unwrap()
        .insert(id, (client.try_clone().unwrap(), None));
    // A blackholed or stalled link: the client is accepted and held, nothing of it is read,
    // nothing reaches the server.
    loop {
        if s.stopped() || !s.conns.lock().unwrap().contains_key(&id) {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        match s.now() {
            Now::Blackhole | Now::Stall => std::thread::sleep(TICK),
            Now::Reset => {
                s.conns.lock().unwrap().remove(&id);
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            _ => break,
        }
    }
    let upstream = match TcpStream::connect_timeout(&s.upstream, UPSTREAM_CONNECT_TIMEOUT) {
        Ok(u) => u,
        Err(_) => {
            s.conns.lock().unwrap().remove(&id);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    {
        let mut conns = s.conns.lock().unwrap();
        match conns.get_mut(&id) {
            // A reset happened while connecting.
            None => {
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
                return;
            }
            Some(e) => e.1 = Some(upstream.try_clone().unwrap()),
        }
    }
    let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let s2 = s.clone();
    s.spawn("proxy-up", move || direction(c2, u2, s2));
    direction(upstream, client, s.clone());
    if let Some((c, u)) = s.conns.lock().unwrap().remove(&id) {
        let _ = c.shutdown(Shutdown::Both);
        if let Some(u) = u {
            let _ = u.shutdown(Shutdown::Both);
        }
    }
}

/// Forwards `from` -> `to`: a reader (this thread) and a writer thread joined by a queue of
/// (release time, chunk), so a delay adds latency without limiting throughput. When either side
/// ends, both sockets are shut down (the peer sees the connection close).
fn direction(from: TcpStream, to: TcpStream, s: Arc<Shared>) {
    let _ = from.set_read_timeout(Some(IO_TIMEOUT));
    let _ = to.set_write_timeout(Some(IO_TIMEOUT));
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let closed = Arc::new(AtomicBool::new(false));
    let (to_w, s_w, closed_w) = (to.try_clone().unwrap(), s.clone(), closed.clone());
    let writer = std::thread::Builder::new()
        .name("proxy-writer".into())
        .spawn(move || writer(rx, to_w, s_w, closed_w))
        .unwrap();
    let mut from_r = from.try_clone().unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !s.stopped() && !closed.load(Ordering::SeqCst) {
        match s.now() {
            // Not reading is what makes the peer's writes block once the buffers are full.
            Now::Blackhole | Now::Stall => {
                std::thread::sleep(TICK);
                continue;
            }
            Now::Reset => break,
            _ => {}
        }
        match from_r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let release = match s.now() {
                    Now::Delay(d) => Instant::now() + d,
                    _ => Instant::now(),
                };
                if tx.send((release, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn writer(
    rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut to: TcpStream,
    s: Arc<Shared>,
    closed: Arc<AtomicBool>,
) {
    let fail = |closed: &AtomicBool| closed.store(true, Ordering::SeqCst);
    loop {
        let (release, chunk) = match rx.recv_timeout(IO_TIMEOUT) {
            Ok(x) => x,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if s.stopped() {
                    return fail(&closed);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Hold the chunk until its release time and while the link is blackholed or stalled.
        loop {
            if s.stopped() {
                return fail(&closed);
            }
            match s.now() {
                Now::Reset => return fail(&closed),
                Now::Blackhole | Now::Stall => std::thread::sleep(TICK),
                _ => {
                    let now = Instant::now();
                    if now >= release {
                        break;
                    }
                    std::thread::sleep((release - now).min(TICK * 4));
                }
            }
        }
        let mut off = 0;
        while off < chunk.len() {
            if s.stopped() {
                return fail(&closed);
            }
            match s.now() {
                Now::Reset => return fail(&closed),
                // A stall can begin mid-chunk: the rest waits, nothing is dropped.
                Now::Stall => {
                    std::thread::sleep(TICK);
                    continue;
                }
                _ => {}
            }
            match to.write(&chunk[off..]) {
                Ok(0) => return fail(&closed),
                Ok(n) => {
                    off += n;
                    s.forwarded.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return fail(&closed),
            }
        }
    }
}
