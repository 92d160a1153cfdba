//! Change capture: the triggers that record the application's writes, and the stamping that
//! turns those records into versioned changes waiting to be published.
//!
//! For each replicated table `t` we own three objects in the same file:
//! - `__hl_log_t(seq, op, ts, k0..kn)`: written by AFTER triggers, one small row per changed
//!   primary key (op 1 = upsert, 2 = delete; `ts` = the application's wall-clock ms). It holds only
//!   keys: the row image is read from the table itself when the change is published, so a row
//!   changed many times between two polls travels once, with its latest content.
//! - `__hl_ver_t(k0..kn, ver, node, del, pending, h)`: the last-writer-wins state of every row this
//!   node has seen: HLC version, origin node, tombstone flag, `pending` while a local change
//!   waits for JetStream's ack (the outbox: 1 for a change of a key this node knew, 2 for a key
//!   it held no version of, whose upsert is published as [`Op::Insert`] so that receivers can
//!   tell primary-key collisions from updates), and `h`, a digest of the row's content when this
//!   node last stamped or applied it (NULL: unknown).
//! - triggers `__hl_i_t`, `__hl_u_t`, `__hl_d_t`. They use only plain SQL any SQLite since 3.8
//!   understands, so an application linked against an old SQLite never fails a write because of us.
//!
//! **Table rebuilds.** ORMs change a SQLite table by rebuilding it (create `new__t`, copy, drop
//! `t`, rename), which drops our triggers; writes made before they are back are not logged.
//! Whenever [`install`] finds a table's triggers missing it *resyncs* the table in the same
//! transaction, comparing it with its version table: rows without a live version are queued as
//! inserts, rows whose digest differs from `h` as updates, live versions whose row is gone as
//! deletes. The version table survives the rebuild (it is ours, named after `t`), so it is the
//! reference. The digest ([`DIGEST_FN`]) is computed by the node, never in the triggers.
//!
//! Stamping moves log rows into the version table with fresh HLC stamps and empties the log, so at
//! the start of our own write transaction the log is empty and anything that appears in it during
//! an apply is an echo of that apply.
//!
//! On the node's own connection the triggers write nothing at all ([`guard_node_connection`]): an
//! applied row would only be logged to be discarded again, and that insert and delete (and the
//! statement journal a multi-row statement needs) cost more than the apply itself. The same
//! guard keeps the application's triggers from writing replicated tables again for applied rows.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::Connection;

use crate::config::Config;
use crate::db::{quote, Context, DbError};
use crate::frame::{Op, TableHeader, Value};
use crate::hlc::Hlc;

pub const OP_UPSERT: i64 = 1;
pub const OP_DELETE: i64 = 2;

/// `pending` of a version row: a local change of a key this node knew (an update, a delete, or
/// the insert of a key it had seen deleted).
pub const PENDING_CHANGE: i64 = 1;
/// `pending` of a version row: a local change of a key this node had no version of before this
/// outbox entry (the others have not heard of the key from it). An upsert of such a key is
/// published as [`Op::Insert`].
pub const PENDING_NEW: i64 = 2;
/// The SQL condition selecting the outbox rows of a version table (its partial index's too).
pub const PENDING: &str = "pending > 0";

/// The SQL condition selecting the tombstones of a version table (its partial index's too):
/// collected once no late change can need them (see [`crate::tombstones`]).
pub const TOMBSTONE: &str = "del = 1 AND pending = 0";

/// The application's write time as Unix ms, in SQL any SQLite version can run.
const TS_SQL: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The SQL function computing a row digest: `__hl_digest('col', value, 'col', value, ...)`.
/// Registered on the node's connection only ([`register_functions`]); the application's
/// connections never need it.
pub const DIGEST_FN: &str = "__hl_digest";

/// Registers [`DIGEST_FN`] on `conn` (again is harmless).
pub fn register_functions(conn: &Connection) -> Result<(), DbError> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        DIGEST_FN,
        -1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let args = (0..ctx.len()).map(|i| ctx.get_raw(i));
            Ok(digest(args))
        },
    )
    .ctx("register the row digest")
}

/// A row's digest from its (name, value) pairs: the first 8 bytes of SHA-256 over each non-NULL
/// value with its lowercased column name, storage class and exact bytes. NULL values are left
/// out, so a column added with NULL everywhere leaves every digest as it was; names make the
/// digest independent of column order. Stable across versions of this program (it is stored).
pub fn digest<'a>(mut args: impl Iterator<Item = ValueRef<'a>>) -> i64 {
    thread_local! {
        // the message hashed, reused: no allocation per row on the stamp and apply paths
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        while let (Some(name), Some(value)) = (args.next(), args.next()) {
            let (tag, int, bytes): (u8, [u8; 8], &[u8]) = match value {
                ValueRef::Null => continue,
                ValueRef::Integer(i) => (1, i.to_le_bytes(), &[]),
                ValueRef::Real(f) => (2, f.to_bits().to_le_bytes(), &[]),
                ValueRef::Text(t) => (3, [0; 8], t),
                ValueRef::Blob(b) => (4, [0; 8], b),
            };
            let bytes = if tag <= 2 { &int[..] } else { bytes };
            let name: &[u8] = match name {
                ValueRef::Text(t) => t,
                _ => &[],
            };
            buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
            buf.extend(name.iter().map(u8::to_ascii_lowercase));
            buf.push(tag);
            buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            buf.extend_from_slice(bytes);
        }
        let d = ring::digest::digest(&ring::digest::SHA256, &buf);
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new(); // a huge row's buffer is not kept
        }
        i64::from_le_bytes(d.as_ref()[..8].try_into().expect("8 bytes of SHA-256"))
    })
}

/// What [`install`] queued for tables whose triggers were missing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resync {
    /// Rows with no live version here (new tables, rows inserted before capture existed).
    pub inserts: u64,
    /// Rows whose content differs from the digest recorded with their version.
    pub updates: u64,
    /// Live versions whose row is gone.
    pub deletes: u64,
    /// Rows changed only in columns added since their digest was taken (the migration filled
    /// them), to values other nodes would not give them: re-sent just above their version.
    pub fills: u64,
}

impl Resync {
    pub fn total(&self) -> u64 {
        self.inserts + self.updates + self.deletes + self.fills
    }
}

/// The columns each table had when this node last looked at it (its recorded definition, see
/// [`crate::schema`]): what the row digests of its versions were computed over. A table not in
/// it: all its columns.
pub type Recorded = HashMap<String, Vec<String>>;

/// A replicated table and the SQL we run against it.
#[derive(Debug, Clone)]
pub struct Table {
    pub header: TableHeader,
    /// Declared type of each column (as written in CREATE TABLE), in header order.
    pub decl: Vec<String>,
    /// Default value of each column as SQL text (`PRAGMA table_info`'s `dflt_value`).
    pub defaults: Vec<Option<String>>,
    /// For a NOT NULL column without a default, its affinity's zero value as SQL text: what it
    /// takes where a row image from a node on an older schema lacks it.
    pub zero_fill: Vec<Option<&'static str>>,
    /// Columns other nodes may still send that were dropped here by an accepted schema change
    /// (see [`crate::schema`]): their values are ignored on apply.
    pub ignored: Vec<String>,
    pub without_rowid: bool,
    /// This node sends its changes of the table (`[table.<name>] publish`): when false, local
    /// changes are versioned (so a newer change from elsewhere still wins) but never enter
    /// the outbox.
    pub publish: bool,
    pub log: String,
    pub ver: String,
    /// `k0, k1, ...`
    keys: String,
    sql: TableSql,
}

#[derive(Debug, Clone)]
struct TableSql {
    read_log: String,
    upsert_local_version: String,
    clear_log: String,
    read_pending: String,
    mark_published: String,
}

impl Table {
    pub fn name(&self) -> &str {
        &self.header.name
    }

    pub fn pk_len(&self) -> usize {
        self.header.pk.len()
    }

