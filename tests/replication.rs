//! Row changes made by the application on any node reach every other node; concurrent writers
//! converge to identical tables; key changes, composite keys, WITHOUT ROWID tables; the
//! `publish` and `replicate` switches.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const CONVERGE: Duration = Duration::from_secs(60);

fn dbs(nodes: &[Node]) -> Vec<&Path> {
    nodes.iter().map(|n| n.db.as_path()).collect()
}

fn assert_all(nodes: &[Node], table: &str, expected: &[&str]) {
    for n in nodes {
        wait_dump(&n.db, table, expected, CONVERGE);
    }
}

#[test]
fn insert_update_delete_on_each_node_reach_all() {
    let dir = TestDir::new("iud");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)",
        "",
    );
    let (n1, n2, n3) = (&nodes[0].db, &nodes[1].db, &nodes[2].db);

    // Inserts on node1.
    app(
        n1,
        "INSERT INTO t VALUES (1, 'one', 10), (2, 'two', 20), (3, 'three', 30)",
    );
    assert_all(
        &nodes,
        "t",
        &[
            "integer=1|text='one'|integer=10",
            "integer=2|text='two'|integer=20",
            "integer=3|text='three'|integer=30",
        ],
    );

    // Updates on node2, deletes on node3.
    app(
        n2,
        "UPDATE t SET v = 'uno', n = n + 1 WHERE id = 1; UPDATE t SET n = NULL WHERE id = 3",
    );
    assert_all(
        &nodes,
        "t",
        &[
            "integer=1|text='uno'|integer=11",
            "integer=2|text='two'|integer=20",
            "integer=3|text='three'|null=NULL",
        ],
    );
    app(n3, "DELETE FROM t WHERE id = 2");
    assert_all(
        &nodes,
        "t",
        &[
            "integer=1|text='uno'|integer=11",
            "integer=3|text='three'|null=NULL",
        ],
    );

    // Every node inserts, updates and deletes; all directions.
    app(n2, "INSERT INTO t VALUES (20, 'from n2', 2)");
    app(
        n3,
        "INSERT INTO t VALUES (30, 'from n3', 3); UPDATE t SET v = 'tres' WHERE id = 3",
    );
    app(n1, "DELETE FROM t WHERE id = 1");
    let expected = [
        "integer=3|text='tres'|null=NULL",
        "integer=20|text='from n2'|integer=2",
        "integer=30|text='from n3'|integer=3",
    ];
    assert_all(&nodes, "t", &expected);

    // A deleted key inserted again comes back everywhere (the tombstone does not win over a
    // later insert).
    app(n2, "INSERT INTO t VALUES (1, 'again', 1)");
    assert_all(
        &nodes,
        "t",
        &[
            "integer=1|text='again'|integer=1",
            "integer=3|text='tres'|null=NULL",
            "integer=20|text='from n2'|integer=2",
            "integer=30|text='from n3'|integer=3",
        ],
    );
}

#[test]
fn three_writers_on_disjoint_keys_at_once() {
    let dir = TestDir::new("disjoint");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT NOT NULL, seq INTEGER NOT NULL, payload TEXT)",
        "",
    );
    const ROWS: i64 = 300;
    const PER_TX: i64 = 30;
    std::thread::scope(|s| {
        for (i, n) in nodes.iter().enumerate() {
            let db = n.db.clone();
            let name = n.name.clone();
            s.spawn(move || {
                let base = (i as i64 + 1) * 100_000;
                for tx in 0..ROWS / PER_TX {
                    let mut sql = String::from("BEGIN;");
                    for k in 0..PER_TX {
                        let seq = tx * PER_TX + k;
                        sql.push_str(&format!(
                            "INSERT INTO t VALUES ({}, '{name}', {seq}, '{name}-{seq}-' || hex(zeroblob(20)));",
                            base + seq
                        ));
                    }
                    sql.push_str("COMMIT;");
                    app(&db, &sql);
                }
            });
        }
    });
    let mut expected = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        for seq in 0..ROWS {
            expected.push(format!(
                "integer={}|text='{name}'|integer={seq}|text='{name}-{seq}-{}'",
                (i as i64 + 1) * 100_000 + seq,
                "00".repeat(20)
            ));
        }
    }
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_all(&nodes, "t", &expected);
}

