//! A node: the database side (capture, stamp, apply) joined to the NATS side (publish, fetch).
//!
//! The loop in [`Node::run`] only schedules; the work is in [`Node::tick`] (capture and publish)
//! and [`Node::receive`] (fetch and apply), which tests can call step by step. The rest lives
//! in `node/`: the NATS link (`link.rs`), the publish round (`publish.rs`), schema watching
//! (`schema_watch.rs`), snapshots (`snapshots.rs`) and the operations hooks (`ops.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::apply::{self, Incoming};
use crate::capture::{self, Schema};
use crate::config::Config;
use crate::db::{self, DbError};
use crate::embedded::EmbeddedServer;
use crate::gap;
use crate::hlc::Hlc;
use crate::retry::{self, Backoff, SHUTDOWN_FLUSH};
use crate::schema;
use crate::state::{self, LockError};
use crate::transport::{Transport, TransportError, ACK_TIMEOUT};

mod horizon;
use horizon::Horizon;
mod link;
use link::Link;
mod ops;
mod publish;
use publish::Outbox;
mod schema_watch;
mod snapshots;
use snapshots::Snapshots;

use schema_watch::report_skipped;

pub use snapshots::{restore_missing, urls as snapshot_urls, Saved};

/// Bytes of frames published before their acks are awaited (one publish round). 2 MiB, not 8:
/// the writer's peak RSS in `hl-bench` fell by a few MiB at the same throughput (BENCHMARKS.md,
/// "Full run with the shipped static binary: 2026-11-30"); the acks of a round come back
/// within a millisecond on a LAN, and a slow link is slower than 2 MiB per round trip anyway.
pub const ROUND_BYTES: usize = 2 * 1024 * 1024;
pub use crate::retry::REPEAT_LOG_EVERY;
/// How often the position past our own frames is written down.
const OWN_CURSOR_EVERY: Duration = Duration::from_secs(1);
/// How often the outbox size is compared with its budget.
/// How often, while a table is paused, `__hl_meta` is read to see whether `harmonylite schema
/// accept` (another process) lifted the pause: a lifted pause resumes within a second, and the
/// read is one indexed row.
const PAUSE_CHECK_EVERY: Duration = Duration::from_secs(1);

struct Attempt {
    rx: mpsc::Receiver<Result<Transport, TransportError>>,
    started: Instant,
}

#[derive(Debug)]
pub enum NodeError {
    Db(DbError),
    Embedded(String),
    /// Another node process runs on the same database.
    Busy(String),
    /// The config does not fit the database (a key names a table it lacks).
    Config(String),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Db(e) => e.fmt(f),
            NodeError::Embedded(e) | NodeError::Busy(e) => f.write_str(e),
            NodeError::Config(e) => write!(f, "config: {e}"),
        }
    }
}

impl std::error::Error for NodeError {}

impl NodeError {
    /// A locked database: waiting and retrying will likely work.
    pub fn is_transient(&self) -> bool {
        matches!(self, NodeError::Db(e) if e.is_transient())
    }

    /// The database's file system is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, NodeError::Db(e) if e.is_disk_full())
    }
}

impl From<DbError> for NodeError {
    fn from(e: DbError) -> Self {
        NodeError::Db(e)
    }
}

/// The stop signal: set once by SIGTERM/SIGINT (or a test); waits end as soon as it is set.
#[derive(Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
    /// The same fact for code that only looks (a wait for acks), without the lock.
    raised: Arc<AtomicBool>,
    /// Run by [`Stop::overdue`].
    overdue_hooks: Mutex<Vec<Box<dyn Fn() + Send>>>,
}

impl Stop {
    pub fn set(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.raised.store(true, Ordering::Relaxed);
        self.cv.notify_all();
    }

    /// A flag that turns true when the stop is set.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.raised.clone()
    }

    /// Registers what to do when stopping takes too long (see [`Stop::overdue`]).
    pub fn on_overdue(&self, hook: impl Fn() + Send + 'static) {
        self.overdue_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    /// Stopping takes too long (called by the signal handling, from another thread): a node
    /// still held by a network call on a stalled link cuts that link, so the call returns.
    pub fn overdue(&self) {
        for hook in self
            .overdue_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            hook();
        }
    }

    pub fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `d`; returns true if stopped.
    pub fn wait(&self, d: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, d, |s| !*s)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

