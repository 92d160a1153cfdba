//! `harmonylite cleanup`: after a real node ran, replicated to a second node and stopped, the
//! database holds exactly what the application alone would have (same schema, same values,
//! same storage classes), nothing of ours is left, the application keeps writing, and a node
//! started again installs capture afresh.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A rowid table with every storage class, a WITHOUT ROWID table, a table without a primary
/// key (never replicated), an index, a view, a trigger of the application's own and a
/// user_version: all of it must come out of cleanup untouched.
const SCHEMA: &str = "
    CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, data BLOB, note);
    CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
    CREATE TABLE events(at INTEGER, what TEXT);
    CREATE INDEX items_by_name ON items(name);
    CREATE VIEW cheap AS SELECT id, name, price FROM items WHERE price < 10;
    CREATE TRIGGER items_audit AFTER UPDATE OF price ON items
        BEGIN INSERT INTO events VALUES (NEW.id, 'price ' || NEW.name); END;
    PRAGMA user_version = 7;";

/// Before any node ran (queued by the first start).
const BEFORE_NODE: &str = "
    INSERT INTO items VALUES (1, 'apple', 1.5, x'00ff', NULL), (2, 'pear', -0.0, NULL, 42),
        (3, 'fig é', 1e308, x'', 'it''s');
    INSERT INTO kv VALUES ('a', 1), ('b', 2.25), ('c', 'text'), ('d', x'01'), ('e', NULL);
    INSERT INTO events VALUES (0, 'boot');";

/// While the node runs (replicated to n2).
const WHILE_RUNNING: &str = "
    UPDATE items SET price = 2.5 WHERE id = 1;
    INSERT INTO items VALUES (4, 'plum', 0.1, x'deadbeef', 9223372036854775807);
    DELETE FROM kv WHERE k = 'b';
    INSERT INTO kv VALUES ('f', -9223372036854775808);
    INSERT INTO events VALUES (1, 'two' || char(10) || 'lines');";

/// While the node is stopped: captured, never published (3 change-log rows).
const WHILE_STOPPED: &str = "
    INSERT INTO items VALUES (5, 'kiwi', 3.0, NULL, 'late');
    UPDATE items SET price = 4.0 WHERE id = 4;
    INSERT INTO kv VALUES ('g', 'offline');";

/// After cleanup: the application writes on, with nothing of ours in the way.
const AFTER_CLEANUP: &str = "
    INSERT INTO items VALUES (6, 'lime', 0.5, NULL, NULL);
    UPDATE items SET price = 0.75 WHERE id = 1;
    UPDATE kv SET v = 'changed' WHERE k = 'a';
    DELETE FROM items WHERE id = 2;";

const APP_TABLES: [&str; 3] = ["items", "kv", "events"];

/// Every schema row that is not ours, without `rootpage` (it depends on what else the file held).
fn app_schema(db: &Path) -> Vec<String> {
    dump_query(db, "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT GLOB '__hl_*' ORDER BY type, name")
}

fn ours(db: &Path) -> Vec<String> {
    dump_query(
        db,
        "SELECT type, name FROM sqlite_schema WHERE name GLOB '__hl_*' ORDER BY type, name",
    )
}

/// Schema, content of every table and of the view, user_version: what the application sees.
fn app_state(db: &Path) -> Vec<String> {
    let mut out = app_schema(db);
    for t in APP_TABLES {
        out.extend(dump(db, t).into_iter().map(|l| format!("{t}: {l}")));
    }
    out.extend(
        dump_query(db, "SELECT * FROM cheap ORDER BY id")
            .into_iter()
            .map(|l| format!("cheap: {l}")),
    );
    out.extend(dump_query(db, "PRAGMA user_version"));
    out
}