    fn new(name: &str, cols: Vec<ColumnInfo>, pk: Vec<u16>, without_rowid: bool) -> Table {
        let decl = cols.iter().map(|c| c.decl.clone()).collect();
        let defaults = cols.iter().map(|c| c.default.clone()).collect();
        let zero_fill = cols
            .iter()
            .map(|c| {
                (c.notnull && c.default.is_none()).then(|| crate::db::affinity(&c.decl).zero())
            })
            .collect();
        let header = TableHeader {
            name: name.to_string(),
            columns: cols.into_iter().map(|c| c.name).collect(),
            pk,
        };
        let log = quote(&format!("__hl_log_{name}"));
        let ver = quote(&format!("__hl_ver_{name}"));
        let n = header.pk.len();
        let keys = (0..n)
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let params = |from: usize| {
            (from..from + n)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let t = quote(name);
        let join = header
            .pk
            .iter()
            .enumerate()
            .map(|(i, &c)| format!("t.{} IS v.k{i}", quote(&header.columns[c as usize])))
            .collect::<Vec<_>>()
            .join(" AND ");
        let exists = if without_rowid {
            format!(
                "t.{} IS NOT NULL",
                quote(&header.columns[header.pk[0] as usize])
            )
        } else {
            "t.rowid IS NOT NULL".to_string()
        };
        let cols = header
            .columns
            .iter()
            .map(|c| format!("t.{}", quote(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let vkeys = (0..n)
            .map(|i| format!("v.k{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = TableSql {
            read_log: format!("SELECT seq, op, ts, {keys} FROM {log} ORDER BY seq"),
            // the digest of the row as it is now: what this version captured
            upsert_local_version: format!(
                "INSERT INTO {ver}({keys}, ver, node, del, pending, h) VALUES ({}, ?{}, ?{}, ?{}, {PENDING_NEW} * ?{p}, ({})) \
                 ON CONFLICT({keys}) DO UPDATE SET ver = excluded.ver, node = excluded.node, del = excluded.del, \
                 pending = ?{p} * CASE WHEN {ver}.pending = {PENDING_NEW} THEN {PENDING_NEW} ELSE {PENDING_CHANGE} END, h = excluded.h",
                params(1),
                n + 1,
                n + 2,
                n + 3,
                digest_by_key(name, &header, 1),
                p = n + 4,
            ),
            clear_log: format!("DELETE FROM {log}"),
            read_pending: format!(
                "SELECT v.ver, v.del, {exists}, v.pending, {vkeys}, {cols} FROM {ver} v LEFT JOIN {t} t ON {join} \
                 WHERE {PENDING} ORDER BY v.ver"
            ),
            mark_published: format!("UPDATE OR IGNORE {ver} SET pending = 0 WHERE {PENDING} AND ver <= ?1"),
        };
        Table {
            header,
            decl,
            defaults,
            zero_fill,
            ignored: Vec::new(),
            without_rowid,
            publish: true,
            log,
            ver,
            keys,
            sql,
        }
    }

    /// A scalar subquery: the digest of the row whose key is bound to `?first..`, NULL when
    /// there is no such row (for the version tables' `h`).
    pub fn digest_by_key(&self, first: usize) -> String {
        digest_by_key(self.name(), &self.header, first)
    }

    /// Quoted primary-key column names, in key order.
    pub fn pk_columns(&self) -> Vec<String> {
        self.header
            .pk
            .iter()
            .map(|&c| quote(&self.header.columns[c as usize]))
            .collect()
    }

    fn trigger_sql(&self) -> [(String, String); 3] {
        let t = quote(&self.header.name);
        let name = |kind: &str| format!("__hl_{kind}_{}", self.header.name);
        let row = |which: &str| {
            self.pk_columns()
                .iter()
                .map(|c| format!("{which}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (log, keys) = (&self.log, &self.keys);
        let changed = self
            .pk_columns()
            .iter()
            .map(|c| format!("OLD.{c} IS NOT NEW.{c}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let ins = name("i");
        let upd = name("u");
        let del = name("d");
        [
            (
                ins.clone(),
                format!(
                    "CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN INSERT INTO {log}(op, ts, {keys}) VALUES ({OP_UPSERT}, {TS_SQL}, {}); END",
                    quote(&ins),
                    row("NEW")
                ),
            ),
            (
                upd.clone(),
                format!(
                    "CREATE TRIGGER {} AFTER UPDATE ON {t} BEGIN \
                     INSERT INTO {log}(op, ts, {keys}) SELECT {OP_DELETE}, {TS_SQL}, {} WHERE {changed}; \
                     INSERT INTO {log}(op, ts, {keys}) VALUES ({OP_UPSERT}, {TS_SQL}, {}); END",
                    quote(&upd),
                    row("OLD"),
                    row("NEW")
                ),
            ),
            (
                del.clone(),
                format!(
                    "CREATE TRIGGER {} AFTER DELETE ON {t} BEGIN INSERT INTO {log}(op, ts, {keys}) VALUES ({OP_DELETE}, {TS_SQL}, {}); END",
                    quote(&del),
                    row("OLD")
                ),
            ),
        ]
    }
}

/// `__hl_digest('c1', a."c1", ...)` over every column of the table aliased `a`.
fn digest_sql(header: &TableHeader) -> String {
    digest_sql_of(header.columns.iter())
}

fn digest_sql_of<'a>(columns: impl Iterator<Item = &'a String>) -> String {
    let args = columns
        .map(|c| format!("{}, a.{}", sql_text(c), quote(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{DIGEST_FN}({args})")
}

fn digest_by_key(name: &str, header: &TableHeader, first: usize) -> String {
    let key = header
        .pk
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("a.{} IS ?{}", quote(&header.columns[c as usize]), first + i))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "SELECT {} FROM {} a WHERE {key}",
        digest_sql(header),
        quote(name)
    )
}

/// A SQL string literal.
fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The reason [`Schema::skipped`] gives for a migration tool's bookkeeping table.
pub const MIGRATION_BOOKKEEPING: &str = "migration bookkeeping (each node's migrations record their own; name it in `tables` to replicate it)";
/// The reason [`Schema::skipped`] gives for an ORM's temporary copy of a table being rebuilt.
pub const MIGRATION_TEMP: &str =
    "a migration's temporary copy of a table being rebuilt (the table replicates under its own name)";

/// The replicated tables, found by [`scan`].
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub tables: Vec<Table>,
    by_name: HashMap<String, usize>,
    /// Tables present but not replicated, with the reason (logged once per scan that changes them).
    pub skipped: Vec<(String, String)>,
    /// Replicated tables paused by a schema change we cannot replicate safely, with the reason
    /// (filled by [`crate::schema::reconcile`]): their changes are kept, not sent or applied.
    pub paused: HashMap<String, String>,
}

/// One column as `PRAGMA table_info` describes it.
struct ColumnInfo {
    name: String,
    decl: String,
    notnull: bool,
    default: Option<String>,
    pk: i64,
}

impl Schema {
    pub fn get(&self, name: &str) -> Option<&Table> {
        self.by_name.get(name).map(|&i| &self.tables[i])
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Table> {
        self.by_name.get(name).map(|&i| &mut self.tables[i])
    }

    pub fn is_paused(&self, name: &str) -> bool {
        self.paused.contains_key(name)
    }
}

/// Reads the application's tables and decides which ones we replicate.
pub fn scan(conn: &Connection, cfg: &Config) -> Result<Schema, DbError> {
    let mut list = conn.prepare("PRAGMA main.table_list").ctx("list tables")?;
    let entries: Vec<(String, String, bool)> = list
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(4)? != 0,
            ))
        })
        .and_then(|rows| rows.collect())
        .ctx("list tables")?;
    let mut schema = Schema::default();
    for (name, kind, without_rowid) in entries {
        if name.starts_with("sqlite_") || name.starts_with("__hl_") {
            continue;
        }
        if cfg.is_default_excluded(&name) && !cfg.exclude_tables.contains(&name) {
            let why = if Config::is_migration_temp(&name) {
                MIGRATION_TEMP
            } else {
                MIGRATION_BOOKKEEPING
            };
            schema.skipped.push((name, why.into()));
            continue;
        }
        if !cfg.wants_table(&name) {
            continue;
        }
        match kind.as_str() {
            "table" => {}
            "virtual" => {
                schema.skipped.push((
                    name,
                    "a virtual table; its content cannot be captured by triggers".into(),
                ));
                continue;
            }
            _ => continue, // views, shadow tables of virtual tables
        }
        let mut info = conn
            .prepare(&format!("PRAGMA main.table_info({})", quote(&name)))
            .ctx("read table columns")?;
        let cols: Vec<ColumnInfo> = info
            .query_map([], |r| {
                Ok(ColumnInfo {
                    name: r.get(1)?,
                    decl: r.get(2)?,
                    notnull: r.get(3)?,
                    default: r.get(4)?,
                    pk: r.get(5)?,
                })
            })
            .and_then(|rows| rows.collect())
            .ctx("read table columns")?;
        let mut pk: Vec<(i64, u16)> = cols
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pk > 0)
            .map(|(i, c)| (c.pk, i as u16))
            .collect();
        if pk.is_empty() {
            schema.skipped.push((
                name,
                "it has no PRIMARY KEY; add one to replicate it".into(),
            ));
            continue;
        }
        pk.sort();
        let mut table = Table::new(
            &name,
            cols,
            pk.into_iter().map(|p| p.1).collect(),
            without_rowid,
        );
        table.publish = cfg.publishes(&name);
        schema.by_name.insert(name, schema.tables.len());
        schema.tables.push(table);
    }
    for t in &cfg.tables {
        if schema.get(t).is_none() && !schema.skipped.iter().any(|s| &s.0 == t) {
            schema.skipped.push((
                t.clone(),
                "listed in `tables` but not in the database".into(),
            ));
        }
    }
    parents_first(conn, &mut schema)?;
    Ok(schema)
}

/// Orders the tables so that a table comes after the tables its foreign keys reference. Frames
/// hold one table each and are published in this order, so a parent written in the same poll
/// as its children reaches the stream first: a receiver that applies the two in different
/// batches never holds the child without its parent in between. Tables in a cycle (or
/// referencing themselves) keep their order among themselves.
fn parents_first(conn: &Connection, schema: &mut Schema) -> Result<(), DbError> {
    let names: Vec<String> = schema.tables.iter().map(|t| t.name().to_string()).collect();
    let mut parents: Vec<Vec<usize>> = Vec::with_capacity(names.len());
    for name in &names {
        let referenced: Vec<String> = conn
            .prepare_cached("SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?1)")
            .and_then(|mut s| s.query_map([name], |r| r.get(0))?.collect())
            .ctx("read foreign keys")?;
        parents.push(
            referenced
                .iter()
                .filter_map(|p| names.iter().position(|n| n.eq_ignore_ascii_case(p)))
                .filter(|&p| !names[p].eq_ignore_ascii_case(name))
                .collect(),
        );
    }
    if parents.iter().all(Vec::is_empty) {
        return Ok(());
    }
    // repeatedly take the first table (in scan order) whose parents are all placed
    let mut placed = vec![false; names.len()];
    let mut order = Vec::with_capacity(names.len());
    while order.len() < names.len() {
        let next = (0..names.len())
            .find(|&i| !placed[i] && parents[i].iter().all(|&p| placed[p]))
            // a cycle: the first table not yet placed breaks it
            .or_else(|| (0..names.len()).find(|&i| !placed[i]))
            .expect("a table is left");
        placed[next] = true;
        order.push(next);
    }
    let mut tables: Vec<Option<Table>> = std::mem::take(&mut schema.tables)
        .into_iter()
        .map(Some)
        .collect();
    schema.tables = order
        .into_iter()
        .map(|i| tables[i].take().expect("each table once"))
        .collect();
    schema.by_name = schema
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name().to_string(), i))
        .collect();
    Ok(())
}

/// A unique index of a table other than its primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueIndex {
    pub name: String,
    /// Its columns (empty names for expressions).
    pub columns: Vec<String>,
    pub collations: Vec<String>,
    /// Plain columns and not partial: conflicts on it are resolved (see the module doc).
    pub resolvable: bool,
}

/// The unique indexes of `table` other than its primary key (UNIQUE columns, table
/// constraints and `CREATE UNIQUE INDEX`).
pub fn unique_indexes(conn: &Connection, table: &str) -> Result<Vec<UniqueIndex>, DbError> {
    let list: Vec<(String, String, bool)> = conn
        .prepare_cached("SELECT name, origin, partial FROM pragma_index_list(?1) WHERE \"unique\" = 1 ORDER BY name")
        .and_then(|mut s| s.query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .ctx("read unique indexes")?;
    let mut out = Vec::new();
    for (name, origin, partial) in list {
        if origin == "pk" {
            continue;
        }
        let cols: Vec<(i64, Option<String>, String)> = conn
            .prepare_cached(
                "SELECT cid, name, coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno",
            )
            .and_then(|mut s| {
                s.query_map([&name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .ctx("read unique index columns")?;
        let resolvable = !partial && cols.iter().all(|(cid, n, _)| *cid >= 0 && n.is_some());
        out.push(UniqueIndex {
            name,
            columns: cols
                .iter()
                .map(|(_, n, _)| n.clone().unwrap_or_default())
                .collect(),
            collations: cols.into_iter().map(|(_, _, c)| c).collect(),
            resolvable,
        });
    }
    Ok(out)
}

/// Logs once per table and process that its unique constraints other than the primary key are
/// resolved by last-writer-wins (called when capture is installed).
pub fn note_unique_indexes(conn: &Connection, table: &str) -> Result<(), DbError> {
    static NOTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if NOTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|t| t == table)
    {
        return Ok(());
    }
    let idx = unique_indexes(conn, table)?;
    NOTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(table.to_string());
    if idx.is_empty() {
        return Ok(());
    }
    let cols: Vec<String> = idx
        .iter()
        .map(|i| format!("({})", i.columns.join(",")))
        .collect();
    log::warn!(
        "table {table} has unique constraints besides its primary key: {}; when two nodes create the same value under different keys, the row with the higher version wins and the other row is deleted on every node{}",
        cols.join(" "),
        if idx.iter().all(|i| i.resolvable) { "" } else { " (conflicts on a partial or expression index are parked instead)" }
    );
    Ok(())
}

/// Creates our tables and triggers for every replicated table, in one transaction. A table whose
/// triggers were missing (first start, or the application rebuilt it) is resynced: rows inserted,
/// changed or deleted while nothing captured them are queued (see the module doc).
///
/// A table whose columns differ from `schema` (the application changed it after the scan) is
/// left alone: the caller read `PRAGMA schema_version` before its scan and looks again.
pub fn install(
    conn: &mut Connection,
    schema: &Schema,
    recorded: &Recorded,
    node: u64,
) -> Result<Resync, DbError> {
    register_functions(conn)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .ctx("begin install")?;
    let mut queued = Resync::default();
    drop_stray_triggers(&tx, schema)?;
    for t in &schema.tables {
        let (log, ver, keys) = (&t.log, &t.ver, &t.keys);
        let n = t.pk_len();
        let now: Vec<String> = tx
            .prepare(&format!(
                "SELECT name FROM pragma_table_info({})",
                sql_text(t.name())
            ))
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .ctx("read table columns")?;
        if now != t.header.columns {
            log::debug!(
                "table {} changed since the scan: capture is installed at the next look",
                t.name()
            );
            continue;
        }
        // A table whose key changed shape needs new bookkeeping tables.
        let old_keys: Option<i64> = tx
            .query_row("SELECT count(*) FROM pragma_table_info('__hl_log_' || ?1) WHERE name GLOB 'k[0-9]*'", [t.name()], |r| r.get(0))
            .ctx("inspect change log")
            .ok()
            .filter(|&c| c > 0);
        if old_keys.is_some_and(|k| k as usize != n) {
            log::warn!(
                "table {} changed its primary key: resetting its replication state",
                t.name()
            );
            tx.execute_batch(&format!(
                "DROP TABLE IF EXISTS {log}; DROP TABLE IF EXISTS {ver};"
            ))
            .ctx("reset bookkeeping")?;
        }
        let pend = quote(&format!("__hl_pend_{}", t.name()));
        let tomb = quote(&format!("__hl_tomb_{}", t.name()));
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {log}(seq INTEGER PRIMARY KEY, op INTEGER NOT NULL, ts INTEGER NOT NULL, {keys});
             CREATE TABLE IF NOT EXISTS {ver}({keys}, ver INTEGER NOT NULL, node INTEGER NOT NULL, del INTEGER NOT NULL,
                 pending INTEGER NOT NULL, h INTEGER, PRIMARY KEY({keys})) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS {pend} ON {ver}(ver) WHERE {PENDING};
             CREATE INDEX IF NOT EXISTS {tomb} ON {ver}(ver) WHERE {TOMBSTONE};"
        ))
        .ctx("create change log")?;
        let index_sql: Option<String> = tx
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?1",
                [format!("__hl_pend_{}", t.name())],
                |r| r.get(0),
            )
            .ctx("inspect outbox index")?;
        if index_sql.is_some_and(|sql| !sql.ends_with(PENDING)) {
            // an index from before `pending = 2`: it would not cover the outbox query
            tx.execute_batch(&format!(
                "DROP INDEX {pend}; CREATE INDEX {pend} ON {ver}(ver) WHERE {PENDING};"
            ))
            .ctx("rebuild outbox index")?;
        }
        let had_digests: bool = tx
            .query_row(
                &format!(
                    "SELECT count(*) FROM pragma_table_info({}) WHERE name = 'h'",
                    sql_text(&format!("__hl_ver_{}", t.name()))
                ),
                [],
                |r| r.get::<_, i64>(0),
            )
            .ctx("inspect version table")?
            > 0;
        if !had_digests {
            // a version table from before digests: filled below when the triggers were in place
            tx.execute_batch(&format!("ALTER TABLE {ver} ADD COLUMN h INTEGER"))
                .ctx("add row digests")?;
        }
        let mut missing = false;
        for (name, sql) in t.trigger_sql() {
            let current: Option<String> = tx
                .query_row(
                    "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .map(Some)
                .or_else(|e| {
                    if e == rusqlite::Error::QueryReturnedNoRows {
                        Ok(None)
                    } else {
                        Err(e)
                    }
                })
                .ctx("read triggers")?;
            if current.as_deref() != Some(sql.as_str()) {
                missing |= current.is_none();
                tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}; {sql};", quote(&name)))
                    .ctx("install trigger")?;
            }
        }
        note_unique_indexes(&tx, t.name())?;
        if missing {
            let r = resync(&tx, t, recorded.get(t.name()).map(|c| c.as_slice()), node)?;
            if r.total() > 0 {
                log::info!(
                    "capture resynced table={} inserts={} updates={} deletes={} fills={}",
                    t.name(),
                    r.inserts,
                    r.updates,
                    r.deletes,
                    r.fills
                );
            }
            queued.inserts += r.inserts;
            queued.updates += r.updates;
            queued.deletes += r.deletes;
            queued.fills += r.fills;
        } else if !had_digests {
            // The triggers were in place: every change since the last stamp is in the log, so
            // the rows as they are now are what the versions (plus the log) captured.
            tx.execute(
                &format!(
                    "UPDATE {ver} SET h = ({}) WHERE del = 0",
                    digest_of_version_row(t)
                ),
                [],
            )
            .ctx("fill row digests")?;
        }
        if let Some(old) = recorded
            .get(t.name())
            .filter(|old| **old != t.header.columns)
        {
            // Columns came, went or moved: the digests of rows unchanged since (taken over the
            // recorded columns, in their order) are taken again over today's columns, so that
            // the next resync compares like with like.
            let old_cols = old.iter().filter(|c| t.header.columns.contains(c));
            let key = t
                .pk_columns()
                .iter()
                .enumerate()
                .map(|(i, c)| format!("a.{c} IS {ver}.k{i}"))
                .collect::<Vec<_>>()
                .join(" AND ");
            tx.execute(
                &format!(
                    "UPDATE {ver} SET h = ({}) WHERE del = 0 AND EXISTS (SELECT 1 FROM {} a WHERE {key} AND {ver}.h IS {})",
                    digest_of_version_row(t),
                    quote(t.name()),
                    digest_sql_of(old_cols)
                ),
                [],
            )
            .ctx("take row digests again")?;
        }
    }
    tx.commit().ctx("commit install")?;
    Ok(queued)
}

/// Drops our triggers that no longer belong to a replicated table under their own name: after
/// `ALTER TABLE new__t RENAME TO t`, triggers installed on `new__t` (a scan that ran between two
/// steps of a migration made outside a transaction) now fire on `t` and log into `new__t`'s log.
fn drop_stray_triggers(tx: &Connection, schema: &Schema) -> Result<(), DbError> {
    let ours: Vec<(String, String)> = tx
        .prepare("SELECT name, tbl_name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '\\_\\_hl\\_%' ESCAPE '\\'")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .ctx("read triggers")?;
    for (name, table) in ours {
        let expected = schema
            .get(&table)
            .is_some_and(|t| t.trigger_sql().iter().any(|(n, _)| *n == name));
        if !expected {
            log::info!("dropping capture trigger {name} on table {table}: it belongs to no replicated table of that name");
            tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote(&name)))
                .ctx("drop stray trigger")?;
        }
    }
    Ok(())
}

/// `(SELECT digest FROM t a WHERE a.key IS v.k...)` for an UPDATE of the version table.
pub fn digest_of_version_row(t: &Table) -> String {
    let key = t
        .pk_columns()
        .iter()
        .enumerate()
        .map(|(i, c)| format!("a.{c} IS {}.k{i}", t.ver))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "SELECT {} FROM {} a WHERE {key}",
        digest_sql(&t.header),
        quote(t.name())
    )
}

