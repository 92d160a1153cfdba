//! `hl-bench`: measures replication against the machine's own limits, in one run (issue 7).
//!
//! Starts its own nats-server on a free loopback port and real `harmonylite` processes, drives
//! the application's writes from its own SQLite connections, and reports each figure next to
//! its ceiling and goal. `--json` adds one JSON object as the last line of stdout.
//!
//! # Layout
//! - `harness`: scratch folder, nats-server, node processes, `/proc` readings, deadlines.
//! - `app`: the application's connections, table, payloads, and convergence probes.
//! - `ceilings`: SQLite insert rates with and without capture triggers; raw publish rates.
//! - `replication`: clusters of nodes; one writer, mixed workload, all writers.
//! - `lag`: lag at a steady rate; idle CPU and RSS.
//! - `amplification`: bytes written per captured change against a plain insert.
//! - `churn`: the rolling-window workload: file growth and HarmonyLite's bytes per live row.
//! - `fleet`: a hub and N gateways with per-table direction (`--fleet N`; N = 3 in every run).
//! - `verify_load`: the app's commit latency and lag with and without `verify` (`--verify-load`).
//! - `report`: the table and the JSON line.
#![forbid(unsafe_code)]

mod amplification;
mod app;
mod ceilings;
mod churn;
mod fleet;
mod harness;
mod lag;
mod replication;
mod report;
mod snapshot;
mod verify_load;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use harmonylite::config::DEFAULT_POLLING_INTERVAL_MS;

use crate::fleet::FleetSizes;
use crate::harness::{find_nats_server, find_node_binary, loadavg, pause, Scratch, Server};
use crate::replication::{Cluster, Env, ROW_TABLE, STAMPED_TABLE};
use crate::report::Results;

const USAGE: &str = "\
hl-bench: replication throughput, lag, cost and footprint against the machine's own limits

Usage:
  cargo build --release --bins && target/release/hl-bench [--quick] [--json]
  target/release/hl-bench --snapshot [MIB] [--json]
  target/release/hl-bench --fleet N [--fleet-rows ROWS] [--json]
  target/release/hl-bench --churn [INSERTS] [--json]
  target/release/hl-bench --verify-load [ROWS] [--verify-rate R] [--verify-secs S] [--verify-rounds N] [--json]

Options:
  --quick          fewer rows and a 10 s idle window (under two minutes on 2 cores); the
                   full run watches the idle nodes for 10 minutes
  --json           also print one JSON object as the last line of stdout (the table goes to stderr)
  --snapshot [MIB] only the snapshot figures: save and restore a MIB MiB database (default 1024)
                   and the peak RSS of each process; needs about 6x MIB of free disk
  --fleet N        only the fleet figures: a hub and N gateways (readings up, settings down) on one
                   nats-server; hub ingest, bytes each gateway receives, settings propagation,
                   wire bytes per reading, gateway RSS and idle CPU, hub and server CPU
  --fleet-rows R   readings written by the whole fleet in --fleet (default 100000)
  --churn [N]      only the churn figures: N inserts (default 1000000) into a rolling window of
                   10000 rows on 3 nodes; file size at each quarter, harmonylite's bytes per live row
  --verify-load [ROWS]
                   only the verify-load figures: 3 nodes holding a table of ROWS rows (default
                   1000000); the app's commit latency and lag at R rows/s (default 1000) in
                   phases of S s (default 20) without and with `harmonylite verify` running back
                   to back, N pairs of phases (default 2); not part of --quick or the full run

Needs nats-server: $NATS_SERVER, else .tools/py/bin/nats-server (bash scripts/tools.sh), else PATH.
The nodes run target/release/harmonylite next to hl-bench, or $HL_NODE_BIN (e.g. a static build).
HL_KEEP_TMP=1 keeps the scratch folder (databases, configs, node logs).
HL_BENCH_COMPRESS=false (or true) sets [replication_log] compress on every node, for A/B runs.
";

