//! Catch-up never loses, reverts or hides a write (DESIGN invariant 12): a node whose link
//! stalls past the stream's retention keeps its own writes through the snapshot restore (a
//! restore is a last-writer-wins merge), a hole in the stream is seen wherever it appears
//! (between batches, inside a batch, in a batch of the node's own frames), `snapshot save`
//! beside a running node leaves its consumer alone, and a node rebuilt from a snapshot with its
//! clock at 1970 still stamps above its own earlier writes.

#![allow(deprecated)] // the nats crate, used here to read and cut the stream

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const CONVERGE: Duration = Duration::from_secs(60);
const STREAM: &str = "HLRS";
const SUBJECT_PREFIX: &str = "hlrs.changes";

fn js(nats: &NatsServer) -> nats::jetstream::JetStream {
    nats::jetstream::new(nats::connect(nats.url()).expect("connect to nats-server"))
}

fn stream_state(nats: &NatsServer) -> (u64, u64) {
    let s = js(nats).stream_info(STREAM).expect("stream HLRS").state;
    (s.first_seq, s.last_seq)
}

fn node_id(db: &Path) -> u64 {
    let v = query_one(db, "SELECT value FROM __hl_meta WHERE key = 'node_id'").expect("node_id");
    v.trim_start_matches("integer=").parse().unwrap()
}

fn cursor(db: &Path) -> u64 {
    query_one(db, "SELECT value FROM __hl_meta WHERE key = 'cursor'")
        .map_or(0, |v| v.trim_start_matches("integer=").parse().unwrap())
}

/// `n` transactions of one row each on `db`, ids from `first_id`, each in its own poll (its own
/// stream message).
fn write_many(db: &Path, origin: &str, first_id: i64, n: i64) {
    let mut s = AppSession::open(db);
    for i in 0..n {
        s.exec(&format!(
            "INSERT INTO t VALUES ({}, '{origin}', {i})",
            first_id + i
        ));
        std::thread::sleep(Duration::from_millis(60));
    }
}

