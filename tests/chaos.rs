//! A seeded randomized convergence test: three nodes, each behind its own fault-injecting proxy
//! to one nats-server; each node's app makes random inserts, updates and deletes on shared keys
//! (any node writes them) and private keys (one node writes them), while random faults hit:
//! proxy cuts (reset, blackhole, flap), stalls (the link stops, nothing closes, writes block; 1 s
//! to 60 s, long ones rarely, none past the end of the soak), `kill -9` and restart of a sidecar,
//! SIGTERM and restart, nats-server restart with the same store.
//!
//! The test keeps a model of every committed write. At the end every node holds the same table,
//! and each key holds the result of the last operation of one of the nodes that wrote it (per
//! node, later writes carry higher versions, so the winner is some node's last operation):
//! a private key holds exactly its owner's last write (or is absent after its last delete); a
//! shared key holds one node's last value for it, or is absent only if some node's last
//! operation on it was a delete. Last, `harmonylite verify` (the nodes' own check, through
//! NATS) must find every node in agreement.
//!
//! - `HL_CHAOS_SEED=N`: the seed (printed at start and on failure); default: from the clock.
//! - `HL_SOAK_SECS=N`: how long the workload and faults run (default 100 s, about 2 minutes in
//!   all with setup and convergence).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// Default length of the workload-and-faults phase.
const DEFAULT_SOAK: Duration = Duration::from_secs(100);
/// How long the nodes may take to converge once the faults stop.
const CONVERGE: Duration = Duration::from_secs(180);
const NODES: usize = 3;
const SHARED_KEYS: u64 = 12;
const PRIVATE_KEYS: u64 = 15;
/// Stalls: most last `SHORT_STALL`; one in `LONG_STALL_ONE_IN` lasts `LONG_STALL` (past any
/// heartbeat or ack deadline), capped at the soak time left so the run keeps its length.
const SHORT_STALL: (u64, u64) = (1_000, 6_000);
const LONG_STALL: (u64, u64) = (6_000, 60_000);
const LONG_STALL_ONE_IN: u64 = 8;
const SCHEMA: &str =
    "CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT NOT NULL, node TEXT NOT NULL, seq INTEGER NOT NULL); \
     CREATE TABLE marker(node TEXT PRIMARY KEY)";

/// Prints the seed again when the test fails (declared first, so it is dropped last, after the
/// nodes printed their logs).
struct SeedReport(u64);

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "chaos: FAILED with seed {0}; rerun with HL_CHAOS_SEED={0}",
                self.0
            );
        }
    }
}

/// One committed operation of an app.
#[derive(Clone, Debug)]
enum Op {
    /// The row `(k, v, node, seq)` was written (insert, update or upsert).
    Put {
        v: String,
        seq: u64,
    },
    Delete,
}

/// What one app committed, in commit order: (key, op, time since start).
type History = Vec<(String, Op, Duration)>;

fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// The rendered dump row of a put.
fn row(k: &str, v: &str, node: &str, seq: u64) -> String {
    format!("text='{k}'|text='{v}'|text='{node}'|integer={seq}")
}

/// One app: random transactions of 1-3 operations until `stop`, each committed through one
/// long-lived app process. Returns what was committed.
fn run_app(db: PathBuf, i: usize, seed: u64, stop: Arc<AtomicBool>, t0: Instant) -> History {
    let me = node_name(i);
    let mut rng = Rng::new(seed ^ (0xA0 + i as u64));
    let mut session = AppSession::open(&db);
    let mut history: History = Vec::new();
    // The owner alone writes its private keys, so it knows whether each exists.
    let mut private_present: BTreeSet<String> = BTreeSet::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut sql = String::from("BEGIN;");
        let mut ops: Vec<(String, Op)> = Vec::new();
        let mut present = private_present.clone();
        for _ in 0..1 + rng.below(3) {
            seq += 1;
            let v = format!("{me}-{seq}");
            if rng.chance(45) {
                let k = format!("s{}", rng.below(SHARED_KEYS));
                if rng.chance(80) {
                    sql.push_str(&format!(
                        "INSERT INTO kv VALUES ('{k}', '{v}', '{me}', {seq}) \
                         ON CONFLICT(k) DO UPDATE SET v = excluded.v, node = excluded.node, seq = excluded.seq;"
                    ));
                    ops.push((k, Op::Put { v, seq }));
                } else {
                    // A delete that always deletes a row here (the key may not have reached
                    // this node yet), so it is a committed delete for the model.
                    sql.push_str(&format!(
                        "INSERT INTO kv VALUES ('{k}', 'doomed', '{me}', {seq}) ON CONFLICT(k) DO NOTHING; \
                         DELETE FROM kv WHERE k = '{k}';"
                    ));
                    ops.push((k, Op::Delete));
                }
            } else {
                let k = format!("p{}-{}", i + 1, rng.below(PRIVATE_KEYS));
                if !present.contains(&k) {
                    sql.push_str(&format!(
                        "INSERT INTO kv VALUES ('{k}', '{v}', '{me}', {seq});"
                    ));
                    present.insert(k.clone());
                    ops.push((k, Op::Put { v, seq }));
                } else if rng.chance(75) {
                    sql.push_str(&format!(
                        "UPDATE kv SET v = '{v}', seq = {seq} WHERE k = '{k}';"
                    ));
                    ops.push((k, Op::Put { v, seq }));
                } else {
                    sql.push_str(&format!("DELETE FROM kv WHERE k = '{k}';"));
                    present.remove(&k);
                    ops.push((k, Op::Delete));
                }
            }
        }
        sql.push_str("COMMIT;");
        session.exec(&sql); // the app never fails: a failure panics this thread
        let at = t0.elapsed();
        private_present = present;
        history.extend(ops.into_iter().map(|(k, op)| (k, op, at)));
        std::thread::sleep(rng.millis(10, 120)); // pacing of the app
    }
    history
}

