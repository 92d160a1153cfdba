//! What ORMs do to a SQLite database, on three nodes: each node runs the migration itself.
//! Django, Alembic (batch mode) and most others change a table by rebuilding it (create
//! `new__t`, copy, drop `t`, rename), which drops the capture triggers; the writes the
//! application makes before they are back must still travel.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// A parent table and a child that follows its deletes (`ON DELETE CASCADE`).
const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL, n INTEGER NOT NULL); \
     CREATE TABLE c(id INTEGER PRIMARY KEY, t_id INTEGER NOT NULL REFERENCES t(id) ON DELETE CASCADE, note TEXT);";

/// Django's AlterField(null=True) on SQLite: a rebuild with foreign keys off, in one transaction.
const REBUILD: &str = "PRAGMA foreign_keys = OFF; BEGIN; \
     CREATE TABLE new__t(id INTEGER PRIMARY KEY, v TEXT NOT NULL, n INTEGER); \
     INSERT INTO new__t(id, v, n) SELECT id, v, n FROM t; DROP TABLE t; ALTER TABLE new__t RENAME TO t; COMMIT; \
     PRAGMA foreign_keys = ON;";

/// Rows `from..=to` of t, each with one child.
fn seed(from: i64, to: i64) -> String {
    (from..=to)
        .map(|i| {
            format!(
                "INSERT INTO t VALUES ({i}, 'v{i}', {i}); INSERT INTO c VALUES ({}, {i}, 'c{i}');",
                1000 + i
            )
        })
        .collect()
}

/// The application right after the rebuild: 20 updates, 10 deletes (their children cascade),
/// 10 inserts, in the key block starting at `base` (rows base+1..base+40 exist before).
fn writes(base: i64) -> String {
    let mut s = String::from("PRAGMA foreign_keys = ON; ");
    for i in base + 1..=base + 20 {
        s += &format!("UPDATE t SET v = 'upd{i}', n = NULL WHERE id = {i}; ");
    }
    for i in base + 21..=base + 30 {
        s += &format!("DELETE FROM t WHERE id = {i}; ");
    }
    for i in base + 41..=base + 50 {
        s += &format!("INSERT OR IGNORE INTO t VALUES ({i}, 'new{i}', {i}); ");
    }
    s
}

/// What every node must hold after `writes(base)` for each base of `written` (the rest of
/// `blocks` only seeded).
fn expected(blocks: &[i64], written: &[i64]) -> (Vec<String>, Vec<String>) {
    let (mut t, mut c) = (Vec::new(), Vec::new());
    for &b in blocks {
        let w = written.contains(&b);
        for i in b + 1..=b + 50 {
            let row = match i - b {
                1..=20 if w => Some(format!("integer={i}|text='upd{i}'|null=NULL")),
                21..=30 if w => None,
                41..=50 if !w => None,
                41..=50 => Some(format!("integer={i}|text='new{i}'|integer={i}")),
                _ => Some(format!("integer={i}|text='v{i}'|integer={i}")),
            };
            if let Some(r) = row {
                t.push(r);
                if i - b <= 40 {
                    c.push(format!("integer={}|integer={i}|text='c{i}'", 1000 + i));
                }
            }
        }
    }
    c.sort_by_key(|r| r[8..r.find('|').unwrap()].parse::<i64>().unwrap());
    (t, c)
}

fn wait_identical(dbs: &[PathBuf], t: &[String], c: &[String]) {
    for db in dbs {
        wait_until_or(
            &format!("{} holds the expected rows of t and c", db.display()),
            T,
            || dump(db, "t") == t && dump(db, "c") == c,
            || format!("t: {:?}\nc: {:?}", dump(db, "t"), dump(db, "c")),
        );
    }
}

fn start(dir: &Path, nats: &NatsServer) -> Vec<Node> {
    start_cluster(dir, &nats.url(), &["n1", "n2", "n3"], SCHEMA, "")
}

