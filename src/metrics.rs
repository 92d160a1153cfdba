//! Process-wide counters, the loop's liveness and the per-origin replication lag, and their
//! rendering as Prometheus text (exposition format 0.0.4).
//!
//! Counters are static atomics: counting costs one relaxed add and never allocates. Gauges that
//! describe the database (outbox, parked changes, link, snapshot restore) are read at scrape
//! time from [`crate::status::read`], the same source as `harmonylite status`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;

use crate::status::Status;

/// What is counted. The discriminant indexes [`COUNTERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Captured,
    Published,
    FramesPublished,
    BytesPublished,
    FramesReceived,
    BytesReceived,
    Applied,
    Skipped,
    Parked,
    Undecodable,
    Connects,
    Reconnects,
    SnapshotSaves,
    SnapshotRestores,
    Statements,
    UniqueConflicts,
    PkCollisions,
    Rejected,
    NotReplicated,
    TombstonesCollected,
    FragmentsDropped,
    VerifyReannounced,
}

/// Name (without prefix) and help of each counter, in [`Counter`] order.
pub const COUNTERS: [(&str, &str); 22] = [
    ("changes_captured_total", "Local row changes stamped into the outbox."),
    ("changes_published_total", "Local changes acknowledged by JetStream."),
    ("frames_published_total", "Frames acknowledged by JetStream."),
    ("published_bytes_total", "Bytes of frames acknowledged by JetStream."),
    ("frames_received_total", "Stream messages fetched (this node's own included)."),
    ("received_bytes_total", "Bytes of stream messages fetched."),
    ("changes_applied_total", "Remote changes applied (newer than the local row)."),
    ("changes_skipped_total", "Remote changes skipped: the local row holds a newer version."),
    ("changes_parked_total", "Remote changes parked until this node's schema has their table or column."),
    ("frames_undecodable_total", "Stream messages skipped because they do not decode (logged with their sequence)."),
    ("nats_connects_total", "Connections to NATS set up (stream and consumer ready)."),
    ("nats_reconnects_total", "Links to NATS re-established after a loss."),
    ("snapshot_saves_total", "Snapshots this node uploaded."),
    ("snapshot_restores_total", "Snapshots this node installed."),
    ("sqlite_statements_total", "SQL statements the node's main database connection started (trigger programs not counted)."),
    ("unique_conflicts_total", "Remote rows that met a unique constraint other than the primary key and were resolved: the higher version kept, the other row deleted."),
    ("pk_collisions_total", "New rows from another node whose primary key this node already held a different row of (two nodes created the same key; last writer wins, the other row is overwritten)."),
    ("frames_rejected_total", "Stream messages dropped because their subject and content disagree (another origin, another table, a subject outside the layout); each is logged with its sequence."),
    ("changes_not_replicated_total", "Changes of tables this node does not replicate, dropped after download (the server did not filter them)."),
    ("tombstones_collected_total", "Tombstones (version rows of deleted rows) deleted once no late change could need them."),
    ("fragments_dropped_total", "Incomplete fragment sets deleted, counted in sets (one large change each): their newest piece lay 1000000 stream messages behind, so the rest was lost in a hole of the stream, which a snapshot restore repairs."),
    ("verify_rows_reannounced_total", "Rows this node re-announced at their own version for harmonylite verify --repair."),
];

/// Counts the statements `conn` starts in [`Counter::Statements`] (SQLite's statement trace,
/// installed only when metrics are served: it costs a callback per statement).
pub fn count_statements(conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::trace::{TraceEvent, TraceEventCodes};
    conn.trace_v2(
        TraceEventCodes::SQLITE_TRACE_STMT,
        Some(|e: TraceEvent<'_>| {
            // a trigger program starting is reported as an SQL comment naming it
            if let TraceEvent::Stmt(_, sql) = e {
                if !sql.starts_with("--") {
                    add(Counter::Statements, 1);
                }
            }
        }),
    )
}

static VALUES: [AtomicU64; COUNTERS.len()] = [const { AtomicU64::new(0) }; COUNTERS.len()];

pub fn add(c: Counter, n: u64) {
    VALUES[c as usize].fetch_add(n, Relaxed);
}

