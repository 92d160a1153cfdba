//! A stalled link, the most common fault of a field gateway's cellular modem or NAT box:
//! packets stop, no FIN or RST comes, the TCP connection stays established and every write into
//! it blocks (`Proxy::stall` in the test helpers). With real processes: a nats-server, the
//! harmonylite binary per node (one behind the stalling proxy, one connected directly) and the
//! app as a separate process.
//!
//! The contract under test (DESIGN.md invariant 11, `[nats] ping_interval_ms`): a link with no
//! answer to heartbeats is declared down within 3 intervals, in `status --json`
//! (`"link_up":false`), `/metrics` (`harmonylite_nats_link_up 0`) and `/health` (503 after
//! `[health_check] link_grace_ms`); the connection is replaced and the node is up again within
//! 30 s after the link returns; SIGTERM exits within 5 s whatever the link does; nothing is
//! lost or duplicated. Each test checks what a user would see: the status, the scrapes, the
//! exit, exact table dumps on every node.
//!
//! Run: `source scripts/tools.sh; nice -n 10 cargo test --test stall -- --test-threads=2`.
//! A binary without `ping_interval_ms` refuses the config (exit 2), so the tests that set it
//! fail at the start of the node behind the proxy; the SIGTERM test uses the default interval.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The heartbeat interval the tests configure (the default is 10 s; short keeps them quick).
const PING_MS: u64 = 1000;
/// `[health_check] link_grace_ms`: how long the link may be down before `/health` says 503.
const LINK_GRACE_MS: u64 = 1000;
/// Slack on top of the 3-interval contract: each poll runs `harmonylite status` as a process
/// and the machine (2 cores) is shared.
const SLACK: Duration = Duration::from_secs(5);
/// The link is reported down this long after the stall began, at the latest.
const DOWN_WITHIN: Duration = Duration::from_millis(3 * PING_MS + SLACK.as_millis() as u64);
/// The node reports the link up again this long after the link returns, at the latest.
const UP_WITHIN: Duration = Duration::from_secs(30);
/// README: SIGTERM exits within 5 s.
const SIGTERM_EXIT_WITHIN: Duration = Duration::from_secs(5);

/// Heartbeats every `ping_ms` (None: the default), `/metrics` and `/health` on their own ports.
fn stall_toml(ping_ms: Option<u64>, metrics: u16, health: u16) -> String {
    let nats = ping_ms.map_or(String::new(), |ms| {
        format!("[nats]\nping_interval_ms = {ms}\n")
    });
    format!(
        "{nats}[prometheus]\nenable = true\nbind = \"127.0.0.1:{metrics}\"\n\
         [health_check]\nenable = true\nbind = \"127.0.0.1:{health}\"\ndetailed = true\n\
         link_grace_ms = {LINK_GRACE_MS}\n"
    )
}

/// The node behind the proxy with its ports.
struct Watched {
    node: Node,
    metrics: u16,
    health: u16,
}

impl Watched {
    fn start(dir: &Path, name: &str, ping_ms: Option<u64>, url: &str) -> Watched {
        let [metrics, health] = free_ports::<2>();
        let mut node =
            Node::start_ready(dir, name, &stall_toml(ping_ms, metrics, health), Some(url));
        node.wait_connected();
        Watched {
            node,
            metrics,
            health,
        }
    }

    /// `link_up` of `status --json`: `true`, `false` or `null`.
    fn status_link(&self) -> String {
        json_scalar(&status_json(&self.node.config), "link_up")
            .unwrap_or("missing")
            .to_string()
    }

    /// The `harmonylite_nats_link_up` sample of `/metrics`.
    fn metric_link(&self) -> Option<f64> {
        let (code, body) = http_get(self.metrics, "/metrics")?;
        if code != 200 {
            return None;
        }
        body.lines().find_map(|l| {
            l.strip_prefix("harmonylite_nats_link_up ")?
                .trim()
                .parse()
                .ok()
        })
    }

    fn health_code(&self) -> Option<u16> {
        http_get(self.health, "/health").map(|(code, _)| code)
    }

    /// What the user checks, in one line (for failure messages).
    fn seen(&self) -> String {
        format!(
            "status link_up={} metrics harmonylite_nats_link_up={:?} /health={:?}",
            self.status_link(),
            self.metric_link(),
            http_get(self.health, "/health")
        )
    }