/// Sidecar stopped: the app migrates, then writes; the node starts afterwards.
#[test]
fn writes_after_a_rebuild_made_while_the_sidecar_is_stopped_travel() {
    let dir = TestDir::new("migrations-stopped");
    let nats = NatsServer::start(dir.path());
    let mut nodes = start(dir.path(), &nats);
    let dbs: Vec<PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    app(&dbs[0], &seed(1, 40));
    let (t, c) = expected(&[0], &[]);
    wait_identical(&dbs, &t, &c);

    nodes[0].stop();
    app(&dbs[0], REBUILD);
    app(&dbs[0], &writes(0));
    // the other nodes migrate with their sidecars running and write nothing
    app(&dbs[1], REBUILD);
    app(&dbs[2], REBUILD);
    nodes[0].restart_ready();
    let (t, c) = expected(&[0], &[0]);
    assert_eq!(dump(&dbs[0], "c").len(), c.len(), "the cascade ran on n1");
    wait_identical(&dbs, &t, &c);
    nodes[0].wait_log(
        "queued existing rows for replication rows=40 inserts=10 updates=20 deletes=10",
        T,
    );
    // the pure rebuilds on n2 and n3 sent nothing
    for n in &nodes[1..] {
        assert!(
            !n.log().contains("capture resynced"),
            "{}: {}",
            n.name,
            n.log()
        );
    }
}

/// Sidecar running: each node's app migrates and writes in the same breath (well before the
/// node's next poll).
#[test]
fn writes_right_after_a_rebuild_made_while_the_sidecar_runs_travel() {
    let dir = TestDir::new("migrations-running");
    let nats = NatsServer::start(dir.path());
    let nodes = start(dir.path(), &nats);
    let dbs: Vec<PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    let blocks = [0, 100, 200];
    for (db, b) in dbs.iter().zip(blocks) {
        app(db, &seed(b + 1, b + 40));
    }
    let (t, c) = expected(&blocks, &[]);
    wait_identical(&dbs, &t, &c);

    for (db, b) in dbs.iter().zip(blocks) {
        app(db, &format!("{REBUILD} {}", writes(b)));
    }
    let (t, c) = expected(&blocks, &blocks);
    wait_identical(&dbs, &t, &c);
    // a node whose poll fell between the rebuild and the writes (a 1-ms window in 50) had its
    // triggers back in time; the others found the writes by the resync
    assert!(
        nodes
            .iter()
            .any(|n| n.log().contains("capture resynced table=t")),
        "no node resynced t"
    );
}