/// Row size of the throughput, lag and cost scenarios, and of the raw publish payload.
pub const ROW_BYTES: usize = 100;
/// Row size of the mixed workload.
pub const MIXED_ROW_BYTES: usize = 1024;
/// Lag rates, rows/s.
const LAG_RATES: [u32; 2] = [1000, 100];
/// Rounds of the one-writer run; the median is the headline figure (lock waits make single
/// rounds vary).
pub const E2E_ROUNDS: u64 = 3;
/// Quiet time after the lag runs before the idle window starts.
const SETTLE: Duration = Duration::from_secs(2);

/// How much work each scenario does.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub ceiling_rows_1: u64,
    pub ceiling_rows_100: u64,
    pub publish_sequential: u64,
    pub publish_pipelined: u64,
    pub e2e_rows: u64,
    pub mixed_ops: u64,
    pub all_rows_each: u64,
    pub amp_rows: u64,
    pub churn_inserts: u64,
    pub lag_secs: u64,
    pub idle_secs: u64,
    pub fleet: FleetSizes,
}

const QUICK: Sizes = Sizes {
    ceiling_rows_1: 20_000,
    ceiling_rows_100: 200_000,
    publish_sequential: 300,
    publish_pipelined: 51_200,
    e2e_rows: 100_000,
    mixed_ops: 30_000,
    all_rows_each: 30_000,
    amp_rows: 50_000,
    churn_inserts: 100_000,
    lag_secs: 5,
    idle_secs: 10,
    fleet: FleetSizes {
        gateways: 3,
        rows: 15_000,
        settings_changes: 20,
        idle_secs: 5,
    },
};

const FULL: Sizes = Sizes {
    ceiling_rows_1: 50_000,
    ceiling_rows_100: 500_000,
    publish_sequential: 2_000,
    publish_pipelined: 256_000,
    e2e_rows: 300_000,
    mixed_ops: 100_000,
    all_rows_each: 60_000,
    amp_rows: 200_000,
    churn_inserts: 1_000_000,
    lag_secs: 20,
    // ten idle minutes: an SD card's wear is counted in what an idle node writes
    idle_secs: 600,
    fleet: FleetSizes {
        gateways: 3,
        rows: 60_000,
        settings_changes: 50,
        idle_secs: 30,
    },
};

/// `--fleet N` alone: readings of the whole fleet (`--fleet-rows`), settings changes, idle window.
const FLEET_ROWS: u64 = 100_000;
const FLEET_SETTINGS: u64 = 50;
const FLEET_IDLE_SECS: u64 = 30;

