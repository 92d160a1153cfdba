//! `harmonylite`: parse arguments, set up logging and signals, run one command, exit.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use harmonylite::config::Config;
use std::time::Duration;

use harmonylite::node::{Node, Stop};
use harmonylite::retry::{self, EXIT_DEADLINE, SHUTDOWN_OVERDUE};

const USAGE: &str = "\
harmonylite: leaderless SQLite replication over NATS JetStream

Usage:
  harmonylite --config PATH     run a node in the foreground until SIGTERM/SIGINT
  harmonylite status --config PATH [--json]
                                show the node's state, read from its database
  harmonylite status --config PATH --fleet [--node N] [--timeout-ms MS] [--json]
                                ask every node of the stream (or node N) through NATS;
                                answers are collected for MS (default 2000) milliseconds
  harmonylite snapshot save --config PATH
                                save a snapshot of the database to NATS now
  harmonylite snapshot restore --config PATH
                                replace the database content with the current snapshot
                                (unpublished local changes are kept and still sent)
  harmonylite schema accept TABLE --config PATH
                                resume a table paused by a dropped or retyped column,
                                adopting its new definition (works while the node runs)
  harmonylite cleanup --config PATH [--force]
                                remove every trigger, table and index HarmonyLite added
                                (stop the node first; --force discards unpublished changes;
                                the database stays in WAL mode)
  harmonylite --help            show this help
  harmonylite --version         show the version

Options:
  -c, --config PATH   the node's TOML configuration (see README: config reference)

