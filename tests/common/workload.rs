//! The workload of the fault tests: apps that write numbered rows through a long-lived app
//! process and know exactly what they committed, the rows every node must then hold, and log
//! checks (no warning storm, no panic).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;

/// How long the nodes may take to hold every committed row.
pub const WORKLOAD_CONVERGE: Duration = Duration::from_secs(90);

/// `t` holds the app's rows (`origin` names the writer, `tx` its transaction number); `c` holds
/// one counter row per writer, bumped by each of its transactions.
pub const WORKLOAD_SCHEMA: &str =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, origin TEXT NOT NULL, tx INTEGER NOT NULL); \
                      CREATE TABLE c(origin TEXT PRIMARY KEY, n INTEGER NOT NULL)";

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

// ---------------------------------------------------------------------------------------------
// The app's workload

/// An app (one `tests/app_session.py` process) writing transactions to one DB on a thread:
/// each transaction inserts `rows_per_tx` rows with ids from `first_id` on and bumps the
/// writer's counter row. Stops after `max_tx` transactions or when asked; the app must never
/// fail (a failure panics the thread, and `stop`/`join` report it).
pub struct Writer {
    pub origin: String,
    first_id: i64,
    rows_per_tx: i64,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<i64>>,
}

impl Writer {
    pub fn start(
        db: &Path,
        origin: &str,
        first_id: i64,
        rows_per_tx: i64,
        max_tx: i64,
        pace: Duration,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (db, o, st) = (db.to_path_buf(), origin.to_string(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut session = AppSession::open(&db);
            session.exec(&format!(
                "INSERT INTO c VALUES ('{o}', 0) ON CONFLICT DO NOTHING"
            ));
            let mut done = 0;
            while done < max_tx && !st.load(Ordering::SeqCst) {
                let mut sql = String::from("BEGIN;");
                for j in 0..rows_per_tx {
                    let id = first_id + done * rows_per_tx + j;
                    sql.push_str(&format!("INSERT INTO t VALUES ({id}, '{o}', {done});"));
                }
                sql.push_str(&format!(
                    "UPDATE c SET n = n + 1 WHERE origin = '{o}'; COMMIT;"
                ));
                session.exec(&sql);
                done += 1;
                std::thread::sleep(pace); // pacing of the app, not a wait
            }
            done
        });
        Writer {
            origin: origin.to_string(),
            first_id,
            rows_per_tx,
            stop,
            handle: Some(handle),
        }
    }

    /// Asks the writer to stop after its current transaction; returns how many it committed.
    pub fn stop(&mut self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Waits for the writer to finish on its own (`max_tx`).
    pub fn join(&mut self) -> i64 {
        match self.handle.take().expect("writer already joined").join() {
            Ok(n) => n,
            Err(_) => panic!("the app writing as {} failed (see above)", self.origin),
        }
    }

    /// The `t` rows of `committed` transactions, rendered like `dump`.
    pub fn rows(&self, committed: i64) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        for tx in 0..committed {
            for j in 0..self.rows_per_tx {
                let id = self.first_id + tx * self.rows_per_tx + j;
                out.push((
                    id,
                    format!("integer={id}|text='{}'|integer={tx}", self.origin),
                ));
            }
        }
        out
    }
}

impl Drop for Writer {
    /// A failing test stops its writers before its temp dir goes.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Expected dumps of `t` and `c` for the writers' committed transaction counts (plus `extra`
/// rows of `t`, already rendered with their id).
pub fn expected(done: &[(&Writer, i64)], extra: &[(i64, String)]) -> (Vec<String>, Vec<String>) {
    let mut rows: Vec<(i64, String)> = extra.to_vec();
    let mut counters: Vec<String> = Vec::new();
    for (w, n) in done {
        rows.extend(w.rows(*n));
        counters.push(format!("text='{}'|integer={n}", w.origin));
    }
    rows.sort();
    counters.sort();
    (rows.into_iter().map(|(_, r)| r).collect(), counters)
}

/// How many rows of `t` in `db` were written by `origin`'s app.
pub fn rows_from(db: &Path, origin: &str) -> i64 {
    let c = open_ro(db);
    c.query_row("SELECT count(*) FROM t WHERE origin = ?1", [origin], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Every DB ends with exactly these rows: same dump, same `count(*)`, no id twice.
pub fn assert_exactly(dbs: &[&Path], t_rows: &[String], c_rows: &[String]) {
    let t: Vec<&str> = t_rows.iter().map(String::as_str).collect();
    let c: Vec<&str> = c_rows.iter().map(String::as_str).collect();
    for db in dbs {
        wait_dump(db, "t", &t, WORKLOAD_CONVERGE);
        wait_dump(db, "c", &c, WORKLOAD_CONVERGE);
    }
    wait_converged(dbs, &["t", "c"], WORKLOAD_CONVERGE);
    for db in dbs {
        assert_eq!(count(db, "t"), t_rows.len() as i64, "{}", db.display());
        assert_eq!(
            query_one(db, "SELECT count(DISTINCT id) FROM t").unwrap(),
            format!("integer={}", t_rows.len()),
            "{}",
            db.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Logs

/// Warning and error lines of a log, normalized so repeats of one message compare equal: the
/// timestamp is dropped and digit runs become `#`.
pub fn warnings(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(|l| {
            let rest = l.split_once(' ').map_or(l, |(_, r)| r);
            let mut out = String::new();
            let mut in_digits = false;
            for ch in rest.chars() {
                if ch.is_ascii_digit() {
                    if !in_digits {
                        out.push('#');
                    }
                    in_digits = true;
                } else {
                    out.push(ch);
                    in_digits = false;
                }
            }
            out
        })
        .collect()
}

/// The most repeated (normalized) warning in `log` and how often it appears.
pub fn most_repeated_warning(log: &str) -> (usize, String) {
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for w in warnings(log) {
        *counts.entry(w).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(w, n)| (n, w))
        .max()
        .unwrap_or((0, String::new()))
}

/// The log written by `node` since byte `mark` of its log.
pub fn log_since(node: &Node, mark: usize) -> String {
    let all = node.log();
    all.get(mark.min(all.len())..).unwrap_or(&all).to_string()
}

/// Fails when one warning repeats more than `max` times in `log` (rate-limited logs).
pub fn assert_no_log_storm(name: &str, log: &str, max: usize) {
    let (n, w) = most_repeated_warning(log);
    assert!(
        n <= max,
        "{name} logged the same warning {n} times (at most {max} expected: repeated errors \
         should be rate-limited):\n  {w}\n---- log ----\n{log}"
    );
}

/// Fails if a node panicked.
pub fn assert_no_panic(nodes: &[Node]) {
    for n in nodes {
        let log = n.log();
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", n.name);
    }
}

/// Asserts the process stays alive for `window` (a node must not exit or crash-loop while NATS
/// is unreachable).
pub fn assert_stays_up(nodes: &mut [&mut Node], window: Duration) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        for n in nodes.iter_mut() {
            assert!(
                n.is_running(),
                "{} exited while NATS was unreachable; log:\n{}",
                n.name,
                n.log()
            );
        }
        std::thread::sleep(POLL); // observing liveness over the window
    }
}

/// Prepares `<dir>/<name>.db` with the schema for each name.
pub fn make_dbs(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let db = dir.join(format!("{n}.db"));
            app(&db, WORKLOAD_SCHEMA);
            db
        })
        .collect()
}
