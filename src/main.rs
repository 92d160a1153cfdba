//! `harmonylite`: parse the arguments into a [`Command`], run it, and map a failure
//! ([`CliError`]) to its message and exit code. Logging and signals are set up only for the
//! commands that run a node (the node itself, `snapshot`); the work is in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use harmonylite::config::{Config, DEFAULT_CONFIG_PATH};
use harmonylite::node::{Node, Stop};
use harmonylite::retry::{self, EXIT_DEADLINE, SHUTDOWN_OVERDUE};

const USAGE: &str = "\
harmonylite: leaderless SQLite replication over NATS JetStream

Usage:
  harmonylite --config PATH     run a node in the foreground until SIGTERM/SIGINT
  harmonylite status --config PATH [--json]
                                show the node's state, read from its database
  harmonylite status --config PATH --check
                                one line; exit 0 only when the node runs, its link is up,
                                its outbox drains, no table is paused and its id is its own
  harmonylite status --config PATH --fleet [--node N] [--timeout-ms MS] [--json]
                                ask every node of the stream (or node N) through NATS;
                                answers are collected for MS (default 2000) milliseconds
  harmonylite verify --config PATH [--repair] [--json] [--timeout-ms MS] [--settle-ms MS]
                                compare every running node's rows through NATS (waiting
                                up to MS, default 10000, for changes in flight to settle);
                                --repair makes the nodes re-announce the rows that differ.
                                Exit 0: all agree, 1: they differ or a node did not answer
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
  harmonylite --version         show the version, git commit and target

Options:
  -c, --config PATH   the node's TOML configuration (see README: config reference); also
                      -config PATH (HarmonyLite-Go's spelling). Without it the node reads
                      /etc/harmonylite/harmonylite.toml when that file exists.

Exit codes: 0 stopped cleanly (status --check: healthy), 1 runtime error (e.g. database
missing), a refused cleanup or (status --check) an unhealthy node, 2 bad usage or config.
A first SIGTERM/SIGINT flushes the outbox (up to 5 s) and exits 0; a second exits at once.
";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Help,
    Version,
    /// Run a node in the foreground until SIGTERM/SIGINT.
    Run {
        config: PathBuf,
    },
    /// `status [--json]`: read from the database.
    Status {
        config: PathBuf,
        json: bool,
    },
    /// `status --check`: one line, and the exit code says healthy or not.
    Check {
        config: PathBuf,
    },
    /// `status --fleet [--node N] [--timeout-ms MS] [--json]`: asked through NATS.
    Fleet {
        config: PathBuf,
        node: Option<u64>,
        timeout: Duration,
        json: bool,
    },
    /// `verify [--repair] [--json] [--timeout-ms MS] [--settle-ms MS]`: compare the nodes.
    Verify {
        config: PathBuf,
        opts: harmonylite::verify::Options,
    },
    Snapshot {
        config: PathBuf,
        op: SnapshotOp,
    },
    SchemaAccept {
        config: PathBuf,
        table: String,
    },
    Cleanup {
        config: PathBuf,
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SnapshotOp {
    Save,
    Restore,
}

impl SnapshotOp {
    fn name(self) -> &'static str {
        match self {
            SnapshotOp::Save => "save",
            SnapshotOp::Restore => "restore",
        }
    }
}

/// Why a command failed, which says how it is reported and its exit code (README, "Exit
/// codes": 1 a runtime error that needs a person or a refused command, 2 bad usage or config).
#[derive(Debug)]
enum CliError {
    /// Bad arguments: the message and the usage on stderr.
    Usage(String),
    /// The configuration cannot be read or is invalid (the message names the key).
    Config(harmonylite::config::ConfigError),
    /// `status`: the database cannot be read.
    Database(harmonylite::db::DbError),
    /// `cleanup` cannot or may not run.
    Cleanup(harmonylite::cleanup::CleanupError),
    /// Any other failure before logging is set up, said on stderr as `error: ...`.
    Failed(String),
    /// The node cannot start, said in the log (set up by then, in the configured format);
    /// a config that does not fit the database is a config error.
    Node(harmonylite::node::NodeError),
    /// A failure of a snapshot command or of the node's start, said in the log.
    Logged(String),
    /// The command ran and did nothing; its output on stdout said why (a cleanup that left
    /// objects behind, no snapshot to save or restore).
    Refused,
    /// `status --check`: the node is not healthy; the reason goes to stdout as one line.
    Unhealthy(String),
    /// `verify` found nodes that differ (or one that did not answer); its output says which.
    Differ,
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => 2,
            CliError::Node(e) => match e {
                harmonylite::node::NodeError::Config(_) => 2,
                _ => 1,
            },
            CliError::Database(_)
            | CliError::Cleanup(_)
            | CliError::Failed(_)
            | CliError::Logged(_)
            | CliError::Refused
            | CliError::Unhealthy(_)
            | CliError::Differ => 1,
        }
    }

    fn report(&self) {
        match self {
            CliError::Usage(msg) => eprintln!("error: {msg}\n\n{USAGE}"),
            CliError::Config(e) => eprintln!("error: {e}"),
            CliError::Database(e) => eprintln!("error: {e}"),
            CliError::Cleanup(e) => eprintln!("error: {e}"),
            CliError::Failed(msg) => eprintln!("error: {msg}"),
            CliError::Node(e) => log::error!("{e}"),
            CliError::Logged(msg) => log::error!("{msg}"),
            CliError::Refused | CliError::Differ => {}
            CliError::Unhealthy(why) => println!("unhealthy: {why}"),
        }
    }
}

