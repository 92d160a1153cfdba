//! The machine's own limits, measured in the same run: SQLite insert rates into the
//! application's table without and with our capture triggers, and JetStream publish-with-ack
//! rates through the library's transport.

use std::path::Path;
use std::time::Duration;

use harmonylite::capture;
use harmonylite::config::{Config, ConsumerFilter};
use harmonylite::transport::{Outgoing, StreamStats, Transport, ACK_TIMEOUT};

use crate::app::{app_conn, create_db, insert_rows, Payloads, ROW_TABLE};
use crate::harness::{toml_str, wait_for};

/// Deadline for the bench's own NATS connection (JetStream may still be starting).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Rounds of each SQLite ceiling; the best counts (a ceiling is what the machine can do, and
/// one round varies by ~20% with checkpoint and fsync timing).
pub const CEILING_ROUNDS: usize = 3;
/// Rounds of the 100-row ceilings, whose ratio is a goal: they are short, so more rounds cost
/// little and steady the best.
pub const CEILING_ROUNDS_100: usize = 5;
/// The least a row trigger can do: its cost is the floor under any trigger-based capture (SQLite
/// runs a trigger program per row, and a statement that fires one keeps a statement journal).
const EMPTY_TRIGGER: &str = "CREATE TRIGGER bench_empty AFTER INSERT ON t BEGIN SELECT 1; END";
/// Frames per `publish_all` call in the pipelined measurement.
pub const PIPELINE_DEPTH: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct InsertRates {
    pub plain_1: f64,
    pub plain_100: f64,
    pub triggers_1: f64,
    pub triggers_100: f64,
    /// With an empty row trigger instead of ours, 100-row transactions.
    pub empty_trigger_100: f64,
}

/// Insert rates (rows/s) of `row_bytes` rows in 1-row and 100-row transactions, each the best
/// of [`CEILING_ROUNDS`] (1-row) or [`CEILING_ROUNDS_100`] (100-row) interleaved rounds.
pub fn sqlite(
    dir: &Path,
    row_bytes: usize,
    rows_1: u64,
    rows_100: u64,
) -> Result<InsertRates, String> {
    let payloads = Payloads::new(row_bytes);
    let rate = |name: &str, triggers: Triggers, rows: u64, per_tx: u64| -> Result<f64, String> {
        let path = dir.join(format!("ceiling-{name}.db"));
        create_db(&path, ROW_TABLE)?;
        match triggers {
            Triggers::None => {}
            Triggers::Capture => install_capture(&path)?,
            Triggers::Empty => app_conn(&path)?
                .execute_batch(EMPTY_TRIGGER)
                .map_err(|e| format!("create the empty trigger: {e}"))?,
        }
        let conn = app_conn(&path)?;
        let took = insert_rows(&conn, 1, rows, per_tx, &payloads)?;
        drop(conn);
        let _ = std::fs::remove_file(&path);
        Ok(rows as f64 / took.as_secs_f64())
    };
    let mut best = InsertRates {
        plain_1: 0.0,
        plain_100: 0.0,
        triggers_1: 0.0,
        triggers_100: 0.0,
        empty_trigger_100: 0.0,
    };
    for round in 0..CEILING_ROUNDS.max(CEILING_ROUNDS_100) {
        crate::harness::check_interrupted()?;
        if round < CEILING_ROUNDS {
            best.plain_1 = best
                .plain_1
                .max(rate("plain-1", Triggers::None, rows_1, 1)?);
            best.triggers_1 =
                best.triggers_1
                    .max(rate("triggers-1", Triggers::Capture, rows_1, 1)?);
        }
        if round < CEILING_ROUNDS_100 {
            best.plain_100 = best
                .plain_100
                .max(rate("plain-100", Triggers::None, rows_100, 100)?);
            best.triggers_100 =
                best.triggers_100
                    .max(rate("triggers-100", Triggers::Capture, rows_100, 100)?);
            best.empty_trigger_100 = best.empty_trigger_100.max(rate(
                "empty-trigger-100",
                Triggers::Empty,
                rows_100,
                100,
            )?);
        }
    }
    Ok(best)
}