/// Every node inserts, updates and deletes the same 24 keys at the same time, each with values
/// of its own storage class. The nodes must end identical, and every surviving row must be one
/// writer's whole row (the value's class matches the writer named in the row).
#[test]
fn three_writers_on_the_same_keys_converge() {
    let dir = TestDir::new("samekeys");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        "CREATE TABLE s(id INTEGER PRIMARY KEY, w TEXT, v, round INTEGER)",
        "",
    );
    const KEYS: i64 = 24;
    const ROUNDS: i64 = 15;
    std::thread::scope(|s| {
        for (i, n) in nodes.iter().enumerate() {
            let db = n.db.clone();
            let w = n.name.clone();
            s.spawn(move || {
                for r in 0..ROUNDS {
                    // n1 writes integers, n2 text, n3 blobs.
                    let val = |k: i64| match i {
                        0 => format!("{}", r * 1000 + k),
                        1 => format!("'{w}-{r}-{k}'"),
                        _ => format!("x'{:02x}{:02x}'", r, k),
                    };
                    let mut sql = String::from("BEGIN;");
                    for k in 1..=KEYS {
                        sql.push_str(&format!(
                            "INSERT INTO s VALUES ({k}, '{w}', {v}, {r}) \
                             ON CONFLICT(id) DO UPDATE SET w = excluded.w, v = excluded.v, round = excluded.round;",
                            v = val(k)
                        ));
                    }
                    sql.push_str("COMMIT;");
                    app(&db, &sql);
                    // Updates of a third of the keys, in their own transaction.
                    let mut sql = String::from("BEGIN;");
                    for k in (1..=KEYS).filter(|k| (k + r + i as i64) % 3 == 0) {
                        sql.push_str(&format!(
                            "UPDATE s SET w = '{w}', v = {v}, round = {r} WHERE id = {k};",
                            v = val(k)
                        ));
                    }
                    sql.push_str("COMMIT;");
                    app(&db, &sql);
                    // Deletes of a few keys.
                    let a = (r * 5 + i as i64 * 7) % KEYS + 1;
                    let b = (r * 11 + i as i64 * 3) % KEYS + 1;
                    app(&db, &format!("DELETE FROM s WHERE id IN ({a}, {b})"));
                }
            });
        }
    });
    let all = dbs(&nodes);
    wait_converged(&all, &["s"], CONVERGE);
    let rows = dump(&nodes[0].db, "s");
    for row in &rows {
        let ok = (row.contains("|text='n1'|") && row.contains("|text='n1'|integer="))
            || (row.contains("|text='n2'|text='n2-"))
            || (row.contains("|text='n3'|blob=X'"));
        assert!(
            ok,
            "row mixes writers or lost its storage class: {row}\nall rows: {rows:#?}"
        );
    }

    // A last round from one node makes the result exact.
    let mut sql = String::from("BEGIN; DELETE FROM s;");
    for k in 1..=KEYS {
        if k % 4 != 0 {
            sql.push_str(&format!(
                "INSERT INTO s VALUES ({k}, 'final', {}, -1);",
                k as f64 + 0.25
            ));
        }
    }
    sql.push_str("COMMIT;");
    app(&nodes[1].db, &sql);
    let expected: Vec<String> = (1..=KEYS)
        .filter(|k| k % 4 != 0)
        .map(|k| {
            format!(
                "integer={k}|text='final'|real={:?}|integer=-1",
                k as f64 + 0.25
            )
        })
        .collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_all(&nodes, "s", &expected);
}

#[test]
fn primary_key_change_moves_the_row() {
    let dir = TestDir::new("pkchange");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); \
         CREATE TABLE k(code TEXT PRIMARY KEY, v INTEGER)",
        "",
    );
    app(
        &nodes[0].db,
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'); INSERT INTO k VALUES ('x', 1), ('y', 2)",
    );
    assert_all(&nodes, "t", &["integer=1|text='a'", "integer=2|text='b'"]);
    assert_all(&nodes, "k", &["text='x'|integer=1", "text='y'|integer=2"]);

    app(&nodes[0].db, "UPDATE t SET id = 99 WHERE id = 1");
    app(
        &nodes[1].db,
        "UPDATE k SET code = 'z', v = 3 WHERE code = 'x'",
    );
    assert_all(&nodes, "t", &["integer=2|text='b'", "integer=99|text='a'"]);
    assert_all(&nodes, "k", &["text='y'|integer=2", "text='z'|integer=3"]);

    // The moved row can be changed further on another node, and the old key reused.
    app(
        &nodes[2].db,
        "UPDATE t SET v = 'moved' WHERE id = 99; INSERT INTO t VALUES (1, 'new one')",
    );
    assert_all(
        &nodes,
        "t",
        &[
            "integer=1|text='new one'",
            "integer=2|text='b'",
            "integer=99|text='moved'",
        ],
    );
}