/// The faults, one at a time, until `until`.
#[allow(clippy::too_many_arguments)]
fn run_faults(
    rng: &mut Rng,
    until: Instant,
    nats: &mut NatsServer,
    proxies: &[Proxy],
    nodes: &mut [Node],
    t0: Instant,
    tally: &mut BTreeMap<&'static str, u32>,
) {
    while Instant::now() < until {
        std::thread::sleep(rng.millis(1000, 4000)); // time between faults
        if Instant::now() >= until {
            break;
        }
        let i = rng.below(NODES as u64) as usize;
        let name = node_name(i);
        let at = t0.elapsed().as_secs_f64();
        let roll = rng.below(100);
        let kind: &'static str = match roll {
            0..=14 => {
                let d = rng.millis(500, 6000);
                eprintln!("[{at:6.1}s] cut {name} (reset) for {d:?}");
                proxies[i].reset();
                std::thread::sleep(d); // the outage
                proxies[i].pass();
                "cut-reset"
            }
            15..=26 => {
                let d = rng.millis(500, 13000);
                eprintln!("[{at:6.1}s] cut {name} (blackhole) for {d:?}");
                proxies[i].blackhole();
                std::thread::sleep(d); // the outage
                proxies[i].pass();
                "cut-blackhole"
            }
            27..=38 => {
                let (lo, hi) = if rng.below(LONG_STALL_ONE_IN) == 0 {
                    LONG_STALL
                } else {
                    SHORT_STALL
                };
                let drawn = rng.millis(lo, hi);
                let d = drawn.min(until.saturating_duration_since(Instant::now()));
                eprintln!("[{at:6.1}s] stall {name} for {d:?} (drawn {drawn:?})");
                proxies[i].stall();
                std::thread::sleep(d); // the stall
                proxies[i].pass();
                if drawn >= Duration::from_millis(LONG_STALL.0) {
                    "stall-long"
                } else {
                    "stall"
                }
            }
            39..=46 => {
                let d = rng.millis(2000, 5000);
                eprintln!("[{at:6.1}s] flap {name} (300/300 ms) for {d:?}");
                proxies[i].flap(
                    Duration::from_millis(300),
                    Duration::from_millis(300),
                    Instant::now() + d,
                );
                std::thread::sleep(d); // the flapping
                proxies[i].pass();
                "flap"
            }
            47..=69 => {
                let down = rng.millis(0, 2000);
                eprintln!("[{at:6.1}s] kill -9 {name}, restart after {down:?}");
                nodes[i].kill9();
                std::thread::sleep(down); // the sidecar stays dead meanwhile
                nodes[i].restart();
                "kill9"
            }
            70..=79 => {
                eprintln!("[{at:6.1}s] SIGTERM {name} and restart");
                if nodes[i].is_running() {
                    let st = nodes[i].stop();
                    assert_eq!(st.code(), Some(0), "{name}: SIGTERM exit status {st}");
                } else {
                    panic!("{name} is not running:\n{}", nodes[i].log());
                }
                nodes[i].restart();
                "sigterm"
            }
            _ => {
                eprintln!("[{at:6.1}s] restart the nats-server (same store)");
                nats.restart();
                "nats-restart"
            }
        };
        *tally.entry(kind).or_default() += 1;
        // No node may die on its own.
        for n in nodes.iter_mut() {
            assert!(
                n.is_running(),
                "{} exited on its own; log:\n{}",
                n.name,
                n.log()
            );
        }
    }
}

