//! Snapshots, database side: making a consistent, stripped copy of the live database, checking
//! a downloaded one, and installing it without losing a local write.
//!
//! A snapshot is an ordinary SQLite file: the replicated tables with their content, their
//! `__hl_ver_*` tables (versions and tombstones, all marked published), parked changes and
//! fragments, and `__hl_snapshot` saying which stream sequence it reflects. Capture triggers,
//! change logs, node state and the content of tables that are not replicated stay out.
//!
//! Installing into a live database is a last-writer-wins merge inside one write transaction:
//! the application reads the old content until the commit and the new content after it, and
//! its writes wait on the lock like they would for any writer. Local changes not yet captured
//! are stamped first; then every row whose local version (published or not, from any origin,
//! tombstones included) beats the snapshot's for that row keeps its local content and version,
//! with its pending flag, so unpublished ones still reach the other nodes. The result is what
//! applying every change both sides hold would give, so the position afterwards is the larger of
//! the two (replaying the stream from there is harmless).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::capture::{self, Schema};
use crate::config::Config;
use crate::db::{self, quote, Context, DbError, META_TABLE};
use crate::hlc::Hlc;
use crate::state::{
    CURSOR_KEY, FRAGMENT_TABLE, HLC_KEY, NODE_ID_KEY, OWN_REPLAY_KEY, PARKED_TABLE,
    RESTORED_MS_KEY, RESTORED_SEQ_KEY, RESTORE_DONE_KEY, RESTORE_TOTAL_KEY,
};

pub const SNAPSHOT_TABLE: &str = "__hl_snapshot";
/// Snapshot layout version; a node refuses layouts it does not know.
pub const FORMAT: i64 = 1;

/// What a snapshot says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapMeta {
    /// Stream sequence the content reflects: every message up to it is in.
    pub seq: u64,
    /// The node that made it.
    pub node: u64,
    pub created_ms: u64,
    /// The maker's clock, so a restoring node never stamps below the versions it receives.
    pub hlc: u64,
    /// The maker collected its tombstones below this version (see [`crate::tombstones`]): a
    /// published local version older than it that the snapshot lacks was deleted there.
    pub collected: u64,
}

/// The temporary file a snapshot is made in or downloaded to: next to the database, so the
/// final rename stays on one file system.
pub fn temp_path(db_path: &Path, what: &str) -> PathBuf {
    let mut s = db_path.as_os_str().to_os_string();
    s.push(format!(".hl-snapshot-{what}"));
    PathBuf::from(s)
}