    /// Waits until status, metrics and health all say the link is down, each by `by`.
    fn wait_reported_down(&self, by: Instant, health_by: Instant) {
        let left = |t: Instant| t.saturating_duration_since(Instant::now());
        let diag = || format!("{}\n{}", self.seen(), self.node.current_log());
        wait_until_or(
            &format!("{}: status --json says link_up false", self.node.name),
            left(by),
            || self.status_link() == "false",
            diag,
        );
        wait_until_or(
            &format!(
                "{}: /metrics says harmonylite_nats_link_up 0",
                self.node.name
            ),
            left(by),
            || self.metric_link() == Some(0.0),
            diag,
        );
        wait_until_or(
            &format!("{}: /health answers 503", self.node.name),
            left(health_by),
            || self.health_code() == Some(503),
            diag,
        );
    }

    /// Waits until status, metrics and health all say the link is up, each by `by`.
    fn wait_reported_up(&self, by: Instant) {
        let left = |t: Instant| t.saturating_duration_since(Instant::now());
        let diag = || format!("{}\n{}", self.seen(), self.node.current_log());
        wait_until_or(
            &format!("{}: status --json says link_up true", self.node.name),
            left(by),
            || self.status_link() == "true",
            diag,
        );
        wait_until_or(
            &format!(
                "{}: /metrics says harmonylite_nats_link_up 1",
                self.node.name
            ),
            left(by),
            || self.metric_link() == Some(1.0),
            diag,
        );
        wait_until_or(
            &format!("{}: /health answers 200", self.node.name),
            left(by),
            || self.health_code() == Some(200),
            diag,
        );
    }
}

/// The moments by which a stall that began at `t` must be reported (status and metrics; health).
fn down_deadlines(t: Instant) -> (Instant, Instant) {
    (
        t + DOWN_WITHIN,
        t + DOWN_WITHIN + Duration::from_millis(LINK_GRACE_MS),
    )
}

/// Waits until the app's row `id` (written on one node) is on `db`: the link carries data.
fn wait_row(db: &Path, id: i64) {
    wait_query(
        db,
        &format!("SELECT count(*) FROM t WHERE id = {id}"),
        "integer=1",
        WORKLOAD_CONVERGE,
    );
}

// ---------------------------------------------------------------------------------------------
// An idle node

/// n1 is idle behind a link that stalls: within 3 heartbeat intervals (plus slack) its
/// `status --json`, `/metrics` and `/health` all say the link is down, and stay so while the
/// stall lasts; both apps write meanwhile; after `pass()` n1 reports the link up again within
/// 30 s and both nodes hold exactly the rows both apps committed.
#[test]
fn idle_node_behind_a_stalled_link_reports_it_down_then_up_and_converges() {
    let dir = TestDir::new("stall-idle");
    let nats = NatsServer::start(dir.path());
    let proxy = Proxy::start(loopback(nats.port()));
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let n1 = Watched::start(dir.path(), "n1", Some(PING_MS), &proxy.url());
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n2.wait_connected();
    app(dbs[0], "INSERT INTO t VALUES (-1, 'before', 0)");
    wait_row(dbs[1], -1);
    n1.wait_reported_up(Instant::now() + UP_WITHIN);

    let stalled = Instant::now();
    proxy.stall();
    let (by, health_by) = down_deadlines(stalled);
    n1.wait_reported_down(by, health_by);
    eprintln!(
        "n1 reported the stalled link down {:?} after the stall began",
        stalled.elapsed()
    );

    // Both apps write while the link is stalled; n1 keeps saying the link is down (its new
    // connections are held unanswered by the stall).
    let mut w1 = Writer::start(dbs[0], "n1", 0, 3, 20, Duration::from_millis(50));
    let mut w2 = Writer::start(dbs[1], "n2", 10_000, 2, 20, Duration::from_millis(50));
    let (c1, c2) = (w1.join(), w2.join());
    let hold_until = Instant::now() + Duration::from_millis(3 * PING_MS);
    while Instant::now() < hold_until {
        assert_eq!(
            n1.status_link(),
            "false",
            "n1 said the link is up during the stall: {}",
            n1.seen()
        );
        std::thread::sleep(POLL); // observing the report over the stall
    }
    assert_eq!(n1.health_code(), Some(503), "{}", n1.seen());
    assert_eq!(
        rows_from(dbs[1], "n1"),
        0,
        "n1's rows crossed a stalled link (test premise)"
    );

    proxy.pass();
    n1.wait_reported_up(Instant::now() + UP_WITHIN);
    let extra = [(-1, "integer=-1|text='before'|integer=0".to_string())];
    let (t, c) = expected(&[(&w1, c1), (&w2, c2)], &extra);
    assert_exactly(&dbs, &t, &c);
    assert_no_panic(&[n1.node, n2]);
}

