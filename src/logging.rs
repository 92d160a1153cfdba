//! Logging to stderr, one line per record, as text or as JSON (`[logging] format`).
//!
//! Text: `2025-01-31T12:00:00.123Z INFO  [harmonylite::node] node ready node_id=7 db=/x.db`.
//! JSON: `{"ts":"2025-01-31T12:00:00.123Z","level":"info","target":"harmonylite::node","msg":"node ready node_id=7 db=/x.db"}`.
//! The message is kept whole (its `key=value` pairs are not split into fields): one parser for
//! both formats, and a value with a space in it cannot be cut wrongly.
//!
//! A few dozen lines instead of a logging crate: the binary stays small and both formats share
//! one filter and one clock.
//!
//! Warnings that can repeat per frame or per row (a parked table, a NULL key) go
//! through [`repeated`]: the first occurrence of a cause is logged, then at most one line per
//! [`REPEAT_WINDOW`], saying how many occurrences it stands for.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{LevelFilter, Log, Metadata, Record};
use serde::Serialize;

/// How a record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Our stderr logger. Levels per target: `harmonylite*` at info (debug when verbose),
/// `nats::jetstream` off, everything else at warn.
pub struct Logger {
    format: Format,
    ours: LevelFilter,
}

impl Logger {
    pub fn new(format: Format, verbose: bool) -> Logger {
        Logger {
            format,
            ours: if verbose {
                LevelFilter::Debug
            } else {
                LevelFilter::Info
            },
        }
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        if target.starts_with("harmonylite") {
            self.ours
        } else if target.starts_with("nats::jetstream") {
            // the nats crate logs handled API answers ("stream not found") as errors
            LevelFilter::Off
        } else {
            LevelFilter::Warn
        }
    }

    /// One line, newline included. `unix_ms`: the record's time.
    pub fn line(
        &self,
        unix_ms: u64,
        level: log::Level,
        target: &str,
        msg: &fmt::Arguments<'_>,
    ) -> String {
        let mut out = String::with_capacity(128);
        let ts = rfc3339_ms(unix_ms);
        // writing into a String cannot fail
        let _ = match self.format {
            Format::Text => writeln!(out, "{ts} {:<5} [{target}] {msg}", level.as_str()),
            Format::Json => {
                let line = JsonLine {
                    ts: &ts,
                    level: &level.as_str().to_ascii_lowercase(),
                    target,
                    msg: &msg.to_string(),
                };
                // plain data with string keys: serializing cannot fail
                let json = serde_json::to_string(&line).unwrap_or_default();
                writeln!(out, "{json}")
            }
        };
        out
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.line(
            crate::hlc::system_ms(),
            record.level(),
            record.target(),
            record.args(),
        );
        // One write per line, so lines of different threads never interleave. A closed stderr
        // must not stop the node: the error is ignored.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger (once per process; later calls do nothing). In the JSON format a panic
/// is logged as an error record too, so stderr stays one JSON object per line.
pub fn init(format: Format, verbose: bool) {
    let logger = Logger::new(format, verbose);
    let max = logger.ours.max(LevelFilter::Warn);
    if log::set_boxed_logger(Box::new(logger)).is_err() {
        return;
    }
    log::set_max_level(max);
    if format == Format::Json {
        std::panic::set_hook(Box::new(|info| log::error!(target: "panic", "{info}")));
    }
}

/// `1970-01-01T00:00:00.000Z`: RFC 3339, UTC, milliseconds.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One record in the JSON format.
#[derive(Serialize)]
struct JsonLine<'a> {
    ts: &'a str,
    level: &'a str,
    target: &'a str,
    msg: &'a str,
}

/// A repeated warning is logged again at most this often after its first occurrence.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);
/// Causes remembered at most; when full, all are forgotten (each logs once more).
const MAX_CAUSES: usize = 256;

/// Rate limit per cause: the first occurrence passes, then one per `window`.
pub struct Throttle {
    window: Duration,
    causes: HashMap<String, Held>,
}

struct Held {
    last: Instant,
    count: u64,
}

impl Throttle {
    pub fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            causes: HashMap::new(),
        }
    }

    /// Whether this occurrence of `cause` at `now` is logged: `Some(n)` with the number of
    /// occurrences held back since the last line, or `None` (counted, to be told later).
    pub fn check(&mut self, cause: &str, now: Instant) -> Option<u64> {
        if let Some(h) = self.causes.get_mut(cause) {
            if now.duration_since(h.last) < self.window {
                h.count += 1;
                return None;
            }
            let held = h.count;
            *h = Held {
                last: now,
                count: 0,
            };
            return Some(held);
        }
        if self.causes.len() >= MAX_CAUSES {
            self.causes.clear();
        }
        self.causes.insert(
            cause.to_string(),
            Held {
                last: now,
                count: 0,
            },
        );
        Some(0)
    }
}