#[test]
fn random_writes_and_faults_converge_to_the_model() {
    let seed = std::env::var("HL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        });
    let soak = std::env::var("HL_SOAK_SECS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_SOAK);
    eprintln!(
        "chaos: seed {seed} (HL_CHAOS_SEED), workload and faults for {soak:?} (HL_SOAK_SECS)"
    );
    let _report = SeedReport(seed);
    let mut rng = Rng::new(seed);

    let dir = TestDir::new("chaos");
    let mut nats = NatsServer::start(dir.path());
    let upstream: SocketAddr = ([127, 0, 0, 1], nats.port()).into();
    let proxies: Vec<Proxy> = (0..NODES).map(|_| Proxy::start(upstream)).collect();
    let dbs: Vec<PathBuf> = (0..NODES)
        .map(|i| {
            let db = dir.join(&format!("{}.db", node_name(i)));
            app(&db, SCHEMA);
            db
        })
        .collect();
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| Node::start(dir.path(), &node_name(i), "", Some(&proxies[i].url())))
        .collect();
    for n in &mut nodes {
        n.wait_ready();
        n.wait_connected();
    }

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let apps: Vec<_> = (0..NODES)
        .map(|i| {
            let (db, st) = (dbs[i].clone(), stop.clone());
            std::thread::spawn(move || run_app(db, i, seed, st, t0))
        })
        .collect();
    let mut tally = BTreeMap::new();
    run_faults(
        &mut rng,
        t0 + soak,
        &mut nats,
        &proxies,
        &mut nodes,
        t0,
        &mut tally,
    );
    stop.store(true, Ordering::SeqCst);
    let histories: Vec<History> = apps
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            h.join()
                .unwrap_or_else(|_| panic!("the app of {} failed (see above)", node_name(i)))
        })
        .collect();
    let ops: usize = histories.iter().map(Vec::len).sum();
    eprintln!(
        "chaos: {ops} committed operations in {:?}; faults: {tally:?}",
        t0.elapsed()
    );
    for p in &proxies {
        p.pass();
    }
    for n in &mut nodes {
        if !n.is_running() {
            n.restart();
        }
        n.wait_ready();
    }

    // Every node ends with the same table. A barrier first: each app writes a marker after all
    // its work; a node publishes in version order, so once every node holds every marker,
    // everything written before the markers has been shipped too.
    let paths: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let converge_start = Instant::now();
    for (i, db) in paths.iter().enumerate() {
        app(
            db,
            &format!("INSERT INTO marker VALUES ('{}')", node_name(i)),
        );
    }
    for db in &paths {
        wait_until_or(
            &format!("{} holds every node's marker", db.display()),
            CONVERGE,
            || count(db, "marker") == NODES as i64,
            || format!("markers: {:?}", dump(db, "marker")),
        );
    }
    wait_converged(&paths, &["kv", "marker"], CONVERGE);
    eprintln!(
        "chaos: converged {:?} after the faults stopped",
        converge_start.elapsed()
    );
    let table = dump(&dbs[0], "kv");

    // ... and that table agrees with the model.
    let mut finals: BTreeMap<String, String> = BTreeMap::new();
    for line in &table {
        let k = line
            .strip_prefix("text='")
            .and_then(|r| r.split('\'').next())
            .unwrap_or_else(|| panic!("unexpected row {line}"))
            .to_string();
        assert!(
            finals.insert(k.clone(), line.clone()).is_none(),
            "key {k} twice"
        );
    }
    // Per key, per node: the node's last operation on it.
    let mut last: BTreeMap<String, BTreeMap<usize, (Op, Duration)>> = BTreeMap::new();
    let mut written: BTreeMap<String, usize> = BTreeMap::new();
    for (i, h) in histories.iter().enumerate() {
        for (k, op, at) in h {
            last.entry(k.clone())
                .or_default()
                .insert(i, (op.clone(), *at));
            *written.entry(k.clone()).or_default() += 1;
        }
    }
    let mut problems = Vec::new();
    for (k, per_node) in &last {
        let allowed: Vec<Option<String>> = per_node
            .iter()
            .map(|(i, (op, _))| match op {
                Op::Put { v, seq } => Some(row(k, v, &node_name(*i), *seq)),
                Op::Delete => None,
            })
            .collect();
        let got = finals.get(k).cloned();
        if !allowed.contains(&got) {
            problems.push(format!(
                "key {k} ({} writes): holds {got:?}; allowed (each writer's last op): {per_node:?}",
                written[k]
            ));
        }
        if k.starts_with('p') {
            // One writer: exactly its last operation.
            assert_eq!(
                per_node.len(),
                1,
                "private key {k} written by several nodes"
            );
        }
    }
    for k in finals.keys() {
        if !last.contains_key(k) {
            problems.push(format!(
                "key {k} is present but no app wrote it: {}",
                finals[k]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the final table disagrees with the model ({} problems):\n{}",
        problems.len(),
        problems.join("\n")
    );
    let shared = finals.keys().filter(|k| k.starts_with('s')).count();
    eprintln!(
        "chaos: {} keys in the final table ({shared} shared), all {} written keys agree with the model",
        finals.len(),
        last.len()
    );

    // The nodes' own check agrees: same live keys at the same (version, origin) everywhere,
    // a tombstone and no version row alike (`harmonylite verify`, asked through NATS).
    let out = run_bin(
        &["verify", "--config", nodes[0].config.to_str().unwrap()],
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("chaos: harmonylite verify:\n{text}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify agrees after convergence:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for n in &nodes {
        let log = n.log();
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", n.name);
    }
}
