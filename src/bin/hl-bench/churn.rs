//! Storage under churn: the rolling-window workload of a sensor gateway (insert readings, delete
//! the ones older than a window) on a 3-node cluster. The figures say whether the database
//! files stop growing once the window is full, and what HarmonyLite's own tables cost per live
//! row at the end (`dbstat`: the pages of every `__hl_*` table and index).
//!
//! The nodes run with `[replication_log] horizon_interval_ms = 1000` so that a run of minutes
//! shows tombstones being collected; with the default (5 minutes) they live up to about two
//! intervals longer (see BENCHMARKS.md).

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::params;

use crate::app::{app_conn, reader, Payloads, ROW_TABLE};
use crate::harness::wait_for;
use crate::replication::{Cluster, Env, ROWS_PER_TX};

/// Rows the application keeps: every insert past it deletes the oldest.
pub const WINDOW: u64 = 10_000;
/// Inserts per second the application keeps to (each also deletes a row): a steady rate the
/// writer publishes as it goes, as a gateway's sensors do. Flat out, the writer's outbox backs
/// up, and its oldest unpublished change (rightly) holds every tombstone back.
pub const RATE: u64 = 10_000;
/// Config of every node in the run.
const EXTRA: &str = "[replication_log]\nhorizon_interval_ms = 1000\n";
/// How long the cluster may take to agree and collect its tombstones after the last write.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Default)]
pub struct Churn {
    pub inserts: u64,
    pub window: u64,
    pub row_bytes: usize,
    pub rate: u64,
    pub elapsed_secs: f64,
    /// Largest database file among the nodes at 25, 50, 75 and 100 % of the inserts.
    pub file_bytes: [u64; 4],
    /// Growth from 25 % to the end, percent (the window fills in the first 1 %).
    pub growth_after_window_pct: f64,
    /// `__hl_*` bytes per live row at the end, largest among the nodes.
    pub overhead_bytes_per_live_row: f64,
    /// Application table bytes per live row, for scale.
    pub table_bytes_per_live_row: f64,
    /// Tombstones held at 25, 50 and 75 % of the inserts, largest among the nodes.
    pub tombstones_at: [u64; 3],
    /// Tombstones still held at the end, largest among the nodes.
    pub tombstones_left: u64,
    pub peak_rss_kib: u64,
}

/// The database file's size after a passive checkpoint (the WAL's pages moved in as far as
/// no reader holds them back). The WAL itself stays bounded by SQLite's auto-checkpoint.
fn file_bytes(db: &Path) -> u64 {
    if let Ok(c) = reader(db) {
        let _ = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
    std::fs::metadata(db).map(|m| m.len()).unwrap_or(0)
}

/// (bytes of `__hl_*` objects, bytes of the table `t`) from `dbstat`.
fn space(db: &Path) -> Result<(u64, u64), String> {
    let conn = reader(db)?;
    conn.query_row(
        "SELECT coalesce(sum(CASE WHEN name LIKE '\\_\\_hl\\_%' ESCAPE '\\' THEN pgsize END), 0),
                coalesce(sum(CASE WHEN name = 't' THEN pgsize END), 0) FROM dbstat",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .map_err(|e| format!("{}: dbstat: {e}", db.display()))
}

fn tombstones(db: &Path) -> u64 {
    reader(db)
        .ok()
        .and_then(|r| scalar(&r, "SELECT count(*) FROM __hl_ver_t WHERE del = 1"))
        .unwrap_or(0) as u64
}

fn scalar(conn: &rusqlite::Connection, sql: &str) -> Option<i64> {
    conn.query_row(sql, [], |r| r.get(0)).ok()
}

/// Runs `inserts` rolling-window inserts of `row_bytes` bytes on node a of a new cluster.
pub fn measure(env: &Env, inserts: u64, row_bytes: usize) -> Result<Churn, String> {
    let c = Cluster::start_with(env, "churn", 3, ROW_TABLE, false, EXTRA)?;
    let payloads = Payloads::new(row_bytes);
    let conn = app_conn(c.db(0))?;
    let mut insert = conn
        .prepare("INSERT INTO t(id, v) VALUES (?1, ?2)")
        .map_err(|e| format!("prepare: {e}"))?;
    let mut delete = conn
        .prepare("DELETE FROM t WHERE id <= ?1")
        .map_err(|e| format!("prepare: {e}"))?;
    let start = Instant::now();
    let mut out = Churn {
        inserts,
        window: WINDOW,
        row_bytes,
        rate: RATE,
        ..Default::default()
    };
    let quarter = inserts / 4;
    let mut next_mark = 0;
    let mut id = 0u64;
    while id < inserts {
        let n = ROWS_PER_TX.min(inserts - id);
        conn.execute_batch("BEGIN")
            .map_err(|e| format!("begin: {e}"))?;
        for k in id + 1..=id + n {
            insert
                .execute(params![k as i64, payloads.get(k)])
                .map_err(|e| format!("insert {k}: {e}"))?;
        }
        id += n;
        delete
            .execute([id as i64 - WINDOW as i64])
            .map_err(|e| format!("delete: {e}"))?;
        conn.execute_batch("COMMIT")
            .map_err(|e| format!("commit: {e}"))?;
        if next_mark < 3 && id >= quarter * (next_mark as u64 + 1) {
            out.file_bytes[next_mark] = (0..3).map(|k| file_bytes(c.db(k))).max().unwrap_or(0);
            out.tombstones_at[next_mark] = (0..3).map(|k| tombstones(c.db(k))).max().unwrap_or(0);
            next_mark += 1;
        }
        crate::harness::check_interrupted()?;
        let due = start + Duration::from_secs_f64(id as f64 / RATE as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // every node holds the window and has collected what it may
    let readers: Vec<_> = (0..3).map(|k| reader(c.db(k))).collect::<Result<_, _>>()?;
    wait_for(
        "every node holding the last window with its tombstones collected",
        SETTLE_TIMEOUT,
        Duration::from_millis(200),
        || {
            let done = readers.iter().all(|r| {
                scalar(r, "SELECT count(*) FROM t") == Some(WINDOW.min(inserts) as i64)
                    && scalar(r, "SELECT max(id) FROM t") == Some(inserts as i64)
                    && scalar(r, "SELECT count(*) FROM __hl_ver_t WHERE del = 1") == Some(0)
            });
            Ok(done.then_some(()))
        },
    )
    .or_else(|e| {
        // report what is left rather than fail: the figure is the finding
        eprintln!("hl-bench: churn: {e}");
        Ok::<(), String>(())
    })?;
    out.elapsed_secs = start.elapsed().as_secs_f64();
    drop(readers);
    out.file_bytes[3] = (0..3).map(|k| file_bytes(c.db(k))).max().unwrap_or(0);
    out.growth_after_window_pct = if out.file_bytes[0] > 0 {
        (out.file_bytes[3] as f64 - out.file_bytes[0] as f64) * 100.0 / out.file_bytes[0] as f64
    } else {
        0.0
    };
    let live = WINDOW.min(inserts).max(1) as f64;
    for k in 0..3 {
        let (ours, table) = space(c.db(k))?;
        out.overhead_bytes_per_live_row = out.overhead_bytes_per_live_row.max(ours as f64 / live);
        out.table_bytes_per_live_row = out.table_bytes_per_live_row.max(table as f64 / live);
        let r = reader(c.db(k))?;
        out.tombstones_left = out
            .tombstones_left
            .max(scalar(&r, "SELECT count(*) FROM __hl_ver_t WHERE del = 1").unwrap_or(0) as u64);
    }
    out.peak_rss_kib = c.peak_rss_kib()?;
    Ok(out)
}
