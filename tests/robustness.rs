//! Nothing is lost or duplicated across stops, restarts and `kill -9`; no echo; tables that
//! cannot be replicated and garbage on the stream are reported without stopping replication;
//! schema changes by the app while nodes run.
#![allow(deprecated)] // the `nats` crate 0.26 marks itself deprecated

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const CONVERGE: Duration = Duration::from_secs(60);

fn assert_all(dbs: &[&Path], table: &str, expected: &[String]) {
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    for db in dbs {
        wait_dump(db, table, &expected, CONVERGE);
    }
}

#[test]
fn writes_made_while_the_sidecar_is_stopped_are_shipped_after_restart() {
    let dir = TestDir::new("stopped");
    let nats = NatsServer::start(dir.path());
    let mut nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)",
        "",
    );
    let dbs: Vec<std::path::PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    let dbs: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    app(
        dbs[0],
        "INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)",
    );
    wait_converged(&dbs, &["t"], CONVERGE);
    assert_eq!(count(dbs[2], "t"), 3);

    // node1's sidecar stops; its app keeps writing; node2 writes meanwhile.
    let st = nodes[0].stop();
    assert_eq!(st.code(), Some(0), "SIGTERM exit status {st}");
    app(dbs[0], "INSERT INTO t VALUES (10, 'while stopped', 10); UPDATE t SET v = 'uno' WHERE id = 1; DELETE FROM t WHERE id = 2");
    app(dbs[0], "BEGIN; INSERT INTO t VALUES (11, 'eleven', 11); INSERT INTO t VALUES (12, 'twelve', 12); COMMIT");
    app(
        dbs[1],
        "INSERT INTO t VALUES (20, 'from n2 while n1 down', 20)",
    );
    nodes[0].restart_ready();
    let expected: Vec<String> = [
        "integer=1|text='uno'|integer=1",
        "integer=3|text='three'|integer=3",
        "integer=10|text='while stopped'|integer=10",
        "integer=11|text='eleven'|integer=11",
        "integer=12|text='twelve'|integer=12",
        "integer=20|text='from n2 while n1 down'|integer=20",
    ]
    .map(String::from)
    .to_vec();
    assert_all(&dbs, "t", &expected);

    // node3 stopped: what others write while it is down arrives when it is back.
    let st = nodes[2].stop();
    assert_eq!(st.code(), Some(0), "SIGTERM exit status {st}");
    app(dbs[0], "UPDATE t SET n = 100 WHERE id = 10");
    app(dbs[1], "DELETE FROM t WHERE id = 11");
    nodes[2].restart_ready();
    let mut expected = expected;
    expected[2] = "integer=10|text='while stopped'|integer=100".into();
    expected.remove(3);
    assert_all(&dbs, "t", &expected);
}

/// The nats-server goes away and comes back (same port, same store): what the apps wrote
/// meanwhile is shipped, nothing written before is lost.
#[test]
fn writes_made_while_nats_is_down_arrive_after_it_returns() {
    let dir = TestDir::new("natsdown");
    let mut nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "",
    );
    let dbs: Vec<&Path> = nodes.iter().map(|n| n.db.as_path()).collect();
    app(dbs[0], "INSERT INTO t VALUES (1, 'before')");
    assert_all(&dbs, "t", &["integer=1|text='before'".to_string()]);

    nats.stop();
    for n in &nodes {
        n.wait_log("disconnected", CONVERGE);
    }
    app(dbs[0], "INSERT INTO t VALUES (2, 'n1 while nats down'); UPDATE t SET v = 'changed while down' WHERE id = 1");
    app(dbs[1], "INSERT INTO t VALUES (3, 'n2 while nats down')");
    nats.restart();
    let expected = [
        "integer=1|text='changed while down'",
        "integer=2|text='n1 while nats down'",
        "integer=3|text='n2 while nats down'",
    ]
    .map(String::from);
    assert_all(&dbs, "t", &expected);
    // And replication continues normally afterwards.
    app(dbs[1], "DELETE FROM t WHERE id = 2");
    assert_all(&dbs, "t", &[expected[0].clone(), expected[2].clone()]);
}