// ---------------------------------------------------------------------------------------------
// SIGTERM with a publish stuck in the link

/// Rows of `big` the app writes while the link is stalled, in transactions of `BIG_PER_TX`.
const BIG_ROWS: i64 = 3072;
const BIG_PER_TX: i64 = 256;
/// Bytes of random (incompressible) data per row: 4 KiB, 12 MiB in all, well above the ~4.3 MB
/// a stalled loopback connection takes before its writer blocks (measured in tests/proxy.rs).
const BIG_ROW_BYTES: i64 = 4096;

/// n1's link stalls, then its app commits 12 MiB of changes, so the node's publish is stuck
/// in the link; SIGTERM makes n1 exit within 5 s with status 0. Restarted with the link
/// passing, every row reaches n2 exactly once (same dump as n1). Uses the default heartbeat
/// interval, so it runs on a binary without `ping_interval_ms` too.
#[test]
fn sigterm_with_a_large_publish_stuck_in_a_stalled_link_exits_within_5_s() {
    let dir = TestDir::new("stall-sigterm");
    let nats = NatsServer::start(dir.path());
    let proxy = Proxy::start(loopback(nats.port()));
    let schema =
        format!("{WORKLOAD_SCHEMA}; CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB NOT NULL)");
    for n in ["n1", "n2"] {
        app(&dir.join(&format!("{n}.db")), &schema);
    }
    let (db1, db2) = (dir.join("n1.db"), dir.join("n2.db"));
    // Default heartbeats (10 s, so 30 s until the link is declared down): the publish is
    // certainly still stuck in the link when SIGTERM comes, a few seconds after the stall.
    let mut n1 = Watched::start(dir.path(), "n1", None, &proxy.url());
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n2.wait_connected();
    app(&db1, "INSERT INTO big VALUES (0, x'00')");
    wait_query(
        &db2,
        "SELECT count(*) FROM big",
        "integer=1",
        WORKLOAD_CONVERGE,
    );

    proxy.stall();
    for first in (1..=BIG_ROWS).step_by(BIG_PER_TX as usize) {
        let last = first + BIG_PER_TX - 1;
        app(
            &db1,
            &format!(
                "WITH RECURSIVE c(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM c WHERE i < {last}) \
                 INSERT INTO big SELECT i, randomblob({BIG_ROW_BYTES}) FROM c"
            ),
        );
    }
    // The node has taken the changes in hand (stamped into its outbox) and is publishing them
    // into the stalled link.
    wait_until_or(
        "n1's outbox holds every row the app wrote",
        WORKLOAD_CONVERGE,
        || {
            json_scalar(&status_json(&n1.node.config), "outbox_changes")
                .and_then(|v| v.parse::<i64>().ok())
                >= Some(BIG_ROWS)
        },
        || n1.node.current_log(),
    );
    let pid = n1.node.pid().expect("n1 runs");
    let term = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
    let log_path = n1.node.log_path.clone();
    wait_until_or(
        "n1 exits after SIGTERM",
        SIGTERM_EXIT_WITHIN,
        || !n1.node.is_running(),
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            format!(
                "n1 still running {:?} after SIGTERM:\n{log}",
                term.elapsed()
            )
        },
    );
    eprintln!(
        "n1 exited {:?} after SIGTERM with its publish stuck in the stalled link",
        term.elapsed()
    );
    let status = n1.node.stop(); // already exited: collects the status
    assert_eq!(
        status.code(),
        Some(0),
        "n1's exit status after SIGTERM: {status}\n{}",
        n1.node.current_log()
    );
    assert_eq!(
        count(&db2, "big"),
        1,
        "rows crossed a stalled link (test premise)"
    );

    proxy.pass();
    n1.node.restart_ready();
    wait_query(
        &db2,
        "SELECT count(*) FROM big",
        &format!("integer={}", BIG_ROWS + 1),
        WORKLOAD_CONVERGE,
    );
    wait_converged(&[&db1, &db2], &["big"], WORKLOAD_CONVERGE);
    assert_eq!(
        query_one(
            &db2,
            "SELECT count(DISTINCT id) || ':' || sum(length(b)) FROM big"
        )
        .unwrap(),
        format!("text='{}:{}'", BIG_ROWS + 1, BIG_ROWS * BIG_ROW_BYTES + 1)
    );
    assert!(n1.node.stop().success());
    assert_no_panic(&[n1.node, n2]);
}

