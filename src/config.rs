//! Configuration: the TOML file, its defaults and its validation.
//!
//! Key names follow HarmonyLite-Go where the meaning is the same, so its users can bring their
//! files. Unknown keys are an error that names the key; every default is a named constant.
//! HarmonyLite-Go's own keys are all accepted (`go.rs`): those whose meaning carries over are
//! mapped onto ours, the others are kept in [`Config::ignored`] for one warning line at start,
//! so a user's `config.toml` starts a node while a typo still stops it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod go;
mod nats;
mod ops;
pub use go::{SnapshotNats, SnapshotRemote};
pub use nats::{Nats, Secret};
pub use ops::{listen_addr, AntiEntropy, HealthCheck, Prometheus, MIN_ANTI_ENTROPY_SECS};

/// Default poll interval of the change log, in milliseconds.
pub const DEFAULT_POLLING_INTERVAL_MS: u64 = 100;
/// Default upper bound of one frame on the wire, in bytes (NATS' default max payload is 1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 256 * 1024;
/// Smallest frame bound we accept; below it the per-frame overhead dominates.
pub const MIN_FRAME_BYTES: usize = 1024;
/// Default stream message limit.
pub const DEFAULT_MAX_ENTRIES: i64 = 100_000;
/// `[replication_log] node_ttl_hours`: a week. A node away longer is treated as gone (see
/// `tombstones`); its writes still arrive when it returns, as made at its return.
pub const DEFAULT_NODE_TTL_HOURS: f64 = 168.0;
/// `[replication_log] horizon_interval_ms`: five minutes. Each refresh is one small
/// key-value write; each collection round reads one record per node.
pub const DEFAULT_HORIZON_INTERVAL_MS: u64 = 300_000;
pub const DEFAULT_SUBJECT_PREFIX: &str = "hlrs.changes";
pub const DEFAULT_STREAM_PREFIX: &str = "HLRS";
/// Nodes answer status requests on `<status_subject>.<stream_prefix>.<node_id>` and `.all`.
pub const DEFAULT_STATUS_SUBJECT: &str = "hlrs.status";
pub const DEFAULT_SERVER_BIN: &str = "nats-server";
pub const DEFAULT_EMBEDDED_LISTEN: &str = "127.0.0.1:4222";
/// Default deadline for one connection attempt (TCP, handshake, stream and consumer setup).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default bounds of the reconnect backoff.
pub const DEFAULT_RECONNECT_MIN_MS: u64 = 250;
/// At most 15 s between attempts: a link that comes back is used again within 30 s.
pub const DEFAULT_RECONNECT_MAX_MS: u64 = 15_000;
/// Liveness PING after 10 s of server silence: a stalled link is declared down within 30 s.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 10_000;
/// A write that moves no byte for 5 s fails (a slow link still moves bytes).
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 5_000;
/// A remote stamp this far ahead of our clock is reported.
pub const DEFAULT_MAX_CLOCK_DRIFT_MS: u64 = 60_000;
/// `max_parked_bytes`: 64 MiB. Parked changes wait for a schema change here (an application
/// upgrade that comes late); one is a row's frame (159 bytes for a row with 100 bytes of text,
/// measured by `tests/bounds.rs`), so this is about 420000 such rows, small next to a
/// gateway's disk, and the stream holds what comes after while the node waits at its
/// position.
pub const DEFAULT_MAX_PARKED_BYTES: u64 = 64 * 1024 * 1024;

/// Migration tools' bookkeeping tables, not replicated unless `tables` names them: Django,
/// Alembic, Rails, knex, goose, Flyway, EF Core, Prisma, sqlx, Diesel, SeaORM, refinery,
/// Sequelize, Drizzle.
pub const MIGRATION_TABLES: &[&str] = &[
    "django_migrations",
    "alembic_version",
    "schema_migrations",
    "ar_internal_metadata",
    "knex_migrations",
    "knex_migrations_lock",
    "goose_db_version",
    "flyway_schema_history",
    "__EFMigrationsHistory",
    "_prisma_migrations",
    "_sqlx_migrations",
    "__diesel_schema_migrations",
    "seaql_migrations",
    "refinery_schema_history",
    "SequelizeMeta",
    "__drizzle_migrations",
];

