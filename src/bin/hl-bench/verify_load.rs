//! `--verify-load`: the application's write latency while `harmonylite verify` runs (issue 17:
//! "verify does not raise the application's write latency p99 by more than 10% while it runs").
//!
//! Three nodes; node a's database holds a large table `big` (ROWS rows of 100 bytes) before it
//! starts, and nodes b and c receive it. Once one `verify` agrees, the lag probe's paced app
//! (single-row autocommit inserts into `t` on node a at a fixed rate, each row watched until
//! visible on b and c) runs in alternating phases of the same length: without verify, then
//! while `harmonylite verify` runs back to back against the same nodes (a new run as soon as
//! the last one exits; the one running when the phase ends is killed). Each phase's samples are
//! pooled by kind, and the pooled p50/p99 of the application's commit latency and of the lag
//! are compared.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::params;

use crate::app::{app_conn, lock_waits, reader, Payloads, STAMPED_TABLE};
use crate::harness::{check_interrupted, pause, process_cpu_time, wait_for};
use crate::lag::{pct, steady_samples};
use crate::replication::{converge_timeout, Cluster, Env};

/// The large table verify digests (`t` is the lag probe's).
const BIG_TABLE: &str = "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT NOT NULL)";
/// Rows per transaction while filling `big`.
const FILL_TX: u64 = 100_000;
/// Quiet time before each phase (a killed verify's last digest pass ends on the nodes).
const SETTLE: Duration = Duration::from_secs(3);
/// Deadline for the first verify to agree once `big` reached the replicas.
const AGREE_TIMEOUT: Duration = Duration::from_secs(180);

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Rows of `big`.
    pub rows: u64,
    /// The app's write rate, rows/s.
    pub rate: u32,
    /// Length of each phase, seconds.
    pub secs: u64,
    /// Pairs of phases (without verify, with verify).
    pub rounds: u32,
}