// ---------------------------------------------------------------------------------------------
// Many short stalls

/// Heartbeats of the cycles test: 1.5 s until a silent link is declared down, so about half of
/// the 1-3 s stalls outlast it and the connection is replaced, the rest do not.
const CYCLE_PING_MS: u64 = 500;
const CYCLES: usize = 20;
/// Cycles run before the baseline is taken (the node's pools and caches warm up).
const WARMUP_CYCLES: usize = 3;
/// Allowed growth from the baseline to the end: a thread or two that may be mid-connect when
/// sampled, and RSS within 25% + 8 MiB (allocator noise; a leak per cycle would exceed it).
/// Measured with the binary before heartbeats (config without `ping_interval_ms`): 8 threads
/// and 14960 kB after 3 cycles, 8 threads and 14996 kB after 20.
const THREAD_SLACK: usize = 2;
const RSS_SLACK_PERCENT: u64 = 25;
const RSS_SLACK_KB: u64 = 8 * 1024;

/// Threads and resident KiB of a process, from /proc: the fewest threads and least RSS of five
/// samples 200 ms apart (a thread being started for a reconnect is not a leak).
fn threads_and_rss(pid: u32) -> (usize, u64) {
    let mut best = (usize::MAX, u64::MAX);
    for _ in 0..5 {
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(usize::MAX);
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmRSS:")?
                        .trim()
                        .strip_suffix("kB")?
                        .trim()
                        .parse()
                        .ok()
                })
            })
            .unwrap_or(u64::MAX);
        best = (best.0.min(threads), best.1.min(rss));
        std::thread::sleep(Duration::from_millis(200)); // spacing of the samples
    }
    best
}