#[test]
fn composite_keys_and_without_rowid_tables() {
    let dir = TestDir::new("composite");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        "CREATE TABLE c(region TEXT, seq INTEGER, v, PRIMARY KEY (seq, region)); \
         CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID; \
         CREATE TABLE cw(a INTEGER, b BLOB, c TEXT, v, PRIMARY KEY (a, b, c)) WITHOUT ROWID",
        "",
    );
    let [n1, n2, n3] = [&nodes[0].db, &nodes[1].db, &nodes[2].db];
    app(n1, "INSERT INTO c VALUES ('eu', 1, 'a'), ('us', 1, 'b'), ('eu', 2, 'c'); \
             INSERT INTO w VALUES ('k1', 1), ('k2', 2.5); \
             INSERT INTO cw VALUES (1, x'01', 'x', 'first'), (1, x'02', 'x', 'second'), (2, x'01', 'x', 'third')");
    // node2 updates rows it must have received first.
    wait_dump(
        n2,
        "c",
        &[
            "text='eu'|integer=1|text='a'",
            "text='us'|integer=1|text='b'",
            "text='eu'|integer=2|text='c'",
        ],
        CONVERGE,
    );
    wait_dump(
        n2,
        "w",
        &["text='k1'|integer=1", "text='k2'|real=2.5"],
        CONVERGE,
    );
    wait_dump(
        n2,
        "cw",
        &[
            "integer=1|blob=X'01'|text='x'|text='first'",
            "integer=1|blob=X'02'|text='x'|text='second'",
            "integer=2|blob=X'01'|text='x'|text='third'",
        ],
        CONVERGE,
    );
    app(
        n2,
        "UPDATE c SET v = 'B' WHERE region = 'us' AND seq = 1; \
             UPDATE w SET v = x'ff' WHERE k = 'k2'; \
             UPDATE cw SET v = NULL WHERE a = 1 AND b = x'02'",
    );
    // Wait for node2's updates to reach node3 before node3 deletes, so the result is exact.
    // (c renders in declared column order region, seq, v; it is ordered by its key seq, region.)
    wait_dump(
        n3,
        "c",
        &[
            "text='eu'|integer=1|text='a'",
            "text='us'|integer=1|text='B'",
            "text='eu'|integer=2|text='c'",
        ],
        CONVERGE,
    );
    wait_dump(
        n3,
        "w",
        &["text='k1'|integer=1", "text='k2'|blob=X'FF'"],
        CONVERGE,
    );
    wait_dump(
        n3,
        "cw",
        &[
            "integer=1|blob=X'01'|text='x'|text='first'",
            "integer=1|blob=X'02'|text='x'|null=NULL",
            "integer=2|blob=X'01'|text='x'|text='third'",
        ],
        CONVERGE,
    );
    app(
        n3,
        "DELETE FROM c WHERE region = 'eu' AND seq = 1; \
             DELETE FROM w WHERE k = 'k1'; \
             DELETE FROM cw WHERE a = 1 AND b = x'01' AND c = 'x'; \
             UPDATE cw SET c = 'y' WHERE a = 2",
    );
    assert_all(
        &nodes,
        "c",
        &[
            "text='us'|integer=1|text='B'",
            "text='eu'|integer=2|text='c'",
        ],
    );
    assert_all(&nodes, "w", &["text='k2'|blob=X'FF'"]);
    assert_all(
        &nodes,
        "cw",
        &[
            "integer=1|blob=X'02'|text='x'|null=NULL",
            "integer=2|blob=X'01'|text='y'|text='third'",
        ],
    );
}

