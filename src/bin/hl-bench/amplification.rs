//! DB write amplification: bytes written per captured change (the application plus the writer
//! node) against the same plain insert with no node, from `/proc/PID/io`.
//!
//! Both runs insert the same rows in 100-row transactions and end with a
//! `wal_checkpoint(TRUNCATE)` from the application, so the WAL's content reaches the database
//! file inside the window in both. `write_bytes` (page cache dirtied on the block device) is the
//! primary figure: it counts files only. `wchar` counts bytes passed to write(2)/pwrite(2); the
//! NATS client sends with sendto(2), which Linux does not count there, so for the node too it
//! is the bytes SQLite wrote (and its log lines), a cross-check of `write_bytes`.
//!
//! The node serves `/metrics` here, which also counts the statements its connection starts:
//! their count over the window, per captured change, is the statements-per-change figure.

use std::path::Path;
use std::time::Duration;

use crate::app::{app_conn, create_db, insert_rows, reader, Payloads, ROW_TABLE};
use crate::ceilings::stream_stats;
use crate::harness::{read_io, wait_for, Io};
use crate::replication::{converge_timeout, Cluster, ROWS_PER_TX};

/// Probe interval while waiting for the node to empty its outbox.
const DRAIN_PROBE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, Default)]
pub struct Amplification {
    pub rows: u64,
    /// The application alone, no node, no triggers.
    pub plain: Io,
    /// The application with triggers, while its node captured and published.
    pub app: Io,
    pub node: Io,
    /// SQL statements the writer node's connection started per change it captured (its
    /// `sqlite_statements_total` and `changes_captured_total` over the window).
    pub statements_per_change: f64,
}

impl Amplification {
    pub fn plain_per_row(&self) -> f64 {
        self.plain.write_bytes as f64 / self.rows as f64
    }
    pub fn captured_per_row(&self) -> f64 {
        (self.app.write_bytes + self.node.write_bytes) as f64 / self.rows as f64
    }
    pub fn ratio(&self) -> f64 {
        self.captured_per_row() / self.plain_per_row()
    }
    pub fn wchar_ratio(&self) -> f64 {
        (self.app.wchar + self.node.wchar) as f64 / self.plain.wchar as f64
    }
}

/// Measures the plain baseline in `dir`, then the same rows with `cluster`'s single node.
/// No other thread of this process may write while it runs.
pub fn measure(
    dir: &Path,
    cluster: &Cluster,
    url: &str,
    rows: u64,
    row_bytes: usize,
) -> Result<Amplification, String> {
    let payloads = Payloads::new(row_bytes);

    let plain_db = dir.join("amp-plain.db");
    create_db(&plain_db, ROW_TABLE)?;
    let conn = app_conn(&plain_db)?;
    let before = read_io(None)?;
    insert_rows(&conn, 1, rows, ROWS_PER_TX, &payloads)?;
    checkpoint(&conn)?;
    let plain = read_io(None)? - before;
    drop(conn);

    let node = &cluster.nodes[0];
    let conn = app_conn(&node.db)?;
    let (stmts_before, captured_before) = (
        node.counter("sqlite_statements_total")?,
        node.counter("changes_captured_total")?,
    );
    let (app_before, node_before) = (read_io(None)?, read_io(Some(node.pid))?);
    insert_rows(&conn, 1, rows, ROWS_PER_TX, &payloads)?;
    wait_drained(&node.db, rows)?;
    // The node reads its own frames back and moves its cursor: wait for that write too.
    let last_seq = stream_stats(url, &cluster.stream, &cluster.subject)?.last_seq as i64;
    let watch = reader(&node.db)?;
    wait_for(
        "writer node's cursor at the stream's end",
        Duration::from_secs(60),
        DRAIN_PROBE,
        || {
            let cursor: Option<i64> = watch
                .query_row(
                    "SELECT value FROM __hl_meta WHERE key = 'cursor'",
                    [],
                    |r| r.get(0),
                )
                .ok();
            Ok((cursor.unwrap_or(0) >= last_seq).then_some(()))
        },
    )?;
    checkpoint(&conn)?;
    let (app, node_io) = (
        read_io(None)? - app_before,
        read_io(Some(node.pid))? - node_before,
    );
    let statements = node.counter("sqlite_statements_total")? - stmts_before;
    let captured = node.counter("changes_captured_total")? - captured_before;
    Ok(Amplification {
        rows,
        plain,
        app,
        node: node_io,
        statements_per_change: statements / captured,
    })
}

fn checkpoint(conn: &rusqlite::Connection) -> Result<(), String> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| format!("checkpoint: {e}"))
}

/// Waits until every row was stamped and published (the change log and the outbox are empty).
fn wait_drained(db: &Path, rows: u64) -> Result<(), String> {
    let conn = reader(db)?;
    wait_for(
        "writer node's outbox empty",
        converge_timeout(rows),
        DRAIN_PROBE,
        || {
            let q = conn.query_row(
            "SELECT (SELECT count(*) FROM __hl_log_t), (SELECT count(*) FROM __hl_ver_t WHERE pending > 0), (SELECT count(*) FROM __hl_ver_t)",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
        );
            match q {
                Ok((0, 0, n)) if n >= rows as i64 => Ok(Some(())),
                Ok(_) => Ok(None),
                Err(e) if harmonylite::db::is_busy(&e) => Ok(None),
                Err(e) => Err(format!("{}: read outbox: {e}", db.display())),
            }
        },
    )
}