/// One phase's figures.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub verify: bool,
    pub write_p50_ms: f64,
    pub write_p99_ms: f64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub achieved_rate: f64,
    /// Verify runs that ended during the phase, and those that agreed / said "not settled".
    pub verify_runs: usize,
    pub verify_agreed: usize,
    pub verify_unsettled: usize,
    /// CPU seconds over the phase: the three nodes together, the bench (app and watchers).
    pub nodes_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub server_cpu_s: f64,
    /// The application's lock waits (a node held the write lock): count, ms asleep.
    pub lock_waits: u64,
    pub lock_wait_ms: f64,
    /// Node a's WAL file at the end of the phase, bytes.
    pub wal_bytes: u64,
    pub secs: f64,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyLoad {
    pub rows: u64,
    pub rate: u32,
    pub phase_secs: u64,
    pub fill_secs: f64,
    pub replicate_secs: f64,
    /// The first verify that agreed, on the settled fleet: its wall time.
    pub verify_at_rest_secs: f64,
    pub phases: Vec<Phase>,
    /// Pooled over the phases of each kind.
    pub idle: Pooled,
    pub during: Pooled,
    /// Wall times of the verify runs that ended during the phases with verify, s.
    pub verify_run_secs: Vec<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Pooled {
    pub write_samples: usize,
    pub write_p50_ms: f64,
    pub write_p99_ms: f64,
    pub write_p999_ms: f64,
    pub write_max_ms: f64,
    pub lag_samples: usize,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
}

impl Pooled {
    fn of(mut writes: Vec<f64>, mut lags: Vec<f64>) -> Pooled {
        writes.sort_by(f64::total_cmp);
        lags.sort_by(f64::total_cmp);
        Pooled {
            write_samples: writes.len(),
            write_p50_ms: pct(&writes, 0.50),
            write_p99_ms: pct(&writes, 0.99),
            write_p999_ms: pct(&writes, 0.999),
            write_max_ms: pct(&writes, 1.0),
            lag_samples: lags.len(),
            lag_p50_ms: pct(&lags, 0.50),
            lag_p99_ms: pct(&lags, 0.99),
        }
    }
}

impl VerifyLoad {
    pub fn write_p99_ratio(&self) -> f64 {
        self.during.write_p99_ms / self.idle.write_p99_ms
    }
    pub fn write_p50_ratio(&self) -> f64 {
        self.during.write_p50_ms / self.idle.write_p50_ms
    }
    pub fn lag_p99_ratio(&self) -> f64 {
        self.during.lag_p99_ms / self.idle.lag_p99_ms
    }
}

/// Inserts `rows` rows of 100 bytes into `big` of the database at `db`.
fn fill(db: &Path, rows: u64) -> Result<(), String> {
    let conn = app_conn(db)?;
    let payloads = Payloads::new(100);
    let mut stmt = conn
        .prepare("INSERT INTO big(id, v) VALUES (?1, ?2)")
        .map_err(|e| format!("prepare fill: {e}"))?;
    let mut i = 0;
    while i < rows {
        check_interrupted()?;
        conn.execute_batch("BEGIN")
            .map_err(|e| format!("fill: {e}"))?;
        for k in i..(i + FILL_TX).min(rows) {
            stmt.execute(params![k as i64 + 1, payloads.get(k)])
                .map_err(|e| format!("fill id {}: {e}", k + 1))?;
        }
        conn.execute_batch("COMMIT")
            .map_err(|e| format!("fill: {e}"))?;
        i += FILL_TX;
    }
    Ok(())
}

/// `harmonylite verify` against the nodes, back to back in a thread until stopped.
struct VerifyLoop {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Result<Vec<Run>, String>>,
}

/// One verify run that ended by itself.
struct Run {
    secs: f64,
    code: Option<i32>,
    unsettled: bool,
}

fn spawn_verify(bin: &Path, config: &Path, out: &Path) -> Result<Child, String> {
    let file = File::create(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    Command::new(bin)
        .arg("verify")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {} verify: {e}", bin.display()))
}

/// Runs one verify to its end: (wall time, exit code, said "not settled").
fn verify_once(bin: &Path, config: &Path, out: &Path) -> Result<Run, String> {
    let start = Instant::now();
    let status = spawn_verify(bin, config, out)?
        .wait()
        .map_err(|e| format!("verify: {e}"))?;
    Ok(Run {
        secs: start.elapsed().as_secs_f64(),
        code: status.code(),
        unsettled: std::fs::read_to_string(out)
            .unwrap_or_default()
            .contains("not settled"),
    })
}

impl VerifyLoop {
    fn start(bin: PathBuf, config: PathBuf, out: PathBuf) -> VerifyLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut runs = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                let mut child = spawn_verify(&bin, &config, &out)?;
                let status = loop {
                    if let Some(s) = child.try_wait().map_err(|e| format!("verify: {e}"))? {
                        break Some(s);
                    }
                    if flag.load(Ordering::Relaxed) || check_interrupted().is_err() {
                        // our own child, by its handle
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                    thread::sleep(Duration::from_millis(10));
                };
                if let Some(s) = status {
                    runs.push(Run {
                        secs: start.elapsed().as_secs_f64(),
                        code: s.code(),
                        unsettled: std::fs::read_to_string(&out)
                            .unwrap_or_default()
                            .contains("not settled"),
                    });
                }
            }
            Ok(runs)
        });
        VerifyLoop { stop, handle }
    }

    fn stop(self) -> Result<Vec<Run>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| "the verify thread panicked".to_string())?
    }
}

/// CPU seconds of `pids` together.
fn cpu_s(pids: &[u32]) -> Result<f64, String> {
    pids.iter()
        .map(|&p| process_cpu_time(p).map(|d| d.as_secs_f64()))
        .sum()
}