fn main() -> ExitCode {
    let (mut quick, mut json) = (false, false);
    let mut snapshot_mib: Option<u64> = None;
    let mut fleet_n: Option<usize> = None;
    let mut fleet_rows = FLEET_ROWS;
    let mut churn_n: Option<u64> = None;
    let mut vload = false;
    let mut vl = verify_load::Sizes {
        rows: 1_000_000,
        rate: 1000,
        secs: 20,
        rounds: 2,
    };
    let mut args = std::env::args().skip(1).peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json = true,
            "--snapshot" => {
                let size = args.peek().and_then(|a| a.parse::<u64>().ok());
                if size.is_some() {
                    args.next();
                }
                snapshot_mib = Some(size.unwrap_or(1024));
            }
            "--churn" => {
                let n = args.peek().and_then(|a| a.parse::<u64>().ok());
                if n.is_some() {
                    args.next();
                }
                churn_n = Some(n.unwrap_or(FULL.churn_inserts).max(1));
            }
            "--verify-load" => {
                if let Some(n) = args.peek().and_then(|a| a.parse::<u64>().ok()) {
                    args.next();
                    vl.rows = n.max(1);
                }
                vload = true;
            }
            "--verify-rate" | "--verify-secs" | "--verify-rounds" => {
                let Some(v) = args
                    .next()
                    .and_then(|a| a.parse::<u32>().ok())
                    .filter(|&v| v > 0)
                else {
                    eprintln!("hl-bench: error: {arg} needs a positive number\n\n{USAGE}");
                    return ExitCode::from(2);
                };
                match arg.as_str() {
                    "--verify-rate" => vl.rate = v,
                    "--verify-secs" => vl.secs = v as u64,
                    _ => vl.rounds = v,
                }
            }
            "--fleet" | "--fleet-rows" => {
                let Some(v) = args
                    .next()
                    .and_then(|a| a.parse::<u64>().ok())
                    .filter(|&v| v > 0)
                else {
                    eprintln!("hl-bench: error: {arg} needs a positive number\n\n{USAGE}");
                    return ExitCode::from(2);
                };
                if arg == "--fleet" {
                    fleet_n = Some(v as usize);
                } else {
                    fleet_rows = v;
                }
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("hl-bench: error: unknown argument {other:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(gateways) = fleet_n {
        let sizes = FleetSizes {
            gateways,
            rows: fleet_rows,
            settings_changes: FLEET_SETTINGS,
            idle_secs: FLEET_IDLE_SECS,
        };
        return finish(run_fleet(sizes), json);
    }
    if vload {
        return finish(run_verify_load(vl), json);
    }
    if let Some(inserts) = churn_n {
        return finish(
            run_churn(inserts).map(|c| (report::churn_table(&c), report::churn_json(&c))),
            json,
        );
    }
    match snapshot_mib {
        Some(mib) => finish(
            run_snapshot(mib).map(|r| (snapshot::report(&r), snapshot::json(&r))),
            json,
        ),
        None => finish(
            run(quick).map(|r| (report::table(&r), report::json(&r))),
            json,
        ),
    }
}

/// Prints the table (to stderr when `--json` puts the JSON line on stdout) or the error.
fn finish(result: Result<(String, String), String>, json: bool) -> ExitCode {
    match result {
        Ok((table, line)) => {
            if json {
                eprint!("{table}");
                println!("{line}");
            } else {
                print!("{table}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hl-bench: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prints what is being measured, with the time since the start.
struct Progress {
    start: Instant,
    step: usize,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.step += 1;
        eprintln!(
            "hl-bench: [{:>5.1} s] {}. {what}",
            self.start.elapsed().as_secs_f64(),
            self.step
        );
    }
}

/// The snapshot figures only (`--snapshot`).
fn run_snapshot(mib: u64) -> Result<snapshot::SnapshotResults, String> {
    harness::watch_signals()?;
    let node_bin = find_node_binary()?;
    let nats_bin = find_nats_server()?;
    let scratch = Scratch::new()?;
    let server = Server::start(&nats_bin, scratch.path())?;
    snapshot::measure(scratch.path(), &node_bin, &server, mib)
}

/// The churn figures only (`--churn N`).
fn run_churn(inserts: u64) -> Result<churn::Churn, String> {
    harness::watch_signals()?;
    let node_bin = find_node_binary()?;
    let nats_bin = find_nats_server()?;
    let scratch = Scratch::new()?;
    let server = Server::start(&nats_bin, scratch.path())?;
    let env = Env {
        node_bin: &node_bin,
        dir: scratch.path(),
        url: &server.url,
        server_pid: server.pid,
        poll_ms: DEFAULT_POLLING_INTERVAL_MS,
    };
    churn::measure(&env, inserts, ROW_BYTES)
}

/// The verify-load figures only (`--verify-load`): the table and the JSON line.
fn run_verify_load(sizes: verify_load::Sizes) -> Result<(String, String), String> {
    run_alone(
        &format!("--verify-load {}", sizes.rows),
        |url| {
            format!(
                "verify load: {} rows, app at {} rows/s, {} x 2 phases of {} s ({url})",
                sizes.rows, sizes.rate, sizes.rounds, sizes.secs
            )
        },
        |env| verify_load::measure(env, sizes),
        verify_load::table,
        verify_load::fields,
    )
}

/// The fleet figures only (`--fleet N`): the table and the JSON line.
fn run_fleet(sizes: FleetSizes) -> Result<(String, String), String> {
    run_alone(
        &format!("--fleet {}", sizes.gateways),
        |url| {
            format!(
                "fleet of 1 hub + {} gateways, {} readings, {} settings changes, {} s idle window ({url})",
                sizes.gateways, sizes.rows, sizes.settings_changes, sizes.idle_secs
            )
        },
        |env| fleet::measure(env, sizes),
        report::fleet_table,
        report::fleet_fields,
    )
}

/// One scenario on its own nats-server (`hl-bench <args>`): `announce(url)` says what runs,
/// `measure` runs it; the table starts with the run's time, load and node binary, and the JSON
/// line has those with `fields` of the result.
fn run_alone<T>(
    args: &str,
    announce: impl FnOnce(&str) -> String,
    measure: impl FnOnce(&Env) -> Result<T, String>,
    table: impl FnOnce(&T) -> String,
    fields: impl FnOnce(&T) -> Vec<(&'static str, String)>,
) -> Result<(String, String), String> {
    harness::watch_signals()?;
    let node_bin = find_node_binary()?;
    let nats_bin = find_nats_server()?;
    let scratch = Scratch::new()?;
    let start = Instant::now();
    let load_start = loadavg();
    let result = {
        let server = Server::start(&nats_bin, scratch.path())?;
        let env = Env {
            node_bin: &node_bin,
            dir: scratch.path(),
            url: &server.url,
            server_pid: server.pid,
            poll_ms: DEFAULT_POLLING_INTERVAL_MS,
        };
        eprintln!("hl-bench: {}", announce(&server.url));
        measure(&env)?
    };
    let elapsed = start.elapsed().as_secs_f64();
    let load = format!("{load_start} at the start, {} at the end", loadavg());
    let text = format!(
        "\nhl-bench {args} - harmonylite {}, {elapsed:.0} s\n  load average (1/5/15 min): {load}\n  node binary: {}\n{}",
        env!("CARGO_PKG_VERSION"),
        node_bin.display(),
        table(&result)
    );
    let mut all = vec![
        ("elapsed_s", format!("{elapsed:.1}")),
        ("load", format!("\"{load}\"")),
        ("poll_interval_ms", DEFAULT_POLLING_INTERVAL_MS.to_string()),
    ];
    all.extend(fields(&result));
    Ok((text, report::json_object(&all)))
}

/// Every scenario in order; each guard (scratch folder, server, cluster) stops its processes
/// when it goes out of scope, also on an error.
fn run(quick: bool) -> Result<Results, String> {
    harness::watch_signals()?;
    let sizes = if quick { QUICK } else { FULL };
    let node_bin = find_node_binary()?;
    let nats_bin = find_nats_server()?;
    let scratch = Scratch::new()?;
    let dir = scratch.path();
    let poll_ms = DEFAULT_POLLING_INTERVAL_MS;
    let mut p = Progress {
        start: Instant::now(),
        step: 0,
    };
    let load_start = loadavg();

    p.step("sqlite insert ceilings (plain and with capture triggers)");
    let insert = ceilings::sqlite(dir, ROW_BYTES, sizes.ceiling_rows_1, sizes.ceiling_rows_100)?;

    let server = Server::start(&nats_bin, dir)?;
    p.step(&format!("jetstream publish ceilings ({})", server.url));
    let publish = ceilings::publish(
        &server.url,
        ROW_BYTES,
        sizes.publish_sequential,
        sizes.publish_pipelined,
    )?;

    let env = Env {
        node_bin: &node_bin,
        dir,
        url: &server.url,
        server_pid: server.pid,
        poll_ms,
    };
    let mut peak_rss_kib = 0;
    let mut peaks: Vec<(&'static str, u64)> = Vec::new();

    p.step(&format!(
        "one writer -> two replicas, {E2E_ROUNDS} rounds of {} rows of {ROW_BYTES} bytes",
        sizes.e2e_rows
    ));
    let (e2e, e2e_rates, wire) = {
        let c = Cluster::start(&env, "e2e", 3, ROW_TABLE, false)?;
        let mut rounds = Vec::new();
        for round in 0..E2E_ROUNDS {
            rounds.push(replication::one_writer(
                &c,
                round,
                sizes.e2e_rows,
                ROW_BYTES,
            )?);
        }
        let wire = ceilings::stream_stats(&server.url, &c.stream, &c.subject)?;
        let rates: Vec<f64> = rounds.iter().map(|t| t.rate()).collect();
        rounds.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let median = rounds.swap_remove(rounds.len() / 2);
        let peak = median.peak_rss_kib.max(c.peak_rss_kib()?);
        peaks.push(("one_writer", peak));
        peak_rss_kib = peak_rss_kib.max(peak);
        (median, rates, wire)
    };

    p.step(&format!(
        "mixed workload, {} changes of {MIXED_ROW_BYTES} bytes (half updates)",
        sizes.mixed_ops
    ));
    let mixed = {
        let c = Cluster::start(&env, "mixed", 3, STAMPED_TABLE, false)?;
        let t = replication::mixed(&c, sizes.mixed_ops, MIXED_ROW_BYTES)?;
        peaks.push(("mixed", t.peak_rss_kib));
        peak_rss_kib = peak_rss_kib.max(t.peak_rss_kib);
        t
    };

    p.step(&format!(
        "three writers at once, {} rows each",
        sizes.all_rows_each
    ));
    let all = {
        let c = Cluster::start(&env, "all", 3, ROW_TABLE, false)?;
        let t = replication::all_writers(&c, sizes.all_rows_each, ROW_BYTES)?;
        peaks.push(("all_writers", t.peak_rss_kib));
        peak_rss_kib = peak_rss_kib.max(t.peak_rss_kib);
        t
    };

    p.step(&format!(
        "write amplification, {} rows, one node",
        sizes.amp_rows
    ));
    let amp = {
        let c = Cluster::start(&env, "amp", 1, ROW_TABLE, true)?;
        let a = amplification::measure(dir, &c, &server.url, sizes.amp_rows, ROW_BYTES)?;
        let peak = c.peak_rss_kib()?;
        peaks.push(("amplification", peak));
        peak_rss_kib = peak_rss_kib.max(peak);
        a
    };

    p.step(&format!(
        "churn: {} inserts into a rolling window of {} rows, 3 nodes",
        sizes.churn_inserts,
        churn::WINDOW
    ));
    let churn = churn::measure(&env, sizes.churn_inserts, ROW_BYTES)?;
    peaks.push(("churn", churn.peak_rss_kib));
    peak_rss_kib = peak_rss_kib.max(churn.peak_rss_kib);

    let c = Cluster::start(&env, "lag", 3, STAMPED_TABLE, false)?;
    let mut lags = Vec::new();
    let mut first = 1;
    for rate in LAG_RATES {
        p.step(&format!(
            "lag at {rate} rows/s for {} s, poll interval {poll_ms} ms",
            sizes.lag_secs
        ));
        lags.push(lag::steady(&c, rate, sizes.lag_secs, first, ROW_BYTES)?);
        first += (rate as u64 * sizes.lag_secs) as i64;
    }
    p.step(&format!("idle footprint over {} s", sizes.idle_secs));
    pause(SETTLE)?;
    let idle = lag::idle(&c.nodes, Duration::from_secs(sizes.idle_secs))?;
    let peak = c.peak_rss_kib()?;
    peaks.push(("lag_and_idle", peak));
    peak_rss_kib = peak_rss_kib.max(peak);
    drop(c);

    p.step(&format!(
        "fleet: 1 hub + {} gateways, {} readings, {} settings changes",
        sizes.fleet.gateways, sizes.fleet.rows, sizes.fleet.settings_changes
    ));
    let fleet = fleet::measure(&env, sizes.fleet)?;
    peaks.push(("fleet_gateway", fleet.gateway_peak_rss_kib));
    drop(server);
    p.step("done");

    Ok(Results {
        quick,
        sizes,
        poll_ms,
        insert,
        publish,
        e2e,
        e2e_rates,
        wire,
        mixed,
        all,
        lag_1000: lags[0],
        lag_100: lags[1],
        amp,
        idle,
        peak_rss_kib,
        peaks,
        churn,
        fleet,
        node_binary_bytes: std::fs::metadata(&node_bin).map(|m| m.len()).unwrap_or(0),
        node_binary: node_bin.display().to_string(),
        elapsed_secs: p.start.elapsed().as_secs_f64(),
        load: format!("{load_start} at the start, {} at the end", loadavg()),
    })
}
