//! Clock trouble (`HL_FAKE_CLOCK_OFFSET_MS` shifts a node's wall clock): a node far behind
//! (about 1970) still orders its writes after what it has seen (HLC), also after its clock
//! jumps back across a restart; a node far ahead is reported by the others.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const CONVERGE: Duration = WORKLOAD_CONVERGE;

const FAKE_CLOCK: &str = "HL_FAKE_CLOCK_OFFSET_MS";

/// The binary reads `HL_FAKE_CLOCK_OFFSET_MS` (its name is in the executable).
fn binary_supports_fake_clock() -> bool {
    let bin = std::fs::read(BIN).expect("read the binary");
    bin.windows(FAKE_CLOCK.len())
        .any(|w| w == FAKE_CLOCK.as_bytes())
}

/// n2's wall clock is at ~1970 (offset -1,700,000,000,000 ms). Its writes reach n1, and on a row
/// both update in turn (n1 first, then n2 after seeing n1's value, then n1 again) the later
/// write wins every time: the HLC carries causality, not the wall clock. After n2 restarts
/// with its clock jumping back another hour, its next update still wins (persisted HLC).
#[test]
fn clock_far_behind_still_orders_writes_causally() {
    assert!(
        binary_supports_fake_clock(),
        "the binary does not read {FAKE_CLOCK} yet"
    );
    let dir = TestDir::new("clock1970");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let n1 = Node::start_ready(dir.path(), "n1", "", Some(&nats.url()));
    let mut n2 = Node::start_with_env(
        dir.path(),
        "n2",
        "",
        Some(&nats.url()),
        &[(FAKE_CLOCK, "-1700000000000")],
    );
    n2.wait_ready();
    let v = |db: &Path, id: i64, expect: &str| {
        wait_query(
            db,
            &format!("SELECT origin FROM t WHERE id = {id}"),
            &format!("text='{expect}'"),
            CONVERGE,
        )
    };
    // Rows from the normal node, seen by the 1970 node.
    app(
        dbs[0],
        "INSERT INTO t VALUES (1, 'n1 first', 0), (2, 'n1 row', 0)",
    );
    v(dbs[1], 1, "n1 first");
    v(dbs[1], 2, "n1 row");
    // The 1970 node updates after seeing n1's value: its write is later and must win.
    app(dbs[1], "UPDATE t SET origin = 'n2 after n1' WHERE id = 1");
    v(dbs[0], 1, "n2 after n1");
    // And n1 after seeing that.
    app(dbs[0], "UPDATE t SET origin = 'n1 after n2' WHERE id = 1");
    v(dbs[1], 1, "n1 after n2");
    // The 1970 node's own rows and its update of n1's row reach n1.
    app(
        dbs[1],
        "INSERT INTO t VALUES (10, 'n2 row', 0), (11, 'n2 row', 0); UPDATE t SET origin = 'n2 updated' WHERE id = 2",
    );
    v(dbs[0], 10, "n2 row");
    v(dbs[0], 11, "n2 row");
    v(dbs[0], 2, "n2 updated");
    // The 1970 node restarts with its clock an hour further back: its HLC is persisted, so
    // its next write is still later than everything it has seen.
    n2.stop();
    n2.set_env(FAKE_CLOCK, "-1700003600000");
    n2.restart_ready();
    app(
        dbs[1],
        "UPDATE t SET origin = 'n2 after jump back' WHERE id = 1",
    );
    v(dbs[0], 1, "n2 after jump back");
    let expected = [
        "integer=1|text='n2 after jump back'|integer=0",
        "integer=2|text='n2 updated'|integer=0",
        "integer=10|text='n2 row'|integer=0",
        "integer=11|text='n2 row'|integer=0",
    ];
    for db in &dbs {
        wait_dump(db, "t", &expected, CONVERGE);
    }
    assert_no_panic(&[n1, n2]);
}

/// n3's clock is one hour ahead (offset +3,600,000 ms): n1 receives its change and logs a line
/// containing `clock ahead`; the row still replicates.
#[test]
fn clock_far_ahead_is_reported() {
    assert!(
        binary_supports_fake_clock(),
        "the binary does not read {FAKE_CLOCK} yet"
    );
    let dir = TestDir::new("clockahead");
    let nats = NatsServer::start(dir.path());
    let dbs = make_dbs(dir.path(), &["n1", "n3"]);
    let n1 = Node::start_ready(dir.path(), "n1", "", Some(&nats.url()));
    let mut n3 = Node::start_with_env(
        dir.path(),
        "n3",
        "",
        Some(&nats.url()),
        &[(FAKE_CLOCK, "3600000")],
    );
    n3.wait_ready();
    app(&dbs[1], "INSERT INTO t VALUES (1, 'from the future', 0)");
    wait_query(
        &dbs[0],
        "SELECT origin FROM t WHERE id = 1",
        "text='from the future'",
        CONVERGE,
    );
    n1.wait_log("clock ahead", CONVERGE);
    let line = n1
        .log()
        .lines()
        .find(|l| l.contains("clock ahead"))
        .unwrap()
        .to_string();
    eprintln!("n1 reported: {line}");
    assert_no_panic(&[n1, n3]);
}
