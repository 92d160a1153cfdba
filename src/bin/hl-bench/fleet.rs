//! A fleet (issue 14, item 5): one hub that replicates everything and N gateways with
//! `[table.readings] replicate = false` (telemetry goes up, never comes down) and
//! `[table.settings] publish = false` (pushed from the hub), on one nats-server.
//!
//! Phases, each with its own deadline:
//! 1. ingest: every gateway's application inserts its share of the readings at once; done when
//!    the hub holds every row. The gateways' `received_bytes_total` must not move meanwhile.
//! 2. settings: the hub's application changes one setting at a time; each change is timed from
//!    the hub's commit until all N gateways hold it (read-only probes of their databases).
//! 3. idle: the gateways' CPU and RSS over a window without writes.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use harmonylite::transport::StreamStats;
use rusqlite::params;

use crate::app::{app_conn, create_db, reader};
use crate::ceilings::stream_stats;
use crate::harness::{
    check_interrupted, cpu_time, free_port, pause, process_cpu_time, status_kib, wait_for,
    NodeProc, NodeSpec,
};
use crate::lag::{self, Idle};
use crate::replication::{converge_timeout, Env};

/// The fleet's schema, the same on the hub and every gateway (as in `tests/fleet.rs`).
pub const SCHEMA: &str = "CREATE TABLE readings(id TEXT PRIMARY KEY, device TEXT NOT NULL, ts INTEGER NOT NULL, payload TEXT NOT NULL);
CREATE TABLE settings(k TEXT PRIMARY KEY, v TEXT NOT NULL);";
/// A gateway's direction (README "Fleets: per-table direction").
const GATEWAY_TOML: &str =
    "[table.readings]\nreplicate = false\n[table.settings]\npublish = false\n";
/// Sensors behind each gateway; one reading per sensor per second of sensor time.
pub const DEVICES_PER_GATEWAY: u64 = 10;
/// Readings per transaction on a gateway (ten seconds of its ten sensors).
const ROWS_PER_TX: u64 = 100;
/// Quiet time after a phase before the counters are read (a frame would have arrived by then).
const SETTLE: Duration = Duration::from_secs(1);
/// Deadline for one settings change to reach every gateway.
const SETTING_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two probes of the gateways for a setting.
const SETTING_PROBE: Duration = Duration::from_millis(1);
/// Pause between two probes of the hub during ingest.
const INGEST_PROBE: Duration = Duration::from_millis(25);
/// Sensor time of the first reading (2026-11-30 00:00:00 UTC, ms).
const BASE_MS: i64 = 1_795_996_800_000;
/// Issue 14's goals (RSS and idle CPU: the same as issue 7's).
pub const GOAL_COMPRESSED_OVER_RAW: f64 = 0.5;

/// How much work the fleet scenario does.
#[derive(Debug, Clone, Copy)]
pub struct FleetSizes {
    pub gateways: usize,
    /// Readings written by the whole fleet (split evenly, rounded up to whole sensor ticks).
    pub rows: u64,
    pub settings_changes: u64,
    pub idle_secs: u64,
}

#[derive(Debug, Clone)]
pub struct Fleet {
    pub gateways: usize,
    pub rows: u64,
    pub poll_ms: u64,
    /// Mean length of a reading's JSON payload, bytes.
    pub payload_bytes: f64,
    /// From the first insert until the hub held every reading.
    pub ingest_secs: f64,
    /// The slowest gateway application's own insert time.
    pub app_secs: f64,
    pub hub_cpu_s: f64,
    pub server_cpu_s: f64,
    /// Sum over the gateways' nodes.
    pub gateways_cpu_s: f64,
    /// The bench: the gateways' applications and the hub probe.
    pub bench_cpu_s: f64,
    /// The stream after the ingest (readings only), as sent (compressed: the default).
    pub wire: StreamStats,
    /// The same frames' bytes uncompressed (each decoded and encoded again raw).
    pub wire_raw_bytes: u64,
    /// Per gateway: `received_bytes_total` growth over the ingest phase.
    pub readings_received_bytes: Vec<f64>,
    /// Per gateway: readings of other gateways in its database after the ingest.
    pub foreign_readings: Vec<i64>,
    pub settings_changes: u64,
    /// Per gateway: `received_bytes_total` growth over the settings phase.
    pub settings_received_bytes: Vec<f64>,
    /// Hub commit -> all gateways hold it, ms, sorted.
    pub settings_ms: Vec<f64>,
    /// Per gateway: VmRSS once ready, before any write.
    pub rss_ready_kib: Vec<u64>,
    /// Per gateway: VmRSS right after the ingest (its readings published).
    pub rss_after_ingest_kib: Vec<u64>,
    /// The gateways over the idle window.
    pub idle: Idle,
    pub gateway_peak_rss_kib: u64,
    pub hub_rss_kib: u64,
    pub hub_peak_rss_kib: u64,
    /// CPU % of one core over the gateways' idle window: the hub's and nats-server's.
    pub hub_idle_cpu_pct: f64,
    pub server_idle_cpu_pct: f64,
}

