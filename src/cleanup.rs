//! `harmonylite cleanup`: removes everything HarmonyLite added to a database, leaving the
//! application's tables, data, indexes, views and triggers as they were.
//!
//! What goes: every trigger, index and table whose name starts with `__hl_` (capture triggers,
//! change logs, version tables and their index, our state, parked changes, fragments, a
//! snapshot's marker), dropped in one transaction, triggers first so no application write ever
//! meets a trigger whose log table is gone; then the files next to the database
//! (`<db>.hl-lock`, leftover `<db>.hl-snapshot-*`).
//!
//! What stays: the journal mode (WAL; going back is the application's choice) and the embedded
//! nats-server's store (the stream may serve other nodes).
//!
//! Two refusals protect data: while a node runs on the database (it holds the lock file, and
//! cleanup holds that lock itself while it works, so no node starts in between), and while
//! local changes have not been published yet, unless `force` says to discard them.

use std::fmt::{self, Write as _};
use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::db::{self, quote, Context, DbError};
use crate::state::{self, lock_path, LockError};

/// Names of everything HarmonyLite creates in a database start with this.
pub const PREFIX: &str = "__hl_";

#[derive(Debug)]
pub enum CleanupError {
    Db(DbError),
    /// A node process holds the database's lock file.
    Running {
        db: PathBuf,
        lock: PathBuf,
    },
    /// Local changes that never reached the stream would be lost.
    Unpublished {
        db: PathBuf,
        changes: u64,
    },
    /// The lock file cannot be created or locked.
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for CleanupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CleanupError::Db(e) => e.fmt(f),
            CleanupError::Running { db, lock } => write!(
                f,
                "a harmonylite node is running on {} (it holds {}); stop it first, then run cleanup again",
                db.display(),
                lock.display()
            ),
            CleanupError::Unpublished { db, changes } => write!(
                f,
                "{} holds {changes} unpublished local change(s) that no other node has; cleanup would discard them. \
                 Start the node until `harmonylite status` shows an empty outbox, or run cleanup with --force to discard them",
                db.display()
            ),
            CleanupError::Lock { path, source } => write!(f, "cannot lock {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for CleanupError {}

impl From<DbError> for CleanupError {
    fn from(e: DbError) -> Self {
        CleanupError::Db(e)
    }
}

/// What cleanup did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub db: PathBuf,
    pub triggers: Vec<String>,
    pub indexes: Vec<String>,
    pub tables: Vec<String>,
    /// Unpublished local changes (outbox rows plus change-log rows) that were dropped.
    pub discarded: u64,
    pub files: Vec<PathBuf>,
    /// Files that could not be removed, with the reason.
    pub not_removed: Vec<String>,
    /// `PRAGMA journal_mode` after cleanup (left as it was).
    pub journal_mode: String,
    /// The embedded nats-server's store next to the database, left alone.
    pub nats_store: Option<PathBuf>,
}

impl Report {
    /// The application tables HarmonyLite replicated (those that had a version table).
    pub fn replicated(&self) -> Vec<&str> {
        self.tables
            .iter()
            .filter_map(|t| t.strip_prefix("__hl_ver_"))
            .collect()
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let db = self.db.display();
        // writing into a String cannot fail
        if self.triggers.is_empty() && self.indexes.is_empty() && self.tables.is_empty() {
            let _ = writeln!(
                s,
                "nothing to remove in {db}: it has no HarmonyLite triggers, tables or indexes"
            );
        } else {
            let _ = writeln!(
                s,
                "removed from {db}: {} triggers, {} tables, {} indexes (replication of: {})",
                self.triggers.len(),
                self.tables.len(),
                self.indexes.len(),
                if self.replicated().is_empty() {
                    "no table".to_string()
                } else {
                    self.replicated().join(", ")
                }
            );
        }
        if self.discarded > 0 {
            let _ = writeln!(
                s,
                "discarded {} unpublished local change(s) (--force)",
                self.discarded
            );
        }
        for f in &self.files {
            let _ = writeln!(s, "removed file {}", f.display());
        }
        for f in &self.not_removed {
            let _ = writeln!(s, "could not remove {f}");
        }
        if self.journal_mode.eq_ignore_ascii_case("wal") {
            let _ = writeln!(
                s,
                "the database stays in WAL mode (a property of the file); to go back, run \
                 `PRAGMA journal_mode=DELETE` on it while no other connection has it open"
            );
        }
        if let Some(store) = &self.nats_store {
            let _ = writeln!(
                s,
                "left alone: {} (the embedded nats-server's store; remove it once no node uses that server)",
                store.display()
            );
        }
        s
    }
}

/// Holds the node lock while cleanup works. Removes the lock file on drop when `remove` is
/// set (cleanup succeeded) or when cleanup created the file itself (nothing left behind by a
/// refusal).
struct Held {
    path: PathBuf,
    _file: File,
    remove: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.remove {
            // still locked while it is unlinked: no node can take it in between
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn take_lock(db_path: &Path) -> Result<Held, CleanupError> {
    let existed = lock_path(db_path).exists();
    match state::lock(db_path) {
        Ok(file) => Ok(Held {
            path: lock_path(db_path),
            _file: file,
            remove: !existed,
        }),
        Err(LockError::Open { path, source }) => Err(CleanupError::Lock { path, source }),
        Err(LockError::Held { path }) => Err(CleanupError::Running {
            db: db_path.to_path_buf(),
            lock: path,
        }),
        Err(LockError::Lock { path, source }) => {
            if !existed {
                let _ = std::fs::remove_file(&path);
            }
            Err(CleanupError::Lock { path, source })
        }
    }
}

/// Our objects in the database, by type, in the order they must be dropped.
fn ours(conn: &Connection, kind: &str) -> Result<Vec<String>, DbError> {
    // GLOB, not LIKE: `_` is a wildcard for LIKE
    let mut st = conn
        .prepare("SELECT name FROM main.sqlite_schema WHERE type = ?1 AND name GLOB '__hl_*' ORDER BY name")
        .ctx("read schema")?;
    let names = st
        .query_map([kind], |r| r.get::<_, String>(0))
        .and_then(|r| r.collect())
        .ctx("read schema")?;
    Ok(names)
}

/// Local changes no other node has: outbox rows (`pending > 0`) plus change-log rows (written by
/// the triggers, not stamped yet). A row changed both before and after the last stamp counts
/// twice: this is an upper bound, like the outbox figure of `status`.
pub fn unpublished(conn: &Connection) -> Result<u64, DbError> {
    let mut n = 0u64;
    for t in ours(conn, "table")? {
        let sql = if t.starts_with("__hl_ver_") {
            format!("SELECT count(*) FROM {} WHERE pending > 0", quote(&t))
        } else if t.starts_with("__hl_log_") {
            format!("SELECT count(*) FROM {}", quote(&t))
        } else {
            continue;
        };
        n += conn
            .query_row(&sql, [], |r| r.get::<_, i64>(0))
            .ctx("count unpublished changes")? as u64;
    }
    Ok(n)
}

/// Drops every `__hl_*` trigger, index and table of `conn` in one transaction. Refuses when
/// unpublished local changes exist, unless `force`. Returns what was dropped (no files yet).
pub fn drop_all(
    conn: &mut Connection,
    db_path: &Path,
    force: bool,
) -> Result<Report, CleanupError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("begin cleanup")?;
    let pending = unpublished(&tx)?;
    if pending > 0 && !force {
        return Err(CleanupError::Unpublished {
            db: db_path.to_path_buf(),
            changes: pending,
        });
    }
    let report = Report {
        db: db_path.to_path_buf(),
        triggers: ours(&tx, "trigger")?,
        indexes: ours(&tx, "index")?,
        tables: ours(&tx, "table")?,
        discarded: pending,
        ..Default::default()
    };
    // Triggers first: an application write between two statements cannot happen (we hold the
    // write lock), but the order also keeps every intermediate schema valid.
    let mut sql = String::new();
    for (kind, names) in [
        ("TRIGGER", &report.triggers),
        ("INDEX", &report.indexes),
        ("TABLE", &report.tables),
    ] {
        for n in names {
            let _ = write!(sql, "DROP {kind} IF EXISTS main.{};", quote(n));
        }
    }
    tx.execute_batch(&sql).ctx("drop HarmonyLite objects")?;
    tx.commit().ctx("commit cleanup")?;
    Ok(report)
}

/// Leftover `<db>.hl-snapshot-*` files (an interrupted download or save).
fn snapshot_leftovers(db_path: &Path) -> Vec<PathBuf> {
    let Some(name) = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return Vec::new();
    };
    let prefix = format!("{name}.hl-snapshot-");
    let dir = match db_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Removes HarmonyLite from the database at `db_path` (see the module doc).
pub fn run(db_path: &Path, force: bool) -> Result<Report, CleanupError> {
    if !db_path.exists() {
        return Err(DbError::Missing(db_path.to_path_buf()).into());
    }
    let mut lock = take_lock(db_path)?;
    // Not db::open: that switches to WAL and creates our state table.
    let mut conn = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| DbError::Open {
        path: db_path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(db::BUSY_TIMEOUT)
        .ctx("set busy timeout")?;
    let mut report = drop_all(&mut conn, db_path, force)?;
    report.journal_mode = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .ctx("read journal mode")?;
    drop(conn);
    for f in snapshot_leftovers(db_path) {
        match std::fs::remove_file(&f) {
            Ok(()) => report.files.push(f),
            Err(e) => report.not_removed.push(format!("{}: {e}", f.display())),
        }
    }
    if !lock.remove {
        // it was there before we came: it is ours to remove (the drop unlinks it while locked)
        report.files.push(lock.path.clone());
    }
    lock.remove = true;
    drop(lock);
    let name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let store = db_path.with_file_name(format!("{name}-nats"));
    report.nats_store = store.is_dir().then_some(store);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    struct Tmp(PathBuf);

    impl Tmp {
        fn new(label: &str) -> Tmp {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let p = std::env::temp_dir().join(format!(
                "hl-unit-cleanup-{label}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const APP: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
        CREATE TABLE w(a TEXT, b INT, c, PRIMARY KEY(a, b)) WITHOUT ROWID;
        CREATE TABLE nokey(x, y);
        CREATE INDEX t_v ON t(v);
        CREATE VIEW big AS SELECT * FROM t WHERE v > 1;
        CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN INSERT INTO nokey VALUES (NEW.id, 'audit'); END;
        INSERT INTO t VALUES (1, 1.5), (2, 'two');
        INSERT INTO w VALUES ('a', 1, x'00ff');";

    fn app_schema(conn: &Connection) -> Vec<(String, String, String, Option<String>)> {
        conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT GLOB '__hl_*' AND name NOT GLOB 'sqlite_*' ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn hl_objects(conn: &Connection) -> i64 {
        conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name GLOB '__hl_*'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// An app database with capture installed, as a node leaves it; returns the app schema
    /// recorded before the install.
    fn installed(path: &Path) -> Vec<(String, String, String, Option<String>)> {
        let app = Connection::open(path).unwrap();
        app.execute_batch(APP).unwrap();
        let before = app_schema(&app);
        drop(app);
        let mut conn = db::open(path).unwrap();
        crate::apply::prepare(&conn).unwrap();
        let cfg = Config::parse("db_path = \"x.db\"").unwrap();
        let schema = crate::capture::scan(&conn, &cfg).unwrap();
        assert_eq!(
            crate::capture::install(&mut conn, &schema, &Default::default(), 1)
                .unwrap()
                .total(),
            3,
            "backfilled rows"
        );
        before
    }

    #[test]
    fn refuses_unpublished_changes_unless_forced_then_removes_only_ours() {
        let tmp = Tmp::new("force");
        let path = tmp.0.join("app.db");
        let before = installed(&path);
        std::fs::write(tmp.0.join("app.db.hl-snapshot-download"), b"partial").unwrap();

        // three backfilled rows wait in the change log
        match run(&path, false) {
            Err(CleanupError::Unpublished { changes: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            !lock_path(&path).exists(),
            "a refusal leaves no lock file behind"
        );
        let conn = Connection::open(&path).unwrap();
        assert_eq!(hl_objects(&conn), 18, "nothing dropped by the refusal");
        drop(conn);

        let report = run(&path, true).unwrap();
        assert_eq!(
            report.triggers,
            ["__hl_d_t", "__hl_d_w", "__hl_i_t", "__hl_i_w", "__hl_u_t", "__hl_u_w"]
        );
        assert_eq!(
            report.indexes,
            [
                "__hl_parked_k",
                "__hl_pend_t",
                "__hl_pend_w",
                "__hl_tomb_t",
                "__hl_tomb_w"
            ]
        );
        assert_eq!(
            report.tables,
            [
                "__hl_frag",
                "__hl_log_t",
                "__hl_log_w",
                "__hl_meta",
                "__hl_parked",
                "__hl_ver_t",
                "__hl_ver_w"
            ]
        );
        assert_eq!(report.replicated(), ["t", "w"]);
        assert_eq!(report.discarded, 3);
        assert_eq!(report.files, [tmp.0.join("app.db.hl-snapshot-download")]);
        assert_eq!(report.journal_mode, "wal");
        assert_eq!(report.nats_store, None);
        let text = report.to_text();
        assert!(text.starts_with("removed from "), "{text}");
        assert!(
            text.contains(": 6 triggers, 7 tables, 5 indexes (replication of: t, w)\n"),
            "{text}"
        );
        assert!(
            text.contains("discarded 3 unpublished local change(s) (--force)\n"),
            "{text}"
        );
        assert!(text.contains("stays in WAL mode"), "{text}");

        let conn = Connection::open(&path).unwrap();
        assert_eq!(hl_objects(&conn), 0);
        assert_eq!(app_schema(&conn), before);
        assert!(!lock_path(&path).exists());
        // the application's own trigger still works, and nothing of ours is left to fail a write
        conn.execute_batch(
            "INSERT INTO t VALUES (3, 3); UPDATE w SET c = 1; DELETE FROM t WHERE id = 1;",
        )
        .unwrap();
        let audit: i64 = conn
            .query_row("SELECT count(*) FROM nokey WHERE y = 'audit'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(audit, 3);

        // a second run finds nothing
        let again = run(&path, false).unwrap();
        assert!(
            again.to_text().starts_with("nothing to remove in "),
            "{}",
            again.to_text()
        );
    }

    #[test]
    fn refuses_while_a_node_holds_the_lock() {
        let tmp = Tmp::new("locked");
        let path = tmp.0.join("app.db");
        installed(&path);
        let node = File::create(lock_path(&path)).unwrap();
        node.try_lock().unwrap();
        match run(&path, true) {
            Err(e @ CleanupError::Running { .. }) => {
                assert!(e.to_string().contains("stop it first"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let conn = Connection::open(&path).unwrap();
        assert_eq!(hl_objects(&conn), 18);
        drop(conn);
        drop(node);
        let report = run(&path, true).unwrap();
        assert_eq!(
            report.files,
            [lock_path(&path)],
            "a lock file a node left is removed"
        );
        assert!(!lock_path(&path).exists());
    }

    #[test]
    fn a_database_that_never_saw_harmonylite_is_left_as_it_is() {
        let tmp = Tmp::new("plain");
        let path = tmp.0.join("app.db");
        let app = Connection::open(&path).unwrap();
        app.execute_batch(APP).unwrap();
        let before = app_schema(&app);
        drop(app);
        let report = run(&path, false).unwrap();
        assert_eq!(
            report.tables.len() + report.triggers.len() + report.indexes.len(),
            0
        );
        assert_eq!(
            report.journal_mode, "delete",
            "cleanup does not switch the journal mode"
        );
        assert!(report.files.is_empty());
        assert!(!lock_path(&path).exists());
        assert_eq!(app_schema(&Connection::open(&path).unwrap()), before);
    }

    #[test]
    fn missing_database_is_an_error_naming_it() {
        let tmp = Tmp::new("missing");
        let e = run(&tmp.0.join("nope.db"), false).unwrap_err();
        assert!(matches!(e, CleanupError::Db(DbError::Missing(_))), "{e:?}");
        assert!(!tmp.0.join("nope.db.hl-lock").exists());
    }
}