/// Node A replicates both ways, node B has `publish = false` (its writes stay local, it still
/// receives), node C has `replicate = false` (it publishes, it receives nothing).
#[test]
fn publish_false_and_replicate_false() {
    let dir = TestDir::new("switches");
    let nats = NatsServer::start(dir.path());
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";
    for n in ["a", "b", "c"] {
        app(&dir.join(&format!("{n}.db")), schema);
    }
    let url = nats.url();
    let a = Node::start_ready(dir.path(), "a", "", Some(&url));
    let b = Node::start_ready(dir.path(), "b", "publish = false", Some(&url));
    let c = Node::start_ready(dir.path(), "c", "replicate = false", Some(&url));

    // Written everywhere before any marker.
    app(&a.db, "INSERT INTO t VALUES (1, 'from a')");
    app(&b.db, "INSERT INTO t VALUES (2, 'from b (local only)')");
    app(&c.db, "INSERT INTO t VALUES (3, 'from c')");

    // C publishes: A and B receive row 3. B receives A's row 1.
    wait_query(
        &a.db,
        "SELECT v FROM t WHERE id = 3",
        "text='from c'",
        CONVERGE,
    );
    wait_query(
        &b.db,
        "SELECT v FROM t WHERE id = 3",
        "text='from c'",
        CONVERGE,
    );
    wait_query(
        &b.db,
        "SELECT v FROM t WHERE id = 1",
        "text='from a'",
        CONVERGE,
    );

    // Markers: two rounds A -> B prove B ran full ticks (capture and publish included) after
    // row 2 was committed; a marker from C, published after that, reaching A proves A consumed
    // the stream past anything B could have published.
    app(&a.db, "INSERT INTO t VALUES (100, 'marker 1')");
    wait_query(
        &b.db,
        "SELECT v FROM t WHERE id = 100",
        "text='marker 1'",
        CONVERGE,
    );
    app(&a.db, "INSERT INTO t VALUES (101, 'marker 2')");
    wait_query(
        &b.db,
        "SELECT v FROM t WHERE id = 101",
        "text='marker 2'",
        CONVERGE,
    );
    app(&c.db, "INSERT INTO t VALUES (102, 'marker 3')");
    wait_query(
        &a.db,
        "SELECT v FROM t WHERE id = 102",
        "text='marker 3'",
        CONVERGE,
    );
    wait_query(
        &b.db,
        "SELECT v FROM t WHERE id = 102",
        "text='marker 3'",
        CONVERGE,
    );

    assert_eq!(
        dump(&a.db, "t"),
        [
            "integer=1|text='from a'",
            "integer=3|text='from c'",
            "integer=100|text='marker 1'",
            "integer=101|text='marker 2'",
            "integer=102|text='marker 3'"
        ],
        "A received B's local-only row (publish = false leaked)"
    );
    assert_eq!(
        dump(&b.db, "t"),
        [
            "integer=1|text='from a'",
            "integer=2|text='from b (local only)'",
            "integer=3|text='from c'",
            "integer=100|text='marker 1'",
            "integer=101|text='marker 2'",
            "integer=102|text='marker 3'"
        ]
    );
    // C ran ticks after A's rows were in the stream (its marker 3 was published after A's
    // markers arrived at B) and still holds only its own rows.
    assert_eq!(
        dump(&c.db, "t"),
        ["integer=3|text='from c'", "integer=102|text='marker 3'"],
        "C received rows although replicate = false"
    );
    // An update on B stays local too; the value on A is unchanged after another marker.
    app(&b.db, "UPDATE t SET v = 'changed on b' WHERE id = 1");
    app(&a.db, "INSERT INTO t VALUES (103, 'marker 4')");
    wait_query(
        &b.db,
        "SELECT v FROM t WHERE id = 103",
        "text='marker 4'",
        CONVERGE,
    );
    app(&a.db, "INSERT INTO t VALUES (104, 'marker 5')");
    wait_query(
        &b.db,
        "SELECT v FROM t WHERE id = 104",
        "text='marker 5'",
        CONVERGE,
    );
    app(&c.db, "INSERT INTO t VALUES (105, 'marker 6')");
    wait_query(
        &a.db,
        "SELECT v FROM t WHERE id = 105",
        "text='marker 6'",
        CONVERGE,
    );
    assert_eq!(
        query_one(&a.db, "SELECT v FROM t WHERE id = 1").as_deref(),
        Some("text='from a'")
    );
    assert_eq!(
        query_one(&b.db, "SELECT v FROM t WHERE id = 1").as_deref(),
        Some("text='changed on b'")
    );
    drop(c);
}