impl Fleet {
    pub fn ingest_rate(&self) -> f64 {
        self.rows as f64 / self.ingest_secs
    }
    pub fn wire_bytes_per_row(&self) -> f64 {
        self.wire.bytes as f64 / self.rows as f64
    }
    /// Message bytes per row had the frames gone raw: the stream's bytes less the frames'
    /// compressed sizes plus their raw sizes (message headers and overhead counted alike).
    pub fn wire_raw_bytes_per_row(&self) -> f64 {
        self.wire_raw_bytes as f64 / self.rows as f64
    }
    /// Largest over the gateways: bytes received per reading written by the whole fleet.
    pub fn readings_bytes_per_reading(&self) -> f64 {
        max_f(&self.readings_received_bytes) / self.rows as f64
    }
    pub fn settings_bytes_per_change(&self) -> f64 {
        max_f(&self.settings_received_bytes) / self.settings_changes.max(1) as f64
    }
    pub fn settings_bytes_per_change_min(&self) -> f64 {
        self.settings_received_bytes
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            / self.settings_changes.max(1) as f64
    }
    pub fn settings_pct(&self, p: f64) -> f64 {
        let v = &self.settings_ms;
        if v.is_empty() {
            return f64::NAN;
        }
        v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
    }
    pub fn rss_steady_kib(&self) -> u64 {
        self.idle.rss_kib.iter().copied().max().unwrap_or(0)
    }
    pub fn rss_ready_max_kib(&self) -> u64 {
        self.rss_ready_kib.iter().copied().max().unwrap_or(0)
    }
    pub fn rss_after_ingest_max_kib(&self) -> u64 {
        self.rss_after_ingest_kib.iter().copied().max().unwrap_or(0)
    }
    pub fn idle_cpu_pct(&self) -> f64 {
        self.idle.cpu_pct.iter().copied().fold(0.0, f64::max)
    }
    pub fn idle_cpu_pct_mean(&self) -> f64 {
        self.idle.cpu_pct.iter().sum::<f64>() / self.idle.cpu_pct.len().max(1) as f64
    }
    pub fn foreign_readings_max(&self) -> i64 {
        self.foreign_readings.iter().copied().max().unwrap_or(0)
    }
}

