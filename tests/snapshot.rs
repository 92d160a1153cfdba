//! Snapshots with real processes: a node that joins without a database, or comes back after the
//! stream dropped what it missed, restores the current snapshot from JetStream and replays the
//! rest; its own unpublished writes survive and reach the others; a download cut mid-way
//! resumes; a corrupt snapshot is refused and the database left alone; the application keeps
//! reading and writing during a restore; a snapshot saved while the app writes is consistent.

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
    run_bin(&["snapshot", cmd, "--config", config.to_str().unwrap()], Duration::from_secs(120))
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
    nats::jetstream::new(nc).stream_info("HLRS").expect("stream HLRS").state.first_seq
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
    assert!(stream_first_seq(&nats) > 1, "the stream kept every message (test premise)");

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