pub struct Node {
    cfg: Config,
    conn: Connection,
    schema: Schema,
    /// What the consumer receives: every table, or only those this node replicates.
    filter: crate::config::ConsumerFilter,
    /// The replicated tables' names, read by `conn`'s authorizer ([`capture::guard_node_connection`]).
    replicated: capture::ReplicatedNames,
    pub node_id: u64,
    hlc: Hlc,
    /// The NATS link: transport, connection attempts, backoff (see `link.rs`).
    link: Link,
    /// When we last reported each node's clock as ahead of ours.
    clock_reports: HashMap<u64, Instant>,
    /// What the node knows of its outbox (see `publish.rs`).
    outbox: Outbox,
    data_version: Option<i64>,
    schema_version: i64,
    /// When [`Node::pause_lifted`] last looked.
    pause_checked: Instant,
    /// Stream position past a run of our own frames, not yet written to the database.
    own_cursor: Option<u64>,
    own_cursor_saved: Instant,
    /// Fetched messages not yet applied (the apply failed and will be retried).
    unapplied: Vec<Incoming>,
    max_frame: usize,
    /// Snapshot saves, restores and the stream checks that lead to them (see `snapshots.rs`).
    snap: Snapshots,
    /// This node's record and tombstone collection (see `horizon.rs`).
    horizon: Horizon,
    /// Bytes of the parked changes: measured at start and after each retry, added to as
    /// batches park more (see `Node::note_parked` in `schema_watch.rs`).
    parked_bytes: u64,
    /// Parked changes reached `max_parked_bytes`: no frame is fetched until they drain.
    intake_held: bool,
    /// Held while the node runs: one node per database (released by the OS on any exit).
    _lock: Option<std::fs::File>,
    /// Set when the stop signal comes: a wait for acks ends at once.
    stopping: Arc<AtomicBool>,
    /// Another process answering as this node's id (see `ops.rs`).
    twins: ops::Twins,
    /// The stream's last sequence as last written to `__hl_meta` (for `status`'s "behind").
    stream_last: Option<u64>,
}

/// The tables this node receives: None for every table (the hub), else those of `schema` it
/// replicates.
fn received_now(cfg: &Config, schema: &Schema) -> Option<Vec<String>> {
    (!cfg.receives_all_tables()).then(|| {
        schema
            .tables
            .iter()
            .map(|t| t.name())
            .filter(|t| cfg.replicates(t))
            .map(String::from)
            .collect()
    })
}

/// Takes the node lock of a database (see [`state::lock`]).
fn lock_db(db_path: &std::path::Path) -> Result<std::fs::File, NodeError> {
    state::lock(db_path).map_err(|e| match e {
        LockError::Open { path, source } => NodeError::Busy(format!(
            "cannot open the lock file {}: {source}",
            path.display()
        )),
        LockError::Held { path } => NodeError::Busy(format!(
            "another harmonylite node is running on {} (it holds {}); stop it first",
            db_path.display(),
            path.display()
        )),
        LockError::Lock { path, source } => {
            NodeError::Busy(format!("cannot lock {}: {source}", path.display()))
        }
    })
}

impl Node {
    /// Opens the database, installs capture and (in the embedded mode) starts nats-server.
    /// Does not connect yet: a node starts even when NATS is unreachable.
    pub fn open(cfg: Config) -> Result<Node, NodeError> {
        Node::open_with(cfg, true)
    }