/// The files SQLite keeps beside a database (`<file>-journal`, `-wal`, `-shm`).
pub const SQLITE_COMPANIONS: [&str; 3] = ["-journal", "-wal", "-shm"];

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes a consistent copy of the database to `out` (`VACUUM INTO` reads one snapshot of the
/// file while the application goes on writing), then strips what belongs to this node only.
///
/// A database that misses stream messages (a recorded [`crate::gap::Gap`]) makes no snapshot:
/// its copy would claim a position while lacking changes before it. The gap is returned
/// instead, and `out` is left unstripped for the caller to delete.
pub fn make(cfg: &Config, out: &Path) -> Result<Result<SnapMeta, crate::gap::Gap>, DbError> {
    let conn = db::open(&cfg.db_path)?;
    // emptied, not removed: the caller may hold a lock on it (`VACUUM INTO` takes an empty
    // file); a journal a crash left beside it would be played into the new copy
    for companion in SQLITE_COMPANIONS {
        let _ = std::fs::remove_file(with_suffix(out, companion));
    }
    std::fs::File::create(out).map_err(|e| DbError::Open {
        path: out.to_path_buf(),
        source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
    })?;
    conn.execute("VACUUM INTO ?1", [out.to_string_lossy()])
        .ctx("copy the database (VACUUM INTO)")?;
    drop(conn);
    let copy = Connection::open(out).map_err(|source| DbError::Open {
        path: out.to_path_buf(),
        source,
    })?;
    copy.execute_batch(
        "PRAGMA journal_mode=DELETE; PRAGMA synchronous=OFF; PRAGMA cache_size=-512;",
    )
    .ctx("prepare the snapshot copy")?;
    let meta = |k: &str| db::get_meta(&copy, k).map(|v| v.unwrap_or(0) as u64);
    if let Some(gap) = crate::gap::read(&copy)? {
        return Ok(Err(gap));
    }
    let snap = SnapMeta {
        seq: meta(CURSOR_KEY)?,
        node: meta(NODE_ID_KEY)?,
        created_ms: crate::hlc::now_ms(),
        hlc: meta(HLC_KEY)?,
        collected: meta(crate::state::COLLECTED_BELOW_KEY)?,
    };
    strip(&copy, cfg, &snap)?;
    Ok(Ok(snap))
}

fn strip(copy: &Connection, cfg: &Config, snap: &SnapMeta) -> Result<(), DbError> {
    let schema = capture::scan(copy, cfg)?;
    let names = |kind: &str| -> Result<Vec<String>, DbError> {
        let mut s = copy
            .prepare("SELECT name FROM sqlite_schema WHERE type = ?1 ORDER BY name")
            .ctx("read snapshot schema")?;
        let v = s
            .query_map([kind], |r| r.get::<_, String>(0))
            .and_then(|r| r.collect())
            .ctx("read snapshot schema")?;
        Ok(v)
    };
    let mut sql = String::from("BEGIN;");
    for t in names("trigger")? {
        if t.starts_with("__hl_") {
            sql += &format!("DROP TRIGGER {};", quote(&t));
        }
    }
    for t in names("table")? {
        if t.starts_with("__hl_log_") {
            sql += &format!("DROP TABLE {};", quote(&t));
        } else if t.starts_with("__hl_ver_") {
            sql += &format!(
                "UPDATE {} SET pending = 0 WHERE {};",
                quote(&t),
                crate::capture::PENDING
            );
        } else if !t.starts_with("__hl_") && !t.starts_with("sqlite_") && schema.get(&t).is_none() {
            // not replicated: local data of the node that made the snapshot
            let virtual_table: bool = copy
                .query_row(
                    "SELECT sql LIKE 'CREATE VIRTUAL%' FROM sqlite_schema WHERE name = ?1",
                    [&t],
                    |r| r.get(0),
                )
                .ctx("read snapshot schema")?;
            if !virtual_table {
                sql += &format!("DELETE FROM {};", quote(&t));
            }
        }
    }
    sql += &format!(
        "DROP TABLE IF EXISTS {META_TABLE};
         DROP TABLE IF EXISTS {};
         CREATE TABLE {SNAPSHOT_TABLE}(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
         INSERT INTO {SNAPSHOT_TABLE} VALUES ('format', {FORMAT}), ('seq', {}), ('node', {}), ('created_ms', {}), ('hlc', {}), ('collected_below', {});
         COMMIT;",
        crate::schema::TABLES_TABLE,
        snap.seq,
        snap.node,
        snap.created_ms,
        snap.hlc,
        snap.collected
    );
    copy.execute_batch(&sql).ctx("strip the snapshot copy")
}

/// Checks a downloaded snapshot: SQLite's integrity check, then our own table. Errors say what
/// is wrong; the file is not used.
pub fn verify(path: &Path) -> Result<SnapMeta, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.execute_batch("PRAGMA cache_size=-512;")
        .map_err(|e| e.to_string())?;
    let check: String = conn
        .query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))
        .map_err(|e| format!("{} is not a SQLite database: {e}", path.display()))?;
    if check != "ok" {
        return Err(format!(
            "{} failed SQLite's integrity check: {check}",
            path.display()
        ));
    }
    let get = |k: &str| -> Result<i64, String> {
        conn.query_row(
            &format!("SELECT value FROM {SNAPSHOT_TABLE} WHERE key = ?1"),
            [k],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| format!("{} is not a HarmonyLite snapshot: {e}", path.display()))?
        .ok_or_else(|| {
            format!(
                "{} is not a HarmonyLite snapshot: {k} missing",
                path.display()
            )
        })
    };
    let format = get("format")?;
    if format != FORMAT {
        return Err(format!(
            "snapshot layout {format} is not supported by this version (it reads layout {FORMAT})"
        ));
    }
    Ok(SnapMeta {
        seq: get("seq")? as u64,
        node: get("node")? as u64,
        created_ms: get("created_ms")? as u64,
        hlc: get("hlc")? as u64,
        // absent from snapshots made before tombstone collection: nothing was collected
        collected: get("collected_below").unwrap_or(0) as u64,
    })
}

