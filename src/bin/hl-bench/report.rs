//! The results of one run: a human-readable table with each figure's ceiling, ratio and goal,
//! and one hand-written JSON object.

use std::fmt::Write;

use harmonylite::transport::StreamStats;

use crate::amplification::Amplification;
use crate::ceilings::{
    InsertRates, PublishRates, CEILING_ROUNDS, CEILING_ROUNDS_100, PIPELINE_DEPTH,
};
use crate::fleet::{Fleet, DEVICES_PER_GATEWAY as DEVICES, GOAL_COMPRESSED_OVER_RAW};
use crate::lag::{Idle, Lag};
use crate::replication::Throughput;
use crate::{Sizes, E2E_ROUNDS, MIXED_ROW_BYTES, ROW_BYTES};

/// Goals of issue 7.
pub const GOAL_E2E_OVER_TRIGGERED: f64 = 0.25;
pub const GOAL_LAG_P99_OVER_POLL_MS: f64 = 25.0;
pub const GOAL_WIRE_BYTES_PER_ROW: f64 = 120.0;
pub const GOAL_WRITE_AMPLIFICATION: f64 = 3.0;
pub const GOAL_TRIGGER_OVERHEAD: f64 = 2.0;
pub const GOAL_RSS_KIB: f64 = 6.0 * 1024.0;
pub const GOAL_IDLE_CPU_PCT: f64 = 0.2;

pub struct Results {
    pub quick: bool,
    pub sizes: Sizes,
    pub poll_ms: u64,
    pub insert: InsertRates,
    pub publish: PublishRates,
    /// The median round of the one-writer run.
    pub e2e: Throughput,
    /// Every round's rate, in run order.
    pub e2e_rates: Vec<f64>,
    pub wire: StreamStats,
    pub mixed: Throughput,
    pub all: Throughput,
    pub lag_1000: Lag,
    pub lag_100: Lag,
    pub amp: Amplification,
    pub idle: Idle,
    pub peak_rss_kib: u64,
    /// Peak RSS (VmHWM, largest node) of each scenario, in run order.
    pub peaks: Vec<(&'static str, u64)>,
    pub churn: crate::churn::Churn,
    /// The small fleet of the full and quick runs.
    pub fleet: Fleet,
    pub node_binary_bytes: u64,
    pub node_binary: String,
    pub elapsed_secs: f64,
    /// /proc/loadavg at the start and the end of the run.
    pub load: String,
}

impl Results {
    pub fn ratio_e2e_to_triggered_insert(&self) -> f64 {
        self.e2e.rate() / self.insert.triggers_100
    }
    pub fn ratio_e2e_to_raw_publish(&self) -> f64 {
        self.e2e.rate() / self.publish.pipelined
    }
    pub fn trigger_overhead_ratio(&self) -> f64 {
        self.insert.plain_100 / self.insert.triggers_100
    }
    /// The floor under [`Self::trigger_overhead_ratio`]: an empty row trigger's cost.
    pub fn empty_trigger_overhead_ratio(&self) -> f64 {
        self.insert.plain_100 / self.insert.empty_trigger_100
    }
    /// The one-writer stream holds every round's rows and nothing else.
    pub fn wire_bytes_per_row(&self) -> f64 {
        self.wire.bytes as f64 / self.e2e_rows_total() as f64
    }
    fn e2e_rows_total(&self) -> u64 {
        self.e2e.changes * E2E_ROUNDS
    }
    pub fn rss_steady_kib(&self) -> u64 {
        self.idle.rss_kib.iter().copied().max().unwrap_or(0)
    }
    pub fn idle_cpu_pct(&self) -> f64 {
        self.idle.cpu_pct.iter().copied().fold(0.0, f64::max)
    }
    /// The most any node wrote to storage per minute of the idle window.
    pub fn idle_write_bytes_per_min(&self) -> f64 {
        let most = self.idle.write_bytes.iter().copied().max().unwrap_or(0);
        most as f64 * 60.0 / self.idle.window_secs.max(1e-9)
    }
    fn lag_goal_ms(&self) -> f64 {
        self.poll_ms as f64 + GOAL_LAG_P99_OVER_POLL_MS
    }
}

/// Thousands separators for rates and counts.
fn n(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let s = format!("{:.0}", v);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT MET"
    }
}