/// Queues what changed in `t` while no trigger captured it (see the module doc). `old`: the
/// columns its digests were computed over (None: all of them).
///
/// A difference in those columns is a write of the application: queued, it gets a fresh
/// version. A difference only in columns added since is the migration filling them (each node
/// runs its own): given a fresh version, it would carry the row's other values, as this node
/// last knew them, over newer writes that other nodes made meanwhile and this node has not
/// applied yet (parked for lack of the column, or still in the stream), and lose them. So it
/// is re-sent just above the row's current version, `(ver + 1, this node)`: it replaces
/// exactly the version it was computed from, and anything newer wins over it. Only rows whose
/// new columns hold something else than what a node on the new schema gives a row image that
/// lacks them (the column's default, else [`Table::zero_fill`], else NULL) are re-sent.
fn resync(
    tx: &Connection,
    t: &Table,
    old: Option<&[String]>,
    node: u64,
) -> Result<Resync, DbError> {
    let h = &t.header;
    // in their recorded order, as the digests were taken: a rebuild may reorder the columns
    // (Django's AlterField puts the altered column last), which changes no row
    let old_cols: Vec<&String> = match old {
        Some(o) => o.iter().filter(|c| h.columns.contains(c)).collect(),
        None => h.columns.iter().collect(),
    };
    let deletes = tx
        .execute(&resync_deletes_sql(t), [])
        .ctx("queue rows deleted without capture")? as u64;
    let digest_old = digest_sql_of(old_cols.iter().copied());
    let updates = tx
        .execute(&resync_updates_sql(t, &digest_old), [])
        .ctx("queue rows changed without capture")? as u64;
    let filled: Vec<String> = h
        .columns
        .iter()
        .enumerate()
        .filter(|(i, c)| !old_cols.contains(c) && !h.pk.contains(&(*i as u16)))
        .map(|(i, c)| {
            format!(
                "a.{} IS ({})",
                quote(c),
                t.defaults[i]
                    .as_deref()
                    .or(t.zero_fill[i])
                    .unwrap_or("NULL")
            )
        })
        .collect();
    // A version without a digest (restored from a snapshot, or from before digests) cannot
    // tell: re-sent the same way, it loses nothing newer and costs one row of traffic.
    let mut which = format!("{}.h IS NULL", t.ver);
    if !filled.is_empty() {
        which = format!(
            "{which} OR ({}.h IS {digest_old} AND NOT ({}))",
            t.ver,
            filled.join(" AND ")
        );
    }
    let key = t
        .pk_columns()
        .iter()
        .enumerate()
        .map(|(i, c)| format!("a.{c} IS {}.k{i}", t.ver))
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!(
        "UPDATE {ver} SET ver = ver + 1, node = ?1, pending = {pending}, h = ({full}) \
         WHERE del = 0 AND EXISTS (SELECT 1 FROM {tbl} a WHERE {key} AND ({which}))",
        ver = t.ver,
        full = digest_of_version_row(t),
        tbl = quote(t.name()),
        pending = if t.publish { PENDING_CHANGE } else { 0 },
    );
    let fills = tx
        .execute(&sql, [node as i64])
        .ctx("re-send rows the migration filled")? as u64;
    let inserts = tx
        .execute(&backfill_sql(t), [])
        .ctx("queue existing rows")? as u64;
    Ok(Resync {
        inserts,
        updates,
        deletes,
        fills,
    })
}