    /// Like [`Node::open`]; `exclusive = false` skips the one-node-per-database lock (for
    /// one-off commands that only read, like `snapshot save`).
    pub fn open_with(cfg: Config, exclusive: bool) -> Result<Node, NodeError> {
        let lock = if exclusive && cfg.db_path.exists() {
            Some(lock_db(&cfg.db_path)?)
        } else {
            None
        };
        let mut conn = db::open(&cfg.db_path)?;
        let replicated = capture::ReplicatedNames::default();
        capture::guard_node_connection(&mut conn, &replicated)?;
        if cfg.prometheus.enable {
            crate::metrics::count_statements(&mut conn).map_err(|source| DbError::Sql {
                op: "count statements",
                source,
            })?;
        }
        apply::prepare(&conn)?;
        schema::prepare(&conn)?;
        let node_id = db::node_id(&conn, cfg.node_id, &cfg.db_path)?;
        let mut hlc = Hlc::new(db::get_meta(&conn, state::HLC_KEY)?.unwrap_or(0) as u64);
        // read before the scan: a schema change committed after it is seen at the next tick
        let schema_version = db::schema_version(&conn)?;
        let mut schema = capture::scan(&conn, &cfg)?;
        cfg.check_table_keys(schema.tables.iter().map(|t| t.name()))
            .map_err(NodeError::Config)?;
        replicated.update(&schema);
        report_skipped(&schema, None);
        let filter = cfg.consumer_filter(schema.tables.iter().map(|t| t.name()));
        let cursor = db::cursor(&conn)?;
        apply::plan_backfill(&conn, received_now(&cfg, &schema).as_deref(), cursor)?;
        let recorded = schema::recorded_columns(&conn)?;
        let queued = capture::install(&mut conn, &schema, &recorded, node_id)?;
        if queued.total() > 0 {
            log::info!(
                "queued existing rows for replication rows={} inserts={} updates={} deletes={} fills={}",
                queued.total(),
                queued.inserts,
                queued.updates,
                queued.deletes,
                queued.fills
            );
        }
        schema::reconcile_and_report(&mut conn, &mut schema)?;
        // the schema may have changed while the node was stopped
        schema_watch::retry_parked(&mut conn, &schema, &mut hlc, node_id)?;
        let (embedded, urls) = if cfg.nats.urls.is_empty() {
            let server = EmbeddedServer::start(
                &cfg.nats.server_bin,
                &cfg.nats.embedded_listen,
                &cfg.db_path,
                cfg.nats.server_config.as_deref(),
            )
            .map_err(NodeError::Embedded)?;
            let url = server.url();
            (Some(server), url)
        } else {
            (None, cfg.nats.urls.join(","))
        };
        if cfg.replication_log.compress && cfg.replication_log.frame_version < 2 {
            log::info!("[replication_log] compress is off with frame_version = 1: builds that read only format 1 read no compressed frames");
        }
        let twins = ops::Twins::new(db::get_meta_text(&conn, state::DUPLICATE_KEY)?);
        let stream_last = db::get_meta(&conn, state::STREAM_LAST_KEY)?.map(|v| v as u64);
        let max_frame = cfg.max_frame_bytes;
        let next_save = Node::first_save_at(&cfg);
        let link = Link::new(
            urls,
            embedded,
            Backoff::new(
                Duration::from_millis(cfg.nats.reconnect_min_ms),
                Duration::from_millis(cfg.nats.reconnect_max_ms),
            ),
            Instant::now(),
        );
        let tables: Vec<&str> = schema.tables.iter().map(|t| t.name()).collect();
        log::info!(
            "node ready node_id={node_id} db={} tables={} publish={} replicate={}",
            cfg.db_path.display(),
            tables.join(","),
            cfg.publish,
            cfg.replicate
        );
        Ok(Node {
            cfg,
            conn,
            schema,
            filter,
            replicated,
            node_id,
            hlc,
            link,
            clock_reports: HashMap::new(),
            outbox: Outbox::new(Instant::now()),
            data_version: None,
            schema_version,
            pause_checked: Instant::now(),
            own_cursor: None,
            own_cursor_saved: Instant::now(),
            unapplied: Vec::new(),
            max_frame,
            snap: Snapshots::new(next_save, Instant::now()),
            horizon: Horizon::new(Instant::now()),
            parked_bytes: 0,
            intake_held: false,
            _lock: lock,
            stopping: Arc::new(AtomicBool::new(false)),
            twins,
            stream_last,
        })
        .and_then(|mut node| {
            // held or not is decided again (and logged again) at each start of the node (a
            // one-off command beside a running node leaves the running node's state alone)
            if node._lock.is_some() {
                db::set_meta(&node.conn, state::INTAKE_HELD_KEY, 0)?;
                node.note_parked(None)?;
                for p in snapshots::sweep_leftovers(&node.cfg.db_path) {
                    log::info!(
                        "removed a snapshot temp file left by an interrupted save or download path={}",
                        p.display()
                    );
                }
            }
            Ok(node)
        })
    }

