//! When a node saves and restores snapshots, and the plumbing between the database side
//! ([`crate::snapshot`]) and the JetStream side ([`crate::transport::SnapStore`]).
//!
//! Save: every `[snapshot] interval` (with jitter) a node looks at the current snapshot; when it
//! is older than the interval and the node's position moved past it, the node takes the upload
//! lease (compare-and-set), copies its database, uploads it, points the bucket at it and prunes
//! the one before. It runs on its own thread with its own connections, so replication goes on.
//!
//! Restore: after connecting, a node whose position is 0 (never replicated) restores the current
//! snapshot when there is one. A node with a hole in the stream (see [`crate::gap`]; recorded
//! wherever it is found) restores the first snapshot whose sequence covers the hole. Until one
//! exists it keeps applying what the stream still holds: the restore is a last-writer-wins
//! merge, so nothing applied in the meantime is undone, and the position after it is the larger
//! of the two. Meanwhile the node saves no snapshot (its copy lacks the hole) and says so once a
//! minute. A restore attempt that fails for a passing reason (not connected, the store does not
//! answer) is retried with backoff; only a download that fails verification marks that
//! snapshot bad.
//!
//! Temp files: a save copies the database to `<db>.hl-snapshot-save` and a restore downloads to
//! `<db>.hl-snapshot-download`; both are removed when done, but a crash (`kill -9`, power)
//! leaves them, and a copy is as big as the database. At start the node removes what no one
//! can use ([`sweep_leftovers`]): a save's copy (unless a `snapshot save` command beside it
//! holds its lock) and a download without its resume state. A partial download with its state
//! is kept, since the next restore resumes it, until the snapshot it belongs to is no longer
//! the current one (looked at after each connect and with the periodic stream check).

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Node, Stop, OWN_CURSOR_EVERY, REPEAT_LOG_EVERY};
use crate::config::{Config, ConsumerFilter};
use crate::db;
use crate::gap;
use crate::retry::Backoff;
use crate::snapshot::{self, SnapMeta};
use crate::state;
use crate::transport::{self, Fetched, Pointer, Transport};

/// The first snapshot check after start waits this long (or the interval, if shorter), so a
/// node that restarts repeatedly does not copy its database each time.
const FIRST_SAVE_DELAY: Duration = Duration::from_secs(60);
/// Restore progress is logged at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// With a hole and no snapshot covering it yet, the current snapshot is looked at this often.
const GAP_RECHECK: Duration = Duration::from_secs(10);

/// Why a restore did not happen.
#[derive(Debug)]
pub enum RestoreError {
    /// Not connected, or the bucket or object store did not answer: retried with backoff.
    Unavailable(String),
    /// The download failed verification (checksum, integrity check, wrong position): that
    /// snapshot is not tried again.
    Corrupt(String),
    /// The verified snapshot could not be installed into the database.
    Install(String),
    Stopped,
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::Unavailable(e) | RestoreError::Corrupt(e) | RestoreError::Install(e) => {
                f.write_str(e)
            }
            RestoreError::Stopped => f.write_str("stopped"),
        }
    }
}

impl RestoreError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RestoreError::Unavailable(_) | RestoreError::Install(_)
        )
    }
}

/// The background save, while one runs.
pub(super) struct Saving {
    /// Whether a snapshot now holds the saving node's position, and what happened.
    handle: JoinHandle<Result<(bool, String), String>>,
    /// This node's stream position when the save started.
    position: u64,
}

/// Snapshot saves and restores, and the stream checks that call for a restore: when each is
/// due. Time is passed in (`now`), so the schedule is tested without waiting.
pub(super) struct Snapshots {
    /// The background save, while one runs.
    pub(super) saving: Option<Saving>,
    /// This node's stream position when a save last left a snapshot holding it (uploaded, or
    /// the current one was at it already): while the position stays there, the next save
    /// check is skipped. Each check is a connection of its own (a TLS handshake on the link of
    /// an idle gateway) and, once the current snapshot is older than the interval, a copy of
    /// the whole database to find it holds nothing new: SD-card writes on an idle node.
    saved_at: Option<u64>,
    pub(super) next_save: Instant,
    /// Look whether a restore is needed (after connecting, or on a hole in the stream).
    pub(super) restore_check: bool,
    pub(super) next_restore: Instant,
    /// A snapshot whose download failed verification: not tried again.
    pub(super) bad: Option<String>,
    /// When an unrepaired hole in the stream was last reported at error level.
    pub(super) gap_logged: Option<Instant>,
    /// Between failed restore attempts.
    pub(super) restore_backoff: Backoff,
    /// When the stream's first sequence was last compared with our position.
    pub(super) last_stream_check: Instant,
    /// The pace of that comparison: [`STREAM_CHECK_EVERY`], doubling up to
    /// [`STREAM_CHECK_IDLE_MAX`] while the stream stays quiet.
    stream_check_every: Duration,
}

