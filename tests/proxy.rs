//! The fault-injecting proxy of the test helpers (`tests/common/proxy.rs`), checked against a
//! local echo server: pass forwards bytes both ways, delay adds latency, blackhole forwards
//! nothing (and delivers what it held once the link passes again), stall blocks the writers of
//! both sides and holds new connections open and unanswered, then delivers every byte in order,
//! reset closes connections and refuses new ones until pass, flap alternates, and dropping the
//! proxy ends everything.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Proxy;

/// An echo server on a free port; threads end when it is dropped.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let st2 = st.clone();
                        conns.push(std::thread::spawn(move || {
                            c.set_nonblocking(false).unwrap();
                            c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                            let mut buf = [0u8; 4096];
                            while !st2.load(Ordering::SeqCst) {
                                match c.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if c.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            ErrorKind::WouldBlock | ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Echo {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn connect(p: &Proxy) -> TcpStream {
    let s = TcpStream::connect_timeout(&p.addr(), Duration::from_secs(2)).expect("connect proxy");
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s
}

/// Reads until `n` bytes arrived or `timeout` passed; returns what arrived, or Err on EOF/error
/// (with what arrived before).
fn read_for(s: &mut TcpStream, n: usize, timeout: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < n && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Err(got),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Err(got),
        }
    }
    Ok(got)
}

/// True when the connection is closed by the far end within `timeout` (EOF or reset).
fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn pass_forwards_bytes_both_ways() {
    let echo = Echo::start();
    let p = Proxy::start(echo.addr);
    assert_eq!(p.url(), format!("nats://127.0.0.1:{}", p.addr().port()));
    let mut c = connect(&p);
    let msg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = c.try_clone().unwrap();
    let m2 = msg.clone();
    let writer = std::thread::spawn(move || w.write_all(&m2).unwrap());
    let got = read_for(&mut c, msg.len(), Duration::from_secs(10)).expect("open");
    writer.join().unwrap();
    assert_eq!(got.len(), msg.len());
    assert!(got == msg, "echoed bytes differ");
    assert_eq!(p.accepted(), 1);
    assert_eq!(p.open_connections(), 1);
    // The counter is bumped just after each write: let the last one land.
    common::wait_until(
        "proxy counted every forwarded byte",
        Duration::from_secs(2),
        || p.forwarded_bytes() == 2 * msg.len() as u64,
    );
}

#[test]
fn delay_adds_latency_per_chunk() {
    let echo = Echo::start();
    let p = Proxy::start(echo.addr);
    let mut c = connect(&p);
    c.write_all(b"warm").unwrap();
    assert_eq!(
        read_for(&mut c, 4, Duration::from_secs(2)).unwrap(),
        b"warm"
    );
    p.delay(Duration::from_millis(200));
    let t = Instant::now();
    c.write_all(b"slow").unwrap();
    assert_eq!(
        read_for(&mut c, 4, Duration::from_secs(3)).unwrap(),
        b"slow"
    );
    // 200 ms each way.
    let rtt = t.elapsed();
    assert!(rtt >= Duration::from_millis(390), "round trip took {rtt:?}");
    assert!(rtt < Duration::from_secs(2), "round trip took {rtt:?}");
    p.pass();
    let t = Instant::now();
    c.write_all(b"fast").unwrap();
    assert_eq!(
        read_for(&mut c, 4, Duration::from_secs(2)).unwrap(),
        b"fast"
    );
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn blackhole_forwards_nothing_and_holds_the_bytes() {
    let echo = Echo::start();
    let p = Proxy::start(echo.addr);
    let mut c = connect(&p);
    c.write_all(b"before").unwrap();
    assert_eq!(
        read_for(&mut c, 6, Duration::from_secs(2)).unwrap(),
        b"before"
    );
    // The count covers both directions and the echo's direction is counted just after its
    // bytes were written to us: wait for it, so the baseline is not taken mid-update.
    common::wait_until(
        "the proxy counted both directions",
        Duration::from_secs(2),
        || p.forwarded_bytes() == 12,
    );
    let fwd = p.forwarded_bytes();
    p.blackhole();
    c.write_all(b"held").unwrap();
    let got = read_for(&mut c, 1, Duration::from_millis(300)).expect("still open");
    assert!(got.is_empty(), "blackhole forwarded {got:?}");
    assert_eq!(p.forwarded_bytes(), fwd);
    // A new connection is accepted and kept, but reaches nothing.
    let mut c2 = connect(&p);
    c2.write_all(b"new").unwrap();
    let got = read_for(&mut c2, 1, Duration::from_millis(300)).expect("still open");
    assert!(got.is_empty(), "blackhole forwarded {got:?}");
    assert_eq!(p.accepted(), 2);
    // When the link passes again, what was sent meanwhile arrives intact, in order.
    p.pass();
    assert_eq!(
        read_for(&mut c, 4, Duration::from_secs(2)).unwrap(),
        b"held"
    );
    assert_eq!(
        read_for(&mut c2, 3, Duration::from_secs(2)).unwrap(),
        b"new"
    );
}

#[test]
fn reset_closes_connections_and_refuses_new_ones_until_pass() {
    let echo = Echo::start();
    let p = Proxy::start(echo.addr);
    let mut c = connect(&p);
    c.write_all(b"x").unwrap();
    assert_eq!(read_for(&mut c, 1, Duration::from_secs(2)).unwrap(), b"x");
    p.reset();
    assert!(
        closed_within(&mut c, Duration::from_secs(1)),
        "reset left the connection open"
    );
    assert_eq!(p.open_connections(), 0);
    // New connections are closed at once.
    for _ in 0..3 {
        let mut n = connect(&p);
        let _ = n.write_all(b"y");
        assert!(
            closed_within(&mut n, Duration::from_secs(1)),
            "a connection made during reset stayed open"
        );
    }
    p.pass();
    let mut c = connect(&p);
    c.write_all(b"again").unwrap();
    assert_eq!(
        read_for(&mut c, 5, Duration::from_secs(2)).unwrap(),
        b"again"
    );
}

#[test]
fn flap_alternates_pass_and_reset_then_passes() {
    let echo = Echo::start();
    let p = Proxy::start(echo.addr);
    let until = Instant::now() + Duration::from_millis(2000);
    p.flap(
        Duration::from_millis(300),
        Duration::from_millis(300),
        until,
    );
    // Within the first up period a connection works, then the first down period closes it.
    let mut c = connect(&p);
    c.write_all(b"up").unwrap();
    assert_eq!(
        read_for(&mut c, 2, Duration::from_millis(250)).unwrap(),
        b"up"
    );
    assert!(
        closed_within(&mut c, Duration::from_millis(800)),
        "the down period did not close the connection"
    );
    // Count up/down observations by connecting repeatedly until the schedule ends.
    let (mut ups, mut downs) = (0, 0);
    while Instant::now() < until {
        let mut n = connect(&p);
        let _ = n.write_all(b"z");
        match read_for(&mut n, 1, Duration::from_millis(50)) {
            Ok(b) if b == b"z" => ups += 1,
            _ => downs += 1,
        }
        std::thread::sleep(Duration::from_millis(30)); // pacing of the probe
    }
    assert!(ups > 0 && downs > 0, "ups={ups} downs={downs}");
    // After `until` it passes for good.
    std::thread::sleep(Duration::from_millis(50));
    let mut c = connect(&p);
    for i in 0..5u8 {
        c.write_all(&[i]).unwrap();
        assert_eq!(read_for(&mut c, 1, Duration::from_secs(1)).unwrap(), [i]);
        std::thread::sleep(Duration::from_millis(100)); // spans what would be a down period
    }
}

#[test]
fn dropping_the_proxy_closes_connections_and_ends_its_threads() {
    let echo = Echo::start();
    let p = Proxy::start(echo.addr);
    let mut a = connect(&p);
    let mut b = connect(&p);
    a.write_all(b"a").unwrap();
    assert_eq!(read_for(&mut a, 1, Duration::from_secs(2)).unwrap(), b"a");
    p.blackhole();
    let addr = p.addr();
    let t = Instant::now();
    drop(p);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t.elapsed()
    );
    assert!(closed_within(&mut a, Duration::from_secs(1)));
    assert!(closed_within(&mut b, Duration::from_secs(1)));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err());
}

/// Same port again: a node configured with a URL where nothing listens yet can later find a
/// proxy there.
#[test]
fn start_on_a_chosen_port() {
    let echo = Echo::start();
    let port = common::free_port();
    let p = Proxy::start_on(port, echo.addr);
    assert_eq!(p.port(), port);
    let mut c = connect(&p);
    c.write_all(b"ok").unwrap();
    assert_eq!(read_for(&mut c, 2, Duration::from_secs(2)).unwrap(), b"ok");
}

// ---------------------------------------------------------------------------------------------
// Stall

/// The byte at offset `i` of the stream a test writes (a period prime to every buffer size, so
/// a lost, repeated or reordered chunk shows).
fn pattern(i: u64, salt: u8) -> u8 {
    ((i % 251) as u8).wrapping_add(salt)
}

/// Writes the pattern into `s` (with a write timeout) until a write times out: the stream is
/// blocked. Returns how many bytes went in; panics if `cap` bytes went in without a block.
fn write_until_blocked(s: &mut TcpStream, salt: u8, cap: u64) -> u64 {
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while sent < cap {
        for (k, b) in buf.iter_mut().enumerate() {
            *b = pattern(sent + k as u64, salt);
        }
        match s.write(&buf) {
            Ok(n) => sent += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return sent;
            }
            Err(e) => panic!("write into the stalled proxy failed: {e}"),
        }
    }
    panic!("{sent} bytes went into a stalled proxy and no write blocked");
}

/// Reads exactly `n` pattern bytes from `s` within `timeout` and checks each one, then checks
/// that nothing more comes.
fn read_pattern(s: &mut TcpStream, n: u64, salt: u8, timeout: Duration) {
    let got = read_for(s, n as usize, timeout).expect("connection open");
    assert_eq!(got.len() as u64, n, "bytes delivered after pass");
    if let Some(i) = (0..n).find(|&i| got[i as usize] != pattern(i, salt)) {
        panic!("byte {i} of {n} differs after pass: a chunk was lost, repeated or reordered");
    }
    let more = read_for(s, 1, Duration::from_millis(200)).expect("connection open");
    assert!(
        more.is_empty(),
        "{} bytes more than were written",
        more.len()
    );
}

/// A listener standing in for the server: the test holds both ends of a proxied connection.
fn accept_within(l: &TcpListener, timeout: Duration) -> Option<TcpStream> {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                return Some(s);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)), // accept poll
        }
    }
    None
}