    /// Runs until `stop` is set, then flushes what it can and returns.
    pub fn run(&mut self, stop: &Stop) {
        let poll = Duration::from_millis(self.cfg.polling_interval);
        let mut db_backoff = retry::DB_STEP.backoff();
        self.stopping = stop.flag();
        self.start_anti_entropy();
        let cutter = self.link.cutter.clone();
        stop.on_overdue(move || {
            if let Some(c) = cutter.lock().unwrap_or_else(|e| e.into_inner()).take() {
                log::warn!("stopping: a network call is still waiting; cutting the link");
                c.cut();
            }
        });
        while !stop.is_set() {
            self.heartbeat();
            if let Some(e) = self.link.embedded.as_mut() {
                e.supervise();
            }
            self.ensure_connected();
            if self.snap.restore_due(Instant::now()) {
                self.catch_up(stop);
                continue;
            }
            if let Err(e) = self.tick() {
                // a lock held by the application passes by itself; anything else (a full
                // disk, an I/O error, a database gone) is an error, repeated at most once a
                // minute, and retried all the same: the operator may fix it any time. Every
                // write the tick makes is one transaction, so a failed one left nothing half
                // done: the retry does it again from the start.
                crate::metrics::disk_full(e.is_disk_full());
                if e.is_transient() {
                    log::debug!("{e}; retrying");
                } else if let Some(more) = crate::logging::repeated(&format!("tick {e}")) {
                    log::error!("{e}; retrying with backoff{more}");
                }
                if stop.wait(db_backoff.fail()) {
                    break;
                }
                continue;
            }
            db_backoff.reset();
            crate::metrics::disk_full(false);
            match self.receive(poll) {
                Ok(true) => {}
                Ok(false) => {
                    if stop.wait(poll) {
                        break;
                    }
                }
                Err(e) => {
                    crate::metrics::disk_full(e.is_disk_full());
                    if e.is_transient() {
                        log::debug!("{e}; retrying");
                    } else if let Some(more) = crate::logging::repeated(&format!("receive {e}")) {
                        log::error!("{e}; retrying with backoff{more}");
                    }
                    if stop.wait(db_backoff.fail()) {
                        break;
                    }
                }
            }
        }
        self.shutdown();
    }

    /// Finishes the frame in hand and flushes the outbox within [`SHUTDOWN_FLUSH`].
    pub fn shutdown(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        // the loop came back: the flush below has its own deadline
        self.link
            .cutter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if !self.unapplied.is_empty() && self.link.transport.is_some() {
            if let Err(e) = self.apply_unapplied() {
                log::warn!("shutdown: {e}");
            }
        }
        // A link that stalled but is not found out yet would only hold the exit.
        let answers = self.link.transport.as_ref().is_some_and(|t| t.answers());
        while answers && self.link_up() && Instant::now() < deadline {
            if let Err(e) = self.stamp_if_changed() {
                log::warn!("shutdown: {e}");
                break;
            }
            if !self.cfg.publish || !self.outbox.dirty || !self.horizon.may_publish() {
                break;
            }
            if let Err(e) = self.publish_round(deadline, false) {
                log::warn!("shutdown: {e}");
                break;
            }
        }
        self.own_cursor_saved = Instant::now() - OWN_CURSOR_EVERY;
        if let Err(e) = self.save_own_cursor() {
            log::warn!("shutdown: {e}");
        }
        if self.outbox.dirty && self.cfg.publish {
            log::info!("unpublished changes stay in the outbox and are sent at the next start");
        }
        self.link.transport = None;
        self.record_link(false);
        if let Some(mut e) = self.link.embedded.take() {
            e.stop();
        }
        log::info!("node stopped node_id={}", self.node_id);
    }