/// `harmonylite snapshot save` for `node`, retried while another node holds the upload lease.
fn save_snapshot(node: &Node) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run_bin(
            &[
                "snapshot",
                "save",
                "--config",
                node.config.to_str().unwrap(),
            ],
            Duration::from_secs(120),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && stdout.contains("saved snapshot") {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot save failed: {:?}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `key=value` fields of the current snapshot pointer.
fn pointer_field(nats: &NatsServer, key: &str) -> Option<String> {
    let kv = js(nats).key_value("HLRS-snapshots").ok()?;
    let v = String::from_utf8(kv.get("latest").ok()??).unwrap();
    v.split(';')
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .map(String::from)
}

/// The current snapshot, written to `out`.
fn download_snapshot(nats: &NatsServer, out: &Path) {
    use std::io::Read;
    let store = js(nats).object_store("HLRS-snapshots").unwrap();
    let mut obj = store
        .get(&pointer_field(nats, "object").expect("a snapshot pointer"))
        .unwrap();
    let mut bytes = Vec::new();
    obj.read_to_end(&mut bytes).unwrap();
    std::fs::write(out, bytes).unwrap();
}

/// Nodes n1, n2 and n3 on `url` with the default config, each connected.
fn three_connected(dir: &Path, url: &str) -> [Node; 3] {
    ["n1", "n2", "n3"].map(|name| {
        let mut n = Node::start_ready(dir, name, "", Some(url));
        n.wait_connected();
        n
    })
}

/// The field report of issue 13: n3's link stalls (blackhole) for seconds; meanwhile n3's app
/// inserts 10 rows and n1 commits 60 transactions, past the stream's 20 messages. On resume n3
/// publishes its rows, finds the stream skipped and restores a snapshot: its 10 rows must
/// survive the restore on n3 itself, every node must end identical, and a snapshot n3 saves
/// afterwards must hold them (a 4th node built from it has them).
#[test]
fn stalled_node_keeps_its_published_writes_through_the_restore() {
    let dir = TestDir::new("catchup-field");
    let nats = NatsServer::start(dir.path());
    let proxy = Proxy::start(loopback(nats.port()));
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    let cfg = "[replication_log]\nmax_entries = 20\n[snapshot]\nenabled = true\ninterval = 2000\n";
    let mut n1 = Node::start_ready(dir.path(), "n1", cfg, Some(&nats.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", cfg, Some(&nats.url()));
    let mut n3 = Node::start_ready(dir.path(), "n3", cfg, Some(&proxy.url()));
    for n in [&mut n1, &mut n2, &mut n3] {
        n.wait_connected();
    }
    write_many(d[0], "n1", 1, 3);
    wait_converged(&d, &["t"], CONVERGE);

    proxy.blackhole();
    let stalled = Instant::now();
    write_many(d[2], "n3", 3000, 10);
    write_many(d[0], "n1", 100, 60);
    wait_converged(&d[..2], &["t"], CONVERGE);
    let (_, last) = stream_state(&nats);
    // a snapshot past n1's writes (the interval saves it; n2 is up to date)
    wait_until("a snapshot covers n1's 60 transactions", CONVERGE, || {
        pointer_field(&nats, "seq").is_some_and(|s| s.parse::<u64>().unwrap() >= last)
    });
    if let Some(left) = Duration::from_secs(7).checked_sub(stalled.elapsed()) {
        std::thread::sleep(left);
    }
    proxy.pass();

    wait_converged(&d, &["t"], Duration::from_secs(90));
    assert_eq!(count(d[2], "t"), 3 + 10 + 60);
    // every live version n3 restored carries the digest of its row (for resync and collisions)
    assert_eq!(
        query_one(
            d[2],
            "SELECT count(*) FROM __hl_ver_t WHERE del = 0 AND h IS NULL"
        )
        .as_deref(),
        Some("integer=0")
    );
    for db in &d {
        assert_eq!(
            query_one(db, "SELECT count(*) FROM t WHERE origin = 'n3'").as_deref(),
            Some("integer=10"),
            "{}",
            db.display()
        );
    }

    // a snapshot saved by n3 now holds its rows
    assert!(n1.stop().success());
    assert!(n2.stop().success());
    save_snapshot(&n3);
    assert_eq!(
        pointer_field(&nats, "node"),
        Some(node_id(d[2]).to_string())
    );
    let snap = dir.join("n3-snapshot.db");
    download_snapshot(&nats, &snap);
    assert_eq!(
        query_one(&snap, "SELECT count(*) FROM t WHERE origin = 'n3'").as_deref(),
        Some("integer=10")
    );
    let n4_db = dir.join("n4.db");
    let mut n4 = Node::start(dir.path(), "n4", cfg, Some(&nats.url()));
    n4.wait_log("database created from snap-", Duration::from_secs(30));
    n4.wait_ready();
    wait_converged(&[d[2], &n4_db], &["t"], CONVERGE);
    assert_eq!(count(&n4_db, "t"), 73);
    assert_eq!(
        query_one(
            &n4_db,
            "SELECT count(*) FROM __hl_ver_t WHERE del = 0 AND h IS NULL"
        )
        .as_deref(),
        Some("integer=0")
    );
    for n in [&mut n3, &mut n4] {
        assert!(n.stop().success());
    }
}

/// A message deleted from the middle of what n3 missed: n3's batch goes from seq s to s+2. The
/// hole is seen and a snapshot that covers it is restored.
#[test]
fn a_hole_inside_a_batch_is_repaired_from_a_snapshot() {
    let dir = TestDir::new("catchup-inside");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    let [mut n1, mut n2, mut n3] = three_connected(dir.path(), &nats.url());
    write_many(d[0], "n1", 1, 3);
    wait_converged(&d, &["t"], CONVERGE);
    assert!(n3.stop().success());
    write_many(d[0], "n1", 100, 6);
    wait_converged(&d[..2], &["t"], CONVERGE);
    let (first, last) = stream_state(&nats);
    assert!(
        first <= cursor(d[2]) + 1,
        "n3's position is in the stream (test premise)"
    );
    assert!(js(&nats).delete_message(STREAM, last - 2).unwrap());
    save_snapshot(&n2);

    n3.restart_ready();
    wait_converged(&d, &["t"], CONVERGE);
    assert_eq!(count(d[2], "t"), 9);
    assert!(
        n3.current_log().contains("stream skipped"),
        "{}",
        n3.current_log()
    );
    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop().success());
    }
}

/// What n3 missed is gone from the stream and the first batch n3 fetches holds only its own
/// frames (published at start): the hole before them is seen all the same.
#[test]
fn a_hole_before_a_batch_of_own_frames_is_repaired() {
    let dir = TestDir::new("catchup-own");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    let [mut n1, mut n2, mut n3] = three_connected(dir.path(), &nats.url());
    write_many(d[0], "n1", 1, 2);
    // the last message n3 sees is n2's: it stays in the stream when n1's are purged below
    write_many(d[1], "n2", 50, 1);
    wait_converged(&d, &["t"], CONVERGE);
    wait_until("n3 applied up to the stream's end", CONVERGE, || {
        cursor(d[2]) >= stream_state(&nats).1
    });
    assert!(n3.stop().success());
    write_many(d[0], "n1", 100, 5);
    wait_converged(&d[..2], &["t"], CONVERGE);
    save_snapshot(&n2);
    let n1_subject = format!("{SUBJECT_PREFIX}.*.{}", node_id(d[0]));
    js(&nats).purge_stream_subject(STREAM, &n1_subject).unwrap();
    let (first, _) = stream_state(&nats);
    assert!(
        first <= cursor(d[2]) + 1,
        "the stream does not start past n3's position (test premise)"
    );
    app(
        d[2],
        "INSERT INTO t VALUES (3000, 'n3', 0); INSERT INTO t VALUES (3001, 'n3', 1)",
    );

    n3.restart_ready();
    wait_converged(&d, &["t"], CONVERGE);
    assert_eq!(count(d[2], "t"), 2 + 1 + 5 + 2);
    assert!(
        n3.current_log().contains("stream skipped"),
        "{}",
        n3.current_log()
    );
    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop().success());
    }
}