/// node1's app writes 60 transactions (inserts, updates of all earlier rows, a delete each)
/// while node2 is stopped, killed and restarted, and node1 itself is killed with -9 and
/// restarted. Every node must end with exactly the rows the app left, once each.
#[test]
fn restarts_and_kill9_lose_nothing_and_duplicate_nothing() {
    let dir = TestDir::new("restarts");
    let nats = NatsServer::start(dir.path());
    let mut nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        "CREATE TABLE ev(seq INTEGER PRIMARY KEY, tx INTEGER NOT NULL, v INTEGER NOT NULL); \
         CREATE TABLE names(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)",
        "",
    );
    let dbs: Vec<std::path::PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    let dbs: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    const TXS: i64 = 60;
    let writer_db = dbs[0].to_path_buf();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_done = done.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..TXS {
            let mut sql = format!("BEGIN; UPDATE ev SET v = v + 1 WHERE tx < {i};");
            for j in 0..5 {
                sql.push_str(&format!("INSERT INTO ev VALUES ({}, {i}, 0);", i * 5 + j));
            }
            if i >= 1 {
                sql.push_str(&format!("DELETE FROM ev WHERE seq = {};", i * 5 - 3));
            }
            // A renamed row: a replayed old insert would collide with the UNIQUE name.
            sql.push_str(&format!(
                "INSERT INTO names VALUES ({i}, 'name-{i}'); UPDATE names SET name = 'renamed-{i}' WHERE id = {i};"
            ));
            sql.push_str("COMMIT;");
            app(&writer_db, &sql);
            std::thread::sleep(Duration::from_millis(40)); // pacing of the app, not a wait
        }
        writer_done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    // Each disturbance hits a node that is connected and busy: wait until it is connected and
    // its `names` table grew (it applied or wrote something new), unless the app is done.
    let busy = |n: &mut Node| {
        n.wait_connected();
        let before = count(&n.db, "names");
        wait_until("node makes progress", CONVERGE, || {
            done.load(std::sync::atomic::Ordering::SeqCst) || count(&n.db, "names") > before
        });
    };
    busy(&mut nodes[1]);
    let st = nodes[1].stop();
    assert_eq!(st.code(), Some(0), "n2 SIGTERM exit status {st}");
    nodes[1].restart_ready();
    busy(&mut nodes[1]);
    nodes[1].kill9();
    nodes[1].restart_ready();
    busy(&mut nodes[0]);
    nodes[0].kill9();
    nodes[0].restart_ready();
    busy(&mut nodes[2]);
    nodes[2].kill9();
    nodes[2].restart_ready();
    busy(&mut nodes[0]);
    let st = nodes[0].stop();
    assert_eq!(st.code(), Some(0), "n1 SIGTERM exit status {st}");
    nodes[0].restart_ready();
    let disturbed_while_writing = !done.load(std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    eprintln!("all disturbances happened while the app was writing: {disturbed_while_writing}");

    let mut expected = Vec::new();
    for seq in 0..TXS * 5 {
        let tx = seq / 5;
        let deleted = seq % 5 == 2 && tx < TXS - 1;
        if !deleted {
            expected.push(format!(
                "integer={seq}|integer={tx}|integer={}",
                TXS - 1 - tx
            ));
        }
    }
    let names: Vec<String> = (0..TXS)
        .map(|i| format!("integer={i}|text='renamed-{i}'"))
        .collect();
    assert_eq!(
        dump(dbs[0], "ev"),
        expected,
        "the writer's own rows (test premise)"
    );
    assert_all(&dbs, "ev", &expected);
    assert_all(&dbs, "names", &names);
    for db in &dbs {
        assert_eq!(count(db, "ev"), expected.len() as i64);
        let distinct = query_one(db, "SELECT count(DISTINCT seq) FROM ev").unwrap();
        assert_eq!(distinct, format!("integer={}", expected.len()));
    }
    for n in &nodes {
        assert!(
            !n.log().contains("panicked"),
            "{} panicked:\n{}",
            n.name,
            n.log()
        );
    }
}

/// `/jsz` total message count of the server.
/// Messages in the replication stream (the node-record bucket is a stream too: not counted).
fn stream_messages(nats: &NatsServer) -> u64 {
    let nc = nats::connect(nats.url()).expect("connect to nats-server");
    nats::jetstream::new(nc)
        .stream_info("HLRS")
        .expect("stream HLRS")
        .state
        .messages
}