/// How often, while connected and replicating, the stream's first sequence is compared with
/// our position: a hole the consumer would never show (nothing new arrives after it) is
/// found this way.
pub(super) const STREAM_CHECK_EVERY: Duration = Duration::from_secs(30);
/// The slowest pace of that check on an idle link. Each look costs about 1.1 KB of a metered
/// link (a stream info request and its answer): every 30 s that was 3.3 MB a day per idle node.
pub(super) const STREAM_CHECK_IDLE_MAX: Duration = Duration::from_secs(300);

impl Snapshots {
    pub(super) fn new(next_save: Instant, now: Instant) -> Snapshots {
        Snapshots {
            saving: None,
            saved_at: None,
            next_save,
            restore_check: false,
            next_restore: now,
            bad: None,
            gap_logged: None,
            restore_backoff: crate::retry::RESTORE.backoff(),
            last_stream_check: now,
            stream_check_every: STREAM_CHECK_EVERY,
        }
    }

    /// Whether the restore check is due at `now`.
    pub(super) fn restore_due(&self, now: Instant) -> bool {
        self.restore_check && now >= self.next_restore
    }

    /// A hole was found: look for a restore at once, with the backoff from its start.
    pub(super) fn restore_now(&mut self, now: Instant) {
        self.restore_check = true;
        self.next_restore = now;
        self.restore_backoff.reset();
    }

    /// A restore attempt failed at `now`: the next one waits the backoff. Returns that wait.
    pub(super) fn restore_failed(&mut self, now: Instant) -> Duration {
        let delay = self.restore_backoff.fail();
        self.next_restore = now + delay;
        delay
    }

    /// Whether the periodic stream check is due at `now` (and if so, it counts as done).
    pub(super) fn stream_check_due(&mut self, now: Instant) -> bool {
        let due = now.duration_since(self.last_stream_check) >= self.stream_check_every;
        if due {
            self.last_stream_check = now;
        }
        due
    }

    /// Sets the pace after a look at the stream, or when messages arrive (`quiet` false): a
    /// quiet stream is looked at half as often each time, down to [`STREAM_CHECK_IDLE_MAX`].
    pub(super) fn stream_checked(&mut self, quiet: bool) {
        self.stream_check_every = if quiet {
            (self.stream_check_every * 2).min(STREAM_CHECK_IDLE_MAX)
        } else {
            STREAM_CHECK_EVERY
        };
    }

    /// Whether an unrepaired hole is news at `now` (not reported for [`REPEAT_LOG_EVERY`]).
    pub(super) fn gap_news(&mut self, now: Instant) -> bool {
        let news = self
            .gap_logged
            .is_none_or(|t| now.duration_since(t) >= REPEAT_LOG_EVERY);
        if news {
            self.gap_logged = Some(now);
        }
        news
    }
}

/// Result of a save attempt that did not fail.
pub enum Saved {
    Uploaded(Pointer),
    Skipped(String),
    /// The current snapshot already holds everything this node applied (why, as text).
    Current(String),
}

/// Logs restore progress (percent, bytes, rate) and writes it for `harmonylite status`.
struct Progress<'a> {
    conn: Option<&'a rusqlite::Connection>,
    started: Instant,
    last: Instant,
    object: String,
}