#[derive(Clone, Copy)]
enum Triggers {
    None,
    Capture,
    Empty,
}

/// Installs the node's capture triggers with the library, as a node's start would.
pub fn install_capture(path: &Path) -> Result<(), String> {
    let cfg = Config::parse(&format!(
        "db_path = {}",
        toml_str(&path.display().to_string())
    ))?;
    let mut conn = harmonylite::db::open(path).map_err(|e| e.to_string())?;
    let schema = capture::scan(&conn, &cfg).map_err(|e| e.to_string())?;
    capture::install(&mut conn, &schema, &Default::default(), 0).map_err(|e| e.to_string())?;
    Ok(())
}

/// A publishing-only transport on `stream`/`subject` (no consumer is created).
pub fn connect(url: &str, stream: &str, subject: &str, node: u64) -> Result<Transport, String> {
    let text = format!(
        "db_path = \"unused.db\"\nreplicate = false\n[nats]\nurls = [{}]\nstream_prefix = {}\nsubject_prefix = {}\n",
        toml_str(url),
        toml_str(stream),
        toml_str(subject)
    );
    let cfg = Config::parse(&text)?;
    let mut last = String::new();
    wait_for(
        &format!("connect to {url}"),
        CONNECT_TIMEOUT,
        Duration::from_millis(100),
        || match Transport::connect(&cfg, url, node, 0, &ConsumerFilter::Nothing) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                last = e.to_string();
                Ok(None)
            }
        },
    )
    .map_err(|e| format!("{e}: {last}"))
}

/// The counters of `stream` as the server reports them.
pub fn stream_stats(url: &str, stream: &str, subject: &str) -> Result<StreamStats, String> {
    connect(url, stream, subject, 1)?
        .stream_state()
        .ok_or_else(|| format!("stream {stream}: the server did not report its state"))
}

#[derive(Debug, Clone, Copy)]
pub struct PublishRates {
    pub payload_bytes: usize,
    pub sequential: f64,
    pub pipelined: f64,
}

/// Publish-with-ack rates (messages/s) of `payload_bytes` messages: one frame per
/// `publish_all` call, then [`PIPELINE_DEPTH`] per call. Every message id is unique.
pub fn publish(
    url: &str,
    payload_bytes: usize,
    sequential: u64,
    pipelined: u64,
) -> Result<PublishRates, String> {
    let mut t = connect(url, "BENCH_RAW", "bench.raw", 1)?;
    let data = Payloads::new(payload_bytes).get(0).as_bytes().to_vec();
    let fail = |e: harmonylite::transport::TransportError| format!("raw publish: {e}");
    let start = std::time::Instant::now();
    for i in 0..sequential {
        t.publish_all(
            &[Outgoing {
                subject: "bench.raw.t.1".into(),
                msg_id: format!("seq-{i}"),
                data: data.clone(),
            }],
            ACK_TIMEOUT,
            &|| false,
        )
        .map_err(fail)?;
    }
    let seq_rate = sequential as f64 / start.elapsed().as_secs_f64();
    crate::harness::check_interrupted()?;
    let start = std::time::Instant::now();
    let mut sent = 0u64;
    while sent < pipelined {
        let n = (PIPELINE_DEPTH as u64).min(pipelined - sent);
        let batch: Vec<Outgoing> = (sent..sent + n)
            .map(|i| Outgoing {
                subject: "bench.raw.t.1".into(),
                msg_id: format!("pipe-{i}"),
                data: data.clone(),
            })
            .collect();
        t.publish_all(&batch, ACK_TIMEOUT, &|| false)
            .map_err(fail)?;
        sent += n;
    }
    let pipe_rate = pipelined as f64 / start.elapsed().as_secs_f64();
    Ok(PublishRates {
        payload_bytes,
        sequential: seq_rate,
        pipelined: pipe_rate,
    })
}