/// Makes a verified snapshot the database when there is none yet: records the position, then
/// renames the file into place (atomic on one file system). `stream_last` is the stream's last
/// sequence now: frames of this node's id up to it were published by the database this one
/// replaces (same path, same id), so they are applied like anyone's, not passed over.
pub fn install_new(
    db_path: &Path,
    snap_file: &Path,
    meta: &SnapMeta,
    stream_last: u64,
) -> Result<(), DbError> {
    {
        let conn = db::open(snap_file)?;
        record_restore(&conn, meta)?;
        db::set_meta(&conn, OWN_REPLAY_KEY, stream_last as i64)?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .ctx("checkpoint the snapshot")?;
    }
    std::fs::rename(snap_file, db_path).map_err(|e| DbError::Open {
        path: db_path.to_path_buf(),
        source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
    })?;
    Ok(())
}

fn record_restore(conn: &Connection, meta: &SnapMeta) -> Result<(), DbError> {
    let hlc = db::get_meta(conn, HLC_KEY)?
        .unwrap_or(0)
        .max(meta.hlc as i64);
    // a merge: what this database applied past the snapshot's position is still here
    let cursor = db::get_meta(conn, CURSOR_KEY)?
        .unwrap_or(0)
        .max(meta.seq as i64);
    db::set_meta(conn, CURSOR_KEY, cursor)?;
    crate::gap::clear_if_covered(conn, meta.seq)?;
    db::set_meta(conn, HLC_KEY, hlc)?;
    // the maker's collected tombstones are missing here too
    let collected = crate::tombstones::collected_below(conn)?.max(meta.collected);
    if collected > 0 {
        db::set_meta(conn, crate::state::COLLECTED_BELOW_KEY, collected as i64)?;
    }
    db::set_meta(conn, RESTORED_SEQ_KEY, meta.seq as i64)?;
    db::set_meta(conn, RESTORED_MS_KEY, crate::hlc::now_ms() as i64)?;
    conn.execute(
        &format!("DELETE FROM {META_TABLE} WHERE key IN (?1, ?2)"),
        [RESTORE_DONE_KEY, RESTORE_TOTAL_KEY],
    )
    .ctx("write state")?;
    Ok(())
}

/// What an install into a live database did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Installed {
    pub tables: u64,
    pub rows: u64,
    /// Local changes (published or not, any origin) newer than the snapshot's, kept.
    pub kept_local: u64,
    /// Of those, the ones not yet published (still pending, sent as before).
    pub kept_unpublished: u64,
}

/// Installs a verified snapshot into the live database in one write transaction. Tables the
/// snapshot has and the database lacks are created from the snapshot's definitions.
pub fn install_into(
    conn: &mut Connection,
    cfg: &Config,
    schema: &Schema,
    hlc: &mut Hlc,
    node: u64,
    snap_file: &Path,
    meta: &SnapMeta,
) -> Result<Installed, DbError> {
    conn.execute("ATTACH DATABASE ?1 AS snap", [snap_file.to_string_lossy()])
        .ctx("attach the snapshot")?;
    let result = install_attached(conn, cfg, schema, hlc, node, meta);
    let detach = conn
        .execute_batch("DETACH DATABASE snap")
        .ctx("detach the snapshot");
    let done = result?;
    detach?;
    Ok(done)
}

