//! Snapshots with real processes: a node that joins without a database, or comes back after the
//! stream dropped what it missed, restores the current snapshot from JetStream and replays the
//! rest; its own unpublished writes survive and reach the others; a download cut mid-way
//! resumes; a corrupt snapshot is refused and the database left alone; the application keeps
//! reading and writing during a restore; a snapshot saved while the app writes is consistent.

#![allow(deprecated)] // the nats crate, used here to read and tamper with the snapshot buckets

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const CONVERGE: Duration = Duration::from_secs(60);
/// A short stream: a node away for more than 20 messages cannot catch up from it.
const SHORT_LOG: &str = "[replication_log]\nmax_entries = 20\n";

/// Many small transactions on `db` (one message each at a 50 ms poll, paced), `first_id` on.
fn write_many(db: &Path, origin: &str, first_id: i64, n: i64) {
    for i in 0..n {
        let id = first_id + i;
        app(db, &format!("INSERT INTO t VALUES ({id}, '{origin}', {i})"));
        std::thread::sleep(Duration::from_millis(60)); // separate polls, separate messages
    }
}

fn snapshot_cmd(cmd: &str, config: &Path) -> std::process::Output {
    run_bin(
        &["snapshot", cmd, "--config", config.to_str().unwrap()],
        Duration::from_secs(120),
    )
}