/// Prefixes of the temporary tables ORMs rebuild a table in (Django's `new__t`, Alembic batch
/// mode's `_alembic_tmp_t`): a node that looks between two steps of a migration run outside a
/// transaction must not replicate them.
pub const MIGRATION_TEMP_PREFIXES: &[&str] = &["new__", "_alembic_tmp_"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The application's SQLite file.
    pub db_path: PathBuf,
    /// Node id; derived from the machine id and persisted in the DB when absent.
    pub node_id: Option<u64>,
    #[serde(default = "yes")]
    pub publish: bool,
    #[serde(default = "yes")]
    pub replicate: bool,
    /// Poll interval of the change log, milliseconds.
    #[serde(default = "default_polling_interval")]
    pub polling_interval: u64,
    /// Upper bound of one frame on the wire, bytes. Larger rows are split into fragments.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Tables to replicate; empty means every table with a primary key.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Tables never replicated.
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// Per-table direction, `[table.<name>]`: overrides of `publish` and `replicate`.
    #[serde(default)]
    pub table: BTreeMap<String, TableDirection>,
    /// Outbox size (estimated bytes of unpublished changes) above which a warning is logged.
    /// 0: no budget. Crossing it never drops data and never blocks the application.
    #[serde(default)]
    pub outbox_budget_bytes: u64,
    /// Bytes of parked changes (remote changes this node's schema cannot take yet) at which
    /// the node stops taking in new frames until they drain; 0: no bound. Nothing is dropped.
    #[serde(default = "default_max_parked_bytes")]
    pub max_parked_bytes: u64,
    /// A change stamped this many milliseconds ahead of this node's clock is reported.
    #[serde(default = "default_max_clock_drift")]
    pub max_clock_drift_ms: u64,
    /// HarmonyLite-Go's sequence map file; accepted for compatibility, not used (our cursor
    /// lives in the database).
    #[serde(default)]
    pub seq_map_path: Option<String>,
    /// HarmonyLite-Go's rows per scan, cleanup interval and idle exit: accepted and ignored
    /// (see `go.rs` for why each does not carry over).
    #[serde(default)]
    pub scan_max_changes: Option<u64>,
    #[serde(default)]
    pub cleanup_interval: Option<u64>,
    #[serde(default)]
    pub sleep_timeout: Option<u64>,
    /// HarmonyLite-Go's keys this node accepted but does not use, each with why: logged once
    /// at start (one warning line).
    #[serde(skip)]
    pub ignored: Vec<(&'static str, String)>,
    #[serde(default)]
    pub replication_log: ReplicationLog,
    #[serde(default)]
    pub snapshot: Snapshot,
    #[serde(default)]
    pub nats: Nats,
    #[serde(default)]
    pub logging: Logging,
    #[serde(default)]
    pub prometheus: Prometheus,
    #[serde(default)]
    pub health_check: HealthCheck,
    #[serde(default)]
    pub anti_entropy: AntiEntropy,
}

/// A table name as one token of a NATS subject: ASCII letters, digits, `_` and `-` stay as they
/// are; every other byte of its UTF-8 (`.`, `*`, `>`, spaces, `%`, non-ASCII) becomes `%XX`
/// (upper-case hex). `order.items` is `order%2Eitems`, `Straße` is `Stra%C3%9Fe`.
pub fn subject_token(table: &str) -> String {
    let mut out = String::with_capacity(table.len());
    for b in table.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The subjects a node's durable consumer is filtered on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerFilter {
    /// Every table: one wildcard subject, `<subject_prefix>.>`.
    All(String),
    /// Only these subjects (one per replicated table, plus the single-subject layout of older
    /// builds): NATS 2.10+ `filter_subjects`.
    Subjects(Vec<String>),
    /// The one table this node receives: a single filter, `<subject_prefix>.<table>.*`.
    One(String),
    /// No table is received: no consumer.
    Nothing,
}

impl ConsumerFilter {
    /// Some tables only: the consumer's sequences skip the others' messages.
    pub fn is_partial(&self) -> bool {
        matches!(self, ConsumerFilter::Subjects(_) | ConsumerFilter::One(_))
    }
}

/// `[table.<name>]`: which way one table's changes go on this node (unset: the top-level
/// `publish` and `replicate`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TableDirection {
    /// Send this node's changes of the table.
    pub publish: Option<bool>,
    /// Receive other nodes' changes of the table (false: never downloaded).
    pub replicate: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationLog {
    /// Stream message limit (oldest messages are discarded beyond it).
    #[serde(default = "default_max_entries")]
    pub max_entries: i64,
    /// Stream age limit in hours (older messages are discarded); 0: none.
    #[serde(default)]
    pub max_age_hours: u64,
    /// Stream size limit in bytes (oldest messages discarded beyond it); 0: none.
    #[serde(default)]
    pub max_bytes: u64,
    /// Stream replicas in a clustered NATS.
    #[serde(default = "one")]
    pub replicas: usize,
    /// Compress each frame's body (deflate) when that makes it smaller; every node reads
    /// both raw and compressed frames. Off with `frame_version = 1`.
    #[serde(default = "yes")]
    pub compress: bool,
    /// HarmonyLite-Go's shard count; only 1 is supported.
    #[serde(default = "one")]
    pub shards: usize,
    /// The frame format this node writes: the newest by default; 1 while part of the fleet
    /// still runs a build that reads only version 1 (a rolling upgrade).
    #[serde(default = "default_frame_version")]
    pub frame_version: u8,
    /// Delete tombstones once no late change can need them (see `tombstones`); false keeps
    /// them forever (this node still writes its record, so the others can collect theirs).
    #[serde(default = "yes")]
    pub collect_tombstones: bool,
    /// A node whose record was not refreshed for this many hours is treated as gone: its
    /// outbox stops holding back tombstone collection, and when it returns its older
    /// unpublished writes count as made at its return. Fractions allowed.
    #[serde(default = "default_node_ttl_hours")]
    pub node_ttl_hours: f64,
    /// How often (ms) a node refreshes its record (only after activity; an idle node every
    /// `node_ttl_hours / 4`, at most hourly) and looks for tombstones to collect.
    #[serde(default = "default_horizon_interval")]
    pub horizon_interval_ms: u64,
    /// HarmonyLite-Go: rewrite an existing stream's settings. Accepted and ignored: a stream
    /// that exists keeps its limits here (a node with other values logs so).
    #[serde(default)]
    pub update_existing: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Save snapshots periodically and restore one when the stream cannot bring this node up
    /// to date.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Interval between snapshots, milliseconds; 0 means the default, one hour.
    #[serde(default)]
    pub interval: u64,
    /// Where snapshots live: only "nats" (a JetStream object store) is supported.
    #[serde(default)]
    pub store: Option<String>,
    /// This node takes part in the periodic saves (false: restore only, e.g. a gateway on a
    /// metered link that should not upload copies of its database).
    #[serde(default = "yes")]
    pub save: bool,
    /// How long a node's upload lease holds before another may take over, milliseconds
    /// (HarmonyLite-Go's name); absent: [`Snapshot::DEFAULT_LEASE_MS`].
    #[serde(default)]
    pub leader_ttl: Option<u64>,
    /// `[snapshot.nats]`: the snapshot buckets' name and replicas.
    #[serde(default)]
    pub nats: SnapshotNats,
    /// HarmonyLite-Go's other stores: accepted and ignored (snapshots live in NATS here).
    #[serde(default)]
    pub s3: Option<SnapshotRemote>,
    #[serde(default)]
    pub webdav: Option<SnapshotRemote>,
    #[serde(default)]
    pub sftp: Option<SnapshotRemote>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            enabled: true,
            interval: 0,
            store: None,
            save: true,
            leader_ttl: None,
            nats: SnapshotNats::default(),
            s3: None,
            webdav: None,
            sftp: None,
        }
    }
}