impl From<harmonylite::config::ConfigError> for CliError {
    fn from(e: harmonylite::config::ConfigError) -> Self {
        CliError::Config(e)
    }
}

fn main() -> ExitCode {
    let result = parse(std::env::args().skip(1)).and_then(run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.report();
            ExitCode::from(e.exit_code())
        }
    }
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// The config read when `--config` is not given: [`DEFAULT_CONFIG_PATH`], if it exists (a
/// package installs it there).
fn default_config() -> Option<PathBuf> {
    let p = PathBuf::from(DEFAULT_CONFIG_PATH);
    p.exists().then_some(p)
}

/// The arguments (without the program name) as a [`Command`].
fn parse(args: impl Iterator<Item = String>) -> Result<Command, CliError> {
    let mut args = args.peekable();
    if args.peek().map(String::as_str) == Some("verify") {
        args.next();
        return parse_verify(args);
    }
    let mut config: Option<PathBuf> = None;
    let status = args.peek().map(String::as_str) == Some("status");
    if status {
        args.next();
    }
    let mut snapshot_op = None;
    if args.peek().map(String::as_str) == Some("snapshot") {
        args.next();
        snapshot_op = Some(match args.next().as_deref() {
            Some("save") => SnapshotOp::Save,
            Some("restore") => SnapshotOp::Restore,
            Some(other) => {
                return Err(usage(format!(
                    "unknown snapshot command {other:?}: expected save or restore"
                )))
            }
            None => return Err(usage("snapshot needs a command: save or restore")),
        });
    }
    let mut accept_table = None;
    if snapshot_op.is_none() && !status && args.peek().map(String::as_str) == Some("schema") {
        args.next();
        match (args.next().as_deref(), args.next()) {
            (Some("accept"), Some(t)) if !t.starts_with('-') => accept_table = Some(t),
            (Some("accept"), _) => return Err(usage(
                "schema accept needs a table name: harmonylite schema accept TABLE --config PATH",
            )),
            (Some(other), _) => {
                return Err(usage(format!(
                    "unknown schema command {other:?}: expected accept"
                )))
            }
            (None, _) => return Err(usage("schema needs a command: accept")),
        }
    }
    let cleanup = snapshot_op.is_none()
        && !status
        && accept_table.is_none()
        && args.peek().map(String::as_str) == Some("cleanup");
    if cleanup {
        args.next();
    }
    let mut json = false;
    let mut force = false;
    let mut fleet = false;
    let mut check = false;
    let mut ask_node: Option<u64> = None;
    let mut timeout_ms = harmonylite::fleet::DEFAULT_TIMEOUT_MS;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-c" | "--config" | "-config" => match args.next() {
                Some(p) => config = Some(p.into()),
                None => return Err(usage("--config needs a path")),
            },
            s if s.starts_with("--config=") => config = Some(s["--config=".len()..].into()),
            s if s.starts_with("-config=") => config = Some(s["-config=".len()..].into()),
            "--json" if status => json = true,
            "--check" if status => check = true,
            "--fleet" if status => fleet = true,
            "--node" | "--timeout-ms" if status => {
                let Some(n) = args
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|n| *n > 0)
                else {
                    return Err(usage(format!("{arg} needs a positive number")));
                };
                if arg == "--node" {
                    (fleet, ask_node) = (true, Some(n));
                } else {
                    timeout_ms = n;
                }
            }
            "--force" if cleanup => force = true,
            other => return Err(usage(format!("unknown argument {other:?}"))),
        }
    }
    let Some(config) = config.or_else(default_config) else {
        return Err(usage(format!(
            "missing --config PATH ({DEFAULT_CONFIG_PATH} does not exist)"
        )));
    };
    if check && (fleet || json) {
        return Err(usage(
            "--check stands alone: not with --fleet, --node or --json",
        ));
    }
    Ok(if check {
        Command::Check { config }
    } else if status && fleet {
        Command::Fleet {
            config,
            node: ask_node,
            timeout: Duration::from_millis(timeout_ms),
            json,
        }
    } else if status {
        Command::Status { config, json }
    } else if let Some(table) = accept_table {
        Command::SchemaAccept { config, table }
    } else if cleanup {
        Command::Cleanup { config, force }
    } else if let Some(op) = snapshot_op {
        Command::Snapshot { config, op }
    } else {
        Command::Run { config }
    })
}