/// `harmonylite snapshot save` beside a running node: the node's durable consumer is the same
/// one afterwards (not deleted and recreated), and changes keep arriving.
#[test]
fn snapshot_save_beside_a_running_node_leaves_its_consumer_alone() {
    let dir = TestDir::new("catchup-save");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&nats.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n1.wait_connected();
    n2.wait_connected();
    write_many(d[0], "n1", 1, 5);
    wait_converged(&d, &["t"], CONVERGE);
    let consumer = format!("hl-{}", node_id(d[1]));
    let created = js(&nats)
        .consumer_info(STREAM, &consumer)
        .expect("n2's consumer")
        .created;
    save_snapshot(&n2);
    write_many(d[0], "n1", 100, 5);
    wait_converged(&d, &["t"], CONVERGE);
    assert_eq!(count(d[1], "t"), 10);
    let after = js(&nats)
        .consumer_info(STREAM, &consumer)
        .expect("n2's consumer")
        .created;
    assert_eq!(
        created, after,
        "n2's consumer was recreated by `snapshot save`"
    );
    assert!(
        !n2.current_log().contains("will reconnect"),
        "{}",
        n2.current_log()
    );
    for n in [&mut n1, &mut n2] {
        assert!(n.stop().success());
    }
}

/// n3 writes a row, then loses its disk and is rebuilt from a snapshot older than that write,
/// with its clock at 1970. Its next write to the row must win everywhere: the node learns the
/// versions of its own earlier frames (and their content) while it replays the stream.
#[test]
fn node_rebuilt_with_a_1970_clock_stamps_above_its_own_earlier_writes() {
    let dir = TestDir::new("catchup-clock");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    let [mut n1, mut n2, mut n3] = three_connected(dir.path(), &nats.url());
    write_many(d[0], "n1", 1, 2);
    wait_converged(&d, &["t"], CONVERGE);
    save_snapshot(&n2);
    app(d[2], "INSERT INTO t VALUES (500, 'n3-old', 1)");
    wait_converged(&d, &["t"], CONVERGE);
    assert!(n3.stop().success());
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", d[2].display()));
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    n3.set_env("HL_FAKE_CLOCK_OFFSET_MS", &(-now_ms + 1000).to_string());
    n3.restart();
    n3.wait_log("database created from snap-", Duration::from_secs(30));
    n3.wait_ready();
    n3.wait_connected();
    let (_, last) = stream_state(&nats);
    wait_until("n3 replayed the stream", CONVERGE, || cursor(d[2]) >= last);
    app(d[2], "INSERT INTO t VALUES (500, 'n3-new', 2) ON CONFLICT(id) DO UPDATE SET origin = 'n3-new', tx = 2");
    wait_converged(&d, &["t"], CONVERGE);
    for db in &d {
        assert_eq!(
            query_one(db, "SELECT origin FROM t WHERE id = 500").as_deref(),
            Some("text='n3-new'"),
            "{}",
            db.display()
        );
    }
    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop().success());
    }
}