fn save_snapshot(node: &Node) -> String {
    let out = snapshot_cmd("save", &node.config);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains("saved snapshot"),
        "snapshot save failed: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[allow(deprecated)]
fn stream_first_seq(nats: &NatsServer) -> u64 {
    let nc = nats::connect(nats.url()).expect("connect to nats-server");
    nats::jetstream::new(nc)
        .stream_info("HLRS")
        .expect("stream HLRS")
        .state
        .first_seq
}

#[test]
fn new_node_without_a_database_restores_the_snapshot_and_replays_the_rest() {
    let dir = TestDir::new("snap-join");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let mut n1 = Node::start_ready(dir.path(), "n1", SHORT_LOG, Some(&nats.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", SHORT_LOG, Some(&nats.url()));
    n1.wait_connected();
    n2.wait_connected();
    write_many(&dbs[0], "n1", 1, 40);
    wait_converged(&[&dbs[0], &dbs[1]], &["t"], CONVERGE);
    save_snapshot(&n2);
    // more after the snapshot, within the stream's limit: replayed after the restore
    write_many(&dbs[1], "n2", 1001, 10);
    wait_converged(&[&dbs[0], &dbs[1]], &["t"], CONVERGE);
    assert!(
        stream_first_seq(&nats) > 1,
        "the stream kept every message (test premise)"
    );

    let n3_db = dir.join("n3.db");
    assert!(!n3_db.exists());
    let mut n3 = Node::start(dir.path(), "n3", SHORT_LOG, Some(&nats.url()));
    n3.wait_log("database created from snap-", Duration::from_secs(30));
    n3.wait_ready();
    wait_converged(&[&dbs[0], &dbs[1], &n3_db], &["t"], CONVERGE);
    assert_eq!(count(&n3_db, "t"), 50);
    // the restored node replicates like any other, both ways
    app(&n3_db, "INSERT INTO t VALUES (5000, 'n3', 0)");
    app(&dbs[0], "INSERT INTO t VALUES (5001, 'n1', 0)");
    wait_converged(&[&dbs[0], &dbs[1], &n3_db], &["t"], CONVERGE);
    assert_eq!(count(&dbs[1], "t"), 52);
    // the snapshot carried no node state of n2: n3 has its own id
    let id = |db: &Path| query_one(db, "SELECT value FROM __hl_meta WHERE key = 'node_id'");
    assert_ne!(id(&n3_db), id(&dbs[1]));
    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop().success());
    }
}

// ---------------------------------------------------------------------------------------------
// JetStream side, read directly by the test

#[allow(deprecated)]
fn js(nats: &NatsServer) -> nats::jetstream::JetStream {
    nats::jetstream::new(nats::connect(nats.url()).expect("connect to nats-server"))
}

/// `key=value` fields of the current snapshot pointer.
fn pointer_field(nats: &NatsServer, key: &str) -> String {
    let kv = js(nats)
        .key_value("HLRS-snapshots")
        .expect("snapshot bucket");
    let v = String::from_utf8(kv.get("latest").unwrap().expect("a snapshot pointer")).unwrap();
    v.split(';')
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_string()
}

/// The current snapshot's bytes (through the crate's object store, which checks the digest).
fn snapshot_bytes(nats: &NatsServer) -> Vec<u8> {
    use std::io::Read;
    let store = js(nats).object_store("HLRS-snapshots").unwrap();
    let mut obj = store.get(&pointer_field(nats, "object")).unwrap();
    let mut out = Vec::new();
    obj.read_to_end(&mut out).unwrap();
    out
}

/// A database big enough for a download that takes a while: `n` rows of 4 KiB text.
fn fill(db: &Path, first_id: i64, n: i64) {
    app(
        db,
        &format!(
            "WITH RECURSIVE s(i) AS (SELECT {first_id} UNION ALL SELECT i + 1 FROM s WHERE i < {})
             INSERT INTO t SELECT i, hex(randomblob(2048)), 0 FROM s",
            first_id + n - 1
        ),
    );
}

/// The numbers in the node's "verified" line: (fetched, size, resumed, restarts).
fn download_figures(log: &str) -> (u64, u64, u64, u64) {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("verified (SHA-256"))
        .unwrap_or_else(|| panic!("no verified line in:\n{log}"));
    let nums: Vec<u64> = line
        .split("fetched ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1], nums[2], nums[3])
}

const CHUNK: u64 = 128 * 1024;

// ---------------------------------------------------------------------------------------------

/// n3 is stopped; the stream moves past what it holds; meanwhile the app writes on n3 (insert,
/// update of a replicated row, delete). At its next start n3 restores the snapshot, keeps those
/// writes, and they reach n1 and n2.
#[test]
fn node_offline_past_retention_restores_and_its_unpublished_writes_reach_everyone() {
    let dir = TestDir::new("snap-offline");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    let mut n1 = Node::start_ready(dir.path(), "n1", SHORT_LOG, Some(&nats.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", SHORT_LOG, Some(&nats.url()));
    let mut n3 = Node::start_ready(dir.path(), "n3", SHORT_LOG, Some(&nats.url()));
    for n in [&mut n1, &mut n2, &mut n3] {
        n.wait_connected();
    }
    write_many(d[0], "n1", 1, 5);
    wait_converged(&d, &["t"], CONVERGE);
    assert!(n3.stop().success());

    write_many(d[0], "n1", 100, 40);
    // the app on n3 goes on while its sidecar is down
    app(
        d[2],
        "INSERT INTO t VALUES (3000, 'n3', 7); INSERT INTO t VALUES (3001, 'n3', 8)",
    );
    app(d[2], "UPDATE t SET tx = 999 WHERE id = 1");
    app(d[2], "DELETE FROM t WHERE id = 2");
    wait_converged(&d[..2], &["t"], CONVERGE);
    save_snapshot(&n2);
    write_many(d[0], "n1", 200, 5);
    assert!(
        stream_first_seq(&nats) > 6,
        "n3's position is still in the stream (test premise)"
    );

    n3.restart_ready();
    n3.wait_log("snapshot restore: installed", Duration::from_secs(30));
    assert!(
        n3.current_log()
            .contains("4 local unpublished changes kept"),
        "{}",
        n3.current_log()
    );
    wait_converged(&d, &["t"], CONVERGE);
    assert_eq!(count(d[0], "t"), 5 + 40 + 5 + 2 - 1);
    for db in &d {
        assert_eq!(
            query_one(db, "SELECT tx FROM t WHERE id = 1").as_deref(),
            Some("integer=999")
        );
        assert_eq!(
            query_one(db, "SELECT count(*) FROM t WHERE id = 2").as_deref(),
            Some("integer=0")
        );
        assert_eq!(
            query_one(db, "SELECT tx FROM t WHERE id = 3001").as_deref(),
            Some("integer=8")
        );
    }
    let st = run_bin(
        &["status", "--json", "--config", n3.config.to_str().unwrap()],
        Duration::from_secs(10),
    );
    let json = String::from_utf8_lossy(&st.stdout);
    assert!(
        json.contains(&format!("\"restored_seq\":{}", pointer_field(&nats, "seq"))),
        "{json}"
    );
    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop().success());
    }
}

/// The download of a 8 MiB snapshot is cut (the link resets) while it runs: it resumes where
/// it was, fetching less than two chunks again, and the database is built.
#[test]
fn download_cut_midway_resumes_without_fetching_again() {
    let dir = TestDir::new("snap-resume");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1"]);
    fill(&dbs[0], 1, 2000);
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&nats.url()));
    n1.wait_connected();
    write_many(&dbs[0], "n1", 10_000, 2); // a position to save at
    let n1_rows = count(&dbs[0], "t");
    // n1's position moves past its own frames once a second
    wait_until("a snapshot saved", CONVERGE, || {
        snapshot_cmd("save", &n1.config).status.success()
    });

    let proxy = Proxy::start(loopback(nats.port()));
    proxy.delay(Duration::from_millis(150));
    let mut n3 = Node::start(dir.path(), "n3", "", Some(&proxy.url()));
    n3.wait_log("snapshot restore: snap-", Duration::from_secs(60)); // first progress line
    proxy.reset();
    std::thread::sleep(Duration::from_millis(1500));
    proxy.pass();
    n3.wait_log("database created from", Duration::from_secs(120));
    let (fetched, size, resumed, restarts) = download_figures(&n3.current_log());
    assert!(
        restarts >= 1,
        "the download was not interrupted (test premise):\n{}",
        n3.current_log()
    );
    assert!(
        fetched < size + 2 * CHUNK,
        "fetched {fetched} bytes for a {size}-byte snapshot"
    );
    assert_eq!(resumed, 0);
    n3.wait_ready();
    wait_converged(&[&dbs[0], &dir.join("n3.db")], &["t"], CONVERGE);
    assert_eq!(count(&dir.join("n3.db"), "t"), n1_rows);
    n3.stop();
    n1.stop();
}