/// The application's own triggers run for rows applied from other nodes (ours do not capture
/// them again): an FTS5 index kept by triggers, local to each node and never replicated, finds
/// rows written elsewhere, follows their updates and deletes, and passes its integrity check.
#[test]
fn application_triggers_keep_a_local_fts_index_of_replicated_rows() {
    let dir = TestDir::new("fts");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2"],
        "CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);
         CREATE VIRTUAL TABLE docs_fts USING fts5(body, content='docs', content_rowid='id');
         CREATE TRIGGER docs_ai AFTER INSERT ON docs BEGIN
             INSERT INTO docs_fts(rowid, body) VALUES (new.id, new.body); END;
         CREATE TRIGGER docs_ad AFTER DELETE ON docs BEGIN
             INSERT INTO docs_fts(docs_fts, rowid, body) VALUES ('delete', old.id, old.body); END;
         CREATE TRIGGER docs_au AFTER UPDATE ON docs BEGIN
             INSERT INTO docs_fts(docs_fts, rowid, body) VALUES ('delete', old.id, old.body);
             INSERT INTO docs_fts(rowid, body) VALUES (new.id, new.body); END;",
        "",
    );
    let (n1, n2) = (&nodes[0].db, &nodes[1].db);
    let search = |db: &Path, word: &str| -> Vec<String> {
        dump_query(
            db,
            &format!("SELECT rowid FROM docs_fts WHERE docs_fts MATCH '{word}' ORDER BY rowid"),
        )
    };

    app(
        n1,
        "INSERT INTO docs VALUES (1, 'red apple'), (2, 'green apple'), (3, 'red car')",
    );
    assert_all(
        &nodes,
        "docs",
        &[
            "integer=1|text='red apple'",
            "integer=2|text='green apple'",
            "integer=3|text='red car'",
        ],
    );
    assert_eq!(search(n2, "red"), vec!["integer=1", "integer=3"]);
    assert_eq!(search(n2, "apple"), vec!["integer=1", "integer=2"]);

    // an update and a delete made on n1 reach n2's index through its triggers
    app(
        n1,
        "UPDATE docs SET body = 'blue car' WHERE id = 3; DELETE FROM docs WHERE id = 2",
    );
    assert_all(
        &nodes,
        "docs",
        &["integer=1|text='red apple'", "integer=3|text='blue car'"],
    );
    assert_eq!(search(n2, "red"), vec!["integer=1"]);
    assert_eq!(search(n2, "blue"), vec!["integer=3"]);
    assert_eq!(search(n2, "green"), Vec::<String>::new());

    // and the other way: n2's own writes index locally and reach n1's index
    app(n2, "INSERT INTO docs VALUES (4, 'red bike')");
    assert_all(
        &nodes,
        "docs",
        &[
            "integer=1|text='red apple'",
            "integer=3|text='blue car'",
            "integer=4|text='red bike'",
        ],
    );
    for db in [n1, n2] {
        assert_eq!(
            search(db, "red"),
            vec!["integer=1", "integer=4"],
            "{}",
            db.display()
        );
        // FTS5 compares its index with the content table and fails on any difference
        app(
            db,
            "INSERT INTO docs_fts(docs_fts) VALUES ('integrity-check')",
        );
        // nothing of the index was captured: only docs changes are ever in a log
        let logs = dump_query(db, "SELECT name FROM sqlite_schema WHERE name LIKE '\\_\\_hl\\_log\\_%' ESCAPE '\\' ORDER BY name");
        assert_eq!(logs, vec!["text='__hl_log_docs'"], "{}", db.display());
    }
}

/// An application trigger that writes a replicated table (an `updated_at` stamp, an audit row)
/// runs on the node where the application wrote, and its effect travels as a change of its own.
/// Replicas must not run it again for applied rows: each would stamp its own time, or add an
/// audit row of its own, and keep it.
#[test]
fn application_trigger_writes_to_replicated_tables_are_not_repeated_on_replicas() {
    let dir = TestDir::new("touch");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2"],
        "CREATE TABLE whoami(name TEXT PRIMARY KEY);
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, updated_at TEXT);
         CREATE TABLE audit(what TEXT PRIMARY KEY);
         CREATE TRIGGER t_touch AFTER UPDATE OF v ON t BEGIN
             UPDATE t SET updated_at = 'stamped on ' || (SELECT name FROM whoami) WHERE id = new.id; END;
         CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN
             INSERT INTO audit VALUES ('insert ' || new.id || ' on ' || (SELECT name FROM whoami)); END;",
        "exclude_tables = [\"whoami\"]",
    );
    let (n1, n2) = (&nodes[0].db, &nodes[1].db);
    app(n1, "INSERT INTO whoami VALUES ('n1')");
    app(n2, "INSERT INTO whoami VALUES ('n2')");

    app(n1, "INSERT INTO t(id, v) VALUES (1, 'a')");
    app(n1, "UPDATE t SET v = 'b' WHERE id = 1");
    assert_all(&nodes, "t", &["integer=1|text='b'|text='stamped on n1'"]);
    app(n2, "UPDATE t SET v = 'c' WHERE id = 1");
    assert_all(&nodes, "t", &["integer=1|text='c'|text='stamped on n2'"]);
    app(n2, "INSERT INTO t(id, v) VALUES (2, 'd')");
    assert_all(
        &nodes,
        "t",
        &[
            "integer=1|text='c'|text='stamped on n2'",
            "integer=2|text='d'|null=NULL",
        ],
    );
    for db in [n1, n2] {
        assert_eq!(
            dump(db, "audit"),
            vec!["text='insert 1 on n1'", "text='insert 2 on n2'"],
            "{}",
            db.display()
        );
    }
}