fn status_json(node: &Node) -> String {
    let out = run_bin(
        &[
            "status",
            "--json",
            "--config",
            node.config.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// n3 stopped while n1 wrote 6 rows, then one of them was deleted from the stream.
/// Returns the deleted sequence.
fn cut_a_message_n3_missed(nats: &NatsServer, d: &[&Path], n3: &mut Node) -> u64 {
    write_many(d[0], "n1", 1, 3);
    wait_converged(d, &["t"], CONVERGE);
    assert!(n3.stop().success());
    write_many(d[0], "n1", 100, 6);
    wait_converged(&d[..2], &["t"], CONVERGE);
    let (_, last) = stream_state(nats);
    assert!(js(nats).delete_message(STREAM, last - 2).unwrap());
    last - 2
}

/// No snapshot exists when n3 finds the hole: the hole is recorded and shown by `status`,
/// kept across a restart of n3 (which meanwhile applies what follows and saves no snapshot),
/// and repaired as soon as a covering snapshot appears.
#[test]
fn a_hole_stays_recorded_until_a_covering_snapshot_appears() {
    let dir = TestDir::new("catchup-persist");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    let [mut n1, mut n2, mut n3] = three_connected(dir.path(), &nats.url());
    let cut = cut_a_message_n3_missed(&nats, &d, &mut n3);
    n3.restart_ready();
    let expected_gap = format!("\"stream_gap\":{{\"from\":{cut},\"to\":{cut}}}");
    n3.wait_log("no snapshot covers seq", CONVERGE);
    assert!(
        status_json(&n3).contains(&expected_gap),
        "{}",
        status_json(&n3)
    );
    // n3 applies on past the hole: all but the lost row
    wait_until("n3 applied past the hole", CONVERGE, || {
        count(d[2], "t") == 8
    });
    assert!(n3.stop().success());
    assert!(
        status_json(&n3).contains(&expected_gap),
        "the gap is kept across a restart: {}",
        status_json(&n3)
    );
    n3.restart_ready();
    n3.wait_log("no snapshot covers seq", CONVERGE);
    // a save by n3 would claim a position while it lacks the lost row
    let out = run_bin(
        &["snapshot", "save", "--config", n3.config.to_str().unwrap()],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("misses stream messages {cut}..{cut}")),
        "{stdout}"
    );
    write_many(d[0], "n1", 200, 2);
    wait_until("n3 still applies new changes", CONVERGE, || {
        count(d[2], "t") == 10
    });
    assert!(status_json(&n3).contains(&expected_gap));

    save_snapshot(&n2);
    n3.wait_log("snapshot restore: installed", CONVERGE);
    wait_converged(&d, &["t"], CONVERGE);
    assert_eq!(count(d[2], "t"), 11);
    wait_until("the gap is cleared", CONVERGE, || {
        status_json(&n3).contains("\"stream_gap\":null")
    });
    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop().success());
    }
}

/// With `[snapshot] enabled = false` the hole cannot be repaired: it is an error that names the
/// range (not silent progress) and `status` shows it.
#[test]
fn a_hole_without_snapshots_is_a_clear_error() {
    let dir = TestDir::new("catchup-nosnap");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    let off = "[snapshot]\nenabled = false\n";
    let mut n1 = Node::start_ready(dir.path(), "n1", off, Some(&nats.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", off, Some(&nats.url()));
    let mut n3 = Node::start_ready(dir.path(), "n3", off, Some(&nats.url()));
    for n in [&mut n1, &mut n2, &mut n3] {
        n.wait_connected();
    }
    let cut = cut_a_message_n3_missed(&nats, &d, &mut n3);
    n3.restart_ready();
    n3.wait_log(&format!("the stream no longer holds messages {cut}..{cut} that this node never applied, and [snapshot] enabled = false"), CONVERGE);
    assert!(n3.current_log().contains("ERROR"), "{}", n3.current_log());
    assert!(status_json(&n3).contains(&format!("\"stream_gap\":{{\"from\":{cut},\"to\":{cut}}}")));
    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop().success());
    }
}