impl Progress<'_> {
    fn update(&mut self, done: u64, total: u64) {
        crate::metrics::restore_progress(done, total);
        if self.last.elapsed() < PROGRESS_EVERY && done < total {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        log::info!(
            "snapshot restore: {} {:.0}% {:.1} of {:.1} MiB at {:.1} MiB/s",
            self.object,
            done as f64 * 100.0 / total.max(1) as f64,
            mib(done),
            mib(total),
            mib(done) / secs
        );
        if let Some(c) = self.conn {
            snapshot::record_progress(c, done, total);
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Saves a snapshot through `t` unless a recent one exists (`force` skips that check, not the
/// lease).
pub fn save(cfg: &Config, t: &Transport, node: u64, force: bool) -> Result<Saved, String> {
    if !cfg.receives_all_tables() {
        return Ok(Saved::Skipped(
            "this node does not replicate every table ([table.*] replicate = false, or replicate = false): its copy would lack them; a node that replicates everything (the hub) saves the fleet's snapshots".into(),
        ));
    }
    // looked at before copying (cheap); `snapshot::make` looks again in the copy itself
    if let Some(g) = db::open(&cfg.db_path)
        .ok()
        .and_then(|c| gap::read(&c).ok().flatten())
    {
        return Ok(Saved::Skipped(format!(
            "this node misses stream messages {g} (a hole in the stream, not yet repaired by a restore): its copy would lack them"
        )));
    }
    let store = t.snap_store(cfg).map_err(|e| e.to_string())?;
    let latest = store.latest().map_err(|e| e.to_string())?;
    let interval = cfg.snapshot.interval_ms();
    if let Some(p) = latest.as_ref().filter(|_| !force) {
        let age = crate::hlc::now_ms().saturating_sub(p.created_ms);
        if age < interval {
            return Ok(Saved::Skipped(format!(
                "the current snapshot {} is {:.0} s old",
                p.object,
                age as f64 / 1000.0
            )));
        }
    }
    // the current snapshot holds everything applied here: no copy of the database to learn it
    let position = db::open(&cfg.db_path)
        .ok()
        .and_then(|c| db::cursor(&c).ok())
        .unwrap_or(0);
    if let Some(p) = latest
        .as_ref()
        .filter(|p| !force && position > 0 && p.seq >= position)
    {
        return Ok(Saved::Current(format!(
            "the current snapshot {} is at seq {} already",
            p.object, p.seq
        )));
    }
    let out = snapshot::temp_path(&cfg.db_path, "save");
    // held until the copy is removed: a node starting meanwhile leaves the copy alone
    let _copy_lock = match lock_copy(&out) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Ok(Saved::Skipped(
                "another snapshot save of this database is running".into(),
            ))
        }
        Err(e) => return Err(format!("cannot create {}: {e}", out.display())),
    };
    if !store
        .try_lease(node, Duration::from_millis(cfg.snapshot.lease_ms()))
        .map_err(|e| e.to_string())?
    {
        let _ = std::fs::remove_file(&out);
        return Ok(Saved::Skipped("another node holds the upload lease".into()));
    }
    let result = (|| {
        let started = Instant::now();
        let meta = match snapshot::make(cfg, &out).map_err(|e| format!("cannot copy the database: {e}"))? {
            Ok(meta) => meta,
            Err(gap) => {
                return Ok(Saved::Skipped(format!(
                    "this node misses stream messages {gap} (a hole in the stream, not yet repaired by a restore): its copy would lack them"
                )))
            }
        };
        if meta.seq == 0 && !force {
            return Ok(Saved::Skipped(
                "this node has not applied anything from the stream yet".into(),
            ));
        }
        if let Some(p) = latest.as_ref().filter(|p| p.seq >= meta.seq && !force) {
            return Ok(Saved::Current(format!(
                "the current snapshot {} is at seq {} already",
                p.object, p.seq
            )));
        }
        let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        let p = store
            .upload(&out, meta.seq, node)
            .map_err(|e| e.to_string())?;
        log::info!(
            "snapshot saved object={} bucket={} seq={} bytes={size} in {:.1} s",
            p.object,
            store.bucket(),
            p.seq,
            started.elapsed().as_secs_f64()
        );
        if let Ok(conn) = db::open(&cfg.db_path) {
            let _ = db::set_meta(&conn, state::SAVED_SEQ_KEY, p.seq as i64)
                .and_then(|_| db::set_meta(&conn, state::SAVED_MS_KEY, p.created_ms as i64));
        }
        crate::metrics::add(crate::metrics::Counter::SnapshotSaves, 1);
        Ok(Saved::Uploaded(p))
    })();
    let _ = std::fs::remove_file(&out);
    store.release(node);
    result
}

/// Creates a save's copy file (or opens a leftover one) and locks it; None when another process
/// holds it (a save in progress).
fn lock_copy(out: &Path) -> io::Result<Option<File>> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(out)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Removes the snapshot temp files a crash left beside the database that no one can use (see
/// the module doc). Called at the node's start, with the node lock held. Returns the files
/// removed.
pub(super) fn sweep_leftovers(db_path: &Path) -> Vec<PathBuf> {
    let mut gone = Vec::new();
    let mut remove = |p: PathBuf| {
        if p.is_file() && std::fs::remove_file(&p).is_ok() {
            gone.push(p);
        }
    };
    let save = snapshot::temp_path(db_path, "save");
    let saving = match lock_copy_if_exists(&save) {
        Ok(held) => held,
        Err(e) => {
            log::warn!("cannot look at the snapshot copy {}: {e}", save.display());
            true
        }
    };
    if !saving {
        remove(save.clone());
        for c in snapshot::SQLITE_COMPANIONS {
            remove(snapshot::with_suffix(&save, c));
        }
    }
    let part = snapshot::temp_path(db_path, "download");
    let state = transport::download_state_path(&part);
    // a partial download was never opened by SQLite: companions are an install's, cut short
    for c in snapshot::SQLITE_COMPANIONS {
        remove(snapshot::with_suffix(&part, c));
    }
    remove(state.with_extension("state.tmp"));
    if !state.exists() {
        remove(part.clone());
    } else if !part.exists() {
        remove(state);
    }
    gone
}

/// Whether a process holds the lock of the save's copy at `out` (false when there is none).
fn lock_copy_if_exists(out: &Path) -> io::Result<bool> {
    match File::options().write(true).open(out) {
        Ok(f) => match f.try_lock() {
            Ok(()) => Ok(false),
            Err(TryLockError::WouldBlock) => Ok(true),
            Err(TryLockError::Error(e)) => Err(e),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Downloads `p` next to the database and verifies it. A corrupt download is deleted.
fn fetch_verified(
    cfg: &Config,
    t: &Transport,
    p: &Pointer,
    stop: &Stop,
    conn: Option<&rusqlite::Connection>,
) -> Result<(SnapMeta, Fetched), RestoreError> {
    let part = snapshot::temp_path(&cfg.db_path, "download");
    let store = t
        .snap_store(cfg)
        .map_err(|e| RestoreError::Unavailable(e.to_string()))?;
    log::info!(
        "snapshot restore: downloading {} (seq {}, {:.1} MiB) from {}",
        p.object,
        p.seq,
        mib(p.size),
        store.bucket()
    );
    let mut progress = Progress {
        conn,
        started: Instant::now(),
        last: Instant::now(),
        object: p.object.clone(),
    };
    let fetched = store
        .download(p, &part, &|| stop.is_set(), &mut |d, total| {
            progress.update(d, total)
        })
        .map_err(|e| match e.kind() {
            _ if stop.is_set() => RestoreError::Stopped,
            io::ErrorKind::Interrupted => RestoreError::Stopped,
            // size or SHA-256 not the pointer's (the store resumes by itself on link errors)
            io::ErrorKind::InvalidData => RestoreError::Corrupt(e.to_string()),
            _ => RestoreError::Unavailable(format!(
                "downloading {} to {}: {e}",
                p.object,
                part.display()
            )),
        })?;
    let meta = snapshot::verify(&part).map_err(|e| {
        transport::discard_download(&part);
        RestoreError::Corrupt(e)
    })?;
    if meta.seq != p.seq {
        transport::discard_download(&part);
        return Err(RestoreError::Corrupt(format!(
            "snapshot {} says seq {} but its pointer says {}",
            p.object, meta.seq, p.seq
        )));
    }
    log::info!(
        "snapshot restore: {} verified (SHA-256, integrity check); fetched {} of {} bytes, {} resumed from disk, {} restarts",
        p.object,
        fetched.bytes_fetched,
        p.size,
        fetched.resumed_bytes,
        fetched.restarts
    );
    Ok((meta, fetched))
}

/// Before the first start on a machine without the database: builds it from the current
/// snapshot. Returns false when there is no snapshot to build from.
pub fn restore_missing(cfg: &Config, stop: &Stop) -> Result<bool, String> {
    let urls = urls(cfg);
    let mut probe = cfg.clone();
    probe.replicate = false;
    let t = Transport::connect(&probe, &urls, 0, 0, &ConsumerFilter::Nothing)
        .map_err(|e| e.to_string())?;
    let Some(p) = latest(cfg, &t)? else {
        return Ok(false);
    };
    if !parent_exists(&cfg.db_path) {
        return Err(format!(
            "cannot restore into {}: its directory does not exist",
            cfg.db_path.display()
        ));
    }
    log::info!(
        "database {} does not exist: restoring it from snapshot {}",
        cfg.db_path.display(),
        p.object
    );
    let _restoring = crate::metrics::restoring();
    let (meta, _) = fetch_verified(cfg, &t, &p, stop, None).map_err(|e| e.to_string())?;
    // This node's frames already in the stream come from a database this one replaces: they
    // are applied, not passed over (see `apply::own_replay_until`).
    let stream_last = t.stream_state().map_or(u64::MAX >> 1, |s| s.last_seq);
    let part = snapshot::temp_path(&cfg.db_path, "download");
    snapshot::install_new(&cfg.db_path, &part, &meta, stream_last).map_err(|e| e.to_string())?;
    transport::discard_download(&part);
    log::info!(
        "snapshot restore: database created from {} at seq {}",
        p.object,
        meta.seq
    );
    crate::metrics::add(crate::metrics::Counter::SnapshotRestores, 1);
    Ok(true)
}

/// The servers a one-off command talks to: the configured ones, or the embedded server's
/// address (the running node's).
pub fn urls(cfg: &Config) -> String {
    if cfg.nats.urls.is_empty() {
        format!("nats://{}", cfg.nats.embedded_listen)
    } else {
        cfg.nats.urls.join(",")
    }
}

impl Node {
    /// Starts a background save when one is due.
    pub(super) fn maybe_save(&mut self) {
        if let Some(s) = self.snap.saving.take() {
            if !s.handle.is_finished() {
                self.snap.saving = Some(s);
                return;
            }
            match s.handle.join() {
                Ok(Ok((covered, msg))) => {
                    // a snapshot holds this position: nothing to save until it moves
                    self.snap.saved_at = covered.then_some(s.position);
                    log::debug!("snapshot: {msg}");
                }
                Ok(Err(e)) => log::warn!("snapshot save failed: {e}"),
                Err(_) => log::warn!("snapshot save failed: the save thread panicked"),
            }
        }
        if !self.cfg.snapshot.enabled
            || !self.cfg.snapshot.save
            || !self.cfg.receives_all_tables()
            || Instant::now() < self.snap.next_save
            || !self.link_up()
        {
            return;
        }
        if !self.schema.paused.is_empty() {
            // a paused table's copy here does not match the fleet's definition: others save
            return;
        }
        let interval = Duration::from_millis(self.cfg.snapshot.interval_ms());
        // up to 10% jitter, so nodes started together do not all look at once
        let jitter = interval.mul_f64((self.node_id % 1000) as f64 / 10_000.0);
        self.snap.next_save = Instant::now() + interval + jitter;
        let position = self.position();
        if self.snap.saved_at == Some(position) {
            log::debug!("snapshot: no save check: nothing applied since the last one");
            return;
        }
        let (cfg, urls, node) = (self.cfg.clone(), self.link.urls.clone(), self.node_id);
        let spawned = std::thread::Builder::new()
            .name("snapshot-save".into())
            .spawn(move || {
                let mut probe = cfg.clone();
                probe.replicate = false;
                let t = Transport::connect(&probe, &urls, node, 0, &ConsumerFilter::Nothing)
                    .map_err(|e| e.to_string())?;
                match save(&cfg, &t, node, false)? {
                    Saved::Uploaded(p) => Ok((true, format!("uploaded {}", p.object))),
                    Saved::Current(why) => Ok((true, format!("no save: {why}"))),
                    Saved::Skipped(why) => Ok((false, format!("no save: {why}"))),
                }
            });
        match spawned {
            Ok(handle) => self.snap.saving = Some(Saving { handle, position }),
            Err(e) => log::warn!("cannot start the snapshot thread: {e}"),
        }
    }

    /// When the first save check is due.
    pub(super) fn first_save_at(cfg: &Config) -> Instant {
        Instant::now() + FIRST_SAVE_DELAY.min(Duration::from_millis(cfg.snapshot.interval_ms()))
    }

    /// After connecting, when a hole in the stream was found, and again until it is repaired:
    /// restores the current snapshot if this node never replicated, or if a hole is recorded
    /// and the snapshot covers it. Schedules the next attempt otherwise (see the module doc).
    pub(super) fn catch_up(&mut self, stop: &Stop) {
        if self.filter == ConsumerFilter::Nothing {
            self.snap.restore_check = false;
            return;
        }
        if !self.link_up() {
            // the check stays due: the next connection runs it (adopt sets it again anyway)
            self.snap.restore_failed(Instant::now());
            return;
        }
        self.drop_stale_download();
        self.snap.last_stream_check = Instant::now();
        let state = self.link.transport.as_ref().and_then(|t| t.stream_state());
        if let Err(e) = self.forget_gap_of_an_old_stream(state.map(|s| s.last_seq)) {
            log::warn!("{e}");
        }
        let first = state.map(|s| s.first_seq);
        let gap = match self.note_stream_start(first) {
            Ok(g) => g,
            Err(e) => {
                log::warn!("{e}");
                self.snap.restore_failed(Instant::now());
                return;
            }
        };
        let position = self.position();
        if gap.is_none() && (position > 0 || first.is_none()) {
            // nothing missing (a failed look at the stream is repeated by the periodic check)
            self.snap.restore_check = false;
            return;
        }
        if !self.cfg.snapshot.enabled {
            if let Some(g) = gap {
                self.gap_error(&format!(
                    "the stream no longer holds messages {g} that this node never applied, and [snapshot] enabled = false: their changes are missing here (enable snapshots, or rebuild this node's database from another node's copy)"
                ));
            }
            self.snap.restore_check = gap.is_some();
            self.snap.next_restore = Instant::now() + REPEAT_LOG_EVERY;
            return;
        }
        match self.restore(stop, false) {
            Ok(Some(msg)) => {
                log::info!("{msg}");
                self.snap.restore_check = false;
                self.snap.restore_backoff.reset();
                self.snap.gap_logged = None;
            }
            Ok(None) => match gap {
                Some(g) => {
                    self.gap_error(&format!(
                        "the stream no longer holds messages {g} that this node never applied, and no snapshot covers seq {} yet: their changes are missing here until one is saved (looking again every {} s; this node saves no snapshot meanwhile)",
                        g.to,
                        GAP_RECHECK.as_secs()
                    ));
                    self.snap.next_restore = Instant::now() + GAP_RECHECK;
                }
                None => self.snap.restore_check = false,
            },
            Err(RestoreError::Stopped) => {}
            Err(e) => {
                // a passing failure backs off; a corrupt snapshot waits for the next one
                let delay = if e.is_transient() {
                    self.snap.restore_backoff.fail()
                } else {
                    GAP_RECHECK
                };
                match gap {
                    Some(g) => self.gap_error(&format!(
                        "the stream no longer holds messages {g} that this node never applied, and the snapshot restore failed: {e}; retrying in {:.0} s",
                        delay.as_secs_f64()
                    )),
                    None => log::warn!("snapshot restore failed: {e}; retrying in {:.0} s", delay.as_secs_f64()),
                }
                self.snap.next_restore = Instant::now() + delay;
            }
        }
    }

    /// A partial download kept for resuming belongs to one snapshot object: once the current
    /// snapshot is another one (or there is none), it can never be resumed, and it goes.
    pub(super) fn drop_stale_download(&mut self) {
        let part = snapshot::temp_path(&self.cfg.db_path, "download");
        let Some(object) = transport::download_object(&part) else {
            return;
        };
        let Some(t) = self.link.transport.as_ref() else {
            return;
        };
        match latest(&self.cfg, t) {
            Ok(Some(p)) if p.nuid == object => {}
            Ok(current) => {
                let bytes = std::fs::metadata(&part).map_or(0, |m| m.len());
                transport::discard_download(&part);
                log::info!(
                    "removed a partial snapshot download path={} bytes={bytes}: its snapshot is no longer the current one (current={})",
                    part.display(),
                    current.map_or("none".into(), |p| p.object)
                );
            }
            Err(e) => log::debug!("cannot look at the current snapshot: {e}"),
        }
    }

    /// A recorded hole past the stream's last sequence belongs to a stream that was deleted and
    /// created again (the connection then restarted this node's position at 0): its numbers
    /// mean nothing in the new stream, so it is forgotten.
    fn forget_gap_of_an_old_stream(
        &mut self,
        last_seq: Option<u64>,
    ) -> Result<(), crate::db::DbError> {
        let (Some(last), Some(g)) = (last_seq, gap::read(&self.conn)?) else {
            return Ok(());
        };
        if g.to > last {
            log::warn!("the recorded stream gap {g} lies past the stream's last message {last}: the stream was recreated; forgetting the gap");
            gap::clear_if_covered(&self.conn, u64::MAX)?;
        }
        Ok(())
    }

    /// Logs an unrepaired hole at error level, at most once per [`REPEAT_LOG_EVERY`].
    fn gap_error(&mut self, msg: &str) {
        if self.snap.gap_news(Instant::now()) {
            log::error!("{msg}");
        } else {
            log::debug!("{msg}");
        }
    }

    /// Position in the stream, counting our own frames passed over but not yet written down.
    pub(super) fn position(&self) -> u64 {
        let cursor = db::cursor(&self.conn).unwrap_or(0);
        cursor.max(self.own_cursor.unwrap_or(0))
    }

    /// Restores the current snapshot if it is ahead of this node (or `force`). Returns what it
    /// did, or None when no snapshot applies.
    pub fn restore_latest(&mut self, stop: &Stop, force: bool) -> Result<Option<String>, String> {
        self.restore(stop, force).map_err(|e| e.to_string())
    }

    /// See [`Node::restore_latest`]. With a hole recorded, only a snapshot covering it applies.
    fn restore(&mut self, stop: &Stop, force: bool) -> Result<Option<String>, RestoreError> {
        let Some(t) = self.link.transport.as_ref() else {
            return Err(RestoreError::Unavailable("not connected".into()));
        };
        let Some(p) = latest(&self.cfg, t).map_err(RestoreError::Unavailable)? else {
            return Ok(None);
        };
        let cursor = self.position();
        let gap = gap::read(&self.conn).map_err(|e| RestoreError::Install(e.to_string()))?;
        let applies = match gap {
            Some(g) => p.seq >= g.to,
            None => p.seq > cursor,
        };
        if !force && !applies {
            return Ok(None);
        }
        if self.snap.bad.as_deref() == Some(p.nuid.as_str()) && !force {
            return Err(RestoreError::Corrupt(format!(
                "snapshot {} failed verification before; waiting for a newer one",
                p.object
            )));
        }
        let started = Instant::now();
        let _restoring = crate::metrics::restoring();
        let (meta, fetched) = match fetch_verified(&self.cfg, t, &p, stop, Some(&self.conn)) {
            Ok(x) => x,
            Err(e) => {
                // only a failed verification marks the snapshot bad; a passing error is retried
                if matches!(e, RestoreError::Corrupt(_)) {
                    self.snap.bad = Some(p.nuid.clone());
                }
                return Err(e);
            }
        };
        // the merge keeps the larger position: write down the one reached over our own frames
        self.own_cursor_saved = Instant::now() - OWN_CURSOR_EVERY;
        self.save_own_cursor()
            .map_err(|e| RestoreError::Install(e.to_string()))?;
        let part = snapshot::temp_path(&self.cfg.db_path, "download");
        let done = snapshot::install_into(
            &mut self.conn,
            &self.cfg,
            &self.schema,
            &mut self.hlc,
            self.node_id,
            &part,
            &meta,
        )
        .map_err(|e| RestoreError::Install(format!("installing snapshot {}: {e}", p.object)));
        transport::discard_download(&part);
        let done = done?;
        crate::metrics::add(crate::metrics::Counter::SnapshotRestores, 1);
        // New tables need capture; parked changes get another try; the consumer restarts at
        // the position after the merge.
        self.schema_version = -1;
        self.data_version = None;
        self.outbox.dirty = true;
        self.own_cursor = None;
        self.unapplied.clear();
        self.link.transport = None;
        self.link.next_connect = Instant::now();
        self.snap.bad = None;
        let now_at = self.position();
        let left = gap::read(&self.conn)
            .ok()
            .flatten()
            .map_or(String::new(), |g| {
                format!("; messages {g} are still missing")
            });
        Ok(Some(format!(
            "snapshot restore: installed {} at seq {} from node {} (a merge): {} tables, {} rows, {} local changes newer than the snapshot kept ({} local unpublished changes kept); {:.1} MiB fetched in {:.1} s (was at seq {cursor}, now at seq {now_at}{left})",
            p.object,
            meta.seq,
            meta.node,
            done.tables,
            done.rows,
            done.kept_local,
            done.kept_unpublished,
            mib(fetched.bytes_fetched),
            started.elapsed().as_secs_f64()
        )))
    }

    /// Connects now, on this thread, for a one-off command beside (or instead of) the running
    /// node: without a consumer, so the running node's durable consumer is left alone, and
    /// without touching the database's position.
    pub fn connect_now(&mut self) -> Result<(), String> {
        let mut probe = self.cfg.clone();
        probe.replicate = false;
        let t = Transport::connect(
            &probe,
            &self.link.urls,
            self.node_id,
            self.position(),
            &ConsumerFilter::Nothing,
        )
        .map_err(|e| e.to_string())?;
        self.link.transport = Some(t);
        Ok(())
    }

    /// `harmonylite snapshot save`: saves now (still under the lease).
    pub fn save_now(&mut self) -> Result<Saved, String> {
        // what the app wrote since the node last ran gets its version before the copy
        self.stamp_if_changed().map_err(|e| e.to_string())?;
        let Some(t) = self.link.transport.as_ref() else {
            return Err("not connected".into());
        };
        save(&self.cfg, t, self.node_id, true)
    }
}

/// The current snapshot, if the buckets exist and point at one.
fn latest(cfg: &Config, t: &Transport) -> Result<Option<Pointer>, String> {
    match t.existing_snap_store(cfg).map_err(|e| e.to_string())? {
        Some(store) => store.latest().map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// Whether a path's directory exists (a snapshot can only create the file, not the folders).
fn parent_exists(p: &Path) -> bool {
    p.parent()
        .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir())
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn restores_are_due_when_asked_for_and_back_off_when_they_fail() {
        let t0 = Instant::now();
        let mut s = Snapshots::new(t0 + Duration::from_secs(60), t0);
        assert!(!s.restore_due(t0), "nothing asked for a restore");
        s.restore_now(t0);
        assert!(s.restore_due(t0));
        let wait = s.restore_failed(t0);
        assert!(wait >= Duration::from_secs(1), "{wait:?}");
        assert!(!s.restore_due(t0 + wait - Duration::from_millis(1)));
        assert!(s.restore_due(t0 + wait));
        let longer = s.restore_failed(t0 + wait);
        assert!(longer > wait, "{longer:?} after {wait:?}");
        // a new hole starts the backoff afresh
        s.restore_now(t0 + wait);
        assert!(s.restore_failed(t0 + wait) < longer);
    }

    #[test]
    fn stream_checks_and_gap_reports_keep_their_pace() {
        let t0 = Instant::now();
        let mut s = Snapshots::new(t0, t0);
        let every = STREAM_CHECK_EVERY;
        assert!(!s.stream_check_due(t0 + Duration::from_secs(29)));
        assert!(s.stream_check_due(t0 + every));
        assert!(!s.stream_check_due(t0 + every + Duration::from_secs(1)));
        // a quiet stream is looked at less and less often, news brings the pace back
        let mut t = t0 + every;
        for want in [60, 120, 240, 300, 300] {
            s.stream_checked(true);
            assert!(!s.stream_check_due(t + Duration::from_secs(want - 1)));
            t += Duration::from_secs(want);
            assert!(s.stream_check_due(t), "{want}");
        }
        s.stream_checked(false);
        assert!(s.stream_check_due(t + every));
        assert!(s.gap_news(t0));
        assert!(!s.gap_news(t0 + Duration::from_secs(59)));
        assert!(s.gap_news(t0 + REPEAT_LOG_EVERY));
    }
}