fn parked(cfg: &Path) -> String {
    let out = run_bin(&["status", "--config", cfg.to_str().unwrap(), "--json"], T);
    let s = String::from_utf8(out.stdout).unwrap();
    let at = s
        .find("\"parked_changes\":")
        .expect("parked_changes in status");
    s[at + 17..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .to_string()
}

/// Migration tools' bookkeeping stays on each node: replicated, it would tell the other nodes'
/// `migrate` that migrations were applied there when their tables lack the change.
#[test]
fn migration_bookkeeping_tables_are_not_replicated() {
    let dir = TestDir::new("migrations-bookkeeping");
    let nats = NatsServer::start(dir.path());
    let schema = format!(
        "{SCHEMA} CREATE TABLE alembic_version(version_num VARCHAR(32) NOT NULL PRIMARY KEY);"
    );
    let nodes = start_cluster(dir.path(), &nats.url(), &["n1", "n2"], &schema, "");
    let (n1, n2) = (&nodes[0], &nodes[1]);
    n1.wait_log(
        "migration bookkeeping tables are not replicated tables=alembic_version",
        T,
    );
    // Django's first `migrate`, with the node running: its table appears at run time
    app(
        &n1.db,
        "CREATE TABLE django_migrations(id INTEGER PRIMARY KEY AUTOINCREMENT, app VARCHAR(255) NOT NULL, name VARCHAR(255) NOT NULL, applied DATETIME NOT NULL); \
         INSERT INTO django_migrations(app, name, applied) VALUES ('shop', '0001_initial', '2025-01-01'); \
         INSERT INTO alembic_version VALUES ('ae1027a6acf'); INSERT INTO t VALUES (1, 'one', 1);",
    );
    n1.wait_log(
        "migration bookkeeping tables are not replicated tables=django_migrations",
        T,
    );
    wait_until("n2 has row 1 of t", T, || {
        dump(&n2.db, "t") == ["integer=1|text='one'|integer=1"]
    });
    app(&n2.db, "INSERT INTO t VALUES (2, 'two', 2)");
    wait_until("n1 has row 2 of t", T, || dump(&n1.db, "t").len() == 2);
    assert!(dump(&n2.db, "alembic_version").is_empty());
    assert!(dump(&n2.db, "django_migrations").is_empty());
    // nothing was sent for them: nothing is parked on n2
    assert_eq!(parked(&n2.config), "0");
    assert_eq!(
        n1.log()
            .matches("migration bookkeeping tables are not replicated")
            .count(),
        2,
        "{}",
        n1.log()
    );
}

/// A node that parks a stream of changes (another node is on a newer schema) says so once,
/// not once per frame: the first line, then at most one a minute with a count.
#[test]
fn the_parking_warning_does_not_flood_the_log() {
    let dir = TestDir::new("migrations-park-log");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(dir.path(), &nats.url(), &["n1", "n2"], SCHEMA, "");
    let (n1, n2) = (&nodes[0], &nodes[1]);
    app(&n1.db, "ALTER TABLE t ADD COLUMN extra TEXT");
    n1.wait_log("schema change adopted tables=t", T);
    const WRITES: usize = 30;
    for i in 1..=WRITES {
        // one process and one commit each: the node publishes them in many frames
        app(
            &n1.db,
            &format!("INSERT INTO t VALUES ({i}, 'v{i}', {i}, 'x')"),
        );
    }
    wait_until("n2 parks every change", T, || {
        parked(&n2.config) == WRITES.to_string()
    });
    let lines = n2
        .log()
        .lines()
        .filter(|l| l.contains("parking changes for table t"))
        .count();
    assert_eq!(lines, 1, "{}", n2.log());
}

/// A child whose parent is parked (its node lacks the parent's new column) waits with it:
/// `PRAGMA foreign_key_check` stays clean on the lagging node (Django's `migrate` checks it
/// after each migration), and once its schema catches up both nodes hold the same rows.
#[test]
fn children_of_parked_parents_wait_with_them() {
    let dir = TestDir::new("migrations-fk-park");
    let nats = NatsServer::start(dir.path());
    let nodes = start_cluster(dir.path(), &nats.url(), &["n1", "n2"], SCHEMA, "");
    let (n1, n2) = (&nodes[0], &nodes[1]);
    app(&n1.db, "INSERT INTO t VALUES (100, 'old', 100)");
    wait_until("n2 has row 100 of t", T, || dump(&n2.db, "t").len() == 1);
    app(&n1.db, "ALTER TABLE t ADD COLUMN extra TEXT");
    n1.wait_log("schema change adopted tables=t", T);
    // five parents with a child each; a child of the parent both nodes have; then parent 1
    // is deleted (its child goes by cascade); one transaction, so the capture sees parent 1
    // and its child only as deleted (autocommitted statements could be polled in between)
    let mut writes = String::from("PRAGMA foreign_keys = ON; BEGIN; ");
    for i in 1..=5 {
        writes += &format!(
            "INSERT INTO t VALUES ({i}, 'v{i}', {i}, 'x{i}'); INSERT INTO c VALUES ({}, {i}, 'c{i}'); ",
            1000 + i
        );
    }
    writes += "INSERT INTO c VALUES (1100, 100, 'c100'); DELETE FROM t WHERE id = 1; COMMIT;";
    app(&n1.db, &writes);
    // parents 2..5 and their children wait (8 changes); parent 1 and its child travel only as
    // deletes (the capture keeps a row's last state per commit), which need only the key
    wait_until_or(
        "n2 parks the parents and their children",
        T,
        || parked(&n2.config) == "8",
        || {
            format!(
                "parked: {}\n{}",
                parked(&n2.config),
                dump_query(
                    &n2.db,
                    "SELECT tbl, count(*), reason FROM __hl_parked GROUP BY tbl"
                )
                .join("\n")
            )
        },
    );
    assert_eq!(
        dump(&n2.db, "c"),
        ["integer=1100|integer=100|text='c100'"],
        "only the child of a parent n2 has is applied"
    );
    assert_eq!(
        dump_query(&n2.db, "PRAGMA foreign_key_check"),
        Vec::<String>::new()
    );
    app(&n2.db, "ALTER TABLE t ADD COLUMN extra TEXT");
    let t = dump(&n1.db, "t");
    let c = dump(&n1.db, "c");
    assert_eq!(t.len(), 5, "{t:?}");
    assert_eq!(c.len(), 5, "{c:?}");
    wait_dump(
        &n2.db,
        "t",
        &t.iter().map(String::as_str).collect::<Vec<_>>(),
        T,
    );
    wait_dump(
        &n2.db,
        "c",
        &c.iter().map(String::as_str).collect::<Vec<_>>(),
        T,
    );
    wait_until("n2 has nothing parked", T, || parked(&n2.config) == "0");
    for n in &nodes {
        assert_eq!(
            dump_query(&n.db, "PRAGMA foreign_key_check"),
            Vec::<String>::new(),
            "{}",
            n.name
        );
    }
}

/// Django's AlterField(max_length=100 -> 200) rebuilds the table with `varchar(200)`: SQLite
/// enforces no length, the values stay as they are, and the table goes on replicating.
#[test]
fn a_declared_type_with_the_same_affinity_does_not_pause() {
    let dir = TestDir::new("migrations-varchar");
    let nats = NatsServer::start(dir.path());
    let schema = "CREATE TABLE item(id INTEGER PRIMARY KEY, name varchar(100) NOT NULL, qty integer NOT NULL)";
    let nodes = start_cluster(dir.path(), &nats.url(), &["n1", "n2"], schema, "");
    let (n1, n2) = (&nodes[0], &nodes[1]);
    app(&n1.db, "INSERT INTO item VALUES (1, 'one', 1)");
    wait_until("n2 has item 1", T, || dump(&n2.db, "item").len() == 1);
    let alter = "PRAGMA foreign_keys = OFF; BEGIN; \
         CREATE TABLE new__item(id INTEGER PRIMARY KEY, name varchar(200) NOT NULL, qty bigint NOT NULL); \
         INSERT INTO new__item SELECT * FROM item; DROP TABLE item; ALTER TABLE new__item RENAME TO item; COMMIT;";
    app(&n1.db, alter);
    app(
        &n1.db,
        "UPDATE item SET name = 'ONE' WHERE id = 1; INSERT INTO item VALUES (2, 'two', 2)",
    );
    app(&n2.db, "INSERT INTO item VALUES (3, 'three', 3)");
    let rows = [
        "integer=1|text='ONE'|integer=1",
        "integer=2|text='two'|integer=2",
        "integer=3|text='three'|integer=3",
    ];
    for db in [&n1.db, &n2.db] {
        wait_dump(db, "item", &rows, T);
    }
    app(&n2.db, alter);
    app(&n2.db, "INSERT INTO item VALUES (4, 'four', 4)");
    wait_until("n1 has item 4", T, || dump(&n1.db, "item").len() == 4);
    for n in &nodes {
        assert!(!n.log().contains("paused"), "{}: {}", n.name, n.log());
        assert_eq!(parked(&n.config), "0", "{}", n.name);
    }
}

/// Django's AlterField on SQLite rebuilds the table with the altered column last. On a node
/// whose sidecar was stopped meanwhile, the same rows in another column order are no write:
/// re-sent with fresh versions they would win over what other nodes wrote in the meantime
/// (a deleted row would come back, an update would be undone).
#[test]
fn a_rebuild_that_moves_a_column_resends_nothing() {
    let dir = TestDir::new("migrations-reorder");
    let nats = NatsServer::start(dir.path());
    let schema = "CREATE TABLE item(id INTEGER PRIMARY KEY, code varchar(50) NOT NULL UNIQUE, name TEXT NOT NULL)";
    let mut nodes = start_cluster(dir.path(), &nats.url(), &["n1", "n2"], schema, "");
    let dbs: Vec<PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    app(
        &dbs[0],
        "INSERT INTO item VALUES (1, 'a', 'one'), (2, 'b', 'two'), (3, 'c', 'three')",
    );
    wait_until("n2 has the items", T, || dump(&dbs[1], "item").len() == 3);
    assert!(nodes[0].stop().success());
    app(
        &dbs[1],
        "DELETE FROM item WHERE id = 1; UPDATE item SET name = 'TWO' WHERE id = 2",
    );
    let alter = "PRAGMA foreign_keys = OFF; BEGIN; \
         CREATE TABLE new__item(id INTEGER PRIMARY KEY, name TEXT NOT NULL, code varchar(80) NOT NULL UNIQUE); \
         INSERT INTO new__item(id, name, code) SELECT id, name, code FROM item; DROP TABLE item; \
         ALTER TABLE new__item RENAME TO item; COMMIT;";
    app(&dbs[0], alter);
    nodes[0].restart_ready();
    app(&dbs[1], alter);
    let rows = [
        "integer=2|text='TWO'|text='b'",
        "integer=3|text='three'|text='c'",
    ];
    for db in &dbs {
        wait_dump(db, "item", &rows, T);
    }
    // and stays so: n1 re-sent nothing that could overwrite them later
    std::thread::sleep(Duration::from_secs(1));
    for (n, db) in nodes.iter().zip(&dbs) {
        assert_eq!(dump(db, "item"), rows, "{}", n.name);
        assert!(
            !n.log().contains("capture resynced"),
            "{}: {}",
            n.name,
            n.log()
        );
    }
}

/// Django's AddField(default=5) on SQLite: a rebuild with a NOT NULL column whose default lives
/// in Python only. Rows from nodes still on the old schema lack it: they apply with the
/// column's zero value on upgraded nodes instead of waiting forever, and after the rolling
/// upgrade every node holds the same rows.
#[test]
fn a_not_null_column_without_sql_default_does_not_park_older_nodes_writes() {
    let dir = TestDir::new("migrations-notnull");
    let nats = NatsServer::start(dir.path());
    let schema = "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT NOT NULL)";
    let nodes = start_cluster(dir.path(), &nats.url(), &["n1", "n2", "n3"], schema, "");
    let dbs: Vec<PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    app(&dbs[0], "INSERT INTO item VALUES (1, 'one'), (2, 'two')");
    for db in &dbs {
        wait_dump(
            db,
            "item",
            &["integer=1|text='one'", "integer=2|text='two'"],
            T,
        );
    }
    let add_field = "PRAGMA foreign_keys = OFF; BEGIN; \
         CREATE TABLE new__item(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty integer NOT NULL); \
         INSERT INTO new__item(id, name, qty) SELECT id, name, 5 FROM item; DROP TABLE item; \
         ALTER TABLE new__item RENAME TO item; COMMIT;";
    app(&dbs[0], add_field);
    // n2, still on the old schema, writes: n1 takes the rows with qty at 0
    app(
        &dbs[1],
        "INSERT INTO item VALUES (3, 'three'); UPDATE item SET name = 'ONE' WHERE id = 1",
    );
    wait_dump(
        &dbs[0],
        "item",
        &[
            "integer=1|text='ONE'|integer=0",
            "integer=2|text='two'|integer=5",
            "integer=3|text='three'|integer=0",
        ],
        T,
    );
    assert_eq!(parked(&nodes[0].config), "0");
    app(&dbs[1], add_field);
    app(&dbs[2], add_field);
    let rows = [
        "integer=1|text='ONE'|integer=5",
        "integer=2|text='two'|integer=5",
        "integer=3|text='three'|integer=5",
    ];
    for db in &dbs {
        wait_dump(db, "item", &rows, T);
    }
    for n in &nodes {
        wait_until(&format!("{} has nothing parked", n.name), T, || {
            parked(&n.config) == "0"
        });
    }
}

// ---------------------------------------------------------------------------------------------
// A real Django application

const DJANGO_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/django_app/run.py");

/// Where Django is installed (scripts/tools.sh exports it).
fn django_path() -> String {
    std::env::var("HL_DJANGO_PATH")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/django").to_string())
}

fn django(db: &Path, version: u8, args: &[&str]) -> std::process::Command {
    let mut c =
        std::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    c.arg(DJANGO_APP)
        .arg(db)
        .args(args)
        .env("PYTHONPATH", django_path())
        .env("SHOP_VERSION", version.to_string());
    c
}

/// `manage.py` of release `version`; its stdout.
fn manage(db: &Path, version: u8, args: &[&str]) -> String {
    let out = django(db, version, args).output().expect(
        "run python3 tests/django_app/run.py (is Django installed? source scripts/tools.sh)",
    );
    assert!(
        out.status.success(),
        "django {args:?} on {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Rows by id: `integer=ID|...` -> the whole rendered row.
type Rows = BTreeMap<i64, String>;

fn by_id(rows: Vec<String>) -> Rows {
    rows.into_iter()
        .map(|r| {
            let id = r
                .strip_prefix("integer=")
                .and_then(|s| s.split('|').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no integer id first in {r}"));
            (id, r)
        })
        .collect()
}

/// What differs between `want` and `have` (empty if nothing): rows missing, extra, or with
/// other values; at most 5 of each, with counts.
fn diff(want: &Rows, have: &Rows) -> String {
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    let mut differ = Vec::new();
    for (id, w) in want {
        match have.get(id) {
            None => missing.push(format!("  {w}")),
            Some(h) if h != w => differ.push(format!("  want {w}\n  have {h}")),
            Some(_) => {}
        }
    }
    for (id, h) in have {
        if !want.contains_key(id) {
            extra.push(format!("  {h}"));
        }
    }
    let mut s = String::new();
    for (what, v) in [
        ("missing", missing),
        ("extra", extra),
        ("with other values", differ),
    ] {
        if !v.is_empty() {
            s += &format!("{} rows {what}:\n", v.len());
            s += &v.iter().take(5).cloned().collect::<Vec<_>>().join("\n");
            s += "\n";
        }
    }
    s
}

/// The two models' rows in a node's key block, as tests/django_app/run.py renders them.
const ITEM_COLS: &str = "id, name, qty";
const ORDER_COLS: &str = "id, item_id, code, data, paid, updated";

fn block(db: &Path, table: &str, cols: &str, base: i64) -> Rows {
    by_id(dump_query(
        db,
        &format!(
            "SELECT {cols} FROM {table} WHERE id > {base} AND id < {} ORDER BY id",
            base + 10000
        ),
    ))
}

/// What a writer committed in its block: every item and order as it last wrote it.
struct Committed {
    items: Rows,
    orders: Rows,
}

impl Committed {
    /// What `db` holds of it (empty if everything is there).
    fn diff(&self, db: &Path, base: i64) -> String {
        let items = diff(&self.items, &block(db, "shop_item", ITEM_COLS, base));
        let orders = diff(&self.orders, &block(db, "shop_order", ORDER_COLS, base));
        let mut s = String::new();
        if !items.is_empty() {
            s += &format!("shop_item, block {base}:\n{items}");
        }
        if !orders.is_empty() {
            s += &format!("shop_order, block {base}:\n{orders}");
        }
        s
    }
}

/// The application's ORM writer on one node: creates, updates and deletes items and their
/// orders in its own id block (each model's ids base+1..base+9999) until told to stop, then
/// says what it committed.
struct Writer {
    child: std::process::Child,
    stop: PathBuf,
    out: PathBuf,
}

impl Writer {
    fn start(dir: &Path, db: &Path, base: i64, version: u8) -> Writer {
        let stop = dir.join(format!("writer-{base}-v{version}.stop"));
        let out = dir.join(format!("writer-{base}-v{version}.json"));
        let child = django(
            db,
            version,
            &[
                "write",
                &base.to_string(),
                stop.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
        )
        .stderr(std::fs::File::create(dir.join(format!("writer-{base}-v{version}.err"))).unwrap())
        .spawn()
        .expect("start the Django writer");
        Writer { child, stop, out }
    }

    /// Stops the writer; returns the rows of its block as it committed them.
    fn finish(mut self) -> Committed {
        std::fs::write(&self.stop, "").unwrap();
        let status = self.child.wait().unwrap();
        let err = std::fs::read_to_string(self.stop.with_extension("err")).unwrap_or_default();
        assert!(status.success(), "the Django writer failed: {err}");
        let text = std::fs::read_to_string(&self.out).unwrap();
        let mut m: BTreeMap<String, BTreeMap<String, String>> =
            serde_json::from_str(&text).unwrap();
        let mut rows = |model: &str| -> Rows {
            m.remove(model)
                .unwrap_or_else(|| panic!("no {model} in {text}"))
                .into_iter()
                .map(|(k, v)| (k.parse().unwrap(), v))
                .collect()
        };
        Committed {
            items: rows("items"),
            orders: rows("orders"),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Items and orders in a node's key block.
fn block_count(db: &Path, base: i64) -> i64 {
    query_one(
        db,
        &format!(
            "SELECT (SELECT count(*) FROM shop_item WHERE id > {base} AND id < {end}) + \
             (SELECT count(*) FROM shop_order WHERE id > {base} AND id < {end})",
            end = base + 10000
        ),
    )
    .and_then(|s| s.strip_prefix("integer=").map(|n| n.parse().unwrap()))
    .unwrap_or(0)
}

/// Three nodes run a Django 5.2 application (tests/django_app: `Item`, and `Order` with a
/// ForeignKey to it on_delete=CASCADE, a unique `code`, a JSONField with non-ASCII text, a
/// BooleanField and an auto_now DateTimeField) with an ORM writer each, in its own key block.
/// One node after the other stops its writer, runs `migrate` (0002: AddField Item.qty,
/// default=1, and AlterField Order.code max_length 50 -> 80: two table rebuilds, the first
/// leaving a NOT NULL column without a SQL default) and starts the new release's writer, while
/// the other nodes' writers go on; n1's sidecar is stopped while it migrates, the others' run.
/// Every node's `migrate` really migrates (its bookkeeping is its own) and passes Django's
/// foreign key check; right after it the node holds exactly what its old writer committed; at
/// the end every writer's committed items and orders are on every node with exact values and
/// nothing else in its block, all nodes hold the same rows, `PRAGMA foreign_key_check` is
/// clean and nothing is parked or paused.
#[test]
fn a_django_app_upgrades_one_node_at_a_time_with_writers_running() {
    let dir = TestDir::new("migrations-django");
    let nats = NatsServer::start(dir.path());
    let names = ["n1", "n2", "n3"];
    let dbs: Vec<PathBuf> = names.iter().map(|n| dir.join(&format!("{n}.db"))).collect();
    for db in &dbs {
        manage(db, 1, &["migrate", "0001"]);
    }
    let mut nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::start(dir.path(), n, "", Some(&nats.url())))
        .collect();
    for n in &mut nodes {
        n.wait_ready();
        assert!(
            n.log().contains(
                "migration bookkeeping tables are not replicated tables=django_migrations"
            ),
            "{}",
            n.log()
        );
    }
    let bases = [10000, 20000, 30000];
    let mut writers: Vec<Option<Writer>> = dbs
        .iter()
        .zip(bases)
        .map(|(db, b)| Some(Writer::start(dir.path(), db, b, 1)))
        .collect();
    let progress = |db: &Path, base: i64, at_least: i64| {
        wait_until(
            &format!(
                "{} holds {at_least} items and orders of block {base}",
                db.display()
            ),
            T,
            || block_count(db, base) >= at_least,
        )
    };
    for (db, b) in dbs.iter().zip(bases) {
        progress(db, b, 20);
    }
    for i in 0..3 {
        // the release upgrade on node i: stop the app, migrate, start the new release; n1's
        // sidecar is stopped during its migrate (the README's upgrade flow), the others' run
        let mut old = writers[i].take().unwrap().finish();
        if i == 0 {
            assert!(nodes[0].stop().success());
        }
        manage(&dbs[i], 2, &["migrate"]);
        if i == 0 {
            nodes[0].restart_ready();
        }
        assert_eq!(
            manage(&dbs[i], 2, &["applied"]),
            "shop.0001_initial\nshop.0002_item_qty\n",
            "{}",
            names[i]
        );
        // the node itself holds what its old release committed, qty 1 added by the migration
        for row in old.items.values_mut() {
            *row += "|integer=1";
        }
        let lost = old.diff(&dbs[i], bases[i]);
        assert!(
            lost.is_empty(),
            "{} after its migrate, against what its writer committed:\n{lost}",
            names[i]
        );
        writers[i] = Some(Writer::start(dir.path(), &dbs[i], bases[i], 2));
        // every node goes on receiving node i's new writes (parked on the nodes not yet migrated)
        let now = block_count(&dbs[i], bases[i]);
        progress(&dbs[i], bases[i], now + 20);
    }
    for (db, b) in dbs.iter().zip(bases) {
        let now = block_count(db, b);
        progress(db, b, now + 20);
    }
    let committed: Vec<Committed> = writers
        .iter_mut()
        .map(|w| w.take().unwrap().finish())
        .collect();
    for (c, b) in committed.iter().zip(bases) {
        assert!(
            !c.items.is_empty() && !c.orders.is_empty(),
            "block {b}: the writer left no items or no orders"
        );
        for db in &dbs {
            wait_until_or(
                &format!(
                    "{} holds what the writer of block {b} committed ({} items, {} orders)",
                    db.display(),
                    c.items.len(),
                    c.orders.len()
                ),
                T,
                || c.diff(db, b).is_empty(),
                || c.diff(db, b),
            );
        }
    }
    for table in ["shop_item", "shop_order"] {
        let differs = || {
            let first = by_id(dump(&dbs[0], table));
            dbs[1..]
                .iter()
                .map(|db| {
                    let d = diff(&first, &by_id(dump(db, table)));
                    if d.is_empty() {
                        d
                    } else {
                        format!("{} against {}:\n{d}", db.display(), dbs[0].display())
                    }
                })
                .collect::<String>()
        };
        wait_until_or(
            &format!("all nodes hold the same {table}"),
            T,
            || differs().is_empty(),
            differs,
        );
    }
    for n in &nodes {
        wait_until(&format!("{} has nothing parked", n.name), T, || {
            parked(&n.config) == "0"
        });
        assert!(!n.log().contains("is paused"), "{}: {}", n.name, n.log());
        assert_eq!(
            dump_query(&n.db, "PRAGMA foreign_key_check"),
            Vec::<String>::new(),
            "{}",
            n.name
        );
    }
}