static REPEATS: Mutex<Option<Throttle>> = Mutex::new(None);

/// Whether to log this occurrence of a warning that can repeat; `cause` names what repeats
/// (`park t`). `Some(suffix)`: log, ending the line with `suffix` (empty, or
/// ` repeated=N` for the N occurrences held back in the last [`REPEAT_WINDOW`]).
pub fn repeated(cause: &str) -> Option<String> {
    let mut guard = REPEATS.lock().unwrap_or_else(|e| e.into_inner());
    let held = guard
        .get_or_insert_with(|| Throttle::new(REPEAT_WINDOW))
        .check(cause, Instant::now())?;
    Some(if held > 0 {
        format!(" repeated={held}")
    } else {
        String::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_164_799_999), "2024-02-28T23:59:59.999Z");
        assert_eq!(rfc3339_ms(1_735_689_600_001), "2025-01-01T00:00:00.001Z");
        assert_eq!(rfc3339_ms(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn text_lines_look_like_before() {
        let l = Logger::new(Format::Text, false);
        let line = l.line(
            1_735_689_600_123,
            Level::Info,
            "harmonylite::node",
            &format_args!("node ready node_id={}", 7),
        );
        assert_eq!(
            line,
            "2025-01-01T00:00:00.123Z INFO  [harmonylite::node] node ready node_id=7\n"
        );
        let line = l.line(0, Level::Warn, "nats", &format_args!("x"));
        assert_eq!(line, "1970-01-01T00:00:00.000Z WARN  [nats] x\n");
    }

    #[test]
    fn json_lines_escape_and_keep_the_message_whole() {
        let l = Logger::new(Format::Json, false);
        let name = "a\"b\\c\nd\te\u{1}é✓";
        let line = l.line(
            1_735_689_600_123,
            Level::Warn,
            "harmonylite::node",
            &format_args!("table {name} is not replicated k=v"),
        );
        assert_eq!(
            line,
            "{\"ts\":\"2025-01-01T00:00:00.123Z\",\"level\":\"warn\",\"target\":\"harmonylite::node\",\
             \"msg\":\"table a\\\"b\\\\c\\nd\\te\\u0001é✓ is not replicated k=v\"}\n"
        );
    }

    #[test]
    fn module_filters() {
        let l = Logger::new(Format::Text, false);
        let on = |target: &str, level: Level| {
            l.enabled(&Metadata::builder().target(target).level(level).build())
        };
        assert!(on("harmonylite::node", Level::Info));
        assert!(!on("harmonylite::node", Level::Debug));
        assert!(on("harmonylite", Level::Info));
        assert!(!on("nats::jetstream", Level::Error));
        assert!(!on("nats::jetstream::pull", Level::Error));
        assert!(on("nats::connector", Level::Warn));
        assert!(!on("nats::connector", Level::Info));
        assert!(!on("rusqlite", Level::Info));
        let v = Logger::new(Format::Json, true);
        assert!(v.enabled(
            &Metadata::builder()
                .target("harmonylite::node")
                .level(Level::Debug)
                .build()
        ));
        assert!(!v.enabled(
            &Metadata::builder()
                .target("harmonylite::node")
                .level(Level::Trace)
                .build()
        ));
    }

    #[test]
    fn a_repeated_cause_is_logged_first_then_once_a_window_with_its_count() {
        let mut t = Throttle::new(Duration::from_secs(60));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(t.check("park t", at(0)), Some(0));
        assert_eq!(
            t.check("park u", at(0)),
            Some(0),
            "each cause has its own window"
        );
        for s in 1..=40 {
            assert_eq!(t.check("park t", at(s)), None);
        }
        assert_eq!(t.check("park t", at(59)), None);
        assert_eq!(t.check("park t", at(60)), Some(41));
        assert_eq!(t.check("park t", at(61)), None);
        assert_eq!(t.check("park t", at(200)), Some(1));
        assert_eq!(t.check("park u", at(200)), Some(0));
    }
}