fn cleanup(cfg: &Path, force: bool) -> std::process::Output {
    let mut args = vec!["cleanup", "--config", cfg.to_str().unwrap()];
    if force {
        args.push("--force");
    }
    run_bin(&args, CMD_TIMEOUT)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn cleanup_leaves_exactly_the_application_database() {
    let dir = TestDir::new("cleanup");
    let nats = NatsServer::start(dir.path());
    // the reference: the same application writes on a database that never saw HarmonyLite
    let plain = dir.join("plain.db");
    for db in [&plain, &dir.join("n1.db"), &dir.join("n2.db")] {
        app(db, SCHEMA);
    }
    let recorded_schema = app_schema(&plain);
    assert_eq!(app_schema(&dir.join("n1.db")), recorded_schema);
    let both = |sql: &str| {
        app(&dir.join("n1.db"), sql);
        app(&plain, sql);
    };
    both(BEFORE_NODE);

    // fixed node ids: the restarted n1 must recognise its own frames in the stream
    let mut n1 = Node::start_ready(dir.path(), "n1", "node_id = 11", Some(&nats.url()));
    let _n2 = Node::start_ready(dir.path(), "n2", "node_id = 12", Some(&nats.url()));
    both(WHILE_RUNNING);
    wait_converged(
        &[&n1.db, &dir.join("n2.db")],
        &["items", "kv"],
        REPLICATION_TIMEOUT,
    );
    assert!(!ours(&n1.db).is_empty());

    // refused while the node runs, and nothing touched
    let before = ours(&n1.db);
    let out = cleanup(&n1.config, true);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("a harmonylite node is running on") && err.contains("n1.db.hl-lock"),
        "{err}"
    );
    assert_eq!(ours(&n1.db), before);

    // stopped, with writes it never saw: refused without --force, naming how many
    assert!(n1.stop().success());
    both(WHILE_STOPPED);
    let pending: i64 = [
        "SELECT count(*) FROM __hl_log_items",
        "SELECT count(*) FROM __hl_log_kv",
        "SELECT count(*) FROM __hl_ver_items WHERE pending = 1",
        "SELECT count(*) FROM __hl_ver_kv WHERE pending = 1",
    ]
    .iter()
    .map(|q| {
        query_one(&n1.db, q)
            .unwrap()
            .trim_start_matches("integer=")
            .parse::<i64>()
            .unwrap()
    })
    .sum();
    assert!(
        pending >= 3,
        "three changes were written while the node was stopped, counted {pending}"
    );
    let out = cleanup(&n1.config, false);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("holds {pending} unpublished local change(s)"))
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(ours(&n1.db), before);

    // leftovers of an interrupted snapshot download
    let leftovers = [
        dir.join("n1.db.hl-snapshot-download"),
        dir.join("n1.db.hl-snapshot-download.state"),
    ];
    for f in &leftovers {
        std::fs::write(f, b"partial").unwrap();
    }
    let lock = dir.join("n1.db.hl-lock");
    assert!(lock.exists(), "the node left its lock file");

    let out = cleanup(&n1.config, true);
    let report = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {report}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(
        report.contains(": 6 triggers, 8 tables, 5 indexes (replication of: items, kv)\n"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "discarded {pending} unpublished local change(s) (--force)"
        )),
        "{report}"
    );
    for f in leftovers.iter().chain([&lock]) {
        assert!(
            report.contains(&format!("removed file {}\n", f.display())),
            "{report}"
        );
        assert!(!f.exists(), "{} still exists", f.display());
    }
    assert!(report.contains("stays in WAL mode"), "{report}");

    // nothing of ours, the application's schema and content exactly as without HarmonyLite
    assert_eq!(ours(&n1.db), Vec::<String>::new());
    assert_eq!(app_schema(&n1.db), recorded_schema);
    assert_eq!(app_state(&n1.db), app_state(&plain));
    assert_eq!(
        query_one(&n1.db, "PRAGMA integrity_check").as_deref(),
        Some("text='ok'")
    );
    assert_eq!(
        query_one(&n1.db, "PRAGMA journal_mode").as_deref(),
        Some("text='wal'"),
        "WAL mode stays"
    );

    // the application writes on (its trigger fires, ours are gone)
    both(AFTER_CLEANUP);
    assert_eq!(app_state(&n1.db), app_state(&plain));
    assert_eq!(
        dump(&n1.db, "events").len(),
        5,
        "{:#?}",
        dump(&n1.db, "events")
    );

    // a node started again installs capture afresh and queues every row (5 items, 6 kv)
    n1.restart_ready();
    assert!(
        n1.current_log()
            .contains("queued existing rows for replication rows=11"),
        "{}",
        n1.current_log()
    );
    let triggers = dump_query(&n1.db, "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name GLOB '__hl_*' ORDER BY name");
    assert_eq!(triggers.len(), 6, "{triggers:?}");
    app(
        &n1.db,
        "INSERT INTO items VALUES (7, 'quince', 7.0, NULL, 'after reinstall')",
    );
    // n2 gets every row n1 has, the ones written while it was stopped or removed included.
    // Item 2 stays on n2: it was deleted while HarmonyLite was removed, and no delete was captured.
    let n2 = dir.join("n2.db");
    let rows = "SELECT * FROM items WHERE id <> 2 ORDER BY id";
    wait_until_or(
        "n2 holds n1's rows after the reinstall",
        REPLICATION_TIMEOUT,
        || {
            dump_query(&n2, rows) == dump_query(&n1.db, rows)
                && dump(&n2, "kv") == dump(&n1.db, "kv")
        },
        || {
            format!(
                "n1: {:#?}\nn2: {:#?}",
                dump(&n1.db, "items"),
                dump(&n2, "items")
            )
        },
    );
    assert_eq!(dump(&n1.db, "items").len(), 6);
    assert_eq!(
        query_one(&n2, "SELECT name FROM items WHERE id = 2").as_deref(),
        Some("text='pear'")
    );
    assert!(n1.stop().success());
}

#[test]
fn cleanup_usage_and_config_errors() {
    let dir = TestDir::new("cleanup-usage");
    let out = run_bin(&["cleanup"], CMD_TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("missing --config PATH"),
        "{}",
        text(&out.stderr)
    );
    let out = run_bin(&["cleanup", "--config", "x.toml", "--json"], CMD_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "--json belongs to status");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "db_path = 3\n").unwrap();
    let out = cleanup(&bad, false);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("db_path"),
        "{}",
        text(&out.stderr)
    );

    let missing = dir.join("missing.toml");
    std::fs::write(
        &missing,
        node_toml(&dir.join("nope.db"), "", Some("nats://127.0.0.1:1")),
    )
    .unwrap();
    let out = cleanup(&missing, false);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nope.db"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.join("nope.db.hl-lock").exists());

    // a database HarmonyLite never touched: nothing removed, nothing created, journal unchanged
    let db = dir.join("plain.db");
    app(&db, SCHEMA);
    app(&db, BEFORE_NODE);
    let state = app_state(&db);
    let cfg = dir.join("plain.toml");
    std::fs::write(&cfg, node_toml(&db, "", Some("nats://127.0.0.1:1"))).unwrap();
    let out = cleanup(&cfg, false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("nothing to remove in "),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&out.stdout).contains("WAL"), "{}", text(&out.stdout));
    assert_eq!(app_state(&db), state);
    assert_eq!(
        query_one(&db, "PRAGMA journal_mode").as_deref(),
        Some("text='delete'")
    );
    assert!(!dir.join("plain.db.hl-lock").exists());
}