impl Snapshot {
    pub const DEFAULT_INTERVAL_MS: u64 = 3_600_000;
    /// An upload lease holds 10 minutes unless `leader_ttl` says otherwise.
    pub const DEFAULT_LEASE_MS: u64 = 600_000;

    pub fn lease_ms(&self) -> u64 {
        self.leader_ttl.unwrap_or(Self::DEFAULT_LEASE_MS)
    }

    pub fn interval_ms(&self) -> u64 {
        if self.interval == 0 {
            Self::DEFAULT_INTERVAL_MS
        } else {
            self.interval
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    #[serde(default)]
    pub verbose: bool,
    /// "text" (default) or "json" (one object per line).
    #[serde(default)]
    pub format: Option<String>,
}

/// Keys whose values are never echoed in an error message.
const SECRET_KEYS: [&str; 2] = ["user_password", "token"];

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_polling_interval() -> u64 {
    DEFAULT_POLLING_INTERVAL_MS
}
fn default_max_frame_bytes() -> usize {
    DEFAULT_MAX_FRAME_BYTES
}
fn default_frame_version() -> u8 {
    crate::frame::VERSION
}
fn default_node_ttl_hours() -> f64 {
    DEFAULT_NODE_TTL_HOURS
}
fn default_horizon_interval() -> u64 {
    DEFAULT_HORIZON_INTERVAL_MS
}
fn default_max_entries() -> i64 {
    DEFAULT_MAX_ENTRIES
}
fn default_max_clock_drift() -> u64 {
    DEFAULT_MAX_CLOCK_DRIFT_MS
}
fn default_max_parked_bytes() -> u64 {
    DEFAULT_MAX_PARKED_BYTES
}

impl Default for ReplicationLog {
    fn default() -> Self {
        ReplicationLog {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_age_hours: 0,
            max_bytes: 0,
            replicas: 1,
            compress: true,
            shards: 1,
            frame_version: crate::frame::VERSION,
            collect_tombstones: true,
            node_ttl_hours: DEFAULT_NODE_TTL_HOURS,
            horizon_interval_ms: DEFAULT_HORIZON_INTERVAL_MS,
            update_existing: None,
        }
    }
}

/// Where the node looks for its config when `--config` is not given (and the file exists).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/harmonylite/harmonylite.toml";

/// A config that could not be read or is not valid. Its message names the file and the key.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
    /// The file itself cannot be read (missing, no permission): no key is at fault.
    pub unreadable: bool,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unreadable {
            write!(
                f,
                "cannot read the config file {}: {}",
                self.path.display(),
                self.message
            )
        } else {
            write!(f, "config {}: {}", self.path.display(), self.message)
        }
    }
}

