//! `[anti_entropy] interval_secs`: the nodes run `verify --repair` by themselves. A row lost
//! behind a node's back (row and version row deleted with a plain SQLite connection, its
//! change-log entry cleared) comes back on its own, and `status` shows the check.

mod common;

use std::time::Duration;

use common::*;
use rusqlite::Connection;

#[test]
fn a_row_lost_behind_a_nodes_back_comes_back_by_itself() {
    let dir = TestDir::new("anti-entropy");
    let nats = NatsServer::start(dir.path());
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        app(
            &dir.join(&format!("{name}.db")),
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        );
        let toml = format!("node_id = {}\n[anti_entropy]\ninterval_secs = 10\n", i + 1);
        let mut n = Node::start_ready(dir.path(), name, &toml, Some(&nats.url()));
        n.wait_connected();
        nodes.push(n);
    }
    let (a, b) = (nodes[0].db.clone(), nodes[1].db.clone());
    app(
        &a,
        "INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three');",
    );
    wait_converged(&[&a, &b], &["t"], Duration::from_secs(30));

    let mut c = Connection::open(&b).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = c.transaction().unwrap();
    tx.execute_batch(
        "DELETE FROM t WHERE id = 2; DELETE FROM __hl_ver_t WHERE k0 = 2; DELETE FROM __hl_log_t;",
    )
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(
        query_one(&b, "SELECT count(*) FROM t"),
        Some("integer=2".into())
    );

    // node 1 (the lowest id) checks every 10 s and repairs
    wait_converged(&[&a, &b], &["t"], Duration::from_secs(60));
    assert_eq!(
        query_one(&b, "SELECT v FROM t WHERE id = 2"),
        Some("text='two'".into())
    );
    wait_until("node 1 logged its check", Duration::from_secs(30), || {
        nodes[0]
            .log()
            .contains("anti-entropy check rows_different=1")
    });
    assert!(
        !nodes[1].log().contains("anti-entropy check"),
        "only the lowest id checks:\n{}",
        nodes[1].log()
    );
    for n in &nodes {
        let st = status_json(&n.config);
        assert!(st.contains("\"verify\":{"), "status shows the check: {st}");
    }
    assert_no_panic(&nodes);
}
