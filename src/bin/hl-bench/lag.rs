//! Lag at a steady write rate, and a node's footprint when idle.
//!
//! The bench is both the writing application and the observer, so commit and visibility times
//! come from one monotonic clock: the writer notes when each single-row commit returned, one
//! watcher thread per replica polls for new ids every millisecond and notes when each first
//! became visible. Lag = visible − committed. The writer also notes how long each commit took
//! (the application's own write latency: `execute` of the autocommit insert until it returned).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::params;

use crate::app::{app_conn, reader, Payloads};
use crate::harness::{check_interrupted, cpu_time, pause, status_kib, unix_ms, NodeProc};
use crate::replication::Cluster;

/// Pause between two probes of a replica.
const WATCH_PROBE: Duration = Duration::from_millis(1);
/// Deadline for the last row to become visible once the writer stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Default)]
pub struct Lag {
    pub target_rate: u32,
    pub achieved_rate: f64,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The application's commit latency (one single-row autocommit insert), ms.
    pub write_p50_ms: f64,
    pub write_p99_ms: f64,
    pub write_max_ms: f64,
}

/// The raw samples of one steady run, for runs whose samples are pooled.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Lag of every row on every replica, ms.
    pub lags: Vec<f64>,
    /// Commit latency of every row on the writer, ms.
    pub writes: Vec<f64>,
    pub achieved_rate: f64,
}

/// The `p` quantile (0..=1, nearest rank) of `sorted` (ascending); 0 when empty.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Writes single-row transactions on node a at `rate` rows/s for `secs` seconds (ids from
/// `first`), and measures when each row became visible on every other node.
pub fn steady(
    cluster: &Cluster,
    rate: u32,
    secs: u64,
    first: i64,
    row_bytes: usize,
) -> Result<Lag, String> {
    let mut s = steady_samples(cluster, rate, secs, first, row_bytes)?;
    s.lags.sort_by(f64::total_cmp);
    s.writes.sort_by(f64::total_cmp);
    Ok(Lag {
        target_rate: rate,
        achieved_rate: s.achieved_rate,
        samples: s.lags.len(),
        p50_ms: pct(&s.lags, 0.50),
        p99_ms: pct(&s.lags, 0.99),
        max_ms: pct(&s.lags, 1.0),
        write_p50_ms: pct(&s.writes, 0.50),
        write_p99_ms: pct(&s.writes, 0.99),
        write_max_ms: pct(&s.writes, 1.0),
    })
}

/// [`steady`]'s samples, unsorted.
pub fn steady_samples(
    cluster: &Cluster,
    rate: u32,
    secs: u64,
    first: i64,
    row_bytes: usize,
) -> Result<Samples, String> {
    let rows = rate as u64 * secs;
    let last = first + rows as i64 - 1;
    // Watchers stop once they saw `last`, or when the writer failed (then `abort` is set).
    let abort = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = (1..cluster.nodes.len())
        .map(|k| {
            let db: PathBuf = cluster.db(k).to_path_buf();
            let abort = abort.clone();
            thread::spawn(move || watch(&db, first, last, secs, &abort))
        })
        .collect();
    let written = write_paced(cluster, rate, rows, first, row_bytes);
    if written.is_err() {
        abort.store(true, Ordering::Relaxed);
    }
    let mut seen_all = Vec::new();
    for w in watchers {
        match w.join() {
            Ok(r) => seen_all.push(r),
            Err(_) => return Err("a watcher thread panicked".into()),
        }
    }
    let (committed, writes, took) = written?;
    let mut lags: Vec<f64> = Vec::with_capacity(committed.len() * seen_all.len());
    for seen in seen_all {
        for (id, at) in seen? {
            let i = (id - first) as usize;
            lags.push(at.saturating_duration_since(committed[i]).as_secs_f64() * 1000.0);
        }
    }
    Ok(Samples {
        lags,
        writes,
        achieved_rate: rows as f64 / took.as_secs_f64(),
    })
}

/// Commits one row every 1/rate s on an absolute schedule (a late commit does not shift the
/// next ones). Returns each row's commit time, how long each commit took (ms), and the total
/// time.
fn write_paced(
    cluster: &Cluster,
    rate: u32,
    rows: u64,
    first: i64,
    row_bytes: usize,
) -> Result<(Vec<Instant>, Vec<f64>, Duration), String> {
    let payloads = Payloads::new(row_bytes);
    let conn = app_conn(cluster.db(0))?;
    let mut stmt = conn
        .prepare("INSERT INTO t(id, ts, v) VALUES (?1, ?2, ?3)")
        .map_err(|e| format!("prepare: {e}"))?;
    let period = Duration::from_secs(1) / rate;
    let mut committed = Vec::with_capacity(rows as usize);
    let mut took = Vec::with_capacity(rows as usize);
    let start = Instant::now();
    for i in 0..rows {
        if i % 64 == 0 {
            check_interrupted()?;
        }
        let due = start + period * i as u32;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let id = first + i as i64;
        let t0 = Instant::now();
        stmt.execute(params![id, unix_ms(), payloads.get(i)])
            .map_err(|e| format!("insert id {id}: {e}"))?;
        let t1 = Instant::now();
        committed.push(t1);
        took.push((t1 - t0).as_secs_f64() * 1000.0);
    }
    Ok((committed, took, start.elapsed()))
}