/// Changes a node applies are not captured and published again: ten single-row transactions,
/// each waited for on the other node, add at most ten messages to the stream.
#[test]
fn applied_changes_are_not_published_again() {
    let dir = TestDir::new("noecho");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "",
    );
    let before = stream_messages(&nats);
    const N: u64 = 10;
    for i in 0..N {
        let (from, to) = if i % 2 == 0 {
            (&nodes[0], &nodes[1])
        } else {
            (&nodes[1], &nodes[0])
        };
        app(
            &from.db,
            &format!("INSERT INTO t VALUES ({i}, 'from {}')", from.name),
        );
        wait_query(
            &to.db,
            &format!("SELECT v FROM t WHERE id = {i}"),
            &format!("text='from {}'", from.name),
            CONVERGE,
        );
    }
    // One more round trip so any echo of the last rows would have been published.
    app(&nodes[0].db, "INSERT INTO t VALUES (100, 'last')");
    wait_query(
        &nodes[1].db,
        "SELECT v FROM t WHERE id = 100",
        "text='last'",
        CONVERGE,
    );
    app(&nodes[1].db, "INSERT INTO t VALUES (101, 'last back')");
    wait_query(
        &nodes[0].db,
        "SELECT v FROM t WHERE id = 101",
        "text='last back'",
        CONVERGE,
    );
    let added = stream_messages(&nats) - before;
    eprintln!(
        "stream messages added by {} single-row transactions: {added}",
        N + 2
    );
    assert!(
        (1..=N + 2).contains(&added),
        "{} single-row transactions added {added} messages to the stream: applied changes are \
         being published again (echo)",
        N + 2
    );
    wait_converged(&[&nodes[0].db, &nodes[1].db], &["t"], CONVERGE);
}

#[test]
fn table_without_primary_key_is_reported_and_others_replicate() {
    let dir = TestDir::new("nopk");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE nopk_events(a, b)",
        "",
    );
    for n in &nodes {
        let log = n.log();
        assert!(
            log.lines()
                .any(|l| l.contains("not replicated") && l.contains("nopk_events")),
            "{} does not report `nopk_events ... not replicated` at start:\n{log}",
            n.name
        );
    }
    // The app can still write the table (the sidecar never breaks app writes).
    app(
        &nodes[0].db,
        "INSERT INTO nopk_events VALUES (1, 'x'), (1, 'x'); INSERT INTO t VALUES (1, 'after nopk')",
    );
    app(
        &nodes[1].db,
        "INSERT INTO t VALUES (2, 'from n2'); INSERT INTO nopk_events VALUES (2, 'y')",
    );
    wait_dump(
        &nodes[1].db,
        "t",
        &["integer=1|text='after nopk'", "integer=2|text='from n2'"],
        CONVERGE,
    );
    // Later markers in both directions prove both nodes ran full ticks after the writes.
    app(&nodes[0].db, "INSERT INTO t VALUES (3, 'marker')");
    wait_query(
        &nodes[1].db,
        "SELECT v FROM t WHERE id = 3",
        "text='marker'",
        CONVERGE,
    );
    app(&nodes[1].db, "INSERT INTO t VALUES (4, 'marker back')");
    wait_query(
        &nodes[0].db,
        "SELECT v FROM t WHERE id = 4",
        "text='marker back'",
        CONVERGE,
    );
    assert_eq!(
        dump(&nodes[0].db, "nopk_events"),
        ["integer=1|text='x'", "integer=1|text='x'"]
    );
    assert_eq!(dump(&nodes[1].db, "nopk_events"), ["integer=2|text='y'"]);
    wait_converged(&[&nodes[0].db, &nodes[1].db], &["t"], CONVERGE);
}

#[test]
fn garbage_on_the_stream_is_reported_and_skipped() {
    let dir = TestDir::new("garbage");
    let nats = NatsServer::start(dir.path());
    let mut nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "",
    );
    let dbs: Vec<std::path::PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    let dbs: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();

    // Catch a real frame to damage it.
    let nc = nats::connect(nats.url()).expect("connect to nats");
    let sub = nc.subscribe("hlrs.changes.>").unwrap();
    nc.flush().unwrap();
    app(dbs[0], "INSERT INTO t VALUES (1, 'before the garbage')");
    let frame = sub
        .next_timeout(CONVERGE)
        .expect("a frame from n1 on hlrs.changes.>");
    assert!(!frame.data.is_empty());
    for db in &dbs {
        wait_dump(db, "t", &["integer=1|text='before the garbage'"], CONVERGE);
    }

    let js = nats::jetstream::new(nc.clone());
    let half = frame.data[..frame.data.len() / 2].to_vec();
    let all_but_last = frame.data[..frame.data.len() - 1].to_vec();
    for bad in [
        b"garbage".to_vec(),
        half,
        all_but_last,
        vec![0xff; 64],
        Vec::new(),
    ] {
        let ack = js
            .publish("hlrs.changes.999", &bad)
            .unwrap_or_else(|e| panic!("publish garbage to the stream: {e}"));
        assert!(!ack.duplicate, "{ack:?}");
    }
    // Each of the five is reported, naming the subject.
    for n in &nodes {
        let reported = || {
            n.log()
                .lines()
                .filter(|l| l.contains("undecodable frame") && l.contains("hlrs.changes.999"))
                .count()
        };
        wait_until_or(
            &format!(
                "{} reports 5 undecodable frames on hlrs.changes.999",
                n.name
            ),
            CONVERGE,
            || reported() >= 5,
            || n.log(),
        );
    }

    app(dbs[0], "INSERT INTO t VALUES (2, 'after the garbage')");
    app(
        dbs[2],
        "UPDATE t SET v = 'updated after the garbage' WHERE id = 1",
    );
    let expected = [
        "integer=1|text='updated after the garbage'",
        "integer=2|text='after the garbage'",
    ]
    .map(String::from);
    assert_all(&dbs, "t", &expected);
    for n in &mut nodes {
        assert!(
            n.is_running(),
            "{} exited after garbage:\n{}",
            n.name,
            n.log()
        );
    }

    // After a restart the garbage is not a wall either.
    let st = nodes[1].stop();
    assert_eq!(st.code(), Some(0));
    nodes[1].restart_ready();
    app(dbs[0], "INSERT INTO t VALUES (3, 'after restart')");
    let mut expected = expected.to_vec();
    expected.push("integer=3|text='after restart'".into());
    assert_all(&dbs, "t", &expected);
}

