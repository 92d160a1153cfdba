//! Replication scenarios with real `harmonylite` processes: one writer to two replicas
//! (100-byte rows, then a mixed workload of 1 KiB inserts and updates), and all three nodes
//! writing at once. Each scenario gets its own databases, stream and subject.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::params;

use crate::app::{app_conn, create_db, insert_rows, lock_waits, wait_converged, Expect, Payloads};
pub use crate::app::{ROW_TABLE, STAMPED_TABLE};
use crate::harness::{
    check_interrupted, free_port, process_cpu_time, status_kib, NodeProc, NodeSpec,
};

/// How often the replicas' files are probed while waiting for the last row.
const CONVERGE_PROBE: Duration = Duration::from_millis(5);
/// Rows per application transaction in the throughput scenarios.
pub const ROWS_PER_TX: u64 = 100;
/// Ids of node k's rows start at `k * ID_SPACE` when several nodes write.
const ID_SPACE: i64 = 1_000_000_000;

/// Where scenarios start their nodes.
pub struct Env<'a> {
    pub node_bin: &'a Path,
    pub dir: &'a Path,
    pub url: &'a str,
    pub server_pid: u32,
    pub poll_ms: u64,
}

/// Convergence deadline: generous, and growing with the work, so a slow machine is not a failure.
pub fn converge_timeout(rows: u64) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(rows)
}

/// Nodes sharing one stream, each beside its own database.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub stream: String,
    pub subject: String,
    server_pid: u32,
}

impl Cluster {
    /// Creates `n` databases holding the application's table (`table_sql`), starts a node
    /// beside each and waits until all are ready and connected.
    /// With `metrics`, the first node serves `/metrics` (see [`NodeProc::counter`]).
    pub fn start(
        env: &Env,
        tag: &str,
        n: usize,
        table_sql: &str,
        metrics: bool,
    ) -> Result<Cluster, String> {
        Cluster::start_with(env, tag, n, table_sql, metrics, "")
    }

    /// [`Cluster::start`] with `extra` TOML in every node's config.
    pub fn start_with(
        env: &Env,
        tag: &str,
        n: usize,
        table_sql: &str,
        metrics: bool,
        extra: &str,
    ) -> Result<Cluster, String> {
        Cluster::start_prepared(env, tag, n, table_sql, metrics, extra, &|_, _| Ok(()))
    }

    /// [`Cluster::start_with`], calling `prepare(k, db)` on node k's fresh database before
    /// the node starts (e.g. to fill a table the node then finds at start).
    pub fn start_prepared(
        env: &Env,
        tag: &str,
        n: usize,
        table_sql: &str,
        metrics: bool,
        extra: &str,
        prepare: &dyn Fn(usize, &Path) -> Result<(), String>,
    ) -> Result<Cluster, String> {
        let stream = format!("BENCH_{}", tag.to_uppercase().replace('-', "_"));
        let subject = format!("bench.{tag}");
        let mut nodes = Vec::with_capacity(n);
        for k in 0..n {
            let name = format!("{tag}-{}", (b'a' + k as u8) as char);
            let db: PathBuf = env.dir.join(format!("{name}.db"));
            create_db(&db, table_sql)?;
            prepare(k, &db)?;
            let metrics_port = if metrics && k == 0 {
                Some(free_port()?)
            } else {
                None
            };
            let spec = NodeSpec {
                name: &name,
                db: &db,
                node_id: k as u64 + 1,
                stream: &stream,
                subject: &subject,
                poll_ms: env.poll_ms,
                metrics_port,
                extra,
            };
            nodes.push(NodeProc::start(env.node_bin, env.dir, env.url, &spec)?);
        }
        for node in &mut nodes {
            node.wait_ready()?;
        }
        Ok(Cluster {
            nodes,
            stream,
            subject,
            server_pid: env.server_pid,
        })
    }

    pub fn db(&self, k: usize) -> &Path {
        &self.nodes[k].db
    }

    /// Largest VmHWM (peak resident set) among the nodes, KiB.
    pub fn peak_rss_kib(&self) -> Result<u64, String> {
        self.nodes
            .iter()
            .map(|n| status_kib(n.pid, "VmHWM"))
            .try_fold(0, |m, r| r.map(|v| m.max(v)))
    }

