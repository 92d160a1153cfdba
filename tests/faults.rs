//! Faults a field gateway meets, with real nats-server processes, the real binary and the app
//! as a separate process: starting with NATS unreachable, a blackholed and a flapping link
//! (through the fault-injecting proxy of the test helpers), replication resuming right after a
//! reconnect, `kill -9` of the sidecar in a loop, a nats-server restarted mid-stream.
//! Topologies (cluster, leaf) are in `topology.rs`, clock trouble in `clock.rs`.
//!
//! Each test checks what a user would: every committed app row is on every node exactly once
//! (exact dumps and `count(*)`), the app never fails, the node stays up and its log does not
//! repeat the same warning endlessly.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const CONVERGE: Duration = WORKLOAD_CONVERGE;

// ---------------------------------------------------------------------------------------------
// Start offline

/// n1's NATS path is a proxy that resets every connection, n3's URL is a port where nothing
/// listens: both start, the app writes, they stay up without a crash loop or a log storm, and
/// when the path opens the rows reach n2 (and n2's reach them).
#[test]
fn node_started_offline_captures_writes_and_ships_them_when_nats_appears() {
    let dir = TestDir::new("offline");
    let nats = NatsServer::start(dir.path());
    let proxy = Proxy::start(loopback(nats.port()));
    proxy.reset();
    let dead_port = free_port();
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n2.wait_connected();
    let mut n1 = Node::start(dir.path(), "n1", "", Some(&proxy.url()));
    let mut n3 = Node::start(
        dir.path(),
        "n3",
        "",
        Some(&format!("nats://127.0.0.1:{dead_port}")),
    );
    n1.wait_ready();
    n3.wait_ready();

    let mut w1 = Writer::start(dbs[0], "n1", 0, 3, 5, Duration::from_millis(100));
    let mut w3 = Writer::start(dbs[2], "n3", 1000, 2, 5, Duration::from_millis(100));
    let (c1, c3) = (w1.join(), w3.join());
    assert_stays_up(&mut [&mut n1, &mut n3], Duration::from_secs(6));
    for n in [&n1, &n3] {
        assert!(
            !n.log().contains("connected to nats"),
            "{} connected through a closed path (test premise):\n{}",
            n.name,
            n.log()
        );
        // 6+ s of retries with backoff: the same error at most a few times.
        assert_no_log_storm(&n.name, &n.log(), 4);
    }
    assert_eq!(count(dbs[1], "t"), 0, "rows crossed a closed path");

    // The path opens: the proxy passes, a listener appears on the dead port.
    proxy.pass();
    let _late = Proxy::start_on(dead_port, loopback(nats.port()));
    n1.wait_connected();
    n3.wait_connected();
    let mut w2 = Writer::start(dbs[1], "n2", 2000, 2, 3, Duration::ZERO);
    let c2 = w2.join();
    let (t, c) = expected(&[(&w1, c1), (&w2, c2), (&w3, c3)], &[]);
    assert_exactly(&dbs, &t, &c);
    assert_no_panic(&[n1, n2, n3]);
}

// ---------------------------------------------------------------------------------------------
// Blackholed and flapping links

/// The link between n1 and the server forwards nothing for 13 s (longer than the publish ack
/// deadline) while both apps write; afterwards every row arrives exactly once and n1 logged a
/// reconnect.
#[test]
fn writes_during_a_blackholed_link_arrive_exactly_once() {
    let dir = TestDir::new("blackhole");
    let nats = NatsServer::start(dir.path());
    let proxy = Proxy::start(loopback(nats.port()));
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&proxy.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n1.wait_connected();
    n2.wait_connected();
    app(dbs[0], "INSERT INTO t VALUES (-1, 'before', 0)");
    wait_query(
        dbs[1],
        "SELECT origin FROM t WHERE id = -1",
        "text='before'",
        CONVERGE,
    );

    let mark = n1.log().len();
    let cut = Instant::now();
    proxy.blackhole();
    let mut w1 = Writer::start(dbs[0], "n1", 0, 5, 20, Duration::from_millis(50));
    let mut w2 = Writer::start(dbs[1], "n2", 10_000, 2, 10, Duration::from_millis(50));
    let (c1, c2) = (w1.join(), w2.join());
    while cut.elapsed() < Duration::from_secs(13) {
        assert!(
            n1.is_running(),
            "n1 exited during the blackhole:\n{}",
            n1.log()
        );
        std::thread::sleep(POLL); // holding the fault
    }
    assert_eq!(
        query_one(dbs[1], "SELECT count(*) FROM t WHERE origin = 'n1'").unwrap(),
        "integer=0",
        "n1's rows crossed a blackholed link (test premise)"
    );
    proxy.pass();
    let extra = [(-1, "integer=-1|text='before'|integer=0".to_string())];
    let (t, c) = expected(&[(&w1, c1), (&w2, c2)], &extra);
    assert_exactly(&dbs, &t, &c);
    let log = log_since(&n1, mark);
    assert!(
        log.contains("reconnected") || log.contains("connected to nats"),
        "n1 did not log a reconnect after the blackhole:\n{log}"
    );
    assert_no_log_storm("n1", &log, 20);
    assert_no_panic(&[n1, n2]);
}