    /// One capture step: notices schema changes, stamps new log rows, publishes the outbox.
    pub fn tick(&mut self) -> Result<(), NodeError> {
        self.check_schema()?;
        self.stamp_if_changed()?;
        self.save_own_cursor()?;
        self.maybe_save();
        if self.cfg.outbox_budget_bytes > 0 && self.outbox.budget_check_due(Instant::now()) {
            self.check_budget()?;
        }
        if self.link_up() {
            self.join_fleet()?;
        }
        if self.cfg.publish && self.outbox.dirty && self.link_up() && self.horizon.may_publish() {
            self.publish_round(Instant::now() + ACK_TIMEOUT, true)?;
        }
        if self.link_up() {
            self.horizon_tick()?;
        }
        Ok(())
    }

    /// Writes the position reached by passing over our own frames, at most once a second.
    fn save_own_cursor(&mut self) -> Result<(), NodeError> {
        let Some(seq) = self.own_cursor else {
            return Ok(());
        };
        if self.own_cursor_saved.elapsed() < OWN_CURSOR_EVERY {
            return Ok(());
        }
        self.own_cursor_saved = Instant::now();
        let current = db::cursor(&self.conn)?;
        if seq > current {
            db::set_cursor(&self.conn, seq)?;
        }
        self.own_cursor = None;
        Ok(())
    }