fn install_attached(
    conn: &mut Connection,
    cfg: &Config,
    schema: &Schema,
    hlc: &mut Hlc,
    node: u64,
    meta: &SnapMeta,
) -> Result<Installed, DbError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .ctx("begin snapshot install")?;
    // capture before install: every local write is a versioned pending change now
    capture::stamp(&tx, schema, hlc, node)?;
    let mut done = Installed::default();
    let snap_tables: Vec<(String, String)> = {
        let mut s = tx
            .prepare("SELECT name, sql FROM snap.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_\\_hl\\_%' ESCAPE '\\'")
            .ctx("read snapshot schema")?;
        let v = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|r| r.collect())
            .ctx("read snapshot schema")?;
        v
    };
    for (name, create) in &snap_tables {
        if !cfg.wants_table(name) {
            continue;
        }
        let has_ver = table_exists(&tx, "snap", &format!("__hl_ver_{name}"))?;
        if !has_ver {
            continue; // not replicated where the snapshot was made
        }
        match schema.get(name) {
            Some(t) => {
                let (rows, kept, unpublished) = replace_table(&tx, t, meta.collected)?;
                done.rows += rows;
                done.kept_local += kept;
                done.kept_unpublished += unpublished;
            }
            None if !table_exists(&tx, "main", name)? => {
                // the application has not created this table yet: take the snapshot's
                tx.execute_batch(create)
                    .ctx("create a table from the snapshot")?;
                let ver_sql: String = tx
                    .query_row(
                        "SELECT sql FROM snap.sqlite_schema WHERE name = ?1",
                        [format!("__hl_ver_{name}")],
                        |r| r.get(0),
                    )
                    .ctx("read snapshot schema")?;
                tx.execute_batch(&ver_sql)
                    .ctx("create a version table from the snapshot")?;
                let (t, v) = (quote(name), quote(&format!("__hl_ver_{name}")));
                done.rows += tx
                    .execute(&format!("INSERT INTO main.{t} SELECT * FROM snap.{t}"), [])
                    .ctx("copy snapshot rows")? as u64;
                tx.execute(&format!("INSERT INTO main.{v} SELECT * FROM snap.{v}"), [])
                    .ctx("copy snapshot versions")?;
                copy_indexes(&tx, name)?;
            }
            None => {
                log::warn!("snapshot: table {name} exists here but is not replicated (no primary key?): left as it is");
                continue;
            }
        }
        done.tables += 1;
    }
    for t in &schema.tables {
        if !snap_tables.iter().any(|(n, _)| n == t.name()) {
            log::warn!(
                "snapshot: table {} is not in the snapshot; its rows here are left as they are",
                t.name()
            );
        }
    }
    // Parked changes and fragments reflect messages up to the snapshot's position; ours stay
    // too (a merge), a fragment taking the snapshot's position as its own.
    if table_exists(&tx, "snap", PARKED_TABLE)? {
        tx.execute(&format!("INSERT INTO main.{PARKED_TABLE}(tbl, reason, frame) SELECT tbl, reason, frame FROM snap.{PARKED_TABLE}"), [])
            .ctx("copy parked changes")?;
    }
    if table_exists(&tx, "snap", FRAGMENT_TABLE)? {
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO main.{FRAGMENT_TABLE}(origin, id, idx, count, data, seq)
                 SELECT origin, id, idx, count, data, ?1 FROM snap.{FRAGMENT_TABLE}"
            ),
            [meta.seq as i64],
        )
        .ctx("copy fragments")?;
    }
    capture::discard_echoes(&tx, schema)?;
    hlc.observe(meta.hlc);
    record_restore(&tx, meta)?;
    db::set_meta(&tx, HLC_KEY, hlc.last() as i64)?;
    tx.commit().ctx("commit snapshot install")?;
    Ok(done)
}