/// The link between n1 and the server flaps (300 ms up, 300 ms down) for 6 s while n1's app
/// writes 300 rows in 100 small transactions and n2's app writes too: all rows arrive exactly
/// once, n1 logs a reconnect, and no warning repeats more than 20 times.
#[test]
fn writes_during_a_flapping_link_arrive_exactly_once() {
    let dir = TestDir::new("flap");
    let nats = NatsServer::start(dir.path());
    let proxy = Proxy::start(loopback(nats.port()));
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&proxy.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n1.wait_connected();
    n2.wait_connected();

    let mark = n1.log().len();
    let flap_end = Instant::now() + Duration::from_secs(6);
    proxy.flap(
        Duration::from_millis(300),
        Duration::from_millis(300),
        flap_end,
    );
    let accepted_before = proxy.accepted();
    // 100 transactions ~55 ms apart: about the 6 s of flapping.
    let mut w1 = Writer::start(dbs[0], "n1", 0, 3, 100, Duration::from_millis(50));
    let mut w2 = Writer::start(dbs[1], "n2", 10_000, 2, 30, Duration::from_millis(150));
    let (c1, c2) = (w1.join(), w2.join());
    assert_eq!(c1, 100);
    let wrote_during_flap = Instant::now() <= flap_end;
    eprintln!("n1's app finished its 300 rows while the link was flapping: {wrote_during_flap}");
    wait_until("the flap schedule ends", Duration::from_secs(30), || {
        Instant::now() > flap_end
    });
    let (t, c) = expected(&[(&w1, c1), (&w2, c2)], &[]);
    assert_exactly(&dbs, &t, &c);
    eprintln!(
        "connections accepted by the proxy during the flap: {}",
        proxy.accepted() - accepted_before
    );
    let log = log_since(&n1, mark);
    assert!(
        log.contains("disconnected"),
        "n1 did not notice the flapping link (test premise):\n{log}"
    );
    assert!(
        log.contains("reconnected") || log.contains("connected to nats"),
        "n1 did not log a reconnect:\n{log}"
    );
    assert_no_log_storm("n1", &log, 20);
    assert_no_panic(&[n1, n2]);
}

/// How long after a reconnect a change may take to arrive: polling is 50 ms, so seconds are
/// plenty.
const RESUME: Duration = Duration::from_secs(10);

/// n1's link is cut (reset) for a second while n2's app writes, three times; n1's NATS client
/// reconnects the same connection by itself. Once n1 logged the reconnect, n2's row (written
/// while n1 was away) and a row n1 writes then must each reach the other node within `RESUME`:
/// replication resumes at once, not after a pull request or a delivery lost with the old
/// connection times out on the server.
#[test]
fn replication_resumes_promptly_after_a_reconnect() {
    let dir = TestDir::new("resume");
    let nats = NatsServer::start(dir.path());
    let proxy = Proxy::start(loopback(nats.port()));
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&proxy.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n1.wait_connected();
    n2.wait_connected();
    let mut rows = Vec::new();
    for round in 0..3i64 {
        let mark = n1.log().len();
        proxy.reset();
        wait_until_or(
            "n1 notices the cut",
            CONVERGE,
            || log_since(&n1, mark).contains("disconnected"),
            || n1.log(),
        );
        let away = 2 * round;
        app(
            dbs[1],
            &format!("INSERT INTO t VALUES ({away}, 'n2', {round})"),
        );
        rows.push((away, format!("integer={away}|text='n2'|integer={round}")));
        std::thread::sleep(Duration::from_secs(1)); // the outage
        proxy.pass();
        wait_until_or(
            "n1 logs a reconnect",
            CONVERGE,
            || {
                let l = log_since(&n1, mark);
                l.contains("reconnected") || l.contains("connected to nats")
            },
            || n1.log(),
        );
        let t = Instant::now();
        wait_until_or(
            &format!(
                "round {round}: n2's row written while n1 was away reaches n1 after its reconnect"
            ),
            RESUME,
            || rows_from(dbs[0], "n2") > round,
            || format!("{}\n{}", n1.log(), n2.log()),
        );
        eprintln!(
            "round {round}: n2's row reached n1 {:?} after the reconnect",
            t.elapsed()
        );
        let back = 2 * round + 1;
        app(
            dbs[0],
            &format!("INSERT INTO t VALUES ({back}, 'n1', {round})"),
        );
        rows.push((back, format!("integer={back}|text='n1'|integer={round}")));
        wait_until_or(
            &format!("round {round}: n1's row written after its reconnect reaches n2"),
            RESUME,
            || rows_from(dbs[1], "n1") > round,
            || format!("{}\n{}", n1.log(), n2.log()),
        );
    }
    rows.sort();
    let expected: Vec<&str> = rows.iter().map(|(_, r)| r.as_str()).collect();
    for db in &dbs {
        wait_dump(db, "t", &expected, CONVERGE);
    }
    assert_no_panic(&[n1, n2]);
}