/// During a stall both peers' writes block once the buffers are full, nothing arrives on
/// either side and the connection stays open; after `pass()` every byte written arrives, in
/// order, none lost or repeated.
#[test]
fn stall_blocks_writers_both_ways_and_pass_delivers_every_byte_in_order() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = Proxy::start(server.local_addr().unwrap());
    let mut c = connect(&p);
    c.write_all(b"hello").unwrap();
    let mut u = accept_within(&server, Duration::from_secs(2)).expect("proxy connects upstream");
    assert_eq!(
        read_for(&mut u, 5, Duration::from_secs(2)).unwrap(),
        b"hello"
    );
    u.write_all(b"hi").unwrap();
    assert_eq!(read_for(&mut c, 2, Duration::from_secs(2)).unwrap(), b"hi");
    common::wait_until(
        "the proxy counted both directions",
        Duration::from_secs(2),
        || p.forwarded_bytes() == 7,
    );

    p.stall();
    let cap = 64 << 20;
    let up = write_until_blocked(&mut c, 0, cap);
    let down = write_until_blocked(&mut u, 7, cap);
    eprintln!("a stalled proxy took {up} bytes from the client and {down} from the server before their writes blocked");
    // Still blocked a moment later: nobody reads.
    c.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        matches!(c.write(&[pattern(up, 0)]), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the client's write went through a stalled proxy"
    );
    for (side, s) in [("server", &mut u), ("client", &mut c)] {
        let got = read_for(s, 1, Duration::from_millis(300))
            .unwrap_or_else(|_| panic!("the stall closed the {side}'s connection"));
        assert!(
            got.is_empty(),
            "the {side} received {} bytes during the stall",
            got.len()
        );
    }
    assert_eq!(p.forwarded_bytes(), 7, "bytes forwarded during the stall");
    assert_eq!(p.open_connections(), 1);

    p.pass();
    let (mut c2, mut u2) = (c.try_clone().unwrap(), u.try_clone().unwrap());
    let t = std::thread::spawn(move || read_pattern(&mut c2, down, 7, Duration::from_secs(30)));
    read_pattern(&mut u2, up, 0, Duration::from_secs(30));
    t.join()
        .expect("the client got every byte the server wrote");
    // The connection still works both ways.
    c.set_write_timeout(None).unwrap();
    c.write_all(b"after").unwrap();
    assert_eq!(
        read_for(&mut u, 5, Duration::from_secs(2)).unwrap(),
        b"after"
    );
    assert_eq!(p.accepted(), 1);
}