pub fn get(c: Counter) -> u64 {
    VALUES[c as usize].load(Relaxed)
}

/// Wall-clock ms of the main loop's last iteration (0: not yet).
static LAST_TICK_MS: AtomicU64 = AtomicU64::new(0);
/// 0 unknown (the loop never ran), 1 down, 2 up.
static LINK: AtomicU8 = AtomicU8::new(0);
static LINK_SINCE_MS: AtomicU64 = AtomicU64::new(0);
/// The node's last write to its database failed for lack of space (0 or 1).
static DISK_FULL: AtomicU8 = AtomicU8::new(0);
/// Restores in progress (a count, so nesting cannot clear it early).
static RESTORING: AtomicU64 = AtomicU64::new(0);
static RESTORE_DONE: AtomicU64 = AtomicU64::new(0);
static RESTORE_SIZE: AtomicU64 = AtomicU64::new(0);
/// Origin node -> age in ms of its newest change when that change was applied here.
static LAG_MS: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());

/// Called once per main-loop iteration: the loop is alive, and the link is up or down.
pub fn tick(link_up: bool) {
    let now = crate::hlc::now_ms();
    LAST_TICK_MS.store(now, Relaxed);
    let state = if link_up { 2 } else { 1 };
    if LINK.swap(state, Relaxed) != state {
        LINK_SINCE_MS.store(now, Relaxed);
    }
}

/// The node could (false) or could not (true) write its database for lack of space.
pub fn disk_full(full: bool) {
    DISK_FULL.store(full as u8, Relaxed);
}

/// The newest version applied from each origin in a batch: records how old it was.
pub fn observe_origins(newest: &[(u64, u64)]) {
    if newest.is_empty() {
        return;
    }
    let now = crate::hlc::now_ms();
    let mut lag = LAG_MS.lock().unwrap_or_else(|e| e.into_inner());
    for &(origin, version) in newest {
        lag.insert(origin, now.saturating_sub(crate::hlc::wall_ms(version)));
    }
}

/// Marks a snapshot restore in progress until dropped.
pub struct Restoring(());

pub fn restoring() -> Restoring {
    RESTORING.fetch_add(1, Relaxed);
    Restoring(())
}

impl Drop for Restoring {
    fn drop(&mut self) {
        RESTORING.fetch_sub(1, Relaxed);
        RESTORE_DONE.store(0, Relaxed);
        RESTORE_SIZE.store(0, Relaxed);
    }
}

pub fn restore_progress(done: u64, size: u64) {
    RESTORE_DONE.store(done, Relaxed);
    RESTORE_SIZE.store(size, Relaxed);
}

/// What `/health` needs from the running process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Liveness {
    pub last_tick_ms: u64,
    /// None until the loop ran once.
    pub link_up: Option<bool>,
    pub link_since_ms: u64,
    pub restoring: bool,
    /// The last write to the database failed for lack of space.
    pub disk_full: bool,
}

pub fn liveness() -> Liveness {
    Liveness {
        last_tick_ms: LAST_TICK_MS.load(Relaxed),
        link_up: match LINK.load(Relaxed) {
            0 => None,
            s => Some(s == 2),
        },
        link_since_ms: LINK_SINCE_MS.load(Relaxed),
        restoring: RESTORING.load(Relaxed) > 0,
        disk_full: DISK_FULL.load(Relaxed) == 1,
    }
}

/// `<namespace>_<subsystem>_`, leaving out empty parts.
pub fn prefix(namespace: &str, subsystem: &str) -> String {
    [namespace, subsystem]
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| format!("{s}_"))
        .collect()
}