fn signal(node: &Node, sig: &str) {
    let pid = node.pid().expect("node running").to_string();
    assert!(std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// n3 is frozen (SIGSTOP) while n1 commits 60 transactions; its outstanding pull request holds
/// at most one batch, the rest stays in the stream, which is then purged. After SIGCONT n3
/// applies what reached its socket and the consumer delivers nothing more, ever: only the
/// periodic look at the stream's first sequence finds the hole.
#[test]
fn a_hole_no_batch_shows_is_found_by_the_periodic_check() {
    let dir = TestDir::new("catchup-periodic");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    let [mut n1, mut n2, mut n3] = three_connected(dir.path(), &nats.url());
    write_many(d[0], "n1", 1, 3);
    wait_converged(&d, &["t"], CONVERGE);
    signal(&n3, "-STOP");
    write_many(d[0], "n1", 100, 60);
    wait_converged(&d[..2], &["t"], CONVERGE);
    save_snapshot(&n2);
    js(&nats).purge_stream(STREAM).unwrap();
    signal(&n3, "-CONT");
    let resumed = Instant::now();
    wait_converged(&d, &["t"], Duration::from_secs(75));
    assert_eq!(count(d[2], "t"), 63);
    assert!(
        n3.current_log()
            .contains("the stream skipped past this node"),
        "{}",
        n3.current_log()
    );
    eprintln!(
        "n3 repaired {:.1} s after it resumed",
        resumed.elapsed().as_secs_f64()
    );
    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop().success());
    }
}

/// A restore attempt that fails for a local, passing reason (here the download file cannot be
/// created: a directory sits at its path) is retried with backoff and does not mark the
/// snapshot bad: once the path is free, the same snapshot is restored. (The hole here is the
/// stream starting past n3's position, which a connection always looked for.)
#[test]
fn a_failed_restore_attempt_is_retried_and_the_snapshot_not_marked_bad() {
    let dir = TestDir::new("catchup-retry");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2", "n3"]);
    let d: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    // a short stream, and no periodic saves: the only snapshot is the one saved below
    let cfg = "[replication_log]\nmax_entries = 20\n[snapshot]\nsave = false\n";
    let mut n1 = Node::start_ready(dir.path(), "n1", cfg, Some(&nats.url()));
    let mut n2 = Node::start_ready(dir.path(), "n2", cfg, Some(&nats.url()));
    let mut n3 = Node::start_ready(dir.path(), "n3", cfg, Some(&nats.url()));
    for n in [&mut n1, &mut n2, &mut n3] {
        n.wait_connected();
    }
    write_many(d[0], "n1", 1, 3);
    wait_converged(&d, &["t"], CONVERGE);
    assert!(n3.stop().success());
    write_many(d[0], "n1", 100, 30);
    wait_converged(&d[..2], &["t"], CONVERGE);
    assert!(
        stream_state(&nats).0 > cursor(d[2]) + 1,
        "the stream starts past n3's position (test premise)"
    );
    save_snapshot(&n2);
    let blocker = std::path::PathBuf::from(format!("{}.hl-snapshot-download", d[2].display()));
    std::fs::create_dir(&blocker).unwrap();
    n3.restart_ready();
    n3.wait_log("snapshot restore failed", CONVERGE);
    // a few attempts fail while the path is blocked
    std::thread::sleep(Duration::from_secs(3));
    std::fs::remove_dir(&blocker).unwrap();
    n3.wait_log("snapshot restore: installed", CONVERGE);
    wait_converged(&d, &["t"], CONVERGE);
    assert_eq!(count(d[2], "t"), 33);
    assert!(
        !n3.current_log().contains("failed verification"),
        "{}",
        n3.current_log()
    );
    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop().success());
    }
}

/// `[replication_log] max_age_hours` and `max_bytes` set the stream's limits beside
/// `max_entries` when the node creates it; a node with other limits keeps the stream's and says
/// so.
#[test]
fn the_stream_is_created_with_the_configured_age_and_size_limits() {
    let dir = TestDir::new("catchup-limits");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let limits =
        "[replication_log]\nmax_entries = 5000\nmax_age_hours = 48\nmax_bytes = 10000000\n";
    let mut n1 = Node::start_ready(dir.path(), "n1", limits, Some(&nats.url()));
    n1.wait_connected();
    let info = js(&nats).stream_info(STREAM).unwrap();
    assert_eq!(info.config.max_msgs, 5000);
    assert_eq!(info.config.max_age, Duration::from_secs(48 * 3600));
    assert_eq!(info.config.max_bytes, 10_000_000);
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n2.wait_connected();
    n2.wait_log("keeps the limits it was created with (max_entries=5000 max_age_hours=48 max_bytes=10000000)", CONVERGE);
    let info = js(&nats).stream_info(STREAM).unwrap();
    assert_eq!(info.config.max_age, Duration::from_secs(48 * 3600));
    let _ = dbs;
    for n in [&mut n1, &mut n2] {
        assert!(n.stop().success());
    }
}
