//! Rolling schema changes, the way a fleet upgrades: one node at a time, while the others keep
//! writing. Added columns and tables wait (parked) on nodes that lack them and arrive when each
//! node upgrades; a dropped or retyped column pauses its table until it is undone or accepted.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn status_json(cfg: &Path) -> String {
    let out = run_bin(
        &["status", "--config", cfg.to_str().unwrap(), "--json"],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn parked(cfg: &Path) -> String {
    let s = status_json(cfg);
    let at = s
        .find("\"parked_changes\":")
        .expect("parked_changes in status");
    s[at + 17..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .to_string()
}

/// The app's migration of this release: a column with a default, a new table, an index.
const MIGRATION: &str = "ALTER TABLE t ADD COLUMN qty INTEGER NOT NULL DEFAULT 0; \
     CREATE TABLE tags(id INTEGER PRIMARY KEY, t_id INTEGER, tag TEXT); CREATE INDEX t_v ON t(v);";

#[test]
fn three_nodes_upgrade_one_at_a_time_and_nothing_is_lost() {
    let dir = TestDir::new("schema-rolling");
    let nats = NatsServer::start(dir.path());
    let mut nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2", "n3"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "",
    );
    let dbs: Vec<std::path::PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    app(&dbs[0], "INSERT INTO t VALUES (1, 'one')");
    for db in &dbs {
        wait_dump(db, "t", &["integer=1|text='one'"], T);
    }

    // n1 upgrades the way a package upgrade does: stop, migrate, start
    nodes[0].stop();
    app(&dbs[0], MIGRATION);
    nodes[0].restart_ready();
    app(&dbs[0], "INSERT INTO t VALUES (2, 'two', 5); UPDATE t SET qty = 7 WHERE id = 1; INSERT INTO tags VALUES (1, 2, 'new')");
    // a node on the old schema keeps writing; its row gets the new column's default on n1
    app(&dbs[1], "INSERT INTO t VALUES (3, 'three')");
    wait_dump(
        &dbs[0],
        "t",
        &[
            "integer=1|text='one'|integer=7",
            "integer=2|text='two'|integer=5",
            "integer=3|text='three'|integer=0",
        ],
        T,
    );
    // the old nodes park what they cannot apply yet: 2 changes of t, 1 of tags
    for n in &nodes[1..] {
        wait_until(
            &format!("{} parks n1's 3 new-schema changes", n.name),
            T,
            || parked(&n.config) == "3",
        );
        assert_eq!(
            dump(&n.db, "t"),
            ["integer=1|text='one'", "integer=3|text='three'"],
            "{}",
            n.name
        );
    }
    let text = String::from_utf8(
        run_bin(
            &["status", "--config", nodes[1].config.to_str().unwrap()],
            T,
        )
        .stdout,
    )
    .unwrap();
    assert!(
        text.contains("parked:         t: 2 (column qty of table t does not exist here yet)"),
        "{text}"
    );
    assert!(
        text.contains("parked:         tags: 1 (table tags is not replicated here"),
        "{text}"
    );

    // n2 upgrades while its node runs: capture adapts without a restart, parked changes apply
    app(&dbs[1], MIGRATION);
    wait_dump(
        &dbs[1],
        "t",
        &[
            "integer=1|text='one'|integer=7",
            "integer=2|text='two'|integer=5",
            "integer=3|text='three'|integer=0",
        ],
        T,
    );
    wait_dump(&dbs[1], "tags", &["integer=1|integer=2|text='new'"], T);
    assert_eq!(parked(&nodes[1].config), "0");
    // written on an upgraded node: reaches n1 now, n3 only after its upgrade
    app(
        &dbs[1],
        "UPDATE t SET qty = qty + 1 WHERE id = 3; INSERT INTO tags VALUES (2, 3, 'from n2')",
    );
    wait_dump(
        &dbs[0],
        "t",
        &[
            "integer=1|text='one'|integer=7",
            "integer=2|text='two'|integer=5",
            "integer=3|text='three'|integer=1",
        ],
        T,
    );
    wait_until("n3 parks n2's new-schema changes too", T, || {
        parked(&nodes[2].config) == "5"
    });
    assert_eq!(
        dump(&dbs[2], "t"),
        ["integer=1|text='one'", "integer=3|text='three'"]
    );
    assert!(dump(&dbs[2], "tags").is_empty());

    // n3 upgrades last (stopped meanwhile: the parked changes are durable across a restart)
    nodes[2].stop();
    app(&dbs[2], MIGRATION);
    nodes[2].restart_ready();
    let t_rows = [
        "integer=1|text='one'|integer=7",
        "integer=2|text='two'|integer=5",
        "integer=3|text='three'|integer=1",
    ];
    let tag_rows = [
        "integer=1|integer=2|text='new'",
        "integer=2|integer=3|text='from n2'",
    ];
    for db in &dbs {
        wait_dump(db, "t", &t_rows, T);
        wait_dump(db, "tags", &tag_rows, T);
    }
    for n in &nodes {
        assert_eq!(parked(&n.config), "0", "{}", n.name);
    }
    // and the upgraded fleet goes on replicating both ways
    app(&dbs[2], "INSERT INTO t VALUES (4, 'four', 44)");
    for db in &dbs {
        wait_dump(
            db,
            "t",
            &[
                t_rows[0],
                t_rows[1],
                t_rows[2],
                "integer=4|text='four'|integer=44",
            ],
            T,
        );
    }
}

#[test]
fn a_dropped_column_pauses_its_table_until_accepted() {
    let dir = TestDir::new("schema-drop");
    let nats = NatsServer::start(dir.path());
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, extra TEXT); CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT)";
    let mut nodes = start_cluster(dir.path(), &nats.url(), &["n1", "n2"], schema, "");
    // n1 answers /health, which must name a paused table
    let health = free_port();
    let extra = format!("[health_check]\nenable = true\nbind = \"127.0.0.1:{health}\"\n");
    nodes[0].stop();
    std::fs::write(
        &nodes[0].config,
        node_toml(&nodes[0].db, &extra, Some(&nats.url())),
    )
    .unwrap();
    nodes[0].restart_ready();
    let (n1, n2) = (&nodes[0], &nodes[1]);
    wait_until("n1 is healthy", T, || {
        matches!(http_get(health, "/health"), Some((200, _)))
    });
    app(&n1.db, "INSERT INTO t VALUES (1, 'one', 'x1')");
    wait_dump(&n2.db, "t", &["integer=1|text='one'|text='x1'"], T);

    app(&n1.db, "ALTER TABLE t DROP COLUMN extra");
    n1.wait_log("table t is paused: column extra was dropped", T);
    let s = status_json(&n1.config);
    assert!(
        s.contains("\"paused_tables\":[{\"table\":\"t\",\"reason\":\"column extra was dropped\"}]"),
        "{s}"
    );
    let text =
        String::from_utf8(run_bin(&["status", "--config", n1.config.to_str().unwrap()], T).stdout)
            .unwrap();
    assert!(
        text.contains("PAUSED:           t: column extra was dropped"),
        "{text}"
    );
    let (code, body) = http_get(health, "/health").expect("n1 answers /health");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(
            "table t is paused: column extra was dropped (see harmonylite schema accept)"
        ),
        "{body}"
    );

    // while paused: t's local changes are held, other nodes' changes to t are parked, and the
    // other tables go on replicating both ways
    app(
        &n1.db,
        "INSERT INTO t VALUES (5, 'five'); INSERT INTO u VALUES (1, 'u from n1')",
    );
    app(
        &n2.db,
        "INSERT INTO t VALUES (6, 'six', 'x6'); INSERT INTO u VALUES (2, 'u from n2')",
    );
    let u_rows = ["integer=1|text='u from n1'", "integer=2|text='u from n2'"];
    wait_dump(&n2.db, "u", &u_rows, T);
    wait_dump(&n1.db, "u", &u_rows, T);
    wait_until("n1 parks n2's change to the paused table", T, || {
        parked(&n1.config) == "1"
    });
    // row 5 was committed before u's row 1, which n2 already has: held, not late
    assert_eq!(
        dump(&n2.db, "t"),
        [
            "integer=1|text='one'|text='x1'",
            "integer=6|text='six'|text='x6'"
        ]
    );
    assert_eq!(
        dump(&n1.db, "t"),
        ["integer=1|text='one'", "integer=5|text='five'"]
    );
    assert!(status_json(&n1.config).contains("\"outbox_changes\":1"));

    // the way out: accept the new definition (the node runs on); errors name what is wrong
    let cfg = n1.config.to_str().unwrap();
    let bad = run_bin(&["schema", "accept", "nosuch", "--config", cfg], T);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("table nosuch is not replicated here"));
    let ok = run_bin(&["schema", "accept", "t", "--config", cfg], T);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout)
        .contains("accepted its new definition (column extra was dropped)"));
    n1.wait_log("table t resumed", T);
    wait_until("n1 is healthy again", T, || {
        matches!(http_get(health, "/health"), Some((200, _)))
    });

    // held and parked changes flow: n2 gets row 5 (the dropped column at its default), n1 gets
    // row 6 (the value of the dropped column ignored)
    wait_dump(
        &n2.db,
        "t",
        &[
            "integer=1|text='one'|text='x1'",
            "integer=5|text='five'|null=NULL",
            "integer=6|text='six'|text='x6'",
        ],
        T,
    );
    wait_dump(
        &n1.db,
        "t",
        &[
            "integer=1|text='one'",
            "integer=5|text='five'",
            "integer=6|text='six'",
        ],
        T,
    );
    wait_until("n1 has nothing parked or held", T, || {
        let s = status_json(&n1.config);
        s.contains("\"parked_changes\":0")
            && s.contains("\"outbox_changes\":0")
            && s.contains("\"paused_tables\":[]")
    });
    let again = run_bin(&["schema", "accept", "t", "--config", cfg], T);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("table t is not paused"));
    // n2 drops the column too (rolling): it pauses, is accepted, and both converge
    app(&n2.db, "ALTER TABLE t DROP COLUMN extra");
    n2.wait_log("table t is paused: column extra was dropped", T);
    assert!(run_bin(
        &[
            "schema",
            "accept",
            "t",
            "--config",
            n2.config.to_str().unwrap()
        ],
        T
    )
    .status
    .success());
    app(&n2.db, "UPDATE t SET v = 'SIX' WHERE id = 6");
    wait_dump(
        &n1.db,
        "t",
        &[
            "integer=1|text='one'",
            "integer=5|text='five'",
            "integer=6|text='SIX'",
        ],
        T,
    );
}