pub fn measure(env: &Env, sizes: Sizes) -> Result<VerifyLoad, String> {
    let tables = format!("{STAMPED_TABLE}; {BIG_TABLE};");
    let fill_secs = std::cell::Cell::new(0.0);
    let c = Cluster::start_prepared(env, "vload", 3, &tables, false, "", &|k, db| {
        if k == 0 {
            let t0 = Instant::now();
            fill(db, sizes.rows)?;
            fill_secs.set(t0.elapsed().as_secs_f64());
        }
        Ok(())
    })?;
    let fill_secs = fill_secs.get();
    eprintln!(
        "hl-bench: big holds {} rows on node a; waiting for nodes b and c",
        sizes.rows
    );
    let start = Instant::now();
    let replicas = [reader(c.db(1))?, reader(c.db(2))?];
    let want = sizes.rows as i64;
    wait_for(
        "nodes b and c holding every row of big",
        converge_timeout(sizes.rows),
        Duration::from_millis(500),
        || {
            for r in &replicas {
                let n: i64 = r
                    .query_row("SELECT count(*) FROM big", [], |r| r.get(0))
                    .unwrap_or(-1);
                if n != want {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;
    drop(replicas);
    let replicate_secs = start.elapsed().as_secs_f64();

    let config = env.dir.join("vload-a.toml");
    let out = env.dir.join("vload-verify.out");
    // the first verify that agrees: node a's outbox is empty, every node at the same position
    let deadline = Instant::now() + AGREE_TIMEOUT;
    let verify_at_rest_secs = loop {
        check_interrupted()?;
        let run = verify_once(env.node_bin, &config, &out)?;
        if run.code == Some(0) {
            break run.secs;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "verify did not agree within {} s of the replicas holding big:\n{}",
                AGREE_TIMEOUT.as_secs(),
                std::fs::read_to_string(&out).unwrap_or_default()
            ));
        }
        pause(Duration::from_secs(1))?;
    };
    eprintln!(
        "hl-bench: replicated in {replicate_secs:.1} s; verify at rest agreed in {verify_at_rest_secs:.2} s"
    );

    let node_pids: Vec<u32> = c.nodes.iter().map(|n| n.pid).collect();
    let me = [std::process::id()];
    let server = [env.server_pid];
    let wal = PathBuf::from(format!("{}-wal", c.db(0).display()));
    let mut first: i64 = 1;
    let mut phases = Vec::new();
    let (mut idle_w, mut idle_l, mut dur_w, mut dur_l) = (vec![], vec![], vec![], vec![]);
    let mut verify_run_secs = Vec::new();
    for round in 0..sizes.rounds {
        for verify in [false, true] {
            pause(SETTLE)?;
            eprintln!(
                "hl-bench: round {}/{}: {} rows/s for {} s, {}",
                round + 1,
                sizes.rounds,
                sizes.rate,
                sizes.secs,
                if verify {
                    "verify running back to back"
                } else {
                    "no verify"
                }
            );
            let cpu0 = (cpu_s(&node_pids)?, cpu_s(&me)?, cpu_s(&server)?);
            let waits0 = lock_waits();
            let t0 = Instant::now();
            let looping = verify.then(|| {
                VerifyLoop::start(env.node_bin.to_path_buf(), config.clone(), out.clone())
            });
            let samples = steady_samples(&c, sizes.rate, sizes.secs, first, crate::ROW_BYTES);
            let runs = match looping {
                Some(l) => l.stop()?,
                None => Vec::new(),
            };
            let mut s = samples?;
            let secs = t0.elapsed().as_secs_f64();
            let waits1 = lock_waits();
            let cpu1 = (cpu_s(&node_pids)?, cpu_s(&me)?, cpu_s(&server)?);
            first += (sizes.rate as u64 * sizes.secs) as i64;
            if verify {
                dur_w.extend_from_slice(&s.writes);
                dur_l.extend_from_slice(&s.lags);
            } else {
                idle_w.extend_from_slice(&s.writes);
                idle_l.extend_from_slice(&s.lags);
            }
            s.writes.sort_by(f64::total_cmp);
            s.lags.sort_by(f64::total_cmp);
            verify_run_secs.extend(runs.iter().map(|r| r.secs));
            let p = Phase {
                verify,
                write_p50_ms: pct(&s.writes, 0.50),
                write_p99_ms: pct(&s.writes, 0.99),
                lag_p50_ms: pct(&s.lags, 0.50),
                lag_p99_ms: pct(&s.lags, 0.99),
                achieved_rate: s.achieved_rate,
                verify_runs: runs.len(),
                verify_agreed: runs.iter().filter(|r| r.code == Some(0)).count(),
                verify_unsettled: runs.iter().filter(|r| r.unsettled).count(),
                nodes_cpu_s: cpu1.0 - cpu0.0,
                bench_cpu_s: cpu1.1 - cpu0.1,
                server_cpu_s: cpu1.2 - cpu0.2,
                lock_waits: waits1.0 - waits0.0,
                lock_wait_ms: (waits1.1 - waits0.1).as_secs_f64() * 1000.0,
                wal_bytes: std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
                secs,
            };
            eprintln!(
                "hl-bench:   commit p50 {:.2} ms p99 {:.2} ms; lag p50 {:.1} ms p99 {:.1} ms; {} verify runs ended ({} agreed, {} not settled); nodes {:.1} cpu-s",
                p.write_p50_ms,
                p.write_p99_ms,
                p.lag_p50_ms,
                p.lag_p99_ms,
                p.verify_runs,
                p.verify_agreed,
                p.verify_unsettled,
                p.nodes_cpu_s
            );
            phases.push(p);
        }
    }
    Ok(VerifyLoad {
        rows: sizes.rows,
        rate: sizes.rate,
        phase_secs: sizes.secs,
        fill_secs,
        replicate_secs,
        verify_at_rest_secs,
        phases,
        idle: Pooled::of(idle_w, idle_l),
        during: Pooled::of(dur_w, dur_l),
        verify_run_secs,
    })
}

fn f(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        "null".into()
    }
}

/// The table of `--verify-load`.
pub fn table(v: &VerifyLoad) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nverify and the application's writes ({} rows in big, 3 nodes; app: 1-row autocommit inserts on node a at {} rows/s, {} s phases)",
        v.rows, v.rate, v.phase_secs
    );
    let _ = writeln!(
        o,
        "  fill {:.1} s, replicate to b and c {:.1} s, verify at rest {:.2} s",
        v.fill_secs, v.replicate_secs, v.verify_at_rest_secs
    );
    let _ = writeln!(
        o,
        "  {:<8} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>14} {:>9} {:>9} {:>9} {:>11} {:>9}",
        "phase",
        "secs",
        "commit50",
        "commit99",
        "lag50",
        "lag99",
        "rate",
        "verify ok/uns/n",
        "nodes cpu",
        "bench cpu",
        "nats cpu",
        "lock waits",
        "wal MiB"
    );
    for p in &v.phases {
        let _ = writeln!(
            o,
            "  {:<8} {:>6.1} {:>7.2}ms {:>7.2}ms {:>6.1}ms {:>6.1}ms {:>8.0} {:>14} {:>8.1}s {:>8.1}s {:>8.1}s {:>11} {:>9.1}",
            if p.verify { "verify" } else { "none" },
            p.secs,
            p.write_p50_ms,
            p.write_p99_ms,
            p.lag_p50_ms,
            p.lag_p99_ms,
            p.achieved_rate,
            format!("{}/{}/{}", p.verify_agreed, p.verify_unsettled, p.verify_runs),
            p.nodes_cpu_s,
            p.bench_cpu_s,
            p.server_cpu_s,
            format!("{} {:.0}ms", p.lock_waits, p.lock_wait_ms),
            p.wal_bytes as f64 / 1048576.0
        );
    }
    let _ = writeln!(
        o,
        "  pooled, no verify:   commit p50 {:.2} ms p99 {:.2} ms p99.9 {:.1} ms max {:.1} ms ({} commits); lag p50 {:.1} ms p99 {:.1} ms ({} samples)",
        v.idle.write_p50_ms, v.idle.write_p99_ms, v.idle.write_p999_ms, v.idle.write_max_ms, v.idle.write_samples, v.idle.lag_p50_ms, v.idle.lag_p99_ms, v.idle.lag_samples
    );
    let _ = writeln!(
        o,
        "  pooled, with verify: commit p50 {:.2} ms p99 {:.2} ms p99.9 {:.1} ms max {:.1} ms ({} commits); lag p50 {:.1} ms p99 {:.1} ms ({} samples)",
        v.during.write_p50_ms, v.during.write_p99_ms, v.during.write_p999_ms, v.during.write_max_ms, v.during.write_samples, v.during.lag_p50_ms, v.during.lag_p99_ms, v.during.lag_samples
    );
    let ratio = v.write_p99_ratio();
    let _ = writeln!(
        o,
        "  commit p99 with/without verify: {:.2}x (goal <= 1.10: {}); p50 {:.2}x; lag p99 {:.2}x; {} verify runs ended, median {:.1} s",
        ratio,
        if ratio <= 1.10 { "ok" } else { "MISSED" },
        v.write_p50_ratio(),
        v.lag_p99_ratio(),
        v.verify_run_secs.len(),
        {
            let mut s = v.verify_run_secs.clone();
            s.sort_by(f64::total_cmp);
            pct(&s, 0.5)
        }
    );
    o
}