    /// Stamps new log rows if another connection committed since the last look.
    fn stamp_if_changed(&mut self) -> Result<(), NodeError> {
        let dv = db::data_version(&self.conn)?;
        if self.data_version != Some(dv) {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|source| DbError::Sql {
                    op: "begin stamp",
                    source,
                })?;
            let n = capture::stamp(&tx, &self.schema, &mut self.hlc, self.node_id)?;
            if n > 0 {
                db::set_meta(&tx, state::HLC_KEY, self.hlc.last() as i64)?;
                self.outbox.dirty = true;
                log::debug!("stamped changes={n}");
            }
            tx.commit().map_err(|source| DbError::Sql {
                op: "commit stamp",
                source,
            })?;
            crate::metrics::add(crate::metrics::Counter::Captured, n);
            self.data_version = Some(dv);
        }
        Ok(())
    }

    /// Fetches and applies the next messages, waiting up to `wait`. Returns whether anything
    /// was fetched (so the caller need not sleep).
    pub fn receive(&mut self, wait: Duration) -> Result<bool, NodeError> {
        if !self.unapplied.is_empty() {
            self.apply_unapplied()?;
            return Ok(true);
        }
        if !self.link_up() {
            return Ok(false);
        }
        if self.filter == crate::config::ConsumerFilter::Nothing {
            return Ok(false);
        }
        if self.snap.stream_check_due(Instant::now()) {
            let stats = self.link.transport.as_ref().and_then(|t| t.stream_state());
            let last = stats.as_ref().map(|s| s.last_seq);
            // quiet: nothing new in the stream since the last look and all of it applied, so
            // no hole can open before something new arrives (which resets the pace)
            let quiet = last.is_some_and(|l| Some(l) == self.stream_last && self.position() >= l);
            self.snap.stream_checked(quiet);
            self.note_stream_start(stats.as_ref().map(|s| s.first_seq))?;
            self.note_stream_end(last)?;
            self.skip_other_tables()?;
            self.drop_stale_download();
        }
        if self.intake_held {
            // the stream keeps what comes next; the stream check above still sees a hole
            return Ok(false);
        }
        let Some(t) = self.link.transport.as_mut() else {
            return Ok(false);
        };
        match t.fetch(wait, self.max_frame) {
            Ok(msgs) if msgs.is_empty() => Ok(true), // the fetch itself waited
            Ok(msgs) => {
                self.snap.stream_checked(false);
                self.unapplied = msgs;
                self.apply_unapplied()?;
                Ok(true)
            }
            Err(e) => {
                self.drop_transport(&e);
                Ok(false)
            }
        }
    }

    /// A consumer filtered on some tables: its position moves past the other tables' messages
    /// once it has nothing pending (see [`Transport::quiet_position`]). Else the position would
    /// stay at the last message it received, and the stream's retention passing it would look
    /// like a hole and cost a snapshot restore. A backfill whose consumer has nothing pending
    /// has read everything it had to.
    fn skip_other_tables(&mut self) -> Result<(), NodeError> {
        let filtered = self.filter.is_partial();
        let backfill = apply::Backfill::active(&self.conn)?;
        if !(filtered || backfill) || !self.unapplied.is_empty() {
            return Ok(());
        }
        let Some(last) = self
            .link
            .transport
            .as_ref()
            .and_then(|t| t.quiet_position())
        else {
            return Ok(());
        };
        if backfill {
            apply::Backfill::finish(&self.conn)?;
        }
        if filtered && last > db::cursor(&self.conn)? {
            db::set_cursor(&self.conn, last)?;
        }
        Ok(())
    }

    /// The tables and the consumer filter follow the schema: a table this node starts to
    /// receive is backfilled, and the consumer is set up again (at the position, or at the
    /// stream's start for a backfill).
    fn refilter(&mut self) -> Result<(), NodeError> {
        let filter = self
            .cfg
            .consumer_filter(self.schema.tables.iter().map(|t| t.name()));
        if filter == self.filter {
            return Ok(());
        }
        self.filter = filter;
        let cursor = db::cursor(&self.conn)?;
        apply::plan_backfill(
            &self.conn,
            received_now(&self.cfg, &self.schema).as_deref(),
            cursor,
        )?;
        if self.link.transport.take().is_some() {
            log::info!("the tables this node receives changed: setting its consumer up again");
            self.link.next_connect = Instant::now();
        }
        Ok(())
    }

    fn apply_unapplied(&mut self) -> Result<(), NodeError> {
        // A hole is looked for in every batch, our own frames included (see `gap::in_batch`
        // for why consecutive sequences are expected), unless the consumer is filtered on some
        // tables (its sequences skip the others' by design; the stream check still sees a
        // hole before the stream's start). The batch still applies: the restore that repairs
        // the hole is a merge and undoes nothing applied meanwhile.
        let position = self.position();
        let filtered = self.filter.is_partial();
        let hole = gap::in_batch(position, self.unapplied.iter().map(|m| m.seq));
        if let Some(g) = hole.filter(|_| !filtered) {
            self.found_gap(
                g,
                &format!(
                    "the stream skipped from seq {} to seq {}",
                    g.from - 1,
                    g.to + 1
                ),
            )?;
        }
        // A batch of nothing but our own frames needs no write transaction (which would make
        // the application wait for the lock): the cursor then advances with the next real
        // batch, and a restart re-reads our own frames only to pass over them again. Frames a
        // rebuilt node published before its rebuild are applied instead (see `apply`).
        let own = format!(".{}", self.node_id);
        let own_until = apply::own_replay_until(&self.conn)?;
        if self
            .unapplied
            .iter()
            .all(|m| m.subject.ends_with(&own) && m.seq > own_until)
        {
            let last = self.unapplied.iter().map(|m| m.seq).max();
            self.own_cursor = self.own_cursor.max(last);
            self.unapplied.clear();
            if let Some(t) = self.link.transport.as_mut() {
                if let Err(e) = t.ack_fetched() {
                    self.drop_transport(&e);
                }
            }
            return Ok(());
        }
        let stats = apply::apply_batch(
            &mut self.conn,
            &self.cfg,
            &self.schema,
            &mut self.hlc,
            self.node_id,
            &self.unapplied,
        )?;
        // the publishers (the node id ending each subject; a repair frame re-announces rows of
        // other origins, but the node that publishes it is the one whose record matters)
        self.horizon.saw_origins(
            self.unapplied
                .iter()
                .filter_map(|m| m.subject.rsplit('.').next()?.parse().ok()),
        );
        self.unapplied.clear();
        self.own_cursor = None; // the apply moved the cursor past them
        Node::count_applied(&stats);
        if let Some((origin, ahead)) = stats.ahead.filter(|a| a.1 > self.cfg.max_clock_drift_ms) {
            let due = self
                .clock_reports
                .get(&origin)
                .is_none_or(|t| t.elapsed() > REPEAT_LOG_EVERY);
            if due {
                self.clock_reports.insert(origin, Instant::now());
                log::warn!(
                    "clock ahead: node {origin} stamps changes {:.1} s ahead of this node's clock (max_clock_drift_ms={}); one of the two clocks is wrong, and that node's writes win conflicts until the other clocks catch up",
                    ahead as f64 / 1000.0,
                    self.cfg.max_clock_drift_ms
                );
            }
        }
        if stats.stamped > 0 {
            self.outbox.dirty = true;
        }
        if stats.parked > 0 {
            self.note_parked(Some(stats.parked_bytes))?;
        }
        log::debug!(
            "apply ok frames={} applied={} stale={} parked={} undecodable={} own={}",
            stats.frames,
            stats.applied,
            stats.stale,
            stats.parked,
            stats.undecodable,
            stats.own
        );
        if let Some(t) = self.link.transport.as_mut() {
            if let Err(e) = t.ack_fetched() {
                self.drop_transport(&e);
            }
        }
        Ok(())
    }
}