/// What to do about a config file that cannot be read, by why.
fn unreadable_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            "check the path given with --config (without --config the node reads /etc/harmonylite/harmonylite.toml)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "run as the user the node runs as, or let this user read the file"
        }
        _ => "check that the path names a readable TOML file",
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates the file. Relative `db_path`s are taken from the config's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_path_buf(),
            message,
            unreadable: false,
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            message: format!("{e}; {}", unreadable_hint(&e)),
            unreadable: true,
        })?;
        let mut cfg = Config::parse(&text).map_err(err)?;
        // relative paths are taken from the config's folder, not the working directory
        let base = path.parent().unwrap_or(Path::new("."));
        let n = &mut cfg.nats;
        let nats_files = [
            &mut n.seed_file,
            &mut n.creds_file,
            &mut n.ca_file,
            &mut n.cert_file,
            &mut n.key_file,
            &mut n.server_config,
        ];
        for p in nats_files.into_iter().flatten().chain([&mut cfg.db_path]) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        // The [nats] files are not read here but at each connect (`Nats::check_files`):
        // `status`, `cleanup` and an installer's config check must work for a user who cannot
        // read the node's keys, or before they are deployed.
        Ok(cfg)
    }

    /// Parses and validates TOML text; the error names the offending key.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        cfg.adopt_go_keys()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.db_path.as_os_str().is_empty() {
            return Err("db_path: must name the application's SQLite file".into());
        }
        if self.node_id == Some(0) {
            return Err("node_id: must be a positive integer (or absent to derive one)".into());
        }
        if self.polling_interval == 0 || self.polling_interval > 3_600_000 {
            return Err("polling_interval: expected milliseconds between 1 and 3600000".into());
        }
        if self.max_frame_bytes < MIN_FRAME_BYTES || self.max_frame_bytes > 64 * 1024 * 1024 {
            return Err(format!(
                "max_frame_bytes: expected between {MIN_FRAME_BYTES} and 67108864 bytes"
            ));
        }
        if self.replication_log.max_entries < 1 {
            return Err("[replication_log] max_entries: must be at least 1".into());
        }
        if self.replication_log.max_age_hours > 24 * 365 * 100 {
            return Err("[replication_log] max_age_hours: expected hours, at most 876000 (or 0 for no age limit)".into());
        }
        if self.max_parked_bytes > i64::MAX as u64 {
            return Err("max_parked_bytes: too large (0 for no bound)".into());
        }
        if self.replication_log.max_bytes > i64::MAX as u64 {
            return Err("[replication_log] max_bytes: too large".into());
        }
        let fv = self.replication_log.frame_version;
        if !(crate::frame::OLDEST_VERSION..=crate::frame::VERSION).contains(&fv) {
            return Err(format!(
                "[replication_log] frame_version: expected {} to {} (this build writes {} by default)",
                crate::frame::OLDEST_VERSION,
                crate::frame::VERSION,
                crate::frame::VERSION
            ));
        }
        let ttl = self.replication_log.node_ttl_hours;
        if !(ttl.is_finite() && ttl > 0.0 && ttl <= 24.0 * 365.0 * 100.0) {
            return Err("[replication_log] node_ttl_hours: expected hours above 0 (fractions allowed), e.g. 168 for a week".into());
        }
        if self.replication_log.horizon_interval_ms < 100 {
            return Err("[replication_log] horizon_interval_ms: expected milliseconds, at least 100 (default 300000)".into());
        }
        if self.replication_log.replicas < 1 || self.replication_log.replicas > 5 {
            return Err("[replication_log] replicas: expected 1 to 5".into());
        }
        if let Some(store) = self.snapshot.store.as_deref().filter(|s| *s != "nats") {
            return Err(format!("[snapshot] store: {store:?} is not supported; snapshots live in NATS (store = \"nats\")"));
        }
        if self.snapshot.interval != 0 && self.snapshot.interval < 1000 {
            return Err("[snapshot] interval: expected milliseconds, at least 1000 (or 0 for the default, one hour)".into());
        }
        if self.replication_log.shards != 1 {
            return Err("[replication_log] shards: only 1 is supported".into());
        }
        let subject_ok = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                })
        };
        if !subject_ok(&self.nats.subject_prefix) {
            return Err(format!(
                "[nats] subject_prefix: {:?} is not a NATS subject (dot-separated tokens of letters, digits, - and _)",
                self.nats.subject_prefix
            ));
        }
        if !subject_ok(&self.nats.status_subject) {
            return Err(format!(
                "[nats] status_subject: {:?} is not a NATS subject",
                self.nats.status_subject
            ));
        }
        // the stream captures `<subject_prefix>.>`: status requests must not land in it
        let status = format!("{}.{}.", self.nats.status_subject, self.nats.stream_prefix);
        if status.starts_with(&format!("{}.", self.nats.subject_prefix)) {
            return Err(format!(
                "[nats] status_subject: {:?} lies inside the stream's subjects {}.>; choose a prefix outside it",
                self.nats.status_subject, self.nats.subject_prefix
            ));
        }
        let s = &self.nats.stream_prefix;
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(format!(
                "[nats] stream_prefix: {s:?} is not a valid stream name (letters, digits, - and _)"
            ));
        }
        for url in &self.nats.urls {
            check_url(url).map_err(|why| format!("[nats] urls: {url:?}: {why}"))?;
        }
        if self.nats.urls.is_empty()
            && self
                .nats
                .embedded_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(format!(
                "[nats] embedded_listen: {:?} is not an address like 127.0.0.1:4222",
                self.nats.embedded_listen
            ));
        }
        if self.nats.connect_timeout_ms < 100 {
            return Err("[nats] connect_timeout_ms: expected at least 100".into());
        }
        if self.nats.ping_interval_ms < 100 {
            return Err("[nats] ping_interval_ms: expected at least 100".into());
        }
        if self.nats.write_timeout_ms < 100 {
            return Err("[nats] write_timeout_ms: expected at least 100".into());
        }
        if self.nats.reconnect_min_ms == 0
            || self.nats.reconnect_min_ms > self.nats.reconnect_max_ms
        {
            return Err(
                "[nats] reconnect_min_ms: expected at least 1 and at most reconnect_max_ms".into(),
            );
        }
        if self.nats.user_name.is_some() != self.nats.user_password.is_some() {
            return Err("[nats] user_name and user_password: set both or neither".into());
        }
        if self
            .nats
            .token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty())
        {
            return Err("[nats] token: must not be empty (remove the key for no token)".into());
        }
        if let [a, b, ..] = self.nats.auth_methods()[..] {
            return Err(format!(
                "[nats] {a} and {b}: set one authentication method, not both"
            ));
        }
        if self.nats.cert_file.is_some() != self.nats.key_file.is_some() {
            return Err("[nats] cert_file and key_file: set both or neither".into());
        }
        if let Some(f) = &self.logging.format {
            if f != "text" && f != "json" {
                return Err(format!(
                    "[logging] format: expected \"text\" or \"json\", got {f:?}"
                ));
            }
        }
        ops::validate(&self.prometheus, &self.health_check)?;
        let every = self.anti_entropy.interval_secs;
        if every != 0 && every < MIN_ANTI_ENTROPY_SECS {
            return Err(format!(
                "[anti_entropy] interval_secs: {every} is too short; use 0 (off) or at least {MIN_ANTI_ENTROPY_SECS}"
            ));
        }
        for t in self.tables.iter().chain(&self.exclude_tables) {
            if t.is_empty() {
                return Err("tables/exclude_tables: empty table name".into());
            }
        }
        Ok(())
    }

    /// Whether `table` is selected by the include and exclude lists, and is not a migration
    /// tool's bookkeeping table left out by default ([`Config::is_default_excluded`]).
    pub fn wants_table(&self, table: &str) -> bool {
        (self.tables.is_empty() || self.tables.iter().any(|t| t == table))
            && !self.exclude_tables.iter().any(|t| t == table)
            && !self.is_default_excluded(table)
    }

    /// Whether `table` is a migration tool's bookkeeping table ([`MIGRATION_TABLES`]) that
    /// `tables` does not name: each node's migrations record what they applied to that node's
    /// schema; replicated, they tell a node it has applied migrations it has not.
    pub fn is_default_excluded(&self, table: &str) -> bool {
        let lower = table.to_ascii_lowercase();
        (MIGRATION_TABLES
            .iter()
            .any(|m| m.eq_ignore_ascii_case(table))
            || MIGRATION_TEMP_PREFIXES.iter().any(|p| lower.starts_with(p)))
            && !self.tables.iter().any(|t| t == table)
    }

    /// Whether this node sends its changes of `table` (`[table.<name>] publish`, else
    /// `publish`).
    pub fn publishes(&self, table: &str) -> bool {
        self.table
            .get(table)
            .and_then(|d| d.publish)
            .unwrap_or(self.publish)
    }

    /// Whether this node receives other nodes' changes of `table` (`[table.<name>]
    /// replicate`, else `replicate`).
    pub fn replicates(&self, table: &str) -> bool {
        self.table
            .get(table)
            .and_then(|d| d.replicate)
            .unwrap_or(self.replicate)
    }

    /// Checks `[table.<name>]` against the tables this node replicates: a name that is not one
    /// of them is an error naming the key (a typo would otherwise send what should stay).
    pub fn check_table_keys<'a>(
        &self,
        replicated: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), String> {
        for name in self.table.keys() {
            if !replicated.clone().any(|t| t == name) {
                let why =
                    if !self.wants_table(name) {
                        "it is left out by `tables`, `exclude_tables` or the defaults".to_string()
                    } else {
                        let mut all: Vec<&str> = replicated.clone().collect();
                        all.sort_unstable();
                        format!(
                        "the database has no such table with a primary key (replicated tables: {})",
                        if all.is_empty() { "none".to_string() } else { all.join(", ") }
                    )
                    };
                return Err(format!("[table.{name}]: {why}"));
            }
        }
        Ok(())
    }

    /// Whether `table` is an ORM's temporary copy of a table being rebuilt
    /// ([`MIGRATION_TEMP_PREFIXES`]).
    pub fn is_migration_temp(table: &str) -> bool {
        let lower = table.to_ascii_lowercase();
        MIGRATION_TEMP_PREFIXES.iter().any(|p| lower.starts_with(p))
    }

    /// The subject a status request for `node` (a node id, or `all`) goes to.
    pub fn status_subject(&self, node: &str) -> String {
        format!(
            "{}.{}.{node}",
            self.nats.status_subject, self.nats.stream_prefix
        )
    }

    /// The subject this node publishes to.
    pub fn own_subject(&self, node_id: u64) -> String {
        format!("{}.{}", self.nats.subject_prefix, node_id)
    }

    /// The subject this node publishes its changes of `table` on:
    /// `<subject_prefix>.<table token>.<node_id>` (see [`subject_token`]).
    pub fn table_subject(&self, table: &str, node_id: u64) -> String {
        format!(
            "{}.{}.{node_id}",
            self.nats.subject_prefix,
            subject_token(table)
        )
    }

    /// Whether this node receives every table's changes (no `replicate = false` anywhere).
    pub fn receives_all_tables(&self) -> bool {
        self.replicate && !self.table.values().any(|d| d.replicate == Some(false))
    }

    /// What this node's consumer receives, given the tables it replicates.
    pub fn consumer_filter<'a>(&self, tables: impl Iterator<Item = &'a str>) -> ConsumerFilter {
        let prefix = &self.nats.subject_prefix;
        if self.receives_all_tables() {
            return ConsumerFilter::All(format!("{prefix}.>"));
        }
        let mut subjects: Vec<String> = tables
            .filter(|t| self.replicates(t))
            .map(|t| format!("{prefix}.{}.*", subject_token(t)))
            .collect();
        if subjects.is_empty() {
            return ConsumerFilter::Nothing;
        }
        if subjects.len() == 1 {
            // one filter: the consumer's creation names it, so permissions can fence reading;
            // frames of older builds on the single-subject layout are not received (upgrade
            // the nodes that send this table, the hub, first: see the README)
            return ConsumerFilter::One(subjects.remove(0));
        }
        subjects.sort();
        // frames of nodes that still publish in the single-subject layout of older builds
        subjects.push(format!("{prefix}.*"));
        ConsumerFilter::Subjects(subjects)
    }
}

