//! The sidecar's connection to the application's database and its own small state table.
//!
//! Everything HarmonyLite keeps lives in the same file as the application's data, in tables
//! named `__hl_*`, so one SQLite transaction can move data and bookkeeping together.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::state::NODE_ID_KEY;

/// How long a statement waits for the application's write lock before reporting "locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

pub const META_TABLE: &str = "__hl_meta";

#[derive(Debug)]
pub enum DbError {
    /// The database file does not exist.
    Missing(PathBuf),
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// A statement failed; `op` names what we were doing.
    Sql {
        op: &'static str,
        source: rusqlite::Error,
    },
}

impl DbError {
    /// The file system is full (SQLite's `SQLITE_FULL`): freeing space lets the write succeed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            DbError::Sql { source, .. } | DbError::Open { source, .. } => {
                source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            DbError::Missing(_) => false,
        }
    }

    /// Locked or busy: retrying later will likely work.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Sql { source, .. } | DbError::Open { source, .. } => is_busy(source),
            DbError::Missing(_) => false,
        }
    }
}

pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Missing(p) => write!(
                f,
                "database {} does not exist: start the application first so it creates its tables, or fix db_path",
                p.display()
            ),
            DbError::Open { path, source } => write!(f, "cannot open database {}: {source}", path.display()),
            DbError::Sql { op, source } if is_busy(source) => write!(
                f,
                "{op}: the database stayed locked for {}s (another process holds a write transaction); will retry",
                BUSY_TIMEOUT.as_secs()
            ),
            DbError::Sql { op, source } => write!(f, "{op}: {source}"),
        }
    }
}

impl std::error::Error for DbError {}

/// Attaches what we were doing to a rusqlite error.
pub trait Context<T> {
    fn ctx(self, op: &'static str) -> Result<T, DbError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn ctx(self, op: &'static str) -> Result<T, DbError> {
        self.map_err(|source| DbError::Sql { op, source })
    }
}

/// Opens the application's existing database for the sidecar. WAL mode is switched on (it
/// persists in the file and lets the application read while we write).
/// A read-only connection (status, the verify service): a missing file is [`DbError::Missing`],
/// and a writer holding the lock is waited for up to [`BUSY_TIMEOUT`].
pub fn open_read_only(path: &Path) -> Result<Connection, DbError> {
    if !path.exists() {
        return Err(DbError::Missing(path.to_path_buf()));
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    conn.busy_timeout(BUSY_TIMEOUT).ctx("set busy timeout")?;
    Ok(conn)
}

pub fn open(path: &Path) -> Result<Connection, DbError> {
    if !path.exists() {
        return Err(DbError::Missing(path.to_path_buf()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| DbError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(BUSY_TIMEOUT).ctx("set busy timeout")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!("journal mode is {mode}, not wal: the application may see more lock waits");
    }
    // Foreign keys stay off on our connection: the origin already captured every cascaded
    // change, so the replica receives them as explicit changes and must not cascade again.
    // A 512 KiB page cache (SQLite's default is 2 MiB) keeps a node's steady RSS small; the
    // OS page cache still holds the file.
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; PRAGMA recursive_triggers=OFF; PRAGMA cache_size=-512;")
        .ctx("set connection pragmas")?;
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {META_TABLE}(key TEXT PRIMARY KEY, value) WITHOUT ROWID"
    ))
    .ctx("create the state table")?;
    Ok(conn)
}

pub fn get_meta(conn: &Connection, key: &str) -> Result<Option<i64>, DbError> {
    conn.prepare_cached(&format!("SELECT value FROM {META_TABLE} WHERE key = ?1"))
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .ctx("read state")
}

/// Writes a value of `__hl_meta` (an integer or a text).
pub fn set_meta(conn: &Connection, key: &str, value: impl rusqlite::ToSql) -> Result<(), DbError> {
    conn.prepare_cached(&format!(
        "INSERT INTO {META_TABLE}(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    ))
    .and_then(|mut s| s.execute(rusqlite::params![key, value]))
    .ctx("write state")?;
    Ok(())
}

/// The stream position this database has applied up to (0: nothing yet). It moves with the
/// data it stands for, in the same transaction (see `apply`).
pub fn cursor(conn: &Connection) -> Result<u64, DbError> {
    Ok(get_meta(conn, crate::state::CURSOR_KEY)?.unwrap_or(0) as u64)
}

pub fn set_cursor(conn: &Connection, seq: u64) -> Result<(), DbError> {
    set_meta(conn, crate::state::CURSOR_KEY, seq as i64)
}

/// A text value of `__hl_meta` (None when unset or not text).
pub fn get_meta_text(conn: &Connection, key: &str) -> Result<Option<String>, DbError> {
    conn.prepare_cached(&format!(
        "SELECT value FROM {META_TABLE} WHERE key = ?1 AND typeof(value) = 'text'"
    ))
    .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
    .ctx("read state")
}

pub fn delete_meta(conn: &Connection, key: &str) -> Result<(), DbError> {
    conn.prepare_cached(&format!("DELETE FROM {META_TABLE} WHERE key = ?1"))
        .and_then(|mut s| s.execute([key]))
        .ctx("write state")?;
    Ok(())
}

/// A column's type affinity, from its declared type, by SQLite's rules (section 3.1 of
/// "Datatypes In SQLite"): what SQLite does to the values stored in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    /// The value a NOT NULL column without a default takes where a row image lacks it: the
    /// same on every node (SQL text).
    pub fn zero(self) -> &'static str {
        match self {
            Affinity::Integer | Affinity::Numeric => "0",
            Affinity::Real => "0.0",
            Affinity::Text => "''",
            Affinity::Blob => "x''",
        }
    }
}

pub fn affinity(decl: &str) -> Affinity {
    let d = decl.to_ascii_uppercase();
    if d.contains("INT") {
        Affinity::Integer
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        Affinity::Text
    } else if d.contains("BLOB") || d.trim().is_empty() {
        Affinity::Blob
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// Quotes an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `PRAGMA data_version`: changes when another connection commits.
pub fn data_version(conn: &Connection) -> Result<i64, DbError> {
    conn.prepare_cached("PRAGMA data_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .ctx("read data_version")
}

/// `PRAGMA schema_version`: changes with every schema change.
pub fn schema_version(conn: &Connection) -> Result<i64, DbError> {
    conn.prepare_cached("PRAGMA schema_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .ctx("read schema_version")
}

/// The node id: configured, else persisted, else derived from the machine id and the database
/// path (so several nodes on one machine differ) and persisted.
pub fn node_id(conn: &Connection, configured: Option<u64>, db_path: &Path) -> Result<u64, DbError> {
    if let Some(id) = configured {
        set_meta(conn, NODE_ID_KEY, id as i64)?;
        return Ok(id);
    }
    if let Some(id) = get_meta(conn, NODE_ID_KEY)? {
        return Ok(id as u64);
    }
    let machine = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/var/lib/dbus/machine-id"))
        .unwrap_or_default();
    let salt = if machine.trim().is_empty() {
        // no machine id: fall back to randomness from the clock and the process
        format!("{}-{}", crate::hlc::now_ms(), std::process::id())
    } else {
        machine.trim().to_string()
    };
    let canonical = db_path
        .canonicalize()
        .unwrap_or_else(|_| db_path.to_path_buf());
    let seed = format!("{salt}\0{}", canonical.display());
    // 53 bits: readable, positive as i64 and exact in JSON.
    let id = (crate::frame::fnv64(seed.as_bytes()) & ((1 << 53) - 1)).max(1);
    set_meta(conn, NODE_ID_KEY, id as i64)?;
    Ok(id)
}