/// The arguments after `verify`.
fn parse_verify(args: impl Iterator<Item = String>) -> Result<Command, CliError> {
    use harmonylite::verify::{Options, DEFAULT_SETTLE_MS};
    let mut args = args.peekable();
    let mut config: Option<PathBuf> = None;
    let mut opts = Options {
        json: false,
        repair: false,
        timeout: Duration::from_millis(harmonylite::fleet::DEFAULT_TIMEOUT_MS),
        settle: Duration::from_millis(DEFAULT_SETTLE_MS),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-c" | "--config" => match args.next() {
                Some(p) => config = Some(p.into()),
                None => return Err(usage("--config needs a path")),
            },
            s if s.starts_with("--config=") => config = Some(s["--config=".len()..].into()),
            "--json" => opts.json = true,
            "--repair" => opts.repair = true,
            "--timeout-ms" | "--settle-ms" => {
                let Some(n) = args
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|n| *n > 0)
                else {
                    return Err(usage(format!("{arg} needs a positive number")));
                };
                if arg == "--timeout-ms" {
                    opts.timeout = Duration::from_millis(n);
                } else {
                    opts.settle = Duration::from_millis(n);
                }
            }
            other => return Err(usage(format!("unknown argument {other:?} for verify"))),
        }
    }
    let Some(config) = config else {
        return Err(usage("verify needs --config PATH"));
    };
    Ok(Command::Verify { config, opts })
}

/// Runs one command; what it prints on success is its own.
fn run(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Help => print!("{USAGE}"),
        // build.rs: the git commit ("unknown" outside a checkout) and the target triple.
        Command::Version => println!(
            "harmonylite {} (commit {}, target {})",
            env!("CARGO_PKG_VERSION"),
            env!("HL_GIT_COMMIT"),
            env!("HL_TARGET")
        ),
        Command::Status { config, json } => {
            let cfg = Config::load(&config)?;
            let st = harmonylite::status::read(&cfg).map_err(CliError::Database)?;
            if json {
                print!("{}", st.to_json() + "\n");
            } else {
                print!("{}", st.to_text());
            }
        }
        Command::Check { config } => {
            let cfg = Config::load(&config)?;
            let st = harmonylite::status::read(&cfg)
                .map_err(|e| CliError::Unhealthy(format!("cannot read the database: {e}")))?;
            match st.check(harmonylite::hlc::now_ms(), cfg.publish) {
                Some(why) => return Err(CliError::Unhealthy(why)),
                None => println!("{}", st.check_ok()),
            }
        }
        Command::Fleet {
            config,
            node,
            timeout,
            json,
        } => {
            let cfg = Config::load(&config)?;
            let out =
                harmonylite::fleet::run(&cfg, node, timeout, json).map_err(CliError::Failed)?;
            print!("{out}");
        }
        Command::Verify { config, opts } => {
            let cfg = Config::load(&config)?;
            let out = harmonylite::verify::run(&cfg, &opts).map_err(CliError::Failed)?;
            print!("{}", out.text);
            if !out.agree {
                return Err(CliError::Differ);
            }
        }
        Command::SchemaAccept { config, table } => {
            let cfg = Config::load(&config)?;
            let msg = harmonylite::schema::accept_in(&cfg, &table).map_err(CliError::Failed)?;
            println!("{msg}");
        }
        Command::Cleanup { config, force } => {
            let cfg = Config::load(&config)?;
            let report =
                harmonylite::cleanup::run(&cfg.db_path, force).map_err(CliError::Cleanup)?;
            print!("{}", report.to_text());
            if !report.not_removed.is_empty() {
                return Err(CliError::Refused);
            }
        }
        Command::Snapshot { config, op } => {
            let cfg = Config::load(&config)?;
            let stop = start_logging_and_signals(&cfg)?;
            snapshot_command(op, cfg, &stop)?;
        }
        Command::Run { config } => {
            let cfg = Config::load(&config)?;
            let stop = start_logging_and_signals(&cfg)?;
            run_node(cfg, &stop)?;
        }
    }
    Ok(())
}