#[test]
fn a_retyped_column_pauses_and_undoing_it_resumes() {
    let dir = TestDir::new("schema-retype");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(
        dir.path(),
        &nats.url(),
        &["n1", "n2"],
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "",
    );
    let (n1, n2) = (&nodes[0], &nodes[1]);
    // the app rebuilds the table with another type (SQLite's way to change a column's type)
    let rebuild = |ty: &str| {
        format!(
            "BEGIN; CREATE TABLE t_new(id INTEGER PRIMARY KEY, v {ty}); INSERT INTO t_new SELECT * FROM t; \
             DROP TABLE t; ALTER TABLE t_new RENAME TO t; COMMIT;"
        )
    };
    app(&n1.db, &rebuild("INTEGER"));
    n1.wait_log(
        "table t is paused: column v changed type from \"TEXT\" to \"INTEGER\"",
        T,
    );
    app(&n1.db, "INSERT INTO t VALUES (1, 10)");
    app(&n2.db, "INSERT INTO t VALUES (2, 'two')");
    wait_until("n1 parks n2's change", T, || parked(&n1.config) == "1");
    assert!(dump(&n2.db, "t") == ["integer=2|text='two'"]);
    // undone: the table resumes by itself and both changes flow
    app(&n1.db, &rebuild("TEXT"));
    n1.wait_log("table t resumed", T);
    for db in [&n1.db, &n2.db] {
        wait_dump(db, "t", &["integer=1|text='10'", "integer=2|text='two'"], T);
    }
}