fn max_f(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Ten sensor values that drift slowly, as a field device's do.
struct Sensor {
    vals: [f64; 10],
    x: u64,
}

/// Name, starting value, largest step per reading, decimals.
const FIELDS: [(&str, f64, f64, usize); 10] = [
    ("temperature_c", 21.4, 0.04, 2),
    ("humidity_pct", 45.0, 0.1, 1),
    ("pressure_hpa", 1013.25, 0.05, 2),
    ("co2_ppm", 415.0, 1.0, 0),
    ("pm25_ugm3", 12.3, 0.1, 1),
    ("voltage_v", 3.301, 0.002, 3),
    ("current_a", 0.125, 0.001, 3),
    ("battery_pct", 87.5, 0.01, 2),
    ("rssi_dbm", -67.0, 1.0, 0),
    ("vibration_g", 0.021, 0.001, 3),
];

impl Sensor {
    fn new(seed: u64) -> Sensor {
        let mut s = Sensor {
            vals: [0.0; 10],
            x: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        };
        for (i, &(_, base, step, _)) in FIELDS.iter().enumerate() {
            // each sensor starts somewhere near the field's typical value
            s.vals[i] = base + step * 20.0 * s.unit();
        }
        s
    }

    /// Uniform in [-1, 1) (xorshift).
    fn unit(&mut self) -> f64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        (self.x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn next_json(&mut self) -> String {
        let mut out = String::from("{");
        for (i, &(name, _, step, dec)) in FIELDS.iter().enumerate() {
            self.vals[i] += step * self.unit();
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("\"{name}\":{:.*}", dec, self.vals[i]));
        }
        out.push('}');
        out
    }
}

/// One reading: (id, device, ts, payload).
type Reading = (String, String, i64, String);

/// Gateway `g`'s readings: `rows` of them, a tick of all its sensors per second.
fn readings_of(g: usize, rows: u64) -> Vec<Reading> {
    let mut sensors: Vec<Sensor> = (0..DEVICES_PER_GATEWAY)
        .map(|d| Sensor::new(g as u64 * 1000 + d + 1))
        .collect();
    (0..rows)
        .map(|i| {
            let (tick, d) = (i / DEVICES_PER_GATEWAY, i % DEVICES_PER_GATEWAY);
            let device = format!("gw{g:03}-s{d:02}");
            let ts = BASE_MS + tick as i64 * 1000 + g as i64 * 7 + d as i64;
            let payload = sensors[d as usize].next_json();
            (format!("{device}-{ts}"), device, ts, payload)
        })
        .collect()
}

/// The value of `received_bytes_total` of every gateway.
fn received(gws: &[NodeProc]) -> Result<Vec<f64>, String> {
    gws.iter()
        .map(|g| g.counter("received_bytes_total"))
        .collect()
}

fn cpu_s(pid: u32) -> Result<f64, String> {
    process_cpu_time(pid).map(|d| d.as_secs_f64())
}

/// Runs the fleet scenario; every node is stopped when this returns (the `NodeProc`s' drop),
/// also on an error.
pub fn measure(env: &Env, sizes: FleetSizes) -> Result<Fleet, String> {
    let n = sizes.gateways.max(1);
    let stream = "BENCH_FLEET";
    let subject = "bench.fleet";
    let per_gw = sizes.rows.div_ceil(n as u64);
    let rows = per_gw * n as u64;

    // the hub (node 1), then the gateways (nodes 2..=n+1), each with /metrics
    let mut nodes: Vec<NodeProc> = Vec::with_capacity(n + 1);
    for k in 0..=n {
        let name = if k == 0 {
            "fleet-hub".to_string()
        } else {
            format!("fleet-gw{:03}", k - 1)
        };
        let db: PathBuf = env.dir.join(format!("{name}.db"));
        create_db(&db, SCHEMA)?;
        let spec = NodeSpec {
            name: &name,
            db: &db,
            node_id: k as u64 + 1,
            stream,
            subject,
            poll_ms: env.poll_ms,
            metrics_port: Some(free_port()?),
            extra: if k == 0 { "" } else { GATEWAY_TOML },
        };
        nodes.push(NodeProc::start(env.node_bin, env.dir, env.url, &spec)?);
    }
    for node in &mut nodes {
        node.wait_ready()?;
    }
    let (hub, gws) = nodes.split_first().expect("the hub");
    let rss_ready_kib = gws
        .iter()
        .map(|g| status_kib(g.pid, "VmRSS"))
        .collect::<Result<Vec<_>, _>>()?;

    // 1. ingest
    let data: Vec<Vec<Reading>> = (0..n).map(|g| readings_of(g, per_gw)).collect();
    let payload_bytes =
        data.iter().flatten().map(|r| r.3.len()).sum::<usize>() as f64 / rows as f64;
    let recv0 = received(gws)?;
    let cpu0 = (
        cpu_s(hub.pid)?,
        cpu_s(env.server_pid)?,
        gws.iter().map(|g| cpu_s(g.pid)).sum::<Result<f64, _>>()?,
        cpu_s(std::process::id())?,
    );
    let start = Instant::now();
    let writers: Vec<_> = data
        .into_iter()
        .zip(gws)
        .map(|(rows, gw)| {
            let db = gw.db.clone();
            thread::spawn(move || -> Result<Duration, String> {
                let conn = app_conn(&db)?;
                let mut stmt = conn
                    .prepare(
                        "INSERT INTO readings(id, device, ts, payload) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(|e| format!("prepare: {e}"))?;
                let began = Instant::now();
                for chunk in rows.chunks(ROWS_PER_TX as usize) {
                    check_interrupted()?;
                    conn.execute_batch("BEGIN")
                        .map_err(|e| format!("begin: {e}"))?;
                    for (id, device, ts, payload) in chunk {
                        stmt.execute(params![id, device, ts, payload])
                            .map_err(|e| format!("{}: insert {id}: {e}", db.display()))?;
                    }
                    conn.execute_batch("COMMIT")
                        .map_err(|e| format!("commit: {e}"))?;
                }
                Ok(began.elapsed())
            })
        })
        .collect();
    // join every writer before looking at any result, so none is still writing on an error
    let results: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
    let mut app_secs: f64 = 0.0;
    for r in results {
        let took = r.map_err(|_| "a gateway writer thread panicked".to_string())??;
        app_secs = app_secs.max(took.as_secs_f64());
    }
    let hub_conn = reader(&hub.db)?;
    let count = |c: &rusqlite::Connection, sql: &str| -> Result<Option<i64>, String> {
        match c.query_row(sql, [], |r| r.get::<_, i64>(0)) {
            Ok(v) => Ok(Some(v)),
            Err(e) if harmonylite::db::is_busy(&e) => Ok(None),
            Err(e) => Err(format!("probe ({sql}): {e}")),
        }
    };
    let mut hub_has = 0;
    let done = wait_for(
        "the hub holding every gateway's readings",
        converge_timeout(rows),
        INGEST_PROBE,
        || {
            if let Some(c) = count(&hub_conn, "SELECT count(*) FROM readings")? {
                hub_has = c;
            }
            Ok((hub_has == rows as i64).then(Instant::now))
        },
    )
    .map_err(|e| format!("{e} (the hub has {hub_has} of {rows} readings)"))?;
    let cpu1 = (
        cpu_s(hub.pid)?,
        cpu_s(env.server_pid)?,
        gws.iter().map(|g| cpu_s(g.pid)).sum::<Result<f64, _>>()?,
        cpu_s(std::process::id())?,
    );
    // every gateway's outbox is empty (the hub has every row); let stray frames arrive
    pause(SETTLE)?;
    let rss_after_ingest_kib = gws
        .iter()
        .map(|g| status_kib(g.pid, "VmRSS"))
        .collect::<Result<Vec<_>, _>>()?;
    let recv1 = received(gws)?;
    let readings_received_bytes: Vec<f64> = recv1.iter().zip(&recv0).map(|(a, b)| a - b).collect();
    let wire = stream_stats(env.url, stream, subject)?;
    let wire_raw_bytes = raw_bytes(env.url, stream, &wire)?;
    let mut foreign_readings = Vec::with_capacity(n);
    for (g, gw) in gws.iter().enumerate() {
        let c = reader(&gw.db)?;
        let sql = format!("SELECT count(*) FROM readings WHERE device NOT LIKE 'gw{g:03}-%'");
        let v = wait_for(
            &format!("count readings on {}", gw.name),
            Duration::from_secs(10),
            Duration::from_millis(10),
            || count(&c, &sql),
        )?;
        foreign_readings.push(v);
    }

    // 2. settings, one change at a time
    let gw_conns = gws
        .iter()
        .map(|g| reader(&g.db))
        .collect::<Result<Vec<_>, _>>()?;
    let hub_app = app_conn(&hub.db)?;
    let recv0 = received(gws)?;
    let mut settings_ms = Vec::with_capacity(sizes.settings_changes as usize);
    for i in 1..=sizes.settings_changes {
        check_interrupted()?;
        let v = format!(
            "{{\"sample_interval_s\":{},\"upload\":\"batch\",\"rev\":{i}}}",
            10 + i % 50
        );
        hub_app
            .execute(
                "INSERT INTO settings(k, v) VALUES ('sampling', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![v],
            )
            .map_err(|e| format!("hub: settings change {i}: {e}"))?;
        let committed = Instant::now();
        let mut has = vec![false; gw_conns.len()];
        let at = wait_for(
            &format!("settings change {i} on all {n} gateways"),
            SETTING_TIMEOUT,
            SETTING_PROBE,
            || {
                for (k, c) in gw_conns.iter().enumerate() {
                    if has[k] {
                        continue;
                    }
                    match c.query_row("SELECT v FROM settings WHERE k = 'sampling'", [], |r| {
                        r.get::<_, String>(0)
                    }) {
                        Ok(got) => has[k] = got == v,
                        Err(rusqlite::Error::QueryReturnedNoRows) => {}
                        Err(e) if harmonylite::db::is_busy(&e) => {}
                        Err(e) => return Err(format!("{}: probe settings: {e}", gws[k].name)),
                    }
                }
                Ok(has.iter().all(|&h| h).then(Instant::now))
            },
        )
        .map_err(|e| {
            if check_interrupted().is_err() {
                return e;
            }
            let missing: Vec<&str> = has
                .iter()
                .zip(gws)
                .filter(|(h, _)| !**h)
                .map(|(_, g)| g.name.as_str())
                .collect();
            format!("{e} (missing on {})", missing.join(", "))
        })?;
        settings_ms.push((at - committed).as_secs_f64() * 1000.0);
        // changes at varying offsets from the nodes' poll ticks
        pause(Duration::from_millis(50 + (i * 37) % 100))?;
    }
    pause(SETTLE)?;
    let recv1 = received(gws)?;
    let settings_received_bytes: Vec<f64> = recv1.iter().zip(&recv0).map(|(a, b)| a - b).collect();
    settings_ms.sort_by(f64::total_cmp);
    drop(gw_conns);
    drop(hub_app);
    drop(hub_conn);

    // 3. idle
    pause(SETTLE)?;
    let others0 = (
        cpu_time(hub.pid)?,
        cpu_time(env.server_pid)?,
        Instant::now(),
    );
    let idle = lag::idle(gws, Duration::from_secs(sizes.idle_secs))?;
    let others1 = (
        cpu_time(hub.pid)?,
        cpu_time(env.server_pid)?,
        Instant::now(),
    );
    let window = (others1.2 - others0.2).as_secs_f64();
    let pct = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64() / window * 100.0;
    let gateway_peak_rss_kib = gws
        .iter()
        .map(|g| status_kib(g.pid, "VmHWM"))
        .try_fold(0, |m, r| r.map(|v: u64| m.max(v)))?;

    Ok(Fleet {
        gateways: n,
        rows,
        poll_ms: env.poll_ms,
        payload_bytes,
        ingest_secs: (done - start).as_secs_f64(),
        app_secs,
        hub_cpu_s: cpu1.0 - cpu0.0,
        server_cpu_s: cpu1.1 - cpu0.1,
        gateways_cpu_s: cpu1.2 - cpu0.2,
        bench_cpu_s: cpu1.3 - cpu0.3,
        wire,
        wire_raw_bytes,
        readings_received_bytes,
        foreign_readings,
        settings_changes: sizes.settings_changes,
        settings_received_bytes,
        settings_ms,
        rss_ready_kib,
        rss_after_ingest_kib,
        idle,
        gateway_peak_rss_kib,
        hub_rss_kib: status_kib(hub.pid, "VmRSS")?,
        hub_peak_rss_kib: status_kib(hub.pid, "VmHWM")?,
        hub_idle_cpu_pct: pct(others1.0, others0.0),
        server_idle_cpu_pct: pct(others1.1, others0.1),
    })
}

/// The stream's bytes had its frames been sent raw: each message is read back, and its frame's
/// compressed length is replaced by the length of the same frame encoded raw.
#[allow(deprecated)] // the sync `nats` client, as the node uses it
fn raw_bytes(url: &str, stream: &str, wire: &StreamStats) -> Result<u64, String> {
    let nc = nats::connect(url).map_err(|e| format!("connect to {url}: {e}"))?;
    let js = nats::jetstream::new(nc);
    let mut delta: i64 = 0;
    for seq in wire.first_seq..=wire.last_seq {
        let m = js
            .get_message(stream, seq)
            .map_err(|e| format!("read {stream} seq {seq}: {e}"))?;
        let frame = harmonylite::frame::decode(&m.data)
            .map_err(|e| format!("{stream} seq {seq} does not decode: {e}"))?;
        delta += harmonylite::frame::encode(&frame).len() as i64 - m.data.len() as i64;
    }
    Ok((wire.bytes as i64 + delta).max(0) as u64)
}