/// The JSON fields of `--verify-load`.
pub fn fields(v: &VerifyLoad) -> Vec<(&'static str, String)> {
    let list = |g: &dyn Fn(&Phase) -> f64| {
        format!(
            "[{}]",
            v.phases
                .iter()
                .map(|p| f(g(p)))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    vec![
        ("verify_rows", v.rows.to_string()),
        ("verify_app_rate", v.rate.to_string()),
        ("verify_phase_secs", v.phase_secs.to_string()),
        ("verify_replicate_s", f(v.replicate_secs)),
        ("verify_at_rest_s", f(v.verify_at_rest_secs)),
        ("verify_write_p50_ms_idle", f(v.idle.write_p50_ms)),
        ("verify_write_p99_ms_idle", f(v.idle.write_p99_ms)),
        ("verify_write_p50_ms_during", f(v.during.write_p50_ms)),
        ("verify_write_p99_ms_during", f(v.during.write_p99_ms)),
        ("verify_write_p99_ratio", f(v.write_p99_ratio())),
        ("verify_write_p999_ms_idle", f(v.idle.write_p999_ms)),
        ("verify_write_p999_ms_during", f(v.during.write_p999_ms)),
        ("verify_write_max_ms_idle", f(v.idle.write_max_ms)),
        ("verify_write_max_ms_during", f(v.during.write_max_ms)),
        ("verify_write_p50_ratio", f(v.write_p50_ratio())),
        ("verify_lag_p50_ms_idle", f(v.idle.lag_p50_ms)),
        ("verify_lag_p99_ms_idle", f(v.idle.lag_p99_ms)),
        ("verify_lag_p50_ms_during", f(v.during.lag_p50_ms)),
        ("verify_lag_p99_ms_during", f(v.during.lag_p99_ms)),
        ("verify_lag_p99_ratio", f(v.lag_p99_ratio())),
        ("verify_runs_during", v.verify_run_secs.len().to_string()),
        (
            "verify_app_lock_waits",
            format!(
                "[{}]",
                v.phases
                    .iter()
                    .map(|p| p.lock_waits.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        (
            "verify_phases_with_verify",
            format!(
                "[{}]",
                v.phases
                    .iter()
                    .map(|p| p.verify.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        ("verify_phase_write_p99_ms", list(&|p| p.write_p99_ms)),
        ("verify_phase_lag_p99_ms", list(&|p| p.lag_p99_ms)),
        ("verify_phase_nodes_cpu_s", list(&|p| p.nodes_cpu_s)),
    ]
}