/// Merges the snapshot's rows and versions of `t` into ours, last writer wins per row: a local
/// version (published or not, any origin, a tombstone too) that beats the snapshot's for the
/// same key, or that the snapshot lacks, keeps its row (or its absence) and its pending flag.
/// Except: a published local version older than `collected` (the maker's tombstone horizon)
/// that the snapshot lacks is dropped: the maker applied it, then its row was deleted and the
/// tombstone collected (see [`crate::tombstones`]).
/// Returns (rows copied, local changes kept, of which unpublished).
fn replace_table(
    tx: &Connection,
    t: &capture::Table,
    collected: u64,
) -> Result<(u64, u64, u64), DbError> {
    let name = quote(t.name());
    let ver = &t.ver;
    let n = t.pk_len();
    let pk = t.pk_columns();
    let keys = (0..n)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let same_key = (0..n)
        .map(|i| format!("s.k{i} IS v.k{i}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    // (pk columns) IN (SELECT keys ...): one lookup per key through an index, not a scan
    let pk_tuple = format!("({})", pk.join(", "));
    let snap_cols: Vec<String> = {
        let mut s = tx
            .prepare(&format!(
                "SELECT name FROM snap.pragma_table_info({})",
                sql_str(t.name())
            ))
            .ctx("read snapshot columns")?;
        let v = s
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|r| r.collect())
            .ctx("read snapshot columns")?;
        v
    };
    let common = t
        .header
        .columns
        .iter()
        .filter(|c| snap_cols.contains(c))
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    let missing: Vec<&String> = t
        .header
        .columns
        .iter()
        .filter(|c| !snap_cols.contains(c))
        .collect();
    if !missing.is_empty() {
        log::warn!(
            "snapshot: table {} lacks columns {missing:?} here; they take their defaults",
            t.name()
        );
    }
    tx.execute_batch(&format!(
        "DROP TABLE IF EXISTS temp.__hl_keep_ver; DROP TABLE IF EXISTS temp.__hl_keep_row;
         CREATE TEMP TABLE __hl_keep_ver AS SELECT v.* FROM main.{ver} v WHERE NOT EXISTS
             (SELECT 1 FROM snap.{ver} s WHERE {same_key} AND (s.ver > v.ver OR (s.ver = v.ver AND s.node >= v.node)))
             AND NOT (v.pending = 0 AND v.ver < {collected} AND NOT EXISTS (SELECT 1 FROM snap.{ver} s WHERE {same_key}));
         CREATE TEMP TABLE __hl_keep_row AS SELECT * FROM main.{name} WHERE {pk_tuple} IN
             (SELECT {keys} FROM temp.__hl_keep_ver WHERE del = 0);
         DELETE FROM main.{name};"
    ))
    .ctx("set local changes aside")?;
    let rows = tx
        .execute(
            &format!("INSERT INTO main.{name}({common}) SELECT {common} FROM snap.{name}"),
            [],
        )
        .ctx("copy snapshot rows")? as u64;
    tx.execute_batch(&format!(
        "DELETE FROM main.{name} WHERE {pk_tuple} IN (SELECT {keys} FROM temp.__hl_keep_ver);
         INSERT INTO main.{name} SELECT * FROM temp.__hl_keep_row;
         DELETE FROM main.{ver};
         INSERT INTO main.{ver}({keys}, ver, node, del, pending) SELECT {keys}, ver, node, del, 0 FROM snap.{ver};
         INSERT OR REPLACE INTO main.{ver}({keys}, ver, node, del, pending, h) SELECT {keys}, ver, node, del, pending, h FROM temp.__hl_keep_ver;"
    ))
    .ctx("put local changes back")?;
    // Each live version gets the digest of the row it now describes (the snapshot's versions
    // arrive without one): a later table rebuild then resyncs by content, and a primary-key
    // collision with the same content is told from a real one.
    tx.execute(
        &format!(
            "UPDATE main.{ver} SET h = ({}) WHERE del = 0 AND h IS NULL",
            capture::digest_of_version_row(t)
        ),
        [],
    )
    .ctx("digest restored rows")?;
    let (kept, unpublished): (i64, i64) = tx
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE pending > 0) FROM temp.__hl_keep_ver",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ctx("count local changes")?;
    tx.execute_batch("DROP TABLE temp.__hl_keep_ver; DROP TABLE temp.__hl_keep_row;")
        .ctx("drop temporary tables")?;
    Ok((rows, kept as u64, unpublished as u64))
}

fn copy_indexes(tx: &Connection, table: &str) -> Result<(), DbError> {
    let sqls: Vec<String> = {
        let mut s = tx
            .prepare("SELECT sql FROM snap.sqlite_schema WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL")
            .ctx("read snapshot indexes")?;
        let v = s
            .query_map([table], |r| r.get(0))
            .and_then(|r| r.collect())
            .ctx("read snapshot indexes")?;
        v
    };
    for sql in sqls {
        tx.execute_batch(&sql)
            .ctx("create an index from the snapshot")?;
    }
    Ok(())
}

