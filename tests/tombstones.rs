//! Tombstones are collected once no late change can need them, and never so early that a late
//! change brings a deleted row back on some nodes only (see `src/tombstones.rs`):
//! - deleted rows leave no version rows behind once every node has moved past them;
//! - a node that is away holds them back until `node_ttl_hours`; after that they go, and when
//!   it returns its older unpublished writes count as made at its return, the same on every
//!   node; within `node_ttl_hours` the later delete wins as usual.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const CONVERGE: Duration = Duration::from_secs(60);
const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);";

fn tombstones(db: &Path) -> i64 {
    query_one(db, "SELECT count(*) FROM __hl_ver_t WHERE del = 1")
        .map_or(-1, |v| v.trim_start_matches("integer=").parse().unwrap())
}

fn versions(db: &Path) -> i64 {
    query_one(db, "SELECT count(*) FROM __hl_ver_t")
        .map_or(-1, |v| v.trim_start_matches("integer=").parse().unwrap())
}

#[test]
fn deleted_rows_leave_no_version_rows_once_every_node_is_past_them() {
    let dir = TestDir::new("tomb-collect");
    let nats = NatsServer::start(dir.path());
    let extra = "[replication_log]\nhorizon_interval_ms = 300\n";
    let nodes = start_cluster(dir.path(), &nats.url(), &["n1", "n2", "n3"], SCHEMA, extra);
    let dbs: Vec<_> = nodes.iter().map(|n| n.db.clone()).collect();
    app(
        &dbs[0],
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
         INSERT INTO t SELECT i, 'row ' || i FROM s;",
    );
    app(
        &dbs[1],
        "INSERT INTO t VALUES (1001, 'a'), (1002, 'b'), (1003, 'c');",
    );
    wait_until("every row everywhere", CONVERGE, || {
        dbs.iter().all(|d| count(d, "t") == 303)
    });
    app(&dbs[0], "DELETE FROM t WHERE id <= 200;");
    app(&dbs[1], "DELETE FROM t WHERE id = 1002;");
    let refs: Vec<&Path> = dbs.iter().map(|d| d.as_path()).collect();
    wait_converged(&refs, &["t"], CONVERGE);
    wait_until_or(
        "the 201 tombstones collected on every node",
        CONVERGE,
        || dbs.iter().all(|d| tombstones(d) == 0),
        || {
            dbs.iter()
                .map(|d| format!("{}: {} tombstones", d.display(), tombstones(d)))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    for d in &dbs {
        assert_eq!(count(d, "t"), 102, "{}", d.display());
        assert_eq!(
            versions(d),
            102,
            "one version row per live row: {}",
            d.display()
        );
    }
    // a late copy of an old insert (here: the app writing a deleted id again) is a new row, and
    // deleting it again is collected again
    app(
        &dbs[2],
        "INSERT INTO t VALUES (5, 'again'); DELETE FROM t WHERE id = 6;",
    );
    wait_converged(&refs, &["t"], CONVERGE);
    wait_until("the new tombstone collected", CONVERGE, || {
        dbs.iter().all(|d| tombstones(d) == 0)
    });
    for d in &dbs {
        assert_eq!(
            dump_query(d, "SELECT v FROM t WHERE id IN (5, 6)"),
            vec!["text='again'"]
        );
    }
    let status = status_json(&nodes[0].config);
    assert!(
        json_scalar(&status, "tombstones_collected")
            .is_some_and(|v| v.parse::<u64>().unwrap() >= 200),
        "{status}"
    );
}

/// Node 3's sidecar is stopped; its app updates row 1, then node 1's app deletes rows 1 and 2.
/// Returns the cluster once node 3 is back and everything converged.
fn away_then_back(
    label: &str,
    ttl_hours: &str,
    wait_for_collection: bool,
) -> (TestDir, NatsServer, Vec<Node>) {
    let dir = TestDir::new(label);
    let nats = NatsServer::start(dir.path());
    let extra =
        format!("[replication_log]\nhorizon_interval_ms = 300\nnode_ttl_hours = {ttl_hours}\n");
    let mut nodes = start_cluster(dir.path(), &nats.url(), &["n1", "n2", "n3"], SCHEMA, &extra);
    let dbs: Vec<_> = nodes.iter().map(|n| n.db.clone()).collect();
    app(
        &dbs[0],
        "INSERT INTO t VALUES (1, 'orig'), (2, 'orig'), (3, 'orig');",
    );
    wait_until("three rows everywhere", CONVERGE, || {
        dbs.iter().all(|d| count(d, "t") == 3)
    });
    nodes[2].stop();
    app(
        &dbs[2],
        "UPDATE t SET v = 'written while away' WHERE id = 1;",
    );
    // the app's clock moves on, so the delete is stamped after the update
    std::thread::sleep(Duration::from_millis(50));
    app(&dbs[0], "DELETE FROM t WHERE id IN (1, 2);");
    wait_until("the delete on node 2", CONVERGE, || {
        count(&dbs[1], "t") == 1
    });
    // node 3's record still promises its old update: nobody may collect
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        tombstones(&dbs[0]),
        2,
        "collected while node 3 was away within node_ttl"
    );
    assert_eq!(
        tombstones(&dbs[1]),
        2,
        "collected while node 3 was away within node_ttl"
    );
    if wait_for_collection {
        wait_until(
            "tombstones collected once node 3 is past node_ttl",
            CONVERGE,
            || tombstones(&dbs[0]) == 0 && tombstones(&dbs[1]) == 0,
        );
    }
    nodes[2].restart_ready();
    (dir, nats, nodes)
}

#[test]
fn a_node_back_after_node_ttl_brings_its_update_of_a_collected_row_to_every_node() {
    let (_dir, _nats, nodes) = away_then_back("tomb-rejoin", "0.002", true);
    let dbs: Vec<&Path> = nodes.iter().map(|n| n.db.as_path()).collect();
    for d in &dbs {
        wait_dump(
            d,
            "t",
            &[
                "integer=1|text='written while away'",
                "integer=3|text='orig'",
            ],
            CONVERGE,
        );
    }
    wait_converged(&dbs, &["t"], CONVERGE);
    nodes[2].wait_log("rejoined after more than node_ttl_hours", CONVERGE);
}

#[test]
fn a_node_back_within_node_ttl_loses_to_the_later_delete_everywhere() {
    let (_dir, _nats, nodes) = away_then_back("tomb-within", "1", false);
    let dbs: Vec<&Path> = nodes.iter().map(|n| n.db.as_path()).collect();
    for d in &dbs {
        wait_dump(d, "t", &["integer=3|text='orig'"], CONVERGE);
    }
    wait_converged(&dbs, &["t"], CONVERGE);
    // once node 3 published its update (and lost), every node may collect
    wait_until(
        "tombstones collected after node 3 returned",
        CONVERGE,
        || dbs.iter().all(|d| tombstones(d) == 0),
    );
    for d in &dbs {
        wait_dump(d, "t", &["integer=3|text='orig'"], CONVERGE);
    }
    assert!(!nodes[2]
        .log()
        .contains("rejoined after more than node_ttl_hours"));
}