impl Node {
    /// Compares the stream's first sequence (None: the server did not say) with our position;
    /// records a hole between them. Returns the hole recorded, if any.
    fn note_stream_start(&mut self, first: Option<u64>) -> Result<Option<gap::Gap>, NodeError> {
        // a backfill reads the stream from its start: what retention discarded before it is
        // missing for the tables it reads, and only a snapshot has it
        if let Some(first) = first.filter(|&f| f > 1) {
            if apply::Backfill::active(&self.conn)? && self.unapplied.is_empty() {
                let g = gap::Gap {
                    from: 1,
                    to: first - 1,
                };
                if gap::read(&self.conn)?.is_none_or(|r| r.union(g) != r) {
                    self.found_gap(g, &format!("the tables this node starts to receive need the stream from seq 1, but it starts at seq {first}"))?;
                }
            }
        }
        let position = self.position();
        if let Some(g) = first.and_then(|first| gap::before_stream(position, first)) {
            if self.unapplied.is_empty() {
                self.found_gap(g, &format!("the stream skipped past this node: it starts at seq {} but this node applied up to seq {position}", g.to + 1))?;
            }
        }
        Ok(gap::read(&self.conn)?)
    }

    /// Writes the stream's last sequence for `status` ("behind"), only when it moved past what
    /// this node applied (or never written): a node that is caught up writes nothing (`status`
    /// shows the position then), so neither an idle node nor one that just went idle writes.
    fn note_stream_end(&mut self, last: Option<u64>) -> Result<(), NodeError> {
        if let Some(last) = last.filter(|l| Some(*l) != self.stream_last) {
            if last > self.position() || self.stream_last.is_none() {
                db::set_meta(&self.conn, state::STREAM_LAST_KEY, last as i64)?;
            }
            self.stream_last = Some(last);
        }
        Ok(())
    }

    /// Records a hole (merged with any recorded before) and schedules a restore at once. The
    /// record stays until a snapshot covering it is installed, across restarts.
    fn found_gap(&mut self, g: gap::Gap, what: &str) -> Result<(), NodeError> {
        let before = gap::read(&self.conn)?;
        let now = gap::record(&self.conn, g)?;
        if before != Some(now) {
            let restore = if self.cfg.snapshot.enabled {
                "restoring a snapshot that covers them"
            } else {
                "[snapshot] enabled = false, so nothing can bring them back"
            };
            log::error!("{what}: messages {g} are gone before this node applied them (missing here: {now}); applying what follows and {restore}");
        }
        self.snap.restore_now(Instant::now());
        Ok(())
    }
}