fn table_exists(conn: &Connection, schema: &str, name: &str) -> Result<bool, DbError> {
    conn.query_row(
        &format!("SELECT 1 FROM {schema}.sqlite_schema WHERE type = 'table' AND name = ?1"),
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
    .ctx("read schema")
}

fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Writes the restore progress for `harmonylite status` (best effort).
pub fn record_progress(conn: &Connection, done: u64, total: u64) {
    let _ = db::set_meta(conn, RESTORE_DONE_KEY, done as i64)
        .and_then(|_| db::set_meta(conn, RESTORE_TOTAL_KEY, total as i64));
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Db {
        path: PathBuf,
        cfg: Config,
        conn: Connection,
        schema: Schema,
    }

    impl Drop for Db {
        fn drop(&mut self) {
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", self.path.display()));
            }
        }
    }

    /// A node's database holding `rows` of `t` with their version rows (`(id, ver, pending)`),
    /// position 10, collected below `collected`.
    fn node_db(name: &str, rows: &[(i64, u64, i64)], collected: u64) -> Db {
        let path = std::env::temp_dir().join(format!("hl-snap-{name}-{}.db", std::process::id()));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        let mut conn = db::open(&path).unwrap();
        crate::apply::prepare(&conn).unwrap();
        let cfg = Config::parse(&format!(
            "db_path = {:?}\n[nats]\nsubject_prefix = \"x\"\n",
            path.display().to_string()
        ))
        .unwrap();
        let schema = capture::scan(&conn, &cfg).unwrap();
        capture::install(&mut conn, &schema, &Default::default(), 1).unwrap();
        for &(id, ver, pending) in rows {
            conn.execute("INSERT INTO t VALUES (?1, 'x')", [id])
                .unwrap();
            conn.execute(
                "INSERT OR REPLACE INTO __hl_ver_t(k0, ver, node, del, pending) VALUES (?1, ?2, 1, 0, ?3)",
                rusqlite::params![id, ver as i64, pending],
            )
            .unwrap();
        }
        conn.execute("DELETE FROM __hl_log_t", []).unwrap();
        db::set_meta(&conn, CURSOR_KEY, 10).unwrap();
        db::set_meta(&conn, NODE_ID_KEY, 1).unwrap();
        db::set_meta(&conn, crate::state::COLLECTED_BELOW_KEY, collected as i64).unwrap();
        Db {
            path,
            cfg,
            conn,
            schema,
        }
    }

    #[test]
    fn a_restore_drops_published_versions_the_maker_collected_and_keeps_the_rest() {
        // the maker holds rows 1 and 2 and collected its tombstones below version 500
        let maker = node_db("maker", &[(1, 100, 0), (2, 600, 0)], 500);
        let out = temp_path(&maker.path, "test");
        let meta = make(&maker.cfg, &out).unwrap().unwrap();
        assert_eq!(meta.collected, 500);
        assert_eq!(
            verify(&out).unwrap().collected,
            500,
            "read back from the file"
        );
        // here: row 3 published at 300 (deleted and collected at the maker), row 4 published at
        // 700 (the maker has not seen it yet), row 5 unpublished at 200 (only here)
        let mut local = node_db(
            "local",
            &[(1, 100, 0), (3, 300, 0), (4, 700, 0), (5, 200, 1)],
            0,
        );
        let mut hlc = Hlc::new(0);
        install_into(
            &mut local.conn,
            &local.cfg,
            &local.schema,
            &mut hlc,
            1,
            &out,
            &meta,
        )
        .unwrap();
        let ids: Vec<i64> = local
            .conn
            .prepare("SELECT id FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, vec![1, 2, 4, 5]);
        assert_eq!(
            crate::tombstones::collected_below(&local.conn).unwrap(),
            500,
            "the maker's horizon is this database's now"
        );
        let _ = std::fs::remove_file(&out);
    }
}