/// A NATS URL: `nats://`, `tls://` or `ws(s)://` scheme (or none), a host and an optional port.
fn check_url(url: &str) -> Result<(), &'static str> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) => {
            if !matches!(scheme, "nats" | "tls" | "ws" | "wss") {
                return Err("expected a nats:// or tls:// URL");
            }
            rest
        }
        None => url,
    };
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = hostport.trim_end_matches('/');
    if hostport.is_empty() {
        return Err("missing host");
    }
    if let Some((host, port)) = hostport.rsplit_once(':') {
        if !host.ends_with(']') && host.contains(':') {
            return Ok(()); // bare IPv6 without port
        }
        if host.is_empty() {
            return Err("missing host");
        }
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("port must be a number from 1 to 65535");
        }
    }
    if hostport.contains(char::is_whitespace) {
        return Err("contains white space");
    }
    Ok(())
}

/// toml's message names the key ("unknown field `ulrs`"); add the line it stands on.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            let key = src.split('=').next().unwrap_or("").trim();
            if SECRET_KEYS.contains(&key) {
                // toml's message may quote the value: show neither
                return format!("line {line} `{key} = <hidden>`: invalid value, expected a quoted string (not shown: it is a secret)");
            }
            format!("line {line} `{src}`: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let c = Config::parse("db_path = \"a.db\"").unwrap();
        assert_eq!(c.polling_interval, DEFAULT_POLLING_INTERVAL_MS);
        assert!(c.publish && c.replicate);
        assert_eq!(c.nats.subject_prefix, "hlrs.changes");
        assert!(c.nats.urls.is_empty());
        assert_eq!(c.replication_log.max_entries, DEFAULT_MAX_ENTRIES);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("db_path = \"a.db\"\n[nats]\nulrs = []\n").unwrap_err();
        assert!(e.contains("ulrs"), "{e}");
    }

    #[test]
    fn parked_changes_are_bounded_by_default() {
        let c = Config::parse("db_path = \"a.db\"\n").unwrap();
        assert_eq!(c.max_parked_bytes, DEFAULT_MAX_PARKED_BYTES);
        let c = Config::parse("db_path = \"a.db\"\nmax_parked_bytes = 0\n").unwrap();
        assert_eq!(c.max_parked_bytes, 0, "0: no bound");
        let e = Config::parse("db_path = \"a.db\"\nmax_parked_bytes = -1\n").unwrap_err();
        assert!(e.contains("max_parked_bytes"), "{e}");
    }

    #[test]
    fn ill_typed_key_is_named() {
        let e = Config::parse("db_path = \"a.db\"\npolling_interval = \"fast\"\n").unwrap_err();
        assert!(e.contains("polling_interval"), "{e}");
    }

    #[test]
    fn missing_db_path_is_named() {
        let e = Config::parse("publish = true\n").unwrap_err();
        assert!(e.contains("db_path"), "{e}");
    }

    #[test]
    fn bad_url_is_named() {
        let e = Config::parse("db_path = \"a\"\n[nats]\nurls = [\"http://x:1\"]\n").unwrap_err();
        assert!(e.contains("[nats] urls"), "{e}");
        let e =
            Config::parse("db_path = \"a\"\n[nats]\nurls = [\"nats://x:99999\"]\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
        Config::parse(
            "db_path = \"a\"\n[nats]\nurls = [\"nats://u:p@x:4222\", \"127.0.0.1:4222\"]\n",
        )
        .unwrap();
    }

    #[test]
    fn table_direction_overrides_the_defaults() {
        let c = Config::parse(
            "db_path = \"a\"\n[table.readings]\nreplicate = false\n[table.settings]\npublish = false\n",
        )
        .unwrap();
        assert!(c.publishes("readings") && !c.replicates("readings"));
        assert!(!c.publishes("settings") && c.replicates("settings"));
        assert!(c.publishes("other") && c.replicates("other"));
        let c = Config::parse(
            "db_path = \"a\"\nreplicate = false\n[table.settings]\nreplicate = true\n",
        )
        .unwrap();
        assert!(c.replicates("settings") && !c.replicates("other"));
        let e = Config::parse("db_path = \"a\"\n[table.t]\npublsh = false\n").unwrap_err();
        assert!(e.contains("publsh"), "{e}");
        // a name that is no replicated table is an error naming the key
        let c = Config::parse(
            "db_path = \"a\"\nexclude_tables = [\"x\"]\n[table.readngs]\nreplicate = false\n[table.x]\npublish = false\n",
        )
        .unwrap();
        let e = c
            .check_table_keys(["readings", "settings"].into_iter())
            .unwrap_err();
        assert_eq!(
            e,
            "[table.readngs]: the database has no such table with a primary key (replicated tables: readings, settings)"
        );
        let c = Config::parse(
            "db_path = \"a\"\nexclude_tables = [\"x\"]\n[table.x]\npublish = false\n",
        )
        .unwrap();
        let e = c
            .check_table_keys(["x"].into_iter().filter(|_| false))
            .unwrap_err();
        assert!(e.starts_with("[table.x]: it is left out by"), "{e}");
    }

    #[test]
    fn compress_is_on_by_default_and_can_be_turned_off() {
        let c = Config::parse("db_path = \"a\"\n").unwrap();
        assert!(c.replication_log.compress);
        let c = Config::parse("db_path = \"a\"\n[replication_log]\ncompress = false\n").unwrap();
        assert!(!c.replication_log.compress);
        let e =
            Config::parse("db_path = \"a\"\n[replication_log]\ncompress = \"yes\"\n").unwrap_err();
        assert!(e.contains("compress"), "{e}");
    }

    #[test]
    fn frame_version_is_one_this_build_writes() {
        let c = Config::parse("db_path = \"a\"\n").unwrap();
        assert_eq!(c.replication_log.frame_version, crate::frame::VERSION);
        let c = Config::parse("db_path = \"a\"\n[replication_log]\nframe_version = 1\n").unwrap();
        assert_eq!(c.replication_log.frame_version, 1);
        for bad in ["0", "3"] {
            let e = Config::parse(&format!(
                "db_path = \"a\"\n[replication_log]\nframe_version = {bad}\n"
            ))
            .unwrap_err();
            assert!(
                e.contains("[replication_log] frame_version: expected 1 to 2"),
                "{e}"
            );
        }
    }

    #[test]
    fn one_authentication_method_at_most() {
        let both = |a: &str, b: &str| {
            Config::parse(&format!("db_path = \"a\"\n[nats]\n{a}\n{b}\n")).unwrap_err()
        };
        let e = both(
            "user_name = \"u\"\nuser_password = \"hunter2\"",
            "token = \"t0k3n\"",
        );
        assert_eq!(
            e,
            "[nats] user_name/user_password and token: set one authentication method, not both"
        );
        let e = both("token = \"t0k3n\"", "seed_file = \"u.nk\"");
        assert_eq!(
            e,
            "[nats] token and seed_file: set one authentication method, not both"
        );
        let e = both("seed_file = \"u.nk\"", "creds_file = \"u.creds\"");
        assert_eq!(
            e,
            "[nats] seed_file and creds_file: set one authentication method, not both"
        );
        let e = Config::parse("db_path = \"a\"\n[nats]\ntoken = \"\"\n").unwrap_err();
        assert!(e.starts_with("[nats] token: must not be empty"), "{e}");
        let c = Config::parse("db_path = \"a\"\n[nats]\ntoken = \"t0k3n\"\n").unwrap();
        assert_eq!(c.nats.token.as_ref().map(Secret::expose), Some("t0k3n"));
        assert_eq!(c.nats.auth_methods(), ["token"]);
    }

    #[test]
    fn secrets_are_not_shown() {
        let c = Config::parse(
            "db_path = \"a\"\n[nats]\nuser_name = \"u\"\nuser_password = \"hunter2\"\n",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Config::parse("db_path = \"a\"\n[nats]\ntoken = \"t0k3n\"\n").unwrap();
        assert!(!format!("{c:?}").contains("t0k3n"));
        let e = Config::parse("db_path = \"a\"\n[nats]\ntoken = 31415926\n").unwrap_err();
        assert_eq!(e, "line 3 `token = <hidden>`: invalid value, expected a quoted string (not shown: it is a secret)");
        let e =
            Config::parse("db_path = \"a\"\n[nats]\nuser_password = \"hunter2\" x\n").unwrap_err();
        assert!(
            e.contains("user_password = <hidden>") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn nats_files_are_relative_to_the_config_and_checked() {
        let dir = std::env::temp_dir().join(format!("hl-config-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("node.toml");
        let load = |nats: &str| {
            std::fs::write(&cfg, format!("db_path = \"a.db\"\n[nats]\n{nats}\n")).unwrap();
            Config::load(&cfg).unwrap().nats
        };
        // loading does not read the files: `status` works without access to the keys
        let n = load("seed_file = \"u.nk\"");
        let path = dir.join("u.nk");
        assert_eq!(n.seed_file.as_deref(), Some(path.as_path()));
        let e = n.check_files().unwrap_err();
        assert!(
            e.starts_with(&format!(
                "[nats] seed_file: cannot read {}: ",
                path.display()
            )),
            "{e}"
        );
        let kp = nkeys::KeyPair::new_user();
        std::fs::write(&path, format!("# a comment\n{}\n", kp.seed().unwrap())).unwrap();
        n.check_files().unwrap();
        assert_eq!(
            n.user_seed().unwrap().unwrap().public_key(),
            kp.public_key()
        );
        std::fs::write(&path, nkeys::KeyPair::new_account().seed().unwrap()).unwrap();
        let e = n.check_files().unwrap_err();
        assert_eq!(
            e,
            format!(
                "[nats] seed_file: {} holds no user nkey seed (a line starting with SU)",
                path.display()
            )
        );
        let e = load("cert_file = \"u.nk\"\nkey_file = \"u.nk\"")
            .check_files()
            .unwrap_err();
        assert_eq!(
            e,
            format!(
                "[nats] cert_file: {} does not hold a PEM certificate",
                path.display()
            )
        );
        let abs = load("ca_file = \"/etc/ca.pem\"");
        assert_eq!(abs.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn table_selection() {
        let c =
            Config::parse("db_path = \"a\"\ntables = [\"a\", \"b\"]\nexclude_tables = [\"b\"]\n")
                .unwrap();
        assert!(c.wants_table("a"));
        assert!(!c.wants_table("b"));
        assert!(!c.wants_table("c"));
    }

    #[test]
    fn migration_bookkeeping_is_left_out_unless_listed() {
        let c = Config::parse("db_path = \"a\"\n").unwrap();
        assert!(c.wants_table("app_item"));
        for t in [
            "django_migrations",
            "alembic_version",
            "__efmigrationshistory",
            "__EFMigrationsHistory",
            "knex_migrations_lock",
            "new__shop_item",
            "_alembic_tmp_user",
        ] {
            assert!(!c.wants_table(t), "{t}");
            assert!(c.is_default_excluded(t), "{t}");
        }
        let c = Config::parse("db_path = \"a\"\ntables = [\"app_item\", \"alembic_version\"]\n")
            .unwrap();
        assert!(c.wants_table("alembic_version"));
        assert!(!c.is_default_excluded("alembic_version"));
        assert!(!c.wants_table("django_migrations"));
        let c = Config::parse("db_path = \"a\"\ntables = [\"alembic_version\"]\nexclude_tables = [\"alembic_version\"]\n").unwrap();
        assert!(!c.wants_table("alembic_version"));
    }
}