/// A connection made during a stall is accepted and kept open, but gets no byte and reaches
/// nothing upstream; after `pass()` it is connected and what it wrote arrives.
#[test]
fn stall_holds_new_connections_open_and_unanswered() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = Proxy::start(server.local_addr().unwrap());
    p.stall();
    let mut c = connect(&p);
    c.write_all(b"knock").unwrap();
    let got =
        read_for(&mut c, 1, Duration::from_millis(500)).expect("the stall closed a new connection");
    assert!(
        got.is_empty(),
        "a new connection got {got:?} during the stall"
    );
    assert!(
        accept_within(&server, Duration::from_millis(300)).is_none(),
        "the proxy connected upstream during the stall"
    );
    common::wait_until(
        "the proxy accepted the connection",
        Duration::from_secs(2),
        || p.accepted() == 1,
    );
    assert_eq!(p.forwarded_bytes(), 0);
    // Still open: a write goes in and a read sees no end of stream.
    c.write_all(b"!").unwrap();
    let got =
        read_for(&mut c, 1, Duration::from_millis(300)).expect("the stall closed a new connection");
    assert!(got.is_empty());

    p.pass();
    let mut u =
        accept_within(&server, Duration::from_secs(2)).expect("proxy connects upstream after pass");
    assert_eq!(
        read_for(&mut u, 6, Duration::from_secs(2)).unwrap(),
        b"knock!"
    );
    u.write_all(b"welcome").unwrap();
    assert_eq!(
        read_for(&mut c, 7, Duration::from_secs(2)).unwrap(),
        b"welcome"
    );
}

/// A proxy dropped in the middle of a stall with blocked writers still ends every thread and
/// closes every connection at once.
#[test]
fn dropping_a_stalled_proxy_ends_its_threads() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = Proxy::start(server.local_addr().unwrap());
    let mut c = connect(&p);
    c.write_all(b"x").unwrap();
    let mut u = accept_within(&server, Duration::from_secs(2)).expect("proxy connects upstream");
    assert_eq!(read_for(&mut u, 1, Duration::from_secs(2)).unwrap(), b"x");
    p.stall();
    write_until_blocked(&mut c, 0, 64 << 20);
    let mut late = connect(&p);
    let t = Instant::now();
    drop(p);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t.elapsed()
    );
    assert!(closed_within(&mut late, Duration::from_secs(1)));
    assert!(
        closed_within(&mut u, Duration::from_secs(5)),
        "the upstream side stayed open"
    );
}