    fn replicas_except(&self, writer: usize) -> Vec<(&str, &Path)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != writer)
            .map(|(_, n)| (n.name.as_str(), n.db.as_path()))
            .collect()
    }

    fn all(&self) -> Vec<(&str, &Path)> {
        self.nodes
            .iter()
            .map(|n| (n.name.as_str(), n.db.as_path()))
            .collect()
    }
}

/// CPU time each process spent during a scenario: where the time of a 2-core machine went.
/// Also counts the application's lock waits over the same span.
struct CpuMeter {
    procs: Vec<(String, u32, Duration)>,
    waits: (u64, Duration),
}

impl CpuMeter {
    fn start(cluster: &Cluster) -> Result<CpuMeter, String> {
        let mut procs = vec![("bench".to_string(), std::process::id())];
        procs.extend(cluster.nodes.iter().map(|n| (n.name.clone(), n.pid)));
        procs.push(("nats-server".to_string(), cluster.server_pid));
        let procs = procs
            .into_iter()
            .map(|(n, p)| process_cpu_time(p).map(|t| (n, p, t)))
            .collect::<Result<_, _>>()?;
        Ok(CpuMeter {
            procs,
            waits: lock_waits(),
        })
    }

    /// CPU seconds per process, and the application's (lock waits, seconds asleep).
    fn stop(self) -> Result<(Vec<(String, f64)>, (u64, f64)), String> {
        let (n0, t0) = self.waits;
        let (n1, t1) = lock_waits();
        let cpu = self
            .procs
            .into_iter()
            .map(|(n, p, t)| {
                process_cpu_time(p).map(|now| (n, now.saturating_sub(t).as_secs_f64()))
            })
            .collect::<Result<_, _>>()?;
        Ok((cpu, (n1 - n0, t1.saturating_sub(t0).as_secs_f64())))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Throughput {
    /// Changes (rows inserted or updated) made by the application(s).
    pub changes: u64,
    /// Time from the first write until the last replica held everything.
    pub secs: f64,
    /// The application's own write rate while the nodes ran (changes/s).
    pub app_rate: f64,
    /// CPU seconds per process over the scenario ("bench" is the application and its probes).
    pub cpu: Vec<(String, f64)>,
    /// The application's waits for the write lock a node held: (count, seconds asleep).
    pub lock_waits: (u64, f64),
    /// Largest VmHWM among the scenario's nodes, KiB.
    pub peak_rss_kib: u64,
}

impl Throughput {
    pub fn rate(&self) -> f64 {
        self.changes as f64 / self.secs
    }
}

/// One writer, two replicas: `rows` rows of `row_bytes` inserted on node a in 100-row
/// transactions; done when nodes b and c hold every row. Round `round` (from 0) continues the
/// ids of the earlier rounds (contiguous ids: larger ids would cost wire bytes of their own).
pub fn one_writer(
    cluster: &Cluster,
    round: u64,
    rows: u64,
    row_bytes: usize,
) -> Result<Throughput, String> {
    let payloads = Payloads::new(row_bytes);
    let conn = app_conn(cluster.db(0))?;
    let first = (round * rows) as i64 + 1;
    let meter = CpuMeter::start(cluster)?;
    let start = Instant::now();
    let wrote = insert_rows(&conn, first, rows, ROWS_PER_TX, &payloads)?;
    let total = (rows * (round + 1)) as i64;
    let expect = Expect {
        ranges: vec![(first, first + rows as i64 - 1)],
        count: total,
        ts_sum: None,
    };
    let done = wait_converged(
        &cluster.replicas_except(0),
        &expect,
        converge_timeout(rows),
        CONVERGE_PROBE,
    )?;
    let (cpu, lock_waits) = meter.stop()?;
    Ok(Throughput {
        changes: rows,
        secs: (done - start).as_secs_f64(),
        app_rate: rows as f64 / wrote.as_secs_f64(),
        cpu,
        lock_waits,
        peak_rss_kib: cluster.peak_rss_kib()?,
    })
}

/// Mixed workload on node a (a [`STAMPED_TABLE`] cluster): `ops` changes of `row_bytes` in 100-change transactions, half new
/// rows and half updates of earlier rows (spread by a multiplicative step). `ts` numbers each
/// operation, so `sum(ts)` proves every update arrived, not just every insert.
pub fn mixed(cluster: &Cluster, ops: u64, row_bytes: usize) -> Result<Throughput, String> {
    let payloads = Payloads::new(row_bytes);
    let conn = app_conn(cluster.db(0))?;
    let mut insert = conn
        .prepare("INSERT INTO t(id, ts, v) VALUES (?1, ?2, ?3)")
        .map_err(|e| format!("prepare: {e}"))?;
    let mut update = conn
        .prepare("UPDATE t SET ts = ?2, v = ?3 WHERE id = ?1")
        .map_err(|e| format!("prepare: {e}"))?;
    let meter = CpuMeter::start(cluster)?;
    let start = Instant::now();
    let mut inserted: i64 = 0;
    let mut op: u64 = 0;
    while op < ops {
        conn.execute_batch("BEGIN")
            .map_err(|e| format!("begin: {e}"))?;
        for _ in 0..ROWS_PER_TX.min(ops - op) {
            op += 1;
            if op % 2 == 1 || inserted == 0 {
                inserted += 1;
                insert
                    .execute(params![inserted, op as i64, payloads.get(op)])
                    .map_err(|e| format!("insert: {e}"))?;
            } else {
                let id = (op as i64 * 7919) % inserted + 1;
                update
                    .execute(params![id, op as i64, payloads.get(op)])
                    .map_err(|e| format!("update: {e}"))?;
            }
        }
        conn.execute_batch("COMMIT")
            .map_err(|e| format!("commit: {e}"))?;
    }
    let wrote = start.elapsed();
    let ts_sum: i64 = conn
        .query_row("SELECT sum(ts) FROM t", [], |r| r.get(0))
        .map_err(|e| format!("checksum: {e}"))?;
    let expect = Expect {
        ranges: vec![(1, inserted)],
        count: inserted,
        ts_sum: Some(ts_sum),
    };
    let done = wait_converged(
        &cluster.replicas_except(0),
        &expect,
        converge_timeout(ops),
        CONVERGE_PROBE,
    )?;
    let (cpu, lock_waits) = meter.stop()?;
    Ok(Throughput {
        changes: ops,
        secs: (done - start).as_secs_f64(),
        app_rate: ops as f64 / wrote.as_secs_f64(),
        cpu,
        lock_waits,
        peak_rss_kib: cluster.peak_rss_kib()?,
    })
}

/// Every node's application inserts `rows_each` rows (own id range, 100-row transactions) at
/// the same time; done when every node holds all of them.
pub fn all_writers(
    cluster: &Cluster,
    rows_each: u64,
    row_bytes: usize,
) -> Result<Throughput, String> {
    let n = cluster.nodes.len();
    let meter = CpuMeter::start(cluster)?;
    let start = Instant::now();
    let writers: Vec<_> = (0..n)
        .map(|k| {
            let db = cluster.db(k).to_path_buf();
            thread::spawn(move || -> Result<Duration, String> {
                let payloads = Payloads::new(row_bytes);
                let conn = app_conn(&db)?;
                insert_rows(
                    &conn,
                    (k as i64 + 1) * ID_SPACE,
                    rows_each,
                    ROWS_PER_TX,
                    &payloads,
                )
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for w in writers {
        let took = w
            .join()
            .map_err(|_| "a writer thread panicked".to_string())??;
        slowest = slowest.max(took);
    }
    check_interrupted()?;
    let ranges = (0..n as i64)
        .map(|k| {
            (
                (k + 1) * ID_SPACE,
                (k + 1) * ID_SPACE + rows_each as i64 - 1,
            )
        })
        .collect();
    let total = rows_each * n as u64;
    let expect = Expect {
        ranges,
        count: total as i64,
        ts_sum: None,
    };
    let done = wait_converged(
        &cluster.all(),
        &expect,
        converge_timeout(total),
        CONVERGE_PROBE,
    )?;
    let (cpu, lock_waits) = meter.stop()?;
    Ok(Throughput {
        changes: total,
        secs: (done - start).as_secs_f64(),
        app_rate: total as f64 / slowest.as_secs_f64(),
        cpu,
        lock_waits,
        peak_rss_kib: cluster.peak_rss_kib()?,
    })
}