Exit codes: 0 stopped cleanly, 1 runtime error (e.g. database missing) or a refused cleanup,
2 bad usage or config.
A first SIGTERM/SIGINT flushes the outbox (up to 5 s) and exits 0; a second exits at once.
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let mut config: Option<PathBuf> = None;
    let status = args.peek().map(String::as_str) == Some("status");
    if status {
        args.next();
    }
    let mut snapshot_cmd = None;
    if args.peek().map(String::as_str) == Some("snapshot") {
        args.next();
        match args.next().as_deref() {
            Some(c @ ("save" | "restore")) => snapshot_cmd = Some(c.to_string()),
            Some(other) => {
                return usage_error(&format!(
                    "unknown snapshot command {other:?}: expected save or restore"
                ))
            }
            None => return usage_error("snapshot needs a command: save or restore"),
        }
    }
    let mut accept_table = None;
    if snapshot_cmd.is_none() && !status && args.peek().map(String::as_str) == Some("schema") {
        args.next();
        match (args.next().as_deref(), args.next()) {
            (Some("accept"), Some(t)) if !t.starts_with('-') => accept_table = Some(t),
            (Some("accept"), _) => return usage_error(
                "schema accept needs a table name: harmonylite schema accept TABLE --config PATH",
            ),
            (Some(other), _) => {
                return usage_error(&format!(
                    "unknown schema command {other:?}: expected accept"
                ))
            }
            (None, _) => return usage_error("schema needs a command: accept"),
        }
    }
    let cleanup = snapshot_cmd.is_none()
        && !status
        && accept_table.is_none()
        && args.peek().map(String::as_str) == Some("cleanup");
    if cleanup {
        args.next();
    }
    let mut json = false;
    let mut force = false;
    let mut fleet = false;
    let mut ask_node: Option<u64> = None;
    let mut timeout_ms = harmonylite::fleet::DEFAULT_TIMEOUT_MS;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("harmonylite {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "-c" | "--config" => match args.next() {
                Some(p) => config = Some(p.into()),
                None => return usage_error("--config needs a path"),
            },
            s if s.starts_with("--config=") => config = Some(s["--config=".len()..].into()),
            "--json" if status => json = true,
            "--fleet" if status => fleet = true,
            "--node" | "--timeout-ms" if status => {
                let Some(n) = args
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|n| *n > 0)
                else {
                    return usage_error(&format!("{arg} needs a positive number"));
                };
                if arg == "--node" {
                    (fleet, ask_node) = (true, Some(n));
                } else {
                    timeout_ms = n;
                }
            }
            "--force" if cleanup => force = true,
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let Some(path) = config else {
        return usage_error("missing --config PATH");
    };
    if status && fleet {
        return fleet_status(&path, ask_node, Duration::from_millis(timeout_ms), json);
    }
    if status {
        return match harmonylite::status::for_config(&path) {
            Ok(st) => {
                print!(
                    "{}",
                    if json {
                        st.to_json() + "\n"
                    } else {
                        st.to_text()
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(if e.starts_with("config ") { 2 } else { 1 })
            }
        };
    }
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(table) = accept_table {
        return match harmonylite::schema::accept_in(&cfg, &table) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    if cleanup {
        return match harmonylite::cleanup::run(&cfg.db_path, force) {
            Ok(report) => {
                print!("{}", report.to_text());
                ExitCode::from(if report.not_removed.is_empty() { 0 } else { 1 })
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    init_logging(&cfg);
    let stop = Arc::new(Stop::default());
    if let Err(e) = watch_signals(stop.clone()) {
        eprintln!("error: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    if let Some(cmd) = snapshot_cmd {
        return snapshot_command(&cmd, cfg, &stop);
    }
    // before a restore or a wait for a locked database, so /health can say "starting"
    if let Err(e) = harmonylite::http::start(&cfg) {
        log::error!("{e}");
        return ExitCode::from(1);
    }
    if !cfg.db_path.exists() && cfg.snapshot.enabled && !cfg.nats.urls.is_empty() {
        match harmonylite::node::restore_missing(&cfg, &stop) {
            Ok(true) => {}
            Ok(false) => log::info!("no snapshot to build {} from", cfg.db_path.display()),
            Err(e) => log::warn!("cannot restore the missing database from a snapshot: {e}"),
        }
    }
    let mut retry = retry::NODE_OPEN.backoff();
    let mut node = loop {
        match Node::open(cfg.clone()) {
            Ok(n) => break n,
            Err(e) if e.is_transient() => {
                log::warn!("{e}");
                if stop.wait(retry.fail()) {
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) => {
                log::error!("{e}");
                return ExitCode::from(1);
            }
        }
    };
    node.run(&stop);
    ExitCode::SUCCESS
}

/// `status --fleet`: the answers of the nodes through NATS; exit 1 when none answered.
fn fleet_status(
    path: &std::path::Path,
    node: Option<u64>,
    timeout: Duration,
    json: bool,
) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match harmonylite::fleet::run(&cfg, node, timeout, json) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `snapshot save` and `snapshot restore`. With the embedded server, they talk to the one the
/// running node started.
fn snapshot_command(cmd: &str, mut cfg: Config, stop: &Stop) -> ExitCode {
    if cfg.nats.urls.is_empty() {
        cfg.nats.urls = vec![harmonylite::node::snapshot_urls(&cfg)];
    }
    if cmd == "restore" && !cfg.db_path.exists() {
        return match harmonylite::node::restore_missing(&cfg, stop) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                log::error!(
                    "no snapshot exists yet for stream {}",
                    cfg.nats.stream_prefix
                );
                ExitCode::from(1)
            }
            Err(e) => {
                log::error!("snapshot restore failed: {e}");
                ExitCode::from(1)
            }
        };
    }
    let mut node = match Node::open_with(cfg, cmd == "restore") {
        Ok(n) => n,
        Err(e @ harmonylite::node::NodeError::Busy(_)) => {
            log::error!(
                "{e}: a running node restores a snapshot by itself when it falls behind the stream"
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = node.connect_now() {
        log::error!("{e}");
        return ExitCode::from(1);
    }
    let result = if cmd == "save" {
        node.save_now().map(|s| match s {
            harmonylite::node::Saved::Uploaded(p) => {
                println!(
                    "saved snapshot {} at seq {} ({} bytes)",
                    p.object, p.seq, p.size
                );
                true
            }
            harmonylite::node::Saved::Skipped(why) => {
                println!("no snapshot saved: {why}");
                false
            }
        })
    } else {
        node.restore_latest(stop, true).map(|r| match r {
            Some(msg) => {
                println!("{msg}");
                true
            }
            None => {
                println!("no snapshot exists yet");
                false
            }
        })
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            log::error!("snapshot {cmd} failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cfg: &Config) {
    use harmonylite::logging::{self, Format};
    let format = if cfg.logging.format.as_deref() == Some("json") {
        Format::Json
    } else {
        Format::Text
    };
    logging::init(format, cfg.logging.verbose);
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("error: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}

/// First SIGTERM/SIGINT: set the stop flag (the loop flushes and exits 0). Second: exit now.
fn watch_signals(stop: Arc<Stop>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut seen = false;
        for sig in signals.forever() {
            if seen {
                log::warn!("second signal: exiting now");
                std::process::exit(128 + sig);
            }
            seen = true;
            log::info!("stopping: flushing the outbox (send the signal again to exit at once)");
            stop.set();
            // The backstop of the 5 s promise: every network wait has its own deadline, but
            // a write blocked on a stalled link can still be inside its own when the signal
            // comes. Exiting is safe at any moment: the outbox and the cursor are in SQLite.
            let stop = stop.clone();
            let _ = std::thread::Builder::new().name("exit-deadline".into()).spawn(move || {
                std::thread::sleep(SHUTDOWN_OVERDUE);
                stop.overdue();
                std::thread::sleep(EXIT_DEADLINE - SHUTDOWN_OVERDUE);
                log::warn!(
                    "stopping took longer than {:.1} s (a stalled link); exiting now, unsent changes stay in the outbox",
                    EXIT_DEADLINE.as_secs_f64()
                );
                std::process::exit(0);
            });
        }
    })?;
    Ok(())
}