pub fn table(r: &Results) -> String {
    let mut o = String::new();
    let s = &r.sizes;
    let _ = writeln!(
        o,
        "\nhl-bench{} - harmonylite {}, {} rows of {ROW_BYTES} bytes unless stated, poll interval {} ms, {:.0} s",
        if r.quick { " --quick" } else { "" },
        env!("CARGO_PKG_VERSION"),
        n(s.e2e_rows as f64),
        r.poll_ms,
        r.elapsed_secs
    );
    let row = |o: &mut String, what: &str, value: String| {
        let _ = writeln!(o, "  {what:<58} {value}");
    };
    let _ = writeln!(o, "  load average (1/5/15 min): {}", r.load);
    let _ = writeln!(o, "\nceilings (same machine, same run; sqlite: best of {CEILING_ROUNDS} rounds of {} rows, {CEILING_ROUNDS_100} of {} rows)", n(s.ceiling_rows_1 as f64), n(s.ceiling_rows_100 as f64));
    let i = &r.insert;
    row(
        &mut o,
        "sqlite insert, plain, 1-row tx",
        format!("{} rows/s", n(i.plain_1)),
    );
    row(
        &mut o,
        "sqlite insert, plain, 100-row tx",
        format!("{} rows/s", n(i.plain_100)),
    );
    row(
        &mut o,
        "sqlite insert, capture triggers, 1-row tx",
        format!("{} rows/s", n(i.triggers_1)),
    );
    row(
        &mut o,
        "sqlite insert, capture triggers, 100-row tx",
        format!("{} rows/s", n(i.triggers_100)),
    );
    row(
        &mut o,
        "sqlite insert, an empty row trigger, 100-row tx",
        format!("{} rows/s", n(i.empty_trigger_100)),
    );
    let pb = r.publish.payload_bytes;
    row(
        &mut o,
        &format!("jetstream publish+ack, {pb} B, sequential"),
        format!("{} msg/s", n(r.publish.sequential)),
    );
    row(
        &mut o,
        &format!("jetstream publish+ack, {pb} B, {PIPELINE_DEPTH} in flight"),
        format!("{} msg/s", n(r.publish.pipelined)),
    );

    let _ = writeln!(
        o,
        "\nreplication (time from the first insert until the last replica holds every change)"
    );
    let tp = |o: &mut String, what: &str, t: &Throughput| {
        row(
            o,
            what,
            format!(
                "{} changes/s  ({} in {:.2} s; app wrote {} /s)",
                n(t.rate()),
                n(t.changes as f64),
                t.secs,
                n(t.app_rate)
            ),
        );
        let cpu: Vec<String> = t
            .cpu
            .iter()
            .map(|(name, s)| format!("{name} {s:.2}"))
            .collect();
        row(o, "  cpu seconds during it", cpu.join(", "));
        row(
            o,
            "  app slept waiting for the write lock",
            format!("{:.2} s in {} waits", t.lock_waits.1, t.lock_waits.0),
        );
        row(
            o,
            "  peak RSS of its nodes (VmHWM, largest)",
            format!("{} KiB", n(t.peak_rss_kib as f64)),
        );
    };
    let rates: Vec<String> = r.e2e_rates.iter().map(|&x| n(x)).collect();
    tp(
        &mut o,
        &format!("1 writer -> 2 replicas, 100-row tx (median of {E2E_ROUNDS})"),
        &r.e2e,
    );
    row(&mut o, "  every round, rows/s", rates.join(", "));
    tp(
        &mut o,
        &format!("mixed, {MIXED_ROW_BYTES} B rows, half updates, 100-change tx"),
        &r.mixed,
    );
    tp(
        &mut o,
        "3 writers at once (each row to 2 other nodes)",
        &r.all,
    );

    let _ = writeln!(
        o,
        "\nlag, commit on the writer -> visible on a replica (1-row tx, both replicas)"
    );
    for l in [&r.lag_1000, &r.lag_100] {
        row(
            &mut o,
            &format!(
                "at {} rows/s (achieved {}), {} samples",
                l.target_rate,
                n(l.achieved_rate),
                l.samples
            ),
            format!(
                "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            ),
        );
        row(
            &mut o,
            "  the application's commit (1-row autocommit insert)",
            format!(
                "p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms",
                l.write_p50_ms, l.write_p99_ms, l.write_max_ms
            ),
        );
    }

    let _ = writeln!(o, "\ncost per change");
    row(
        &mut o,
        "wire bytes per replicated row (stream bytes / rows)",
        format!(
            "{:.1} B  ({} B in {} messages, {:.0} rows/message)",
            r.wire_bytes_per_row(),
            n(r.wire.bytes as f64),
            n(r.wire.messages as f64),
            r.e2e_rows_total() as f64 / r.wire.messages.max(1) as f64
        ),
    );
    let a = &r.amp;
    row(
        &mut o,
        "db write_bytes per row, plain insert (app)",
        format!("{:.1} B", a.plain_per_row()),
    );
    row(
        &mut o,
        "db write_bytes per captured change (app + writer node)",
        format!(
            "{:.1} B  (app {:.1} + node {:.1})",
            a.captured_per_row(),
            a.app.write_bytes as f64 / a.rows as f64,
            a.node.write_bytes as f64 / a.rows as f64
        ),
    );
    row(
        &mut o,
        "wchar per row: plain / app / node (file writes only)",
        format!(
            "{:.1} / {:.1} / {:.1} B",
            a.plain.wchar as f64 / a.rows as f64,
            a.app.wchar as f64 / a.rows as f64,
            a.node.wchar as f64 / a.rows as f64
        ),
    );
    row(
        &mut o,
        "sqlite statements per captured change (writer node)",
        format!(
            "{:.3}  (its sqlite_statements_total / changes_captured_total)",
            a.statements_per_change
        ),
    );

    o.push_str(&churn_table(&r.churn));

    let _ = writeln!(
        o,
        "\nfootprint (3 nodes of the lag run; peak over every scenario)"
    );
    row(
        &mut o,
        "peak RSS per scenario (VmHWM, largest node)",
        r.peaks
            .iter()
            .map(|(k, v)| format!("{k} {} KiB", n(*v as f64)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    row(
        &mut o,
        "peak RSS of a node (VmHWM, largest)",
        format!("{} KiB", n(r.peak_rss_kib as f64)),
    );
    row(
        &mut o,
        "steady RSS per node (VmRSS after idle window)",
        format!("{:?} KiB", r.idle.rss_kib),
    );
    row(
        &mut o,
        "  of which anonymous (RssAnon; the rest is mapped files)",
        format!("{:?} KiB", r.idle.rss_anon_kib),
    );
    row(
        &mut o,
        "  of which shared libraries (a static build has none)",
        format!("{:?} KiB", r.idle.rss_shared_lib_kib),
    );
    let cpu: Vec<String> = r.idle.cpu_pct.iter().map(|c| format!("{c:.3}")).collect();
    row(
        &mut o,
        &format!(
            "idle CPU per node over {:.0} s at {} ms poll",
            r.idle.window_secs, r.poll_ms
        ),
        format!("[{}] % of a core", cpu.join(", ")),
    );
    row(
        &mut o,
        "idle writes to storage per node (/proc/PID/io write_bytes)",
        format!(
            "{:?} B over the window, {:.0} B/min at most (goal 0)",
            r.idle.write_bytes,
            r.idle_write_bytes_per_min()
        ),
    );
    row(
        &mut o,
        "  in each tenth of the window (most of any node)",
        format!("{:?} B", r.idle.write_bytes_by_tenth),
    );
    row(
        &mut o,
        "harmonylite binary size",
        format!(
            "{} bytes ({})",
            n(r.node_binary_bytes as f64),
            r.node_binary
        ),
    );

    o.push_str(&fleet_table(&r.fleet));

    let _ = writeln!(o, "\nratios and goals (issue 7)");
    let goal = |o: &mut String, what: &str, value: String, goal: String, met: bool| {
        let _ = writeln!(
            o,
            "  {what:<46} {value:>12}   goal {goal:<12} {}",
            verdict(met)
        );
    };
    let e = r.ratio_e2e_to_triggered_insert();
    goal(
        &mut o,
        "e2e / triggered insert rate (100-row tx)",
        format!("{e:.4}"),
        format!(">= {GOAL_E2E_OVER_TRIGGERED}"),
        e >= GOAL_E2E_OVER_TRIGGERED,
    );
    let _ = writeln!(
        o,
        "  {:<46} {:>12}",
        "e2e rows/s / raw pipelined publish msg/s",
        format!("{:.4}", r.ratio_e2e_to_raw_publish())
    );
    let lg = r.lag_goal_ms();
    goal(
        &mut o,
        "p99 lag at 1,000 rows/s",
        format!("{:.1} ms", r.lag_1000.p99_ms),
        format!("<= {lg:.0} ms"),
        r.lag_1000.p99_ms <= lg,
    );
    let w = r.wire_bytes_per_row();
    goal(
        &mut o,
        "wire bytes per 100-byte row",
        format!("{w:.1} B"),
        format!("<= {GOAL_WIRE_BYTES_PER_ROW:.0} B"),
        w <= GOAL_WIRE_BYTES_PER_ROW,
    );
    let amp = a.ratio();
    goal(
        &mut o,
        "db bytes per captured change / plain insert",
        format!("{amp:.2}x"),
        format!("<= {GOAL_WRITE_AMPLIFICATION:.0}x"),
        amp <= GOAL_WRITE_AMPLIFICATION,
    );
    let _ = writeln!(
        o,
        "  {:<46} {:>12}",
        "  same from wchar (cross-check)",
        format!("{:.2}x", a.wchar_ratio())
    );
    let t = r.trigger_overhead_ratio();
    goal(
        &mut o,
        "capture trigger cost / plain insert (100-row tx)",
        format!("{t:.2}x"),
        format!("<= {GOAL_TRIGGER_OVERHEAD:.0}x"),
        t <= GOAL_TRIGGER_OVERHEAD,
    );
    let _ = writeln!(
        o,
        "  {:<46} {:>12}",
        "  floor: an empty row trigger / plain insert",
        format!("{:.2}x", r.empty_trigger_overhead_ratio())
    );
    let rss = r.rss_steady_kib() as f64;
    goal(
        &mut o,
        "steady RSS per node (largest)",
        format!("{} KiB", n(rss)),
        format!("<= {} KiB", n(GOAL_RSS_KIB)),
        rss <= GOAL_RSS_KIB,
    );
    if r.idle.rss_shared_lib_kib.iter().any(|&k| k > 0) {
        let _ = writeln!(o, "    (a dynamically linked node: its shared libraries are counted; the shipped binary is static,");
        let _ = writeln!(o, "     measure it with `bash cross/build.sh` and HL_NODE_BIN=dist/harmonylite-x86_64-unknown-linux-musl)");
    }
    let c = r.idle_cpu_pct();
    goal(
        &mut o,
        "idle CPU per node (largest)",
        format!("{c:.3} %"),
        format!("<= {GOAL_IDLE_CPU_PCT} %"),
        c <= GOAL_IDLE_CPU_PCT,
    );
    o
}

/// A JSON number; non-finite values become null.
fn num(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        "null".into()
    }
}

pub fn json(r: &Results) -> String {
    let a = &r.amp;
    let mut fields: Vec<(&str, String)> = vec![
        ("quick", r.quick.to_string()),
        ("poll_interval_ms", r.poll_ms.to_string()),
        ("row_bytes", ROW_BYTES.to_string()),
        ("e2e_rows", r.e2e.changes.to_string()),
        ("e2e_rows_per_s", num(r.e2e.rate())),
        (
            "e2e_rounds_rows_per_s",
            format!(
                "[{}]",
                r.e2e_rates
                    .iter()
                    .map(|&x| num(x))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        ("e2e_app_lock_wait_s", num(r.e2e.lock_waits.1)),
        ("e2e_app_rows_per_s", num(r.e2e.app_rate)),
        ("insert_rows_per_s", num(r.insert.plain_100)),
        (
            "insert_with_triggers_rows_per_s",
            num(r.insert.triggers_100),
        ),
        ("insert_1row_tx_rows_per_s", num(r.insert.plain_1)),
        (
            "insert_with_triggers_1row_tx_rows_per_s",
            num(r.insert.triggers_1),
        ),
        ("raw_publish_msgs_per_s", num(r.publish.pipelined)),
        (
            "raw_publish_sequential_msgs_per_s",
            num(r.publish.sequential),
        ),
        (
            "ratio_e2e_to_triggered_insert",
            num(r.ratio_e2e_to_triggered_insert()),
        ),
        (
            "ratio_e2e_to_raw_publish",
            num(r.ratio_e2e_to_raw_publish()),
        ),
        ("mixed_changes_per_s", num(r.mixed.rate())),
        ("mixed_row_bytes", MIXED_ROW_BYTES.to_string()),
        ("all_writers_rows_per_s", num(r.all.rate())),
        ("lag_p50_ms", num(r.lag_1000.p50_ms)),
        ("lag_p99_ms", num(r.lag_1000.p99_ms)),
        ("lag_max_ms", num(r.lag_1000.max_ms)),
        ("lag_100_p50_ms", num(r.lag_100.p50_ms)),
        ("lag_100_p99_ms", num(r.lag_100.p99_ms)),
        ("lag_100_max_ms", num(r.lag_100.max_ms)),
        ("lag_write_p50_ms", num(r.lag_1000.write_p50_ms)),
        ("lag_write_p99_ms", num(r.lag_1000.write_p99_ms)),
        ("lag_100_write_p50_ms", num(r.lag_100.write_p50_ms)),
        ("lag_100_write_p99_ms", num(r.lag_100.write_p99_ms)),
        ("wire_bytes_per_row", num(r.wire_bytes_per_row())),
        ("wire_messages", r.wire.messages.to_string()),
        ("db_bytes_per_plain_row", num(a.plain_per_row())),
        ("db_bytes_per_captured_change", num(a.captured_per_row())),
        ("write_amplification_ratio", num(a.ratio())),
        ("write_amplification_wchar", num(a.wchar_ratio())),
        ("statements_per_change", num(a.statements_per_change)),
        ("rss_steady_kib", r.rss_steady_kib().to_string()),
        ("rss_peak_kib", r.peak_rss_kib.to_string()),
        (
            "rss_peak_kib_by_scenario",
            format!(
                "{{{}}}",
                r.peaks
                    .iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        (
            "rss_steady_anon_kib",
            r.idle
                .rss_anon_kib
                .iter()
                .max()
                .copied()
                .unwrap_or(0)
                .to_string(),
        ),
        (
            "rss_steady_shared_lib_kib",
            r.idle
                .rss_shared_lib_kib
                .iter()
                .max()
                .copied()
                .unwrap_or(0)
                .to_string(),
        ),
        ("idle_cpu_pct", num(r.idle_cpu_pct())),
        (
            "idle_write_bytes_per_min",
            num(r.idle_write_bytes_per_min()),
        ),
        ("idle_window_s", num(r.idle.window_secs)),
        (
            "idle_write_bytes_by_tenth",
            format!("{:?}", r.idle.write_bytes_by_tenth),
        ),
        ("trigger_overhead_ratio", num(r.trigger_overhead_ratio())),
        (
            "empty_trigger_overhead_ratio",
            num(r.empty_trigger_overhead_ratio()),
        ),
        (
            "insert_with_empty_trigger_rows_per_s",
            num(r.insert.empty_trigger_100),
        ),
        ("node_binary_bytes", r.node_binary_bytes.to_string()),
        ("elapsed_s", num(r.elapsed_secs)),
    ];
    fields.extend(churn_fields(&r.churn));
    fields.extend(fleet_fields(&r.fleet));
    json_object(&fields)
}

/// The fleet scenario's section of the table (issue 14, item 5).
pub fn fleet_table(f: &Fleet) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nfleet: 1 hub + {} gateways ([table.readings] replicate = false, [table.settings] publish = false), one nats-server",
        f.gateways
    );
    let _ = writeln!(
        o,
        "  {} readings ({} per gateway, {DEVICES} sensors each, JSON payload of 10 drifting fields, {:.0} B on average), poll interval {} ms",
        n(f.rows as f64),
        n((f.rows / f.gateways.max(1) as u64) as f64),
        f.payload_bytes,
        f.poll_ms
    );
    let row = |o: &mut String, what: &str, value: String| {
        let _ = writeln!(o, "  {what:<58} {value}");
    };
    let goal = |o: &mut String, what: &str, value: String, goal: String, met: bool| {
        let _ = writeln!(
            o,
            "  {what:<58} {value:>14}   goal {goal:<14} {}",
            verdict(met)
        );
    };
    row(
        &mut o,
        "hub ingest, all gateways writing at once",
        format!(
            "{} rows/s  ({} in {:.2} s; slowest gateway app wrote {} /s)",
            n(f.ingest_rate()),
            n(f.rows as f64),
            f.ingest_secs,
            n(f.rows as f64 / f.gateways.max(1) as f64 / f.app_secs)
        ),
    );
    row(
        &mut o,
        "  cpu seconds during it: hub, nats-server",
        format!(
            "{:.2}, {:.2}  ({:.3} / {:.3} ms per reading)",
            f.hub_cpu_s,
            f.server_cpu_s,
            f.hub_cpu_s * 1000.0 / f.rows as f64,
            f.server_cpu_s * 1000.0 / f.rows as f64
        ),
    );
    row(
        &mut o,
        "  cpu seconds during it: gateways (sum), bench (apps+probe)",
        format!("{:.2}, {:.2}", f.gateways_cpu_s, f.bench_cpu_s),
    );
    let rb = f.readings_bytes_per_reading();
    goal(
        &mut o,
        "bytes received per gateway per fleet-wide reading (max)",
        format!("{rb:.3} B"),
        "0 B".into(),
        rb == 0.0,
    );
    row(
        &mut o,
        "  received_bytes_total growth over the ingest, per gateway",
        format!(
            "max {} B, sum {} B",
            n(max_f(&f.readings_received_bytes)),
            n(f.readings_received_bytes.iter().sum())
        ),
    );
    let foreign = f.foreign_readings_max();
    goal(
        &mut o,
        "other gateways' readings in a gateway's database (max)",
        n(foreign as f64),
        "0".into(),
        foreign == 0,
    );
    row(
        &mut o,
        &format!(
            "bytes received per gateway per settings change ({})",
            f.settings_changes
        ),
        format!(
            "{:.1} B max, {:.1} B min",
            f.settings_bytes_per_change(),
            f.settings_bytes_per_change_min()
        ),
    );
    row(
        &mut o,
        &format!(
            "settings propagation, hub commit -> all {} gateways",
            f.gateways
        ),
        format!(
            "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} changes)",
            f.settings_pct(0.5),
            f.settings_pct(0.99),
            f.settings_pct(1.0),
            f.settings_ms.len()
        ),
    );
    row(
        &mut o,
        "wire bytes per telemetry row, as sent (stream bytes / rows)",
        format!(
            "{:.1} B  ({} B in {} messages, {:.0} rows/message)",
            f.wire_bytes_per_row(),
            n(f.wire.bytes as f64),
            n(f.wire.messages as f64),
            f.rows as f64 / f.wire.messages.max(1) as f64
        ),
    );
    let ratio = f.wire_bytes_per_row() / f.wire_raw_bytes_per_row();
    goal(
        &mut o,
        "wire bytes per telemetry row: sent (compress = true) / raw",
        format!(
            "{:.1} / {:.1} B ({:.0} %)",
            f.wire_bytes_per_row(),
            f.wire_raw_bytes_per_row(),
            ratio * 100.0
        ),
        format!("<= {:.0} % raw", GOAL_COMPRESSED_OVER_RAW * 100.0),
        ratio <= GOAL_COMPRESSED_OVER_RAW,
    );
    let rss = f.rss_steady_kib() as f64;
    goal(
        &mut o,
        "gateway steady RSS (VmRSS after idle window, largest)",
        format!("{} KiB", n(rss)),
        format!("<= {} KiB", n(GOAL_RSS_KIB)),
        rss <= GOAL_RSS_KIB,
    );
    row(
        &mut o,
        "  of which shared libraries (largest; a static build has none)",
        format!(
            "{} KiB",
            n(f.idle.rss_shared_lib_kib.iter().copied().max().unwrap_or(0) as f64)
        ),
    );
    row(
        &mut o,
        "  gateway RSS ready / after ingest / peak (VmHWM), largest",
        format!(
            "{} / {} / {} KiB",
            n(f.rss_ready_max_kib() as f64),
            n(f.rss_after_ingest_max_kib() as f64),
            n(f.gateway_peak_rss_kib as f64)
        ),
    );
    let c = f.idle_cpu_pct();
    goal(
        &mut o,
        &format!(
            "gateway idle CPU over {:.0} s (largest)",
            f.idle.window_secs
        ),
        format!("{c:.3} %"),
        format!("<= {GOAL_IDLE_CPU_PCT} %"),
        c <= GOAL_IDLE_CPU_PCT,
    );
    row(
        &mut o,
        "  gateway idle CPU, mean",
        format!("{:.3} % of a core", f.idle_cpu_pct_mean()),
    );
    row(
        &mut o,
        "  hub and nats-server CPU over the same window",
        format!(
            "{:.3} %, {:.3} % of a core",
            f.hub_idle_cpu_pct, f.server_idle_cpu_pct
        ),
    );
    row(
        &mut o,
        "hub RSS after the run, peak (VmHWM)",
        format!(
            "{} KiB, {} KiB",
            n(f.hub_rss_kib as f64),
            n(f.hub_peak_rss_kib as f64)
        ),
    );
    o
}

/// The fleet scenario's keys of the JSON line.
pub fn fleet_fields(f: &Fleet) -> Vec<(&'static str, String)> {
    vec![
        ("fleet_gateways", f.gateways.to_string()),
        ("fleet_rows", f.rows.to_string()),
        ("fleet_payload_bytes", num(f.payload_bytes)),
        ("fleet_ingest_rows_per_s", num(f.ingest_rate())),
        ("fleet_ingest_s", num(f.ingest_secs)),
        ("fleet_hub_cpu_s", num(f.hub_cpu_s)),
        ("fleet_server_cpu_s", num(f.server_cpu_s)),
        ("fleet_gateways_cpu_s", num(f.gateways_cpu_s)),
        (
            "fleet_readings_bytes_per_gateway_per_reading",
            num(f.readings_bytes_per_reading()),
        ),
        (
            "fleet_readings_received_bytes_max",
            num(max_f(&f.readings_received_bytes)),
        ),
        (
            "fleet_foreign_readings_max",
            f.foreign_readings_max().to_string(),
        ),
        ("fleet_settings_changes", f.settings_changes.to_string()),
        (
            "fleet_settings_bytes_per_gateway_per_change",
            num(f.settings_bytes_per_change()),
        ),
        ("fleet_settings_p50_ms", num(f.settings_pct(0.5))),
        ("fleet_settings_p99_ms", num(f.settings_pct(0.99))),
        ("fleet_settings_max_ms", num(f.settings_pct(1.0))),
        ("fleet_wire_bytes_per_row", num(f.wire_bytes_per_row())),
        (
            "fleet_wire_bytes_per_row_compressed",
            num(f.wire_bytes_per_row()),
        ),
        (
            "fleet_wire_bytes_per_row_raw",
            num(f.wire_raw_bytes_per_row()),
        ),
        ("fleet_wire_messages", f.wire.messages.to_string()),
        (
            "fleet_gateway_rss_steady_kib",
            f.rss_steady_kib().to_string(),
        ),
        (
            "fleet_gateway_rss_ready_kib",
            f.rss_ready_max_kib().to_string(),
        ),
        (
            "fleet_gateway_rss_peak_kib",
            f.gateway_peak_rss_kib.to_string(),
        ),
        ("fleet_gateway_idle_cpu_pct", num(f.idle_cpu_pct())),
        (
            "fleet_gateway_idle_cpu_pct_mean",
            num(f.idle_cpu_pct_mean()),
        ),
        ("fleet_idle_window_s", num(f.idle.window_secs)),
        ("fleet_hub_idle_cpu_pct", num(f.hub_idle_cpu_pct)),
        ("fleet_server_idle_cpu_pct", num(f.server_idle_cpu_pct)),
        ("fleet_hub_rss_kib", f.hub_rss_kib.to_string()),
        ("fleet_hub_rss_peak_kib", f.hub_peak_rss_kib.to_string()),
    ]
}

fn max_f(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// A JSON object of `fields`.
pub fn json_object(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

/// The churn section (also the whole table of `--churn`).
pub fn churn_table(ch: &crate::churn::Churn) -> String {
    let mut o = String::new();
    let row = |o: &mut String, what: &str, value: String| {
        let _ = writeln!(o, "  {what:<58} {value}");
    };
    let _ = writeln!(
        o,
        "\nstorage under churn ({} inserts of {} bytes at {} /s into a rolling window of {} rows, 3 nodes)",
        n(ch.inserts as f64),
        ch.row_bytes,
        n(ch.rate as f64),
        n(ch.window as f64)
    );
    row(
        &mut o,
        "harmonylite's own bytes per live row at the end (dbstat)",
        format!(
            "{:.1} B  (goal <= 64; the table itself: {:.1} B)",
            ch.overhead_bytes_per_live_row, ch.table_bytes_per_live_row
        ),
    );
    row(
        &mut o,
        "database file at 25/50/75/100 % of the inserts",
        format!(
            "{:?} bytes, {:+.1} % after the window filled (goal within 10 %)",
            ch.file_bytes, ch.growth_after_window_pct
        ),
    );
    row(
        &mut o,
        "tombstones held at 25/50/75 %, at the end; run time",
        format!(
            "{:?}, {}; {:.1} s",
            ch.tombstones_at, ch.tombstones_left, ch.elapsed_secs
        ),
    );

    o
}

/// The JSON line of `--churn`.
pub fn churn_json(ch: &crate::churn::Churn) -> String {
    json_object(&churn_fields(ch))
}

fn churn_fields(ch: &crate::churn::Churn) -> Vec<(&'static str, String)> {
    vec![
        ("churn_inserts", ch.inserts.to_string()),
        ("churn_window_rows", ch.window.to_string()),
        ("churn_inserts_per_s", ch.rate.to_string()),
        (
            "churn_overhead_bytes_per_live_row",
            num(ch.overhead_bytes_per_live_row),
        ),
        (
            "churn_table_bytes_per_live_row",
            num(ch.table_bytes_per_live_row),
        ),
        (
            "churn_db_growth_after_window_pct",
            num(ch.growth_after_window_pct),
        ),
        (
            "churn_db_bytes_at_quarters",
            format!(
                "[{}]",
                ch.file_bytes
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        (
            "churn_tombstones_at_quarters",
            format!(
                "[{}]",
                ch.tombstones_at
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        ("churn_tombstones_left", ch.tombstones_left.to_string()),
        ("churn_elapsed_s", num(ch.elapsed_secs)),
        ("churn_rss_peak_kib", ch.peak_rss_kib.to_string()),
    ]
}