/// Polls a replica for ids in `first..=last` until it saw `last` (ids arrive in order from a
/// single writer, and the final check counts them), noting when each first appeared.
fn watch(
    db: &Path,
    first: i64,
    last: i64,
    secs: u64,
    abort: &AtomicBool,
) -> Result<Vec<(i64, Instant)>, String> {
    let conn = reader(db)?;
    let mut stmt = conn
        .prepare("SELECT id FROM t WHERE id > ?1 AND id <= ?2 ORDER BY id")
        .map_err(|e| format!("prepare: {e}"))?;
    let mut seen = Vec::with_capacity((last - first + 1) as usize);
    let mut high = first - 1;
    let deadline = Instant::now() + Duration::from_secs(secs) + DRAIN_TIMEOUT;
    while high < last {
        if abort.load(Ordering::Relaxed) {
            return Ok(seen);
        }
        check_interrupted()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{}: saw {} of {} rows {:.0} s after the writer started",
                db.display(),
                seen.len(),
                last - first + 1,
                secs as f64 + DRAIN_TIMEOUT.as_secs_f64()
            ));
        }
        let ids: Vec<i64> = match stmt
            .query_map(params![high, last], |r| r.get(0))
            .and_then(|rows| rows.collect())
        {
            Ok(ids) => ids,
            Err(e) if harmonylite::db::is_busy(&e) => Vec::new(),
            Err(e) => return Err(format!("{}: probe: {e}", db.display())),
        };
        let now = Instant::now();
        for id in ids {
            seen.push((id, now));
            high = high.max(id);
        }
        thread::sleep(WATCH_PROBE);
    }
    if seen.len() as i64 != last - first + 1 {
        return Err(format!(
            "{}: {} rows became visible, expected {} (a gap)",
            db.display(),
            seen.len(),
            last - first + 1
        ));
    }
    Ok(seen)
}

#[derive(Debug, Clone, Default)]
pub struct Idle {
    pub window_secs: f64,
    /// Per node: CPU % of one core over the window.
    pub cpu_pct: Vec<f64>,
    /// Per node: VmRSS at the end of the window, KiB.
    pub rss_kib: Vec<u64>,
    /// Per node: its anonymous part (heap, stacks), KiB; the rest is mostly mapped files
    /// (the binary, shared libraries, SQLite's -shm).
    pub rss_anon_kib: Vec<u64>,
    /// Per node: resident pages of shared libraries (`.so` mappings in `/proc/PID/smaps`), KiB:
    /// what a dynamically linked build maps that the static release binary does not.
    pub rss_shared_lib_kib: Vec<u64>,
    /// Per node: bytes it caused to be written to storage over the window
    /// (`/proc/PID/io` `write_bytes`): an idle node should write nothing (SD cards wear out).
    pub write_bytes: Vec<u64>,
    /// The most any node wrote in each tenth of the window, in order.
    pub write_bytes_by_tenth: Vec<u64>,
}

/// `write_bytes` of `/proc/PID/io`: bytes the process caused to reach the storage layer.
fn write_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/io");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse().ok())
        .ok_or_else(|| format!("{path} has no write_bytes"))
}

/// Leaves the nodes without writes for `window` and reads each node's CPU time and RSS.
pub fn idle(nodes: &[NodeProc], window: Duration) -> Result<Idle, String> {
    let before = nodes
        .iter()
        .map(|n| cpu_time(n.pid))
        .collect::<Result<Vec<_>, _>>()?;
    let written0 = nodes
        .iter()
        .map(|n| write_bytes(n.pid))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    // the most any node wrote in each tenth of the window: one write right after the
    // activity before it (a trailing record) looks different from a steady trickle
    let mut by_tenth = Vec::with_capacity(10);
    let mut mark = written0.clone();
    for _ in 0..10 {
        pause(window / 10)?;
        let now = nodes
            .iter()
            .map(|n| write_bytes(n.pid))
            .collect::<Result<Vec<_>, _>>()?;
        by_tenth.push(
            now.iter()
                .zip(&mark)
                .map(|(a, b)| a.saturating_sub(*b))
                .max()
                .unwrap_or(0),
        );
        mark = now;
    }
    let written1 = nodes
        .iter()
        .map(|n| write_bytes(n.pid))
        .collect::<Result<Vec<_>, _>>()?;
    let after = nodes
        .iter()
        .map(|n| cpu_time(n.pid))
        .collect::<Result<Vec<_>, _>>()?;
    let secs = start.elapsed().as_secs_f64();
    let cpu_pct = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b).as_secs_f64() / secs * 100.0)
        .collect();
    let rss_kib = nodes
        .iter()
        .map(|n| status_kib(n.pid, "VmRSS"))
        .collect::<Result<Vec<_>, _>>()?;
    let rss_anon_kib = nodes
        .iter()
        .map(|n| status_kib(n.pid, "RssAnon"))
        .collect::<Result<Vec<_>, _>>()?;
    let rss_shared_lib_kib = nodes
        .iter()
        .map(|n| shared_lib_kib(n.pid))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Idle {
        window_secs: secs,
        cpu_pct,
        rss_kib,
        rss_anon_kib,
        rss_shared_lib_kib,
        write_bytes: written1
            .iter()
            .zip(&written0)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
        write_bytes_by_tenth: by_tenth,
    })
}

/// The `Rss:` of every mapping of a shared library (`*.so` or `*.so.N`), KiB.
fn shared_lib_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut in_lib = false;
    let mut total = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // a mapping's header: range, perms, offset, dev, inode, [path]
            let name = words.nth(4).unwrap_or("");
            let file = name.rsplit('/').next().unwrap_or("");
            in_lib = name.starts_with('/') && (file.ends_with(".so") || file.contains(".so."));
        } else if in_lib && first == "Rss:" {
            total += words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}
