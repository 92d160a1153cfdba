//! The application side: its own SQLite connections (separate from the nodes'), the table it
//! writes, the payloads, and the read-only probes that tell when a replica has every row.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags};

use crate::harness::wait_for;

/// The application's table for the ceilings, throughput and cost runs: a key and a payload of
/// the row size, so "a 100-byte row" means 100 bytes of application data besides the key.
pub const ROW_TABLE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";
/// The same with a number column: the commit wall-clock ms in the lag runs, an operation
/// number in the mixed run (whose `sum(ts)` proves every update arrived).
pub const STAMPED_TABLE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, ts INTEGER, v TEXT)";
const INSERT_SQL: &str = "INSERT INTO t(id, v) VALUES (?1, ?2)";
/// How long the application waits for the write lock the node may hold.
const APP_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Distinct payloads kept ready, so building them stays out of the timed loops.
const PAYLOAD_POOL: usize = 1024;

/// Lock waits of every application connection: how often and how long (ms) they slept
/// because a node held the write lock.
static LOCK_WAITS: AtomicU64 = AtomicU64::new(0);
static LOCK_WAIT_MS: AtomicU64 = AtomicU64::new(0);

/// The application's lock waits so far: (waits, time asleep).
pub fn lock_waits() -> (u64, Duration) {
    (
        LOCK_WAITS.load(Ordering::Relaxed),
        Duration::from_millis(LOCK_WAIT_MS.load(Ordering::Relaxed)),
    )
}

/// SQLite's own busy-timeout handler (`sqliteDefaultBusyCallback`: the same sleeps, the same
/// give-up point), counting what it sleeps. Returns whether to retry.
fn busy_wait(count: i32) -> bool {
    const DELAYS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];
    const TOTALS: [u64; 12] = [0, 1, 3, 8, 18, 33, 53, 78, 103, 128, 178, 228];
    let count = count.max(0) as usize;
    let (mut delay, prior) = match DELAYS.get(count) {
        Some(&d) => (d, TOTALS[count]),
        None => (100, TOTALS[11] + 100 * (count as u64 - 11)),
    };
    let timeout = APP_BUSY_TIMEOUT.as_millis() as u64;
    if prior + delay > timeout {
        delay = timeout.saturating_sub(prior);
        if delay == 0 {
            return false;
        }
    }
    LOCK_WAITS.fetch_add(1, Ordering::Relaxed);
    LOCK_WAIT_MS.fetch_add(delay, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(delay));
    true
}

/// A connection as an application would open it: WAL, synchronous=NORMAL, a busy timeout
/// (SQLite's handler, counted: see [`lock_waits`]).
pub fn app_conn(path: &Path) -> Result<Connection, String> {
    let mut conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    conn.busy_handler(Some(busy_wait))
        .map_err(|e| format!("{}: busy handler: {e}", path.display()))?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
        .map_err(|e| format!("{}: journal_mode=WAL: {e}", path.display()))?;
    conn.execute_batch("PRAGMA synchronous=NORMAL")
        .map_err(|e| format!("{}: synchronous: {e}", path.display()))?;
    Ok(conn)
}

/// Creates a fresh database holding the application's table (`table_sql`).
pub fn create_db(path: &Path, table_sql: &str) -> Result<(), String> {
    let conn = app_conn(path)?;
    conn.execute_batch(table_sql)
        .map_err(|e| format!("{}: create table: {e}", path.display()))
}

/// A read-only connection for watching a replica.
pub fn reader(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("open {} read-only: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(2))
        .map_err(|e| format!("{}: busy_timeout: {e}", path.display()))?;
    Ok(conn)
}

/// Deterministic printable payloads of `len` bytes.
pub struct Payloads(Vec<String>);

impl Payloads {
    pub fn new(len: usize) -> Payloads {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let pool = (0..PAYLOAD_POOL)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        // xorshift: text that is not trivially compressible
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (b'a' + (x % 26) as u8) as char
                    })
                    .collect()
            })
            .collect();
        Payloads(pool)
    }

    pub fn get(&self, i: u64) -> &str {
        &self.0[i as usize % self.0.len()]
    }
}

/// Inserts ids `first..first + rows` into [`ROW_TABLE`] in transactions of `per_tx` rows (1: autocommit), as fast
/// as possible. Returns the elapsed time.
pub fn insert_rows(
    conn: &Connection,
    first: i64,
    rows: u64,
    per_tx: u64,
    payloads: &Payloads,
) -> Result<Duration, String> {
    let mut stmt = conn
        .prepare_cached(INSERT_SQL)
        .map_err(|e| format!("prepare insert: {e}"))?;
    let start = Instant::now();
    let mut i = 0u64;
    while i < rows {
        let n = per_tx.min(rows - i);
        if per_tx > 1 {
            conn.execute_batch("BEGIN")
                .map_err(|e| format!("begin: {e}"))?;
        }
        for k in i..i + n {
            stmt.execute(params![first + k as i64, payloads.get(k)])
                .map_err(|e| format!("insert id {}: {e}", first + k as i64))?;
        }
        if per_tx > 1 {
            conn.execute_batch("COMMIT")
                .map_err(|e| format!("commit: {e}"))?;
        }
        i += n;
    }
    Ok(start.elapsed())
}

/// What a replica must hold to be complete: ids `lo..=hi` of every range, `count` rows in all,
/// and (mixed workload) `sum(ts)` equal to the writer's.
pub struct Expect {
    pub ranges: Vec<(i64, i64)>,
    pub count: i64,
    pub ts_sum: Option<i64>,
}

/// Whether the database behind `conn` holds what `e` says. Cheap index probes first, the
/// full count and checksum only once every range's last id is there.
pub fn holds(conn: &Connection, e: &Expect) -> Result<bool, String> {
    let q = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<Option<i64>, String> {
        match conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row(p, |r| r.get::<_, Option<i64>>(0)))
        {
            Ok(v) => Ok(v),
            // the node may still be creating its tables; a busy replica is "not yet"
            Err(err) if harmonylite::db::is_busy(&err) => Ok(None),
            Err(err) => Err(format!("probe replica ({sql}): {err}")),
        }
    };
    for &(lo, hi) in &e.ranges {
        if q(
            "SELECT max(id) FROM t WHERE id BETWEEN ?1 AND ?2",
            &[&lo, &hi],
        )? != Some(hi)
        {
            return Ok(false);
        }
    }
    if q("SELECT count(*) FROM t", &[])? != Some(e.count) {
        return Ok(false);
    }
    if let Some(sum) = e.ts_sum {
        if q("SELECT sum(ts) FROM t", &[])? != Some(sum) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Polls every replica every `every` until all hold `e`; returns when the last one did.
/// The error says how far each replica got.
pub fn wait_converged(
    replicas: &[(&str, &Path)],
    e: &Expect,
    timeout: Duration,
    every: Duration,
) -> Result<Instant, String> {
    let conns = replicas
        .iter()
        .map(|(_, p)| reader(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut done = vec![false; conns.len()];
    let result = wait_for("replicas holding every row", timeout, every, || {
        for (i, c) in conns.iter().enumerate() {
            if !done[i] {
                done[i] = holds(c, e)?;
            }
        }
        Ok(done.iter().all(|&d| d).then(Instant::now))
    });
    result.map_err(|err| {
        let progress: Vec<String> = replicas
            .iter()
            .zip(&conns)
            .map(|((name, _), c)| {
                let n: i64 = c
                    .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .unwrap_or(-1);
                format!("{name} has {n} of {} rows", e.count)
            })
            .collect();
        format!("{err} ({})", progress.join(", "))
    })
}