/// `v.k0 IS +a.c0 AND ...`: `+a.c` drops the column's affinity, so keys are compared as stored and
/// the lookup uses the version table's key (with the affinity applied, SQLite scans it for every row).
fn known_key(t: &Table) -> String {
    t.pk_columns()
        .iter()
        .enumerate()
        .map(|(i, c)| format!("v.k{i} IS +a.{c}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Queues the rows of `t` that have no live version here.
fn backfill_sql(t: &Table) -> String {
    let cols = t
        .pk_columns()
        .iter()
        .map(|c| format!("a.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {}(op, ts, {}) SELECT {OP_UPSERT}, {TS_SQL}, {cols} FROM {} a \
         WHERE NOT EXISTS (SELECT 1 FROM {} v WHERE {} AND v.del = 0)",
        t.log,
        t.keys,
        quote(t.name()),
        t.ver,
        known_key(t)
    )
}

/// Queues the rows of `t` whose content (`digest`) differs from the digest of their live
/// version (a version without a digest is left to the fills, see [`resync`]).
fn resync_updates_sql(t: &Table, digest: &str) -> String {
    let cols = t
        .pk_columns()
        .iter()
        .map(|c| format!("a.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {}(op, ts, {}) SELECT {OP_UPSERT}, {TS_SQL}, {cols} FROM {} a JOIN {} v ON {} \
         WHERE v.del = 0 AND v.h IS NOT NULL AND v.h IS NOT {}",
        t.log,
        t.keys,
        quote(t.name()),
        t.ver,
        known_key(t),
        digest
    )
}

/// Queues deletes of the live versions of `t` whose row is gone.
fn resync_deletes_sql(t: &Table) -> String {
    let vkeys = (0..t.pk_len())
        .map(|i| format!("v.k{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let row = t
        .pk_columns()
        .iter()
        .enumerate()
        .map(|(i, c)| format!("a.{c} IS v.k{i}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "INSERT INTO {}(op, ts, {}) SELECT {OP_DELETE}, {TS_SQL}, {vkeys} FROM {} v \
         WHERE v.del = 0 AND NOT EXISTS (SELECT 1 FROM {} a WHERE {row})",
        t.log,
        t.keys,
        t.ver,
        quote(t.name())
    )
}

/// Turns captured log rows into versioned local changes (pending publication) and empties the
/// logs. Must run inside the caller's write transaction; persists nothing else (the caller
/// saves the clock in the same transaction). Returns the number of changes stamped.
pub fn stamp(conn: &Connection, schema: &Schema, hlc: &mut Hlc, node: u64) -> Result<u64, DbError> {
    let mut stamped = 0;
    for t in &schema.tables {
        let n = t.pk_len();
        let mut read = conn
            .prepare_cached(&t.sql.read_log)
            .ctx("read change log")?;
        let mut write = conn
            .prepare_cached(&t.sql.upsert_local_version)
            .ctx("stamp change")?;
        let mut rows = read.query([]).ctx("read change log")?;
        let mut any = false;
        while let Some(r) = rows.next().ctx("read change log")? {
            let op: i64 = r.get(1).ctx("read change log")?;
            let ts: i64 = r.get(2).ctx("read change log")?;
            let mut has_null = false;
            for i in 0..n {
                let k = r.get_ref(3 + i).ctx("read change log")?;
                has_null |= k == ValueRef::Null;
                write
                    .raw_bind_parameter(i + 1, ToSqlOutput::Borrowed(k))
                    .ctx("stamp change")?;
            }
            if has_null {
                if let Some(more) = crate::logging::repeated(&format!("null key {}", t.name())) {
                    log::warn!("table {}: a row with a NULL primary-key value cannot be replicated; declare the key NOT NULL{more}", t.name());
                }
                continue;
            }
            let version = hlc.stamp(crate::hlc::adjust_ms(ts));
            write
                .raw_bind_parameter(n + 1, version as i64)
                .ctx("stamp change")?;
            write
                .raw_bind_parameter(n + 2, node as i64)
                .ctx("stamp change")?;
            write
                .raw_bind_parameter(n + 3, (op == OP_DELETE) as i64)
                .ctx("stamp change")?;
            // 0: versioned, never queued (a table this node does not publish)
            write
                .raw_bind_parameter(n + 4, t.publish as i64)
                .ctx("stamp change")?;
            write.raw_execute().ctx("stamp change")?;
            stamped += 1;
            any = true;
        }
        drop(rows);
        if any && !t.publish {
            if let Some(more) = crate::logging::repeated(&format!("local only {}", t.name())) {
                log::info!(
                    "table {}: local changes stay on this node, not sent ([table.{}] publish = false){more}",
                    t.name(),
                    t.name()
                );
            }
        }
        if any {
            conn.prepare_cached(&t.sql.clear_log)
                .and_then(|mut s| s.execute([]))
                .ctx("clear change log")?;
        }
    }
    Ok(stamped)
}

/// The names of the replicated tables, as the node connection's authorizer sees them.
#[derive(Clone, Default)]
pub struct ReplicatedNames(Arc<RwLock<HashSet<String>>>);

impl ReplicatedNames {
    /// Takes the names of `schema`; returns whether they changed.
    pub fn update(&self, schema: &Schema) -> bool {
        let names: HashSet<String> = schema
            .tables
            .iter()
            .map(|t| t.name().to_ascii_lowercase())
            .collect();
        let mut held = self.0.write().unwrap_or_else(|e| e.into_inner());
        let changed = *held != names;
        *held = names;
        changed
    }

    fn contains(&self, table: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&table.to_ascii_lowercase())
    }
}

/// Guards the node's own connection, through SQLite's authorizer (which sees every statement as
/// it is prepared, trigger programs included). Inside any trigger:
/// - our capture triggers' log inserts are compiled out: the node's writes are never captured
///   ([`discard_echoes`] stays as the guarantee);
/// - the application's triggers' inserts into and updates of replicated tables (`names`) are
///   compiled out: where the application wrote, those effects were captured and travel as
///   changes of their own, so running them again for an applied row would leave each replica
///   with its own version (an `updated_at` stamped with its own time, an audit row of its own).
///   Their writes to other tables (an FTS index, local bookkeeping) run. SQLite cannot skip a
///   DELETE this way: a trigger's deletes from replicated tables still run on replicas.
///
/// The application's connections have no authorizer: there, every trigger runs and captures.
pub fn guard_node_connection(
    conn: &mut Connection,
    names: &ReplicatedNames,
) -> Result<(), DbError> {
    use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
    let names = names.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let Some(trigger) = ctx.accessor else {
            return Authorization::Allow;
        };
        let table = match ctx.action {
            AuthAction::Insert { table_name } | AuthAction::Update { table_name, .. } => table_name,
            _ => return Authorization::Allow,
        };
        if ctx.database_name.is_some_and(|d| d != "main") {
            return Authorization::Allow;
        }
        // our capture triggers' logs, or a replicated table (`scan` never lists `__hl_` tables)
        if (table.starts_with("__hl_log_") && trigger.starts_with("__hl_")) || names.contains(table)
        {
            Authorization::Ignore
        } else {
            Authorization::Allow
        }
    }))
    .ctx("install the authorizer")
}

/// Deletes log rows written inside our own apply transaction: they are echoes of the apply.
pub fn discard_echoes(conn: &Connection, schema: &Schema) -> Result<(), DbError> {
    for t in &schema.tables {
        conn.prepare_cached(&t.sql.clear_log)
            .and_then(|mut s| s.execute([]))
            .ctx("discard echoes")?;
    }
    Ok(())
}

/// Visits the pending local changes of `t` in version order, as the frame operations that carry
/// them. `visit` returns false to stop.
/// A change whose row no longer exists (deleted after the stamp; its delete is still in the log)
/// is passed over. Returns the highest version visited, for [`mark_published`].
pub fn read_pending(
    conn: &Connection,
    t: &Table,
    mut visit: impl FnMut(u64, Op) -> bool,
) -> Result<Option<u64>, DbError> {
    let n = t.pk_len();
    let ncols = t.header.columns.len();
    let mut stmt = conn
        .prepare_cached(&t.sql.read_pending)
        .ctx("read outbox")?;
    let mut rows = stmt.query([]).ctx("read outbox")?;
    let mut last = None;
    while let Some(r) = rows.next().ctx("read outbox")? {
        let version: i64 = r.get(0).ctx("read outbox")?;
        let deleted: bool = r.get(1).ctx("read outbox")?;
        let exists: bool = r.get(2).ctx("read outbox")?;
        let new_key = r.get::<_, i64>(3).ctx("read outbox")? == PENDING_NEW;
        let change = if deleted {
            Op::Delete(
                (0..n)
                    .map(|i| r.get_ref(4 + i).map(value_of))
                    .collect::<Result<_, _>>()
                    .ctx("read outbox")?,
            )
        } else if exists {
            let row = (0..ncols)
                .map(|i| r.get_ref(4 + n + i).map(value_of))
                .collect::<Result<_, _>>()
                .ctx("read outbox")?;
            if new_key {
                Op::Insert(row)
            } else {
                Op::Upsert(row)
            }
        } else {
            last = Some(version as u64);
            continue;
        };
        if !visit(version as u64, change) {
            break;
        }
        last = Some(version as u64);
    }
    Ok(last)
}

/// JetStream acknowledged every pending change of `t` up to `version`: they leave the outbox.
pub fn mark_published(conn: &Connection, t: &Table, version: u64) -> Result<usize, DbError> {
    conn.prepare_cached(&t.sql.mark_published)
        .and_then(|mut s| s.execute([version as i64]))
        .ctx("mark published")
}

/// Number of local changes waiting for publication.
pub fn outbox_len(conn: &Connection, schema: &Schema) -> Result<u64, DbError> {
    let mut total = 0u64;
    for t in &schema.tables {
        let n: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {} WHERE {PENDING}", t.ver),
                [],
                |r| r.get(0),
            )
            .ctx("count outbox")?;
        total += n as u64;
    }
    Ok(total)
}

/// An owned copy of a SQLite value.
pub fn value_of(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(t.to_vec()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// A borrowed SQLite view of a value (for binding, and for [`digest`]).
pub fn value_ref(v: &Value) -> ValueRef<'_> {
    match v {
        Value::Null => ValueRef::Null,
        Value::Integer(i) => ValueRef::Integer(*i),
        Value::Real(f) => ValueRef::Real(*f),
        Value::Text(t) => ValueRef::Text(t),
        Value::Blob(b) => ValueRef::Blob(b),
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(value_ref(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parents before children, whatever order the tables were created in; a cycle is broken.
    #[test]
    fn tables_are_ordered_parents_first() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE line(id INTEGER PRIMARY KEY, o INTEGER REFERENCES orders(id), p INTEGER REFERENCES product(id));
             CREATE TABLE orders(id INTEGER PRIMARY KEY, c INTEGER REFERENCES customer(id));
             CREATE TABLE product(id INTEGER PRIMARY KEY);
             CREATE TABLE customer(id INTEGER PRIMARY KEY, boss INTEGER REFERENCES customer(id));
             CREATE TABLE a(id INTEGER PRIMARY KEY, b INTEGER REFERENCES b(id));
             CREATE TABLE b(id INTEGER PRIMARY KEY, a INTEGER REFERENCES a(id));",
        )
        .unwrap();
        let cfg = Config::parse("db_path = \"x.db\"").unwrap();
        let schema = scan(&conn, &cfg).unwrap();
        let order: Vec<&str> = schema.tables.iter().map(|t| t.name()).collect();
        let at = |n: &str| order.iter().position(|t| *t == n).unwrap();
        assert!(at("customer") < at("orders"), "{order:?}");
        assert!(
            at("orders") < at("line") && at("product") < at("line"),
            "{order:?}"
        );
        assert_eq!(
            order.len(),
            6,
            "a cycle places its tables all the same: {order:?}"
        );
        assert_eq!(schema.get("line").unwrap().name(), "line");
    }

    /// An ORM's temporary copy of a table is skipped as such, not as bookkeeping.
    #[test]
    fn migration_temp_tables_and_bookkeeping_are_skipped_with_their_own_reasons() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY); CREATE TABLE new__t(id INTEGER PRIMARY KEY);
             CREATE TABLE _alembic_tmp_t(id INTEGER PRIMARY KEY);
             CREATE TABLE alembic_version(version_num TEXT PRIMARY KEY);",
        )
        .unwrap();
        let cfg = Config::parse("db_path = \"x.db\"").unwrap();
        let schema = scan(&conn, &cfg).unwrap();
        assert_eq!(schema.tables.len(), 1);
        let why = |n: &str| {
            schema
                .skipped
                .iter()
                .find(|(t, _)| t == n)
                .map(|(_, w)| w.as_str())
        };
        assert_eq!(why("new__t"), Some(MIGRATION_TEMP));
        assert_eq!(why("_alembic_tmp_t"), Some(MIGRATION_TEMP));
        assert_eq!(why("alembic_version"), Some(MIGRATION_BOOKKEEPING));
    }

    /// The backfill looks each row up in the version table by key: a scan per row made a
    /// restored 1 GiB database take minutes to start.
    #[test]
    fn backfill_looks_versions_up_by_key() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE u(a TEXT, b INT, PRIMARY KEY(a, b)) WITHOUT ROWID;")
            .unwrap();
        let cfg = Config::parse("db_path = \"x.db\"").unwrap();
        let schema = scan(&conn, &cfg).unwrap();
        install(&mut conn, &schema, &Recorded::new(), 1).unwrap();
        assert_eq!(schema.tables.len(), 2);
        for t in &schema.tables {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {}", backfill_sql(t)))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let v = plan
                .iter()
                .find(|p| p.contains(" v "))
                .unwrap_or_else(|| panic!("{plan:?}"));
            assert!(
                v.starts_with("SEARCH") && v.contains("PRIMARY KEY"),
                "table {}: {plan:?}",
                t.name()
            );
        }
    }

    /// The resync looks rows and versions up by key too: it runs at every table rebuild.
    #[test]
    fn resync_looks_rows_and_versions_up_by_key() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE u(a TEXT, b INT, c, PRIMARY KEY(a, b)) WITHOUT ROWID;")
            .unwrap();
        let cfg = Config::parse("db_path = \"x.db\"").unwrap();
        let schema = scan(&conn, &cfg).unwrap();
        install(&mut conn, &schema, &Recorded::new(), 1).unwrap();
        for t in &schema.tables {
            for (sql, inner) in [
                (resync_updates_sql(t, &digest_sql(&t.header)), " v "),
                (resync_deletes_sql(t), " a "),
            ] {
                let plan: Vec<String> = conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .unwrap()
                    .query_map([], |r| r.get::<_, String>(3))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let step = plan
                    .iter()
                    .find(|p| p.contains(inner))
                    .unwrap_or_else(|| panic!("{plan:?}"));
                assert!(
                    step.starts_with("SEARCH") && step.contains("PRIMARY KEY"),
                    "table {}: {plan:?}",
                    t.name()
                );
            }
        }
    }

    fn logged(conn: &Connection, table: &str) -> Vec<(i64, i64)> {
        conn.prepare(&format!(
            "SELECT op, k0 FROM __hl_log_{table} ORDER BY k0, op"
        ))
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// A table rebuilt the way ORMs do it loses our triggers; what the application wrote before
    /// they were back is found by comparing the table with its versions. A rebuild that changes
    /// no content queues nothing, nor does a column added with NULLs.
    #[test]
    fn a_rebuilt_table_is_resynced_with_its_versions() {
        let path = std::env::temp_dir().join(format!("hl-resync-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, r REAL); INSERT INTO t VALUES (1, 'a', 1.5), (2, 'b', 2.5), (3, 'c', NULL), (4, 'd', 0.0);")
            .unwrap();
        let mut node = crate::db::open(&path).unwrap();
        let cfg = Config::parse("db_path = \"x.db\"").unwrap();
        let schema = scan(&node, &cfg).unwrap();
        assert_eq!(
            install(&mut node, &schema, &Recorded::new(), 1).unwrap(),
            Resync {
                inserts: 4,
                ..Default::default()
            }
        );
        let mut hlc = Hlc::new(0);
        stamp(&node, &schema, &mut hlc, 1).unwrap();
        let app = Connection::open(&path).unwrap();
        let rebuild = |extra: &str, copy: &str| {
            format!(
                "BEGIN; CREATE TABLE new__t(id INTEGER PRIMARY KEY, v TEXT, r REAL{extra}); INSERT INTO new__t({copy}) SELECT {copy} FROM t; \
                 DROP TABLE t; ALTER TABLE new__t RENAME TO t; COMMIT;"
            )
        };
        // a pure rebuild and an added nullable column change no row: nothing to send
        app.execute_batch(&rebuild(", extra INTEGER", "id, v, r"))
            .unwrap();
        let schema = scan(&node, &cfg).unwrap();
        assert_eq!(
            install(&mut node, &schema, &Recorded::new(), 1).unwrap(),
            Resync::default()
        );
        // a rebuild, then writes before the triggers are back: one of each, and a real value
        // rewritten to the same bits is no change
        app.execute_batch(&rebuild(", extra INTEGER", "id, v, r"))
            .unwrap();
        app.execute_batch("UPDATE t SET v = 'B' WHERE id = 2; UPDATE t SET r = 0.0 WHERE id = 4; DELETE FROM t WHERE id = 3; INSERT INTO t VALUES (5, 'e', NULL, NULL); UPDATE t SET extra = 7 WHERE id = 1;")
            .unwrap();
        let schema = scan(&node, &cfg).unwrap();
        assert_eq!(
            install(&mut node, &schema, &Recorded::new(), 1).unwrap(),
            Resync {
                inserts: 1,
                updates: 2,
                deletes: 1,
                fills: 0
            }
        );
        assert_eq!(logged(&node, "t"), vec![(1, 1), (1, 2), (2, 3), (1, 5)]);
        // stamped, the digests are current again: a second look finds nothing
        stamp(&node, &schema, &mut hlc, 1).unwrap();
        app.execute_batch(&rebuild(", extra INTEGER", "id, v, r, extra"))
            .unwrap();
        let schema = scan(&node, &cfg).unwrap();
        assert_eq!(
            install(&mut node, &schema, &Recorded::new(), 1).unwrap(),
            Resync::default()
        );
        drop((node, app));
        let _ = std::fs::remove_file(&path);
    }

    /// A column the migration added and filled is no write of the application: rows that differ
    /// only there are re-sent just above their version (newer writes elsewhere win over them),
    /// and only where a node lacking the column's value would give them another one.
    #[test]
    fn rows_a_migration_filled_are_resent_just_above_their_version() {
        let path = std::env::temp_dir().join(format!("hl-fill-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');")
            .unwrap();
        let mut node = crate::db::open(&path).unwrap();
        let cfg = Config::parse("db_path = \"x.db\"").unwrap();
        let schema = scan(&node, &cfg).unwrap();
        let recorded: Recorded = [("t".to_string(), vec!["id".to_string(), "v".to_string()])]
            .into_iter()
            .collect();
        install(&mut node, &schema, &recorded, 9).unwrap();
        let mut hlc = Hlc::new(0);
        stamp(&node, &schema, &mut hlc, 9).unwrap();
        node.execute_batch("UPDATE __hl_ver_t SET pending = 0, node = 4")
            .unwrap();
        let before: Vec<i64> = node
            .prepare("SELECT ver FROM __hl_ver_t ORDER BY k0")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|v| v.unwrap())
            .collect();
        // Django's AddField(default=5): a rebuild filling a NOT NULL column without a SQL
        // default; a nullable column left NULL; row 3 filled with the zero a lacking image gets
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "BEGIN; CREATE TABLE new__t(id INTEGER PRIMARY KEY, v TEXT, qty INTEGER NOT NULL, note TEXT); \
                 INSERT INTO new__t SELECT id, v, CASE id WHEN 3 THEN 0 ELSE 5 END, NULL FROM t; DROP TABLE t; ALTER TABLE new__t RENAME TO t; COMMIT; \
                 UPDATE t SET v = 'B' WHERE id = 2;",
            )
            .unwrap();
        let schema = scan(&node, &cfg).unwrap();
        assert_eq!(
            install(&mut node, &schema, &recorded, 9).unwrap(),
            Resync {
                updates: 1,
                fills: 1,
                ..Default::default()
            }
        );
        let after: Vec<(i64, i64, i64)> = node
            .prepare("SELECT ver, node, pending FROM __hl_ver_t ORDER BY k0")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|v| v.unwrap())
            .collect();
        assert_eq!(
            after,
            vec![(before[0] + 1, 9, 1), (before[1], 4, 0), (before[2], 4, 0)]
        );
        assert_eq!(
            logged(&node, "t"),
            vec![(1, 2)],
            "the application's update gets a fresh stamp"
        );
        // with its digest current, the next look finds nothing
        stamp(&node, &schema, &mut hlc, 9).unwrap();
        node.execute_batch("DROP TRIGGER __hl_i_t").unwrap();
        let now: Recorded = [(
            "t".to_string(),
            schema.get("t").unwrap().header.columns.clone(),
        )]
        .into_iter()
        .collect();
        assert_eq!(
            install(&mut node, &schema, &now, 9).unwrap(),
            Resync::default()
        );
        drop(node);
        let _ = std::fs::remove_file(&path);
    }

    /// Django's AlterField on SQLite rebuilds the table with the altered column last: the same
    /// rows in another column order are no write. Re-sent with fresh versions, this node's copy
    /// would win over newer writes other nodes made meanwhile (a deleted row would come back).
    #[test]
    fn a_rebuild_that_only_reorders_columns_queues_nothing() {
        let path = std::env::temp_dir().join(format!("hl-reorder-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, code TEXT, v TEXT); INSERT INTO t VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'c', 'z');")
            .unwrap();
        let mut node = crate::db::open(&path).unwrap();
        let cfg = Config::parse("db_path = \"x.db\"").unwrap();
        let schema = scan(&node, &cfg).unwrap();
        let cols = |s: &Schema| -> Recorded {
            [("t".to_string(), s.get("t").unwrap().header.columns.clone())]
                .into_iter()
                .collect()
        };
        let recorded = cols(&schema);
        install(&mut node, &schema, &recorded, 9).unwrap();
        let mut hlc = Hlc::new(0);
        stamp(&node, &schema, &mut hlc, 9).unwrap();
        node.execute_batch("UPDATE __hl_ver_t SET pending = 0, node = 4")
            .unwrap();
        // AlterField(code, max_length=80): code moves last; the application then updates row 2
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "PRAGMA foreign_keys = OFF; BEGIN; CREATE TABLE new__t(id INTEGER PRIMARY KEY, v TEXT, code varchar(80)); \
                 INSERT INTO new__t(id, v, code) SELECT id, v, code FROM t; DROP TABLE t; ALTER TABLE new__t RENAME TO t; COMMIT; \
                 UPDATE t SET v = 'Y' WHERE id = 2;",
            )
            .unwrap();
        let schema = scan(&node, &cfg).unwrap();
        assert_eq!(schema.get("t").unwrap().header.columns, ["id", "v", "code"]);
        assert_eq!(
            install(&mut node, &schema, &recorded, 9).unwrap(),
            Resync {
                updates: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            logged(&node, "t"),
            vec![(1, 2)],
            "only the application's update"
        );
        // the digests are now over the new order: the next look finds nothing
        stamp(&node, &schema, &mut hlc, 9).unwrap();
        node.execute_batch("DROP TRIGGER __hl_i_t").unwrap();
        assert_eq!(
            install(&mut node, &schema, &cols(&schema), 9).unwrap(),
            Resync::default()
        );
        drop(node);
        let _ = std::fs::remove_file(&path);
    }

    /// A look between two steps of a rebuild run outside a transaction: the temporary table is
    /// not captured, and triggers a rename carried onto the table are dropped.
    #[test]
    fn a_rebuild_seen_half_done_leaves_no_stray_capture() {
        let path = std::env::temp_dir().join(format!("hl-stray-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
            )
            .unwrap();
        let mut node = crate::db::open(&path).unwrap();
        let cfg = Config::parse("db_path = \"x.db\"").unwrap();
        let schema = scan(&node, &cfg).unwrap();
        install(&mut node, &schema, &Recorded::new(), 1).unwrap();
        stamp(&node, &schema, &mut Hlc::new(0), 1).unwrap();
        let app = Connection::open(&path).unwrap();
        app.execute_batch("CREATE TABLE new__t(id INTEGER PRIMARY KEY, v TEXT, w TEXT); INSERT INTO new__t(id, v) SELECT id, v FROM t;").unwrap();
        let half = scan(&node, &cfg).unwrap();
        assert_eq!(
            half.tables.iter().map(|t| t.name()).collect::<Vec<_>>(),
            vec!["t"],
            "{:?}",
            half.skipped
        );
        // an older node (or a table listed in `tables`) did capture it: a trigger on new__t
        node.execute_batch(
            "CREATE TRIGGER __hl_i_new__t AFTER INSERT ON new__t BEGIN SELECT 1; END;",
        )
        .unwrap();
        app.execute_batch(
            "DROP TABLE t; ALTER TABLE new__t RENAME TO t; UPDATE t SET v = 'b' WHERE id = 1;",
        )
        .unwrap();
        let schema = scan(&node, &cfg).unwrap();
        assert_eq!(
            install(&mut node, &schema, &Recorded::new(), 1).unwrap(),
            Resync {
                updates: 1,
                ..Default::default()
            }
        );
        let triggers: Vec<String> = node
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|v| v.unwrap())
            .collect();
        assert_eq!(triggers, vec!["__hl_d_t", "__hl_i_t", "__hl_u_t"]);
        drop((node, app));
        let _ = std::fs::remove_file(&path);
    }

    /// Versions without a digest (restored from a snapshot) are re-sent just above their version
    /// after a rebuild, never with a fresh one: that could carry old values over newer writes.
    #[test]
    fn versions_without_a_digest_are_resent_just_above_their_version() {
        let path = std::env::temp_dir().join(format!("hl-nodigest-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');").unwrap();
        let mut node = crate::db::open(&path).unwrap();
        let cfg = Config::parse("db_path = \"x.db\"").unwrap();
        let schema = scan(&node, &cfg).unwrap();
        install(&mut node, &schema, &Recorded::new(), 9).unwrap();
        stamp(&node, &schema, &mut Hlc::new(0), 9).unwrap();
        node.execute_batch(
            "UPDATE __hl_ver_t SET h = NULL, pending = 0 WHERE k0 = 1; DROP TRIGGER __hl_u_t;",
        )
        .unwrap();
        let ver: i64 = node
            .query_row("SELECT ver FROM __hl_ver_t WHERE k0 = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            install(&mut node, &schema, &Recorded::new(), 9).unwrap(),
            Resync {
                fills: 1,
                ..Default::default()
            }
        );
        let after: (i64, i64) = node
            .query_row(
                "SELECT ver, pending FROM __hl_ver_t WHERE k0 = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(after, (ver + 1, 1));
        drop(node);
        let _ = std::fs::remove_file(&path);
    }

    /// The digest is stored: its value for a given row must never change between versions.
    #[test]
    fn the_digest_is_stable() {
        let conn = Connection::open_in_memory().unwrap();
        register_functions(&conn).unwrap();
        let d: i64 = conn
            .query_row(
                "SELECT __hl_digest('id', 1, 'V', 'x', 'r', 1.5, 'b', x'00', 'n', NULL)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let same: i64 = conn
            .query_row(
                "SELECT __hl_digest('id', 1, 'v', 'x', 'r', 1.5, 'b', x'00')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(d, same, "NULL values and the case of names do not count");
        let text: i64 = conn
            .query_row(
                "SELECT __hl_digest('id', '1', 'v', 'x', 'r', 1.5, 'b', x'00')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_ne!(d, text, "the storage class counts");
        assert_eq!(
            d, 8083825602864067539,
            "a stored digest never changes meaning"
        );
    }

    /// A guarded connection's writes leave nothing in the change log, an application's
    /// connection to the same file still captures; the application's triggers run on both, but on
    /// the guarded one they do not write replicated tables.
    #[test]
    fn guarded_connection_is_not_captured_but_the_application_is() {
        let path = std::env::temp_dir().join(format!("hl-guard-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut node = Connection::open(&path).unwrap();
        node.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v, stamp); CREATE TABLE audit(n INTEGER PRIMARY KEY);
             CREATE TABLE local_audit(n INTEGER);
             CREATE TRIGGER app_audit AFTER INSERT ON t BEGIN
                 INSERT INTO audit VALUES (NEW.id); INSERT INTO local_audit VALUES (NEW.id); END;
             CREATE TRIGGER app_stamp AFTER UPDATE OF v ON t BEGIN UPDATE t SET stamp = 'app' WHERE id = NEW.id; END;",
        )
        .unwrap();
        let cfg = Config::parse("db_path = \"x.db\"\nexclude_tables = [\"local_audit\"]").unwrap();
        let schema = scan(&node, &cfg).unwrap();
        assert_eq!(
            schema.tables.iter().map(|t| t.name()).collect::<Vec<_>>(),
            vec!["audit", "t"]
        );
        install(&mut node, &schema, &Recorded::new(), 1).unwrap();
        let names = ReplicatedNames::default();
        assert!(names.update(&schema));
        assert!(!names.update(&schema));
        guard_node_connection(&mut node, &names).unwrap();
        node.execute_batch("INSERT INTO t VALUES (1, 'node', NULL); UPDATE t SET v = 'node2' WHERE id = 1; INSERT INTO t VALUES (3, 'x', NULL); DELETE FROM t WHERE id = 3;")
            .unwrap();
        let app = Connection::open(&path).unwrap();
        app.execute_batch(
            "INSERT INTO t VALUES (2, 'app', NULL); UPDATE t SET v = 'app2' WHERE id = 1;",
        )
        .unwrap();
        let all = |sql: &str| -> Vec<String> {
            node.prepare(sql)
                .unwrap()
                .query_map([], |r| r.get::<_, rusqlite::types::Value>(0))
                .unwrap()
                .map(|v| format!("{:?}", v.unwrap()))
                .collect()
        };
        // only the application's writes are logged: its insert of 2, its update of 1, and the
        // trigger writes they caused (audit 2; t 1 again, stamped)
        assert_eq!(
            all("SELECT k0 FROM __hl_log_t ORDER BY seq"),
            vec!["Integer(2)", "Integer(1)", "Integer(1)"]
        );
        assert_eq!(
            all("SELECT k0 FROM __hl_log_audit ORDER BY seq"),
            vec!["Integer(2)"]
        );
        // replicated tables: the node's writes did not run the application's trigger effects
        assert_eq!(all("SELECT n FROM audit ORDER BY n"), vec!["Integer(2)"]);
        assert_eq!(
            all("SELECT coalesce(stamp, 'none') FROM t ORDER BY id"),
            vec!["Text(\"app\")", "Text(\"none\")"]
        );
        // a table that is not replicated: every trigger write happened
        assert_eq!(
            all("SELECT n FROM local_audit ORDER BY rowid"),
            vec!["Integer(1)", "Integer(3)", "Integer(2)"]
        );
        drop((node, app));
        let _ = std::fs::remove_file(&path);
    }
}