/// A chunk of the stored snapshot is altered: the restore refuses it (SHA-256), says so, and
/// the database is exactly as before; no partial file is left.
#[test]
fn corrupt_snapshot_is_refused_and_the_database_untouched() {
    let dir = TestDir::new("snap-corrupt");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    fill(&dbs[0], 1, 200);
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&nats.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n1.wait_connected();
    wait_converged(&[&dbs[0], &dbs[1]], &["t"], CONVERGE);
    wait_until("a snapshot saved", CONVERGE, || {
        snapshot_cmd("save", &n1.config).status.success()
    });
    assert!(n2.stop().success());
    app(&dbs[1], "INSERT INTO t VALUES (9999, 'n2 offline', 1)");
    let before = dump(&dbs[1], "t");

    // flip one byte in the second chunk, keep the pointer (and its digest)
    let mut bytes = snapshot_bytes(&nats);
    assert!(
        bytes.len() as u64 > 2 * CHUNK,
        "snapshot of {} bytes (test premise)",
        bytes.len()
    );
    bytes[CHUNK as usize + 100] ^= 0x55;
    let js = js(&nats);
    let subject = format!("$O.HLRS-snapshots.C.{}", pointer_field(&nats, "nuid"));
    js.purge_stream_subject("OBJ_HLRS-snapshots", &subject)
        .unwrap();
    for chunk in bytes.chunks(CHUNK as usize) {
        js.publish(&subject, chunk).unwrap();
    }

    let out = snapshot_cmd("restore", &n2.config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("corrupt"),
        "the error does not say the snapshot is corrupt: {err}"
    );
    assert_eq!(dump(&dbs[1], "t"), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("hl-snapshot"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    n1.stop();
}

/// n3 keeps running while its link stalls; the app keeps writing to its database the whole
/// time, including while n3 restores the snapshot at run time. The app never fails and every
/// row it committed reaches everyone.
///
/// The restore is made certain, not left to timing: the link stays stalled until the stream
/// no longer holds messages n3 never applied (40 messages from n1 into a 20-message stream)
/// and n3 reports its link down (its publish waited past the ack deadline), so it reconnects
/// when the link passes and finds the hole behind the stream's first message.
#[test]
fn app_keeps_writing_while_a_running_node_restores() {
    let dir = TestDir::new("snap-live");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    fill(d[0], 1, 300);
    let proxy = Proxy::start(loopback(nats.port()));
    let mut n1 = Node::start_ready(dir.path(), "n1", SHORT_LOG, Some(&nats.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", SHORT_LOG, Some(&nats.url()));
    let mut n3 = Node::start_ready(dir.path(), "n3", SHORT_LOG, Some(&proxy.url()));
    n3.wait_connected();
    wait_converged(&d, &["t"], CONVERGE);

    proxy.stall();
    let n3_position: u64 = json_scalar(&status_json(&n3.config), "stream_position")
        .and_then(|v| v.parse().ok())
        .expect("n3's stream_position");
    let mut w = Writer::start(d[2], "n3", 100_000, 2, i64::MAX, Duration::from_millis(20));
    write_many(d[0], "n1", 50_000, 40);
    wait_converged(&d[..2], &["t"], CONVERGE);
    save_snapshot(&n2);
    let first = stream_first_seq(&nats);
    assert!(
        first > n3_position + 1,
        "the stream still holds what n3 missed (test premise): first seq {first}, n3 at {n3_position}"
    );
    wait_until_or(
        "n3 reports its stalled link down",
        CONVERGE,
        || json_scalar(&status_json(&n3.config), "link_up") == Some("false"),
        || n3.log(),
    );
    let mark = n3.log().len();
    proxy.pass();
    n3.wait_log("snapshot restore: installed", CONVERGE);
    assert!(
        log_since(&n3, mark).contains("snapshot restore: installed"),
        "n3 restored before the link passed (test premise):\n{}",
        n3.log()
    );
    // The app goes on after the restore: wait until it committed more, not a fixed time.
    let c_after_restore = query_one(d[2], "SELECT n FROM c WHERE origin = 'n3'");
    wait_until("n3's app commits after the restore", CONVERGE, || {
        query_one(d[2], "SELECT n FROM c WHERE origin = 'n3'") != c_after_restore
    });
    let committed = w.stop();
    assert!(
        committed > 10,
        "the app committed only {committed} transactions"
    );
    let (t_rows, c_rows) = expected(&[(&w, committed)], &[]);
    wait_converged(&d, &["t", "c"], CONVERGE);
    for db in &d {
        let rows: Vec<String> = dump(db, "t")
            .into_iter()
            .filter(|r| r.contains("'n3'"))
            .collect();
        assert_eq!(rows, t_rows, "{}", db.display());
        assert_eq!(dump(db, "c"), c_rows);
    }
    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop().success());
    }
}

/// Snapshots saved while the app commits multi-row transactions are consistent copies: every
/// transaction is in whole or not at all, and nothing of the node's own state is in them.
#[test]
fn snapshot_saved_while_the_app_writes_is_a_consistent_stripped_copy() {
    let dir = TestDir::new("snap-consistent");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1"]);
    fill(&dbs[0], 1, 100);
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&nats.url()));
    n1.wait_connected();
    let mut w = Writer::start(
        &dbs[0],
        "w",
        1_000_000,
        5,
        i64::MAX,
        Duration::from_millis(1),
    );
    wait_until("a snapshot saved", CONVERGE, || {
        snapshot_cmd("save", &n1.config).status.success()
    });
    for round in 0..3 {
        if round > 0 {
            save_snapshot(&n1);
        }
        let file = dir.join(&format!("copy{round}.db"));
        std::fs::write(&file, snapshot_bytes(&nats)).unwrap();
        // the value without its type tag (`integer=5` -> `5`, `text='ok'` -> `ok`)
        let one = |sql: &str| {
            let v = query_one(&file, sql).unwrap_or_default();
            v.split_once('=')
                .map_or(v.clone(), |(_, v)| v.trim_matches('\'').to_string())
        };
        assert_eq!(one("PRAGMA integrity_check"), "ok");
        let rows: i64 = one("SELECT count(*) FROM t WHERE origin = 'w'")
            .parse()
            .unwrap();
        let txs: i64 = one("SELECT coalesce(max(n), 0) FROM c WHERE origin = 'w'")
            .parse()
            .unwrap();
        assert_eq!(
            rows,
            5 * txs,
            "copy {round}: {rows} rows for {txs} transactions"
        );
        assert_eq!(
            one("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"),
            "0"
        );
        assert_eq!(one("SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_\\_hl\\_log%' ESCAPE '\\' OR name = '__hl_meta'"), "0");
        assert_eq!(
            one("SELECT count(*) FROM __hl_ver_t WHERE pending = 1"),
            "0"
        );
        assert_eq!(
            one("SELECT value FROM __hl_snapshot WHERE key = 'seq'"),
            pointer_field(&nats, "seq")
        );
    }
    w.stop();
    n1.stop();
}