/// The whole scrape: counters, process gauges, and the database's gauges when `status` is Ok.
pub fn render(prefix: &str, status: Result<&Status, &str>, now_ms: u64) -> String {
    let mut o = String::with_capacity(4096);
    for (i, (name, help)) in COUNTERS.iter().enumerate() {
        metric(
            &mut o,
            prefix,
            name,
            "counter",
            help,
            &[("", VALUES[i].load(Relaxed) as f64)],
        );
    }
    let live = liveness();
    let secs = |ms: u64| ms as f64 / 1000.0;
    let loop_age = if live.last_tick_ms == 0 {
        f64::NAN
    } else {
        secs(now_ms.saturating_sub(live.last_tick_ms))
    };
    metric(
        &mut o,
        prefix,
        "main_loop_age_seconds",
        "gauge",
        "Seconds since the main loop last ran (NaN before its first run).",
        &[("", loop_age)],
    );
    metric(
        &mut o,
        prefix,
        "disk_full",
        "gauge",
        "1 while the node cannot write its database for lack of space (it retries; nothing is lost).",
        &[("", live.disk_full as u8 as f64)],
    );
    metric(
        &mut o,
        prefix,
        "snapshot_restoring",
        "gauge",
        "1 while a snapshot restore runs.",
        &[("", live.restoring as u8 as f64)],
    );
    metric(
        &mut o,
        prefix,
        "snapshot_restore_done_bytes",
        "gauge",
        "Bytes downloaded by the restore in progress.",
        &[("", RESTORE_DONE.load(Relaxed) as f64)],
    );
    metric(
        &mut o,
        prefix,
        "snapshot_restore_size_bytes",
        "gauge",
        "Size of the snapshot being restored (0: none).",
        &[("", RESTORE_SIZE.load(Relaxed) as f64)],
    );
    let lag: Vec<(String, f64)> = {
        let lag = LAG_MS.lock().unwrap_or_else(|e| e.into_inner());
        lag.iter()
            .map(|(origin, ms)| (format!("origin=\"{origin}\""), secs(*ms)))
            .collect()
    };
    let lag: Vec<(&str, f64)> = lag.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        &mut o,
        prefix,
        "replication_lag_seconds",
        "gauge",
        "Age of the newest change applied from each origin node, when it was applied.",
        &lag,
    );
    metric(
        &mut o,
        prefix,
        "database_readable",
        "gauge",
        "1 when the scrape could read the node's state from the database.",
        &[("", status.is_ok() as u8 as f64)],
    );
    let Ok(st) = status else { return o };
    let opt = |v: Option<u64>| v.map_or(f64::NAN, secs);
    let verify = st.verify.unwrap_or_default();
    let gauges: [(&str, &str, f64); 17] = [
        (
            "node_id",
            "This node's id.",
            st.node_id.map_or(f64::NAN, |n| n as f64),
        ),
        (
            "nats_link_up",
            "1 when the link to NATS is up (as last recorded by the node).",
            st.link_up.map_or(f64::NAN, |u| u as u8 as f64),
        ),
        (
            "stream_position",
            "Stream sequence this node applied up to.",
            st.stream_position as f64,
        ),
        (
            "outbox_changes",
            "Local changes not yet acknowledged by JetStream.",
            st.outbox_changes as f64,
        ),
        (
            "outbox_oldest_age_seconds",
            "Age of the oldest unpublished change (0: outbox empty).",
            st.outbox_oldest_age_ms.map_or(0.0, secs),
        ),
        (
            "outbox_over_budget",
            "1 when the outbox is over outbox_budget_bytes.",
            st.outbox_over_budget as u8 as f64,
        ),
        (
            "parked_changes",
            "Remote changes waiting for a schema change here.",
            st.parked_changes as f64,
        ),
        (
            "parked_bytes",
            "Bytes of the parked changes (their frames), bounded by max_parked_bytes.",
            st.parked_bytes as f64,
        ),
        (
            "parked_oldest_age_seconds",
            "Age of the oldest parked change (0: none parked).",
            st.parked_oldest_age_ms.map_or(0.0, secs),
        ),
        (
            "intake_held",
            "1 while parked changes are at max_parked_bytes and the node takes in no new changes (nothing is dropped).",
            st.intake_held as u8 as f64,
        ),
        (
            "paused_tables",
            "Tables paused by a dropped or retyped column (see harmonylite schema accept).",
            st.paused_tables.len() as f64,
        ),
        (
            "fragments_waiting",
            "Fragments of large rows waiting for the rest.",
            st.fragments_waiting as f64,
        ),
        (
            "last_publish_timestamp_seconds",
            "Unix time of the last acknowledged publish (NaN: never).",
            opt(st.last_publish_ms),
        ),
        (
            "last_apply_timestamp_seconds",
            "Unix time of the last applied batch (NaN: never).",
            opt(st.last_apply_ms),
        ),
        (
            "verify_last_run_timestamp",
            "Unix time the last harmonylite verify reported its result to this node (NaN: never).",
            opt(st.verify.map(|v| v.0)),
        ),
        (
            "verify_rows_different",
            "Rows the last harmonylite verify found different between nodes (before its repair).",
            verify.1 as f64,
        ),
        (
            "verify_rows_repaired",
            "Rows the last harmonylite verify --repair had re-announced.",
            verify.2 as f64,
        ),
    ];
    for (name, help, v) in gauges {
        metric(&mut o, prefix, name, "gauge", help, &[("", v)]);
    }
    o
}