/// The logger in the configured format, then the signal handling (see [`watch_signals`]).
fn start_logging_and_signals(cfg: &Config) -> Result<Arc<Stop>, CliError> {
    init_logging(cfg);
    let stop = Arc::new(Stop::default());
    watch_signals(stop.clone())
        .map_err(|e| CliError::Failed(format!("cannot install signal handlers: {e}")))?;
    Ok(stop)
}

/// A node in the foreground: the HTTP endpoints, a restore when the database is missing, the
/// node opened (waiting while the database is locked), then its loop until `stop`.
fn run_node(cfg: Config, stop: &Stop) -> Result<(), CliError> {
    if let Some(keys) = cfg.ignored_line() {
        log::warn!("harmonylite-go config keys ignored {keys}");
    }
    // before a restore or a wait for a locked database, so /health can say "starting"
    harmonylite::http::start(&cfg).map_err(CliError::Logged)?;
    if !cfg.db_path.exists() && cfg.snapshot.enabled && !cfg.nats.urls.is_empty() {
        match harmonylite::node::restore_missing(&cfg, stop) {
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
                    return Ok(());
                }
            }
            Err(e) => return Err(CliError::Node(e)),
        }
    };
    node.run(stop);
    Ok(())
}

/// `snapshot save` and `snapshot restore`. With the embedded server, they talk to the one the
/// running node started.
fn snapshot_command(op: SnapshotOp, mut cfg: Config, stop: &Stop) -> Result<(), CliError> {
    if cfg.nats.urls.is_empty() {
        cfg.nats.urls = vec![harmonylite::node::snapshot_urls(&cfg)];
    }
    if op == SnapshotOp::Restore && !cfg.db_path.exists() {
        return match harmonylite::node::restore_missing(&cfg, stop) {
            Ok(true) => Ok(()),
            Ok(false) => Err(CliError::Logged(format!(
                "no snapshot exists yet for stream {}",
                cfg.nats.stream_prefix
            ))),
            Err(e) => Err(CliError::Logged(format!("snapshot restore failed: {e}"))),
        };
    }
    let mut node = match Node::open_with(cfg, op == SnapshotOp::Restore) {
        Ok(n) => n,
        Err(e @ harmonylite::node::NodeError::Busy(_)) => {
            return Err(CliError::Logged(format!(
                "{e}: a running node restores a snapshot by itself when it falls behind the stream"
            )));
        }
        Err(e) => return Err(CliError::Logged(e.to_string())),
    };
    node.connect_now().map_err(CliError::Logged)?;
    let result = match op {
        SnapshotOp::Save => node.save_now().map(|s| match s {
            harmonylite::node::Saved::Uploaded(p) => {
                println!(
                    "saved snapshot {} at seq {} ({} bytes)",
                    p.object, p.seq, p.size
                );
                true
            }
            harmonylite::node::Saved::Skipped(why) | harmonylite::node::Saved::Current(why) => {
                println!("no snapshot saved: {why}");
                false
            }
        }),
        SnapshotOp::Restore => node.restore_latest(stop, true).map(|r| match r {
            Some(msg) => {
                println!("{msg}");
                true
            }
            None => {
                println!("no snapshot exists yet");
                false
            }
        }),
    };
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(CliError::Refused),
        Err(e) => Err(CliError::Logged(format!(
            "snapshot {} failed: {e}",
            op.name()
        ))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use harmonylite::node::NodeError;

    fn parsed(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string())).map_err(|e| match e {
            CliError::Usage(msg) => msg,
            other => panic!("not a usage error: {other:?}"),
        })
    }

    #[test]
    fn commands() {
        let c = || PathBuf::from("n.toml");
        assert_eq!(parsed(&["-c", "n.toml"]), Ok(Command::Run { config: c() }));
        assert_eq!(
            parsed(&["--config=n.toml"]),
            Ok(Command::Run { config: c() })
        );
        assert_eq!(
            parsed(&["status", "--config", "n.toml", "--json"]),
            Ok(Command::Status {
                config: c(),
                json: true
            })
        );
        assert_eq!(
            parsed(&["status", "-c", "n.toml", "--node", "7"]),
            Ok(Command::Fleet {
                config: c(),
                node: Some(7),
                timeout: Duration::from_millis(harmonylite::fleet::DEFAULT_TIMEOUT_MS),
                json: false
            })
        );
        assert_eq!(
            parsed(&["status", "-c", "n.toml", "--fleet", "--timeout-ms", "500"]),
            Ok(Command::Fleet {
                config: c(),
                node: None,
                timeout: Duration::from_millis(500),
                json: false
            })
        );
        assert_eq!(
            parsed(&["snapshot", "restore", "-c", "n.toml"]),
            Ok(Command::Snapshot {
                config: c(),
                op: SnapshotOp::Restore
            })
        );
        assert_eq!(
            parsed(&["schema", "accept", "t", "-c", "n.toml"]),
            Ok(Command::SchemaAccept {
                config: c(),
                table: "t".into()
            })
        );
        assert_eq!(
            parsed(&["cleanup", "-c", "n.toml", "--force"]),
            Ok(Command::Cleanup {
                config: c(),
                force: true
            })
        );
        assert_eq!(
            parsed(&["-config", "n.toml"]),
            Ok(Command::Run { config: c() })
        );
        assert_eq!(
            parsed(&["status", "-config=n.toml", "--check"]),
            Ok(Command::Check { config: c() })
        );
        assert_eq!(parsed(&["status", "--help"]), Ok(Command::Help));
        assert_eq!(parsed(&["-V"]), Ok(Command::Version));
        assert_eq!(
            parsed(&["verify", "-c", "n.toml", "--repair", "--settle-ms", "500"]),
            Ok(Command::Verify {
                config: c(),
                opts: harmonylite::verify::Options {
                    json: false,
                    repair: true,
                    timeout: Duration::from_millis(harmonylite::fleet::DEFAULT_TIMEOUT_MS),
                    settle: Duration::from_millis(500),
                }
            })
        );
    }

    #[test]
    fn verify_usage_errors_say_what_is_wrong() {
        assert_eq!(
            parsed(&["verify"]),
            Err("verify needs --config PATH".into())
        );
        assert_eq!(
            parsed(&["verify", "-c", "n.toml", "--fleet"]),
            Err("unknown argument \"--fleet\" for verify".into())
        );
        assert_eq!(
            parsed(&["verify", "-c", "n.toml", "--settle-ms", "soon"]),
            Err("--settle-ms needs a positive number".into())
        );
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        assert_eq!(
            parsed(&[]),
            Err("missing --config PATH (/etc/harmonylite/harmonylite.toml does not exist)".into())
        );
        assert_eq!(
            parsed(&["status", "-c", "n.toml", "--check", "--fleet"]),
            Err("--check stands alone: not with --fleet, --node or --json".into())
        );
        assert_eq!(parsed(&["-c"]), Err("--config needs a path".into()));
        assert_eq!(
            parsed(&["-c", "n.toml", "--json"]),
            Err("unknown argument \"--json\"".into())
        );
        assert_eq!(
            parsed(&["status", "-c", "n.toml", "--node", "0"]),
            Err("--node needs a positive number".into())
        );
        assert_eq!(
            parsed(&["snapshot", "take"]),
            Err("unknown snapshot command \"take\": expected save or restore".into())
        );
        assert_eq!(
            parsed(&["schema", "accept", "--config", "n.toml"]),
            Err(
                "schema accept needs a table name: harmonylite schema accept TABLE --config PATH"
                    .into()
            )
        );
        assert_eq!(
            parsed(&["cleanup", "-c", "n.toml", "--json"]),
            Err("unknown argument \"--json\"".into())
        );
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let config = Config::load(std::path::Path::new("/nonexistent/harmonylite.toml"))
            .expect_err("no such file");
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CliError::Config(config).exit_code(), 2);
        let db = harmonylite::db::DbError::Missing("/x.db".into());
        assert_eq!(CliError::Database(db).exit_code(), 1);
        assert_eq!(CliError::Failed("x".into()).exit_code(), 1);
        assert_eq!(CliError::Logged("x".into()).exit_code(), 1);
        let node = |e| CliError::Node(e).exit_code();
        assert_eq!(node(NodeError::Config("x".into())), 2);
        assert_eq!(node(NodeError::Busy("x".into())), 1);
        assert_eq!(CliError::Refused.exit_code(), 1);
        assert_eq!(CliError::Unhealthy("x".into()).exit_code(), 1);
    }
}