#[test]
fn alter_table_add_column_while_nodes_run() {
    let dir = TestDir::new("alter");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "",
    );
    let dbs: Vec<&Path> = nodes.iter().map(|n| n.db.as_path()).collect();
    app(dbs[0], "INSERT INTO t VALUES (1, 'one'), (2, 'two')");
    assert_all(
        &dbs,
        "t",
        &["integer=1|text='one'", "integer=2|text='two'"].map(String::from),
    );

    for db in &dbs {
        app(db, "ALTER TABLE t ADD COLUMN c");
    }
    app(dbs[0], "INSERT INTO t VALUES (3, 'three', 'c3')");
    app(dbs[1], "UPDATE t SET c = 1.5 WHERE id = 1");
    app(
        dbs[2],
        "INSERT INTO t(id, v, c) VALUES (4, 'four', x'04'); UPDATE t SET v = 'deux' WHERE id = 2",
    );
    let expected = [
        "integer=1|text='one'|real=1.5",
        "integer=2|text='deux'|null=NULL",
        "integer=3|text='three'|text='c3'",
        "integer=4|text='four'|blob=X'04'",
    ]
    .map(String::from);
    assert_all(&dbs, "t", &expected);
}

#[test]
fn table_created_while_nodes_run_replicates() {
    let dir = TestDir::new("newtable");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "",
    );
    let dbs: Vec<&Path> = nodes.iter().map(|n| n.db.as_path()).collect();
    for db in &dbs {
        app(db, "CREATE TABLE later(k TEXT PRIMARY KEY, n INTEGER)");
    }
    app(dbs[1], "INSERT INTO later VALUES ('a', 1), ('b', 2)");
    app(dbs[0], "INSERT INTO t VALUES (1, 'marker')");
    assert_all(
        &dbs,
        "later",
        &["text='a'|integer=1", "text='b'|integer=2"].map(String::from),
    );
    assert_all(&dbs, "t", &["integer=1|text='marker'"].map(String::from));
}

/// A server with a small `max_payload` (64 KiB) and a row four times larger: the node sizes its
/// frames and fragments to fit the server's limit *with* the `Nats-Msg-Id` header (a fragment
/// of exactly `max_payload` bytes plus its header was refused, the server closed the
/// connection, and the same round was retried forever).
#[test]
fn frames_fit_a_small_server_max_payload_with_their_headers() {
    let dir = TestDir::new("maxpayload");
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, "max_payload: 65536\n").unwrap();
    let [port, mon] = free_ports::<2>();
    let nats = NatsServer::start_custom(
        dir.path(),
        "nats",
        port,
        mon,
        true,
        &["-c".into(), conf.display().to_string()],
    );
    let mut nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)",
        "",
    );
    let dbs: Vec<std::path::PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    let dbs: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    app(
        dbs[0],
        "INSERT INTO t VALUES (1, randomblob(262144)), (2, zeroblob(65536)), (3, x'01')",
    );
    wait_converged(&dbs, &["t"], CONVERGE);
    assert_eq!(count(dbs[1], "t"), 3);
    let sizes = dump_query(dbs[1], "SELECT id, length(b) FROM t ORDER BY id");
    assert_eq!(
        sizes,
        [
            "integer=1|integer=262144",
            "integer=2|integer=65536",
            "integer=3|integer=1"
        ]
    );
    for n in &mut nodes {
        assert!(!n.log().contains("Maximum Payload"), "{}", n.log());
        assert_eq!(n.stop().code(), Some(0));
    }
}