/// Two nodes with a 1 s interval: snapshots are saved by one node at a time (the lease), not
/// by both each second, and all but the last two are deleted from the bucket.
#[test]
fn periodic_snapshots_take_turns_and_old_ones_are_pruned() {
    let dir = TestDir::new("snap-periodic");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let cfg = "[snapshot]\ninterval = 1000\n";
    let mut n1 = Node::start_ready(dir.path(), "n1", cfg, Some(&nats.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", cfg, Some(&nats.url()));
    let mut w1 = Writer::start(&dbs[0], "n1", 0, 2, i64::MAX, Duration::from_millis(50));
    let mut w2 = Writer::start(
        &dbs[1],
        "n2",
        1_000_000,
        2,
        i64::MAX,
        Duration::from_millis(50),
    );
    std::thread::sleep(Duration::from_secs(8)); // the workload runs; saves happen on their own
    w1.stop();
    w2.stop();
    assert!(n1.stop().success() && n2.stop().success());
    let saved = |n: &Node| -> Vec<String> {
        n.log()
            .lines()
            .filter_map(|l| l.split("snapshot saved object=").nth(1))
            .map(|r| r.split(' ').next().unwrap().to_string())
            .collect()
    };
    let (s1, s2) = (saved(&n1), saved(&n2));
    let total = s1.len() + s2.len();
    assert!(
        (2..=10).contains(&total),
        "saves in 8 s at a 1 s interval: n1 {s1:?}, n2 {s2:?}"
    );
    let store = js(&nats).object_store("HLRS-snapshots").unwrap();
    let current = pointer_field(&nats, "object");
    let mut all: Vec<String> = s1.into_iter().chain(s2).collect();
    all.sort_by_key(|o| o.split('-').nth(1).unwrap().parse::<u64>().unwrap());
    let live: Vec<&String> = all
        .iter()
        .filter(|o| store.info(o).map(|i| !i.deleted).unwrap_or(false))
        .collect();
    assert!(
        live.len() <= 2 && live.iter().any(|o| **o == current),
        "live snapshots {live:?} of {all:?}; current {current}"
    );
}

/// A node whose position has not moved since a snapshot reached it skips the periodic look
/// (no connection, no copy of the database); a write makes it save again at the next one.
#[test]
fn an_idle_node_skips_snapshot_checks_until_its_position_moves() {
    let dir = TestDir::new("snap-idle");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1"]);
    let cfg = "[snapshot]\ninterval = 1000\n[logging]\nverbose = true\n";
    let mut n1 = Node::start_ready(dir.path(), "n1", cfg, Some(&nats.url()));
    n1.wait_connected();
    let saves = |n: &Node| n.current_log().matches("snapshot saved object=").count();
    let skips = |n: &Node| {
        n.current_log()
            .matches("no save check: nothing applied since the last one")
            .count()
    };
    let looks = |n: &Node| n.current_log().matches("snapshot: no save: ").count();
    app(&dbs[0], "INSERT INTO t VALUES (1, 'a', 1)");
    wait_until("n1 saves a snapshot of row 1", CONVERGE, || saves(&n1) >= 1);
    wait_until("n1 skips a look", CONVERGE, || skips(&n1) >= 1);
    let (saved, looked, skipped) = (saves(&n1), looks(&n1), skips(&n1));
    // two more looks come due while idle: both are skipped, no save and no look runs
    wait_until("n1 skips two more looks", CONVERGE, || {
        skips(&n1) >= skipped + 2
    });
    assert_eq!(
        (saves(&n1), looks(&n1)),
        (saved, looked),
        "an idle node looked again:\n{}",
        n1.current_log()
    );
    app(&dbs[0], "INSERT INTO t VALUES (2, 'b', 2)");
    wait_until("n1 saves again after the write", CONVERGE, || {
        saves(&n1) > saved
    });
    assert!(n1.stop().success());
}