// ---------------------------------------------------------------------------------------------
// kill -9 in a loop

/// Both apps write continuously while the sidecars are killed with -9 eight times at
/// pseudo-random moments (seeded: `HL_FAULT_SEED`, default 0x5eed), sometimes again before
/// they finished starting; each is restarted at once. At the end every committed row is on
/// every node exactly once and each writer's counter equals its committed transactions.
#[test]
fn kill9_loop_while_the_app_writes_loses_and_duplicates_nothing() {
    let seed = std::env::var("HL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    eprintln!("kill -9 loop: seed {seed} (HL_FAULT_SEED)");
    let mut rng = Rng::new(seed);
    let dir = TestDir::new("kill9loop");
    let nats = NatsServer::start(dir.path());
    let mut nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        WORKLOAD_SCHEMA,
        "",
    );
    let dbs: Vec<PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    for n in &mut nodes {
        n.wait_connected();
    }
    let mut w1 = Writer::start(dbs[0], "n1", 0, 4, i64::MAX, Duration::from_millis(20));
    let mut w2 = Writer::start(
        dbs[1],
        "n2",
        1_000_000,
        3,
        i64::MAX,
        Duration::from_millis(40),
    );
    for round in 0..8 {
        let victim = rng.below(3) as usize;
        // Sometimes before the restarted node finished starting (ready takes ~300 ms).
        let after = rng.millis(20, 2500);
        std::thread::sleep(after); // the random moment of the fault
        eprintln!(
            "round {round}: kill -9 {} after {after:?}",
            nodes[victim].name
        );
        nodes[victim].kill9();
        nodes[victim].restart();
    }
    std::thread::sleep(Duration::from_millis(500)); // a little more writing after the last kill
    let (c1, c2) = (w1.stop(), w2.stop());
    eprintln!("committed transactions: n1 {c1}, n2 {c2}");
    for n in &mut nodes {
        n.wait_ready();
    }
    let (t, c) = expected(&[(&w1, c1), (&w2, c2)], &[]);
    assert_exactly(&dbs, &t, &c);
    assert_no_panic(&nodes);
}

// ---------------------------------------------------------------------------------------------
// Server loss

/// The nats-server is restarted three times with the same store while both apps write.
#[test]
fn nats_server_restarted_with_the_same_store_while_writes_go_on() {
    let dir = TestDir::new("natsrestart");
    let mut nats = NatsServer::start(dir.path());
    let mut nodes = start_cluster(dir.path(), &nats.url(), &["n1", "n2"], WORKLOAD_SCHEMA, "");
    let dbs: Vec<PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    for n in &mut nodes {
        n.wait_connected();
    }
    let mut w1 = Writer::start(dbs[0], "n1", 0, 3, i64::MAX, Duration::from_millis(30));
    let mut w2 = Writer::start(
        dbs[1],
        "n2",
        1_000_000,
        2,
        i64::MAX,
        Duration::from_millis(50),
    );
    for i in 0..3 {
        // Let replication run between outages: wait until n2 holds something new from n1.
        let before = rows_from(dbs[1], "n1");
        wait_until("n2 receives rows between restarts", CONVERGE, || {
            rows_from(dbs[1], "n1") > before + 10
        });
        eprintln!("restart {i} of the nats-server");
        nats.restart();
    }
    let before = rows_from(dbs[1], "n1");
    wait_until("n2 receives rows after the last restart", CONVERGE, || {
        rows_from(dbs[1], "n1") > before + 10
    });
    let (c1, c2) = (w1.stop(), w2.stop());
    let (t, c) = expected(&[(&w1, c1), (&w2, c2)], &[]);
    assert_exactly(&dbs, &t, &c);
    assert_no_panic(&nodes);
}