/// One metric family: HELP, TYPE, then one sample per (labels, value).
fn metric(
    o: &mut String,
    prefix: &str,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(&str, f64)],
) {
    let _ = writeln!(
        o,
        "# HELP {prefix}{name} {help}\n# TYPE {prefix}{name} {kind}"
    );
    for (labels, v) in samples {
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(o, "{prefix}{name}{labels} {}", number(*v));
    }
}

/// Prometheus spells special floats `NaN`, `+Inf`, `-Inf`; integers print without a fraction.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_text_format() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(prefix("harmonylite", ""), "harmonylite_");
        assert_eq!(prefix("hl", "gw"), "hl_gw_");
        assert_eq!(prefix("", ""), "");
    }

    #[test]
    fn a_family_has_help_type_and_labelled_samples() {
        let mut o = String::new();
        metric(
            &mut o,
            "hl_",
            "replication_lag_seconds",
            "gauge",
            "Lag.",
            &[("origin=\"7\"", 0.5), ("origin=\"9\"", 2.0)],
        );
        assert_eq!(
            o,
            "# HELP hl_replication_lag_seconds Lag.\n# TYPE hl_replication_lag_seconds gauge\n\
             hl_replication_lag_seconds{origin=\"7\"} 0.5\nhl_replication_lag_seconds{origin=\"9\"} 2\n"
        );
    }

    #[test]
    fn a_scrape_holds_every_counter_and_the_status_gauges() {
        let st = Status {
            node_id: Some(7),
            outbox_changes: 3,
            outbox_oldest_age_ms: Some(1500),
            link_up: Some(true),
            parked_changes: 2,
            parked_bytes: 300,
            parked_oldest_age_ms: Some(4000),
            intake_held: true,
            ..Default::default()
        };
        let text = render("harmonylite_", Ok(&st), 0);
        for line in [
            "harmonylite_parked_changes 2",
            "harmonylite_parked_bytes 300",
            "harmonylite_parked_oldest_age_seconds 4",
            "harmonylite_intake_held 1",
        ] {
            assert!(text.contains(&format!("\n{line}\n")), "{line}: {text}");
        }
        for (name, _) in COUNTERS {
            assert!(
                text.contains(&format!(
                    "# TYPE harmonylite_{name} counter\nharmonylite_{name} "
                )),
                "{name}"
            );
        }
        assert!(text.contains("\nharmonylite_node_id 7\n"), "{text}");
        assert!(text.contains("\nharmonylite_outbox_changes 3\n"), "{text}");
        assert!(
            text.contains("\nharmonylite_outbox_oldest_age_seconds 1.5\n"),
            "{text}"
        );
        assert!(text.contains("\nharmonylite_nats_link_up 1\n"), "{text}");
        assert!(
            text.contains("\nharmonylite_last_apply_timestamp_seconds NaN\n"),
            "{text}"
        );
        assert!(
            text.contains("\nharmonylite_database_readable 1\n"),
            "{text}"
        );
        // every line is a comment or `name[{labels}] value`
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(
                name.starts_with("harmonylite_") && !name.contains(' '),
                "{line}"
            );
            assert!(value == "NaN" || value.parse::<f64>().is_ok(), "{line}");
        }
        let failed = render("harmonylite_", Err("gone"), 0);
        assert!(
            failed.contains("\nharmonylite_database_readable 0\n")
                && !failed.contains("outbox_changes"),
            "{failed}"
        );
    }
}