/// 20 stalls of 1-3 s (seeded: `HL_FAULT_SEED`, default 0x5eed) with both apps writing, each
/// followed by passing until n1's rows flow again: n1's thread count and RSS after all cycles
/// are flat compared with after the first cycles (slack above), and every row converges.
#[test]
fn twenty_stall_cycles_leave_threads_and_memory_flat_and_converge() {
    let seed = std::env::var("HL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    eprintln!("stall cycles: seed {seed} (HL_FAULT_SEED)");
    let mut rng = Rng::new(seed);
    let dir = TestDir::new("stall-cycles");
    let nats = NatsServer::start(dir.path());
    let proxy = Proxy::start(loopback(nats.port()));
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let n1 = Watched::start(dir.path(), "n1", Some(CYCLE_PING_MS), &proxy.url());
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n2.wait_connected();
    let pid = n1.node.pid().unwrap();
    let mut w1 = Writer::start(dbs[0], "n1", 0, 2, i64::MAX, Duration::from_millis(40));
    let mut w2 = Writer::start(
        dbs[1],
        "n2",
        1_000_000,
        2,
        i64::MAX,
        Duration::from_millis(60),
    );

    let mut baseline = None;
    for cycle in 0..CYCLES {
        let d = rng.millis(1000, 3000);
        proxy.stall();
        std::thread::sleep(d); // the stall
        proxy.pass();
        // The link carries n1's writes again, both ways: rows from each app arrive anew.
        let (from1, from2) = (rows_from(dbs[1], "n1"), rows_from(dbs[0], "n2"));
        wait_until_or(
            &format!("cycle {cycle}: rows flow both ways after a {d:?} stall"),
            UP_WITHIN,
            || rows_from(dbs[1], "n1") > from1 && rows_from(dbs[0], "n2") > from2,
            || format!("{}\n{}", n1.seen(), n1.node.current_log()),
        );
        if cycle + 1 == WARMUP_CYCLES {
            let b = threads_and_rss(pid);
            eprintln!(
                "after {WARMUP_CYCLES} cycles: {} threads, VmRSS {} kB",
                b.0, b.1
            );
            baseline = Some(b);
        }
    }
    let (threads0, rss0) = baseline.unwrap();
    let (threads, rss) = threads_and_rss(pid);
    eprintln!("after {CYCLES} cycles: {threads} threads, VmRSS {rss} kB");
    assert!(
        threads <= threads0 + THREAD_SLACK,
        "n1's threads grew from {threads0} to {threads} over {} stall cycles",
        CYCLES - WARMUP_CYCLES
    );
    let rss_limit = rss0 + rss0 * RSS_SLACK_PERCENT / 100 + RSS_SLACK_KB;
    assert!(
        rss <= rss_limit,
        "n1's VmRSS grew from {rss0} kB to {rss} kB (limit {rss_limit} kB) over {} stall cycles",
        CYCLES - WARMUP_CYCLES
    );

    let (c1, c2) = (w1.stop(), w2.stop());
    let (t, c) = expected(&[(&w1, c1), (&w2, c2)], &[]);
    assert_exactly(&dbs, &t, &c);
    n1.wait_reported_up(Instant::now() + UP_WITHIN);
    assert_no_panic(&[n1.node, n2]);
}

// ---------------------------------------------------------------------------------------------
// A stall past the heartbeat deadline while the other node writes

/// n1's link stalls until n1 has declared it down (so longer than the heartbeat deadline; the
/// replacement connections are held too) while n2's app writes 200 rows; when the link passes,
/// n1 receives every one of them exactly once, and a row n1 writes afterwards reaches n2.
#[test]
fn node_stalled_past_the_heartbeat_deadline_catches_up_on_the_other_nodes_writes() {
    let dir = TestDir::new("stall-behind");
    let nats = NatsServer::start(dir.path());
    let proxy = Proxy::start(loopback(nats.port()));
    let dbs = make_dbs(dir.path(), &["n1", "n2"]);
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let n1 = Watched::start(dir.path(), "n1", Some(PING_MS), &proxy.url());
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n2.wait_connected();
    app(dbs[1], "INSERT INTO t VALUES (-1, 'before', 0)");
    wait_row(dbs[0], -1);

    let stalled = Instant::now();
    proxy.stall();
    let mut w2 = Writer::start(dbs[1], "n2", 10_000, 4, 50, Duration::from_millis(50));
    let (by, health_by) = down_deadlines(stalled);
    n1.wait_reported_down(by, health_by);
    let c2 = w2.join();
    assert_eq!(c2, 50);
    assert_eq!(
        rows_from(dbs[0], "n2"),
        0,
        "n2's rows crossed a stalled link (test premise)"
    );

    proxy.pass();
    n1.wait_reported_up(Instant::now() + UP_WITHIN);
    let mut w1 = Writer::start(dbs[0], "n1", 0, 1, 1, Duration::ZERO);
    let c1 = w1.join();
    let extra = [(-1, "integer=-1|text='before'|integer=0".to_string())];
    let (t, c) = expected(&[(&w1, c1), (&w2, c2)], &extra);
    assert_exactly(&dbs, &t, &c);
    assert_no_panic(&[n1.node, n2]);
}

// ---------------------------------------------------------------------------------------------
// One-off commands through a stalled link

/// `snapshot save`, `status --fleet` and `snapshot restore` (of a missing database) through a
/// stalled link end on their own with exit 1 and an error that names the deadline that fired,
/// instead of waiting on the link forever (the greeting of a held connection never comes).
#[test]
fn one_off_commands_through_a_stalled_link_end_with_the_deadline_named() {
    let dir = TestDir::new("stall-cli");
    let nats = NatsServer::start(dir.path());
    let proxy = Proxy::start(loopback(nats.port()));
    let dbs = make_dbs(dir.path(), &["n1"]);
    let extra = "[nats]\nconnect_timeout_ms = 1000\n";
    let config = dir.join("n1.toml");
    std::fs::write(&config, node_toml(&dbs[0], extra, Some(&proxy.url()))).unwrap();
    let missing = dir.join("missing.toml");
    std::fs::write(
        &missing,
        node_toml(&dir.join("missing.db"), extra, Some(&proxy.url())),
    )
    .unwrap();
    proxy.stall();
    let cfg = config.to_str().unwrap();
    for args in [
        vec!["snapshot", "save", "--config", cfg],
        vec!["status", "--fleet", "--config", cfg],
        vec!["snapshot", "restore", "--config", missing.to_str().unwrap()],
    ] {
        // the commands' own deadlines are about 1 s; 30 s here only ends a hang
        let out = run_bin(&args, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("connect_timeout_ms"),
            "{args:?} does not name the deadline: {err}"
        );
    }
    assert!(
        !dir.join("missing.db").exists(),
        "a failed restore left a database behind"
    );
}
