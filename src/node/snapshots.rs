//! When a node saves and restores snapshots, and the plumbing between the database side
//! ([`crate::snapshot`]) and the JetStream side ([`crate::transport::SnapStore`]).
//!
//! Save: every `[snapshot] interval` (with jitter) a node looks at the current snapshot; when it
//! is older than the interval and the node's position moved past it, the node takes the upload
//! lease (compare-and-set), copies its database, uploads it, points the bucket at it and prunes
//! the one before. It runs on its own thread with its own connections, so replication goes on.
//!
//! Restore: after connecting, a node whose position is 0 (never replicated) or behind the
//! stream's first message restores the current snapshot when it is ahead of its position, then
//! replays the stream from the snapshot's sequence.

use std::io;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Node, Stop};
use crate::apply;
use crate::config::Config;
use crate::db;
use crate::snapshot::{self, SnapMeta};
use crate::transport::{self, Fetched, Pointer, Transport};

/// How long an upload lease holds before another node may take over.
const LEASE_TTL: Duration = Duration::from_secs(600);
/// The first snapshot check after start waits this long (or the interval, if shorter), so a
/// node that restarts repeatedly does not copy its database each time.
const FIRST_SAVE_DELAY: Duration = Duration::from_secs(60);
/// Restore progress is logged at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The background save, while one runs.
pub(super) struct Saving {
    handle: JoinHandle<Result<String, String>>,
}

/// Result of a save attempt that did not fail.
pub enum Saved {
    Uploaded(Pointer),
    Skipped(String),
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
    let store = t.snap_store(cfg).map_err(|e| e.to_string())?;
    let latest = store.latest().map_err(|e| e.to_string())?;
    let interval = cfg.snapshot.interval_ms();
    if let Some(p) = latest.as_ref().filter(|_| !force) {
        let age = crate::hlc::now_ms().saturating_sub(p.created_ms);
        if age < interval {
            return Ok(Saved::Skipped(format!("the current snapshot {} is {:.0} s old", p.object, age as f64 / 1000.0)));
        }
    }
    if !store.try_lease(node, LEASE_TTL).map_err(|e| e.to_string())? {
        return Ok(Saved::Skipped("another node holds the upload lease".into()));
    }
    let out = snapshot::temp_path(&cfg.db_path, "save");
    let result = (|| {
        let started = Instant::now();
        let meta = snapshot::make(cfg, &out).map_err(|e| format!("cannot copy the database: {e}"))?;
        if meta.seq == 0 && !force {
            return Ok(Saved::Skipped("this node has not applied anything from the stream yet".into()));
        }
        if let Some(p) = latest.as_ref().filter(|p| p.seq >= meta.seq && !force) {
            return Ok(Saved::Skipped(format!("the current snapshot {} is at seq {} already", p.object, p.seq)));
        }
        let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        let p = store.upload(&out, meta.seq, node).map_err(|e| e.to_string())?;
        log::info!(
            "snapshot saved object={} bucket={} seq={} bytes={size} in {:.1} s",
            p.object,
            store.bucket(),
            p.seq,
            started.elapsed().as_secs_f64()
        );
        if let Ok(conn) = db::open(&cfg.db_path) {
            let _ = db::set_meta(&conn, snapshot::SAVED_SEQ_KEY, p.seq as i64)
                .and_then(|_| db::set_meta(&conn, snapshot::SAVED_MS_KEY, p.created_ms as i64));
        }
        crate::metrics::add(crate::metrics::Counter::SnapshotSaves, 1);
        Ok(Saved::Uploaded(p))
    })();
    let _ = std::fs::remove_file(&out);
    store.release(node);
    result
}

/// Downloads `p` next to the database and verifies it. A corrupt download is deleted.
fn fetch_verified(
    cfg: &Config,
    t: &Transport,
    p: &Pointer,
    stop: &Stop,
    conn: Option<&rusqlite::Connection>,
) -> Result<(SnapMeta, Fetched), String> {
    let part = snapshot::temp_path(&cfg.db_path, "download");
    let store = t.snap_store(cfg).map_err(|e| e.to_string())?;
    log::info!("snapshot restore: downloading {} (seq {}, {:.1} MiB) from {}", p.object, p.seq, mib(p.size), store.bucket());
    let mut progress = Progress { conn, started: Instant::now(), last: Instant::now(), object: p.object.clone() };
    let fetched = store
        .download(p, &part, &|| stop.is_set(), &mut |d, total| progress.update(d, total))
        .map_err(|e| if e.kind() == io::ErrorKind::Interrupted { "stopped".to_string() } else { e.to_string() })?;
    let meta = snapshot::verify(&part).map_err(|e| {
        transport::discard_download(&part);
        e
    })?;
    if meta.seq != p.seq {
        transport::discard_download(&part);
        return Err(format!("snapshot {} says seq {} but its pointer says {}", p.object, meta.seq, p.seq));
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
    let t = Transport::connect(&probe, &urls, 0, 0).map_err(|e| e.to_string())?;
    let Some(p) = latest(cfg, &t)? else {
        return Ok(false);
    };
    if !parent_exists(&cfg.db_path) {
        return Err(format!("cannot restore into {}: its directory does not exist", cfg.db_path.display()));
    }
    log::info!("database {} does not exist: restoring it from snapshot {}", cfg.db_path.display(), p.object);
    let _restoring = crate::metrics::restoring();
    let (meta, _) = fetch_verified(cfg, &t, &p, stop, None)?;
    let part = snapshot::temp_path(&cfg.db_path, "download");
    snapshot::install_new(&cfg.db_path, &part, &meta).map_err(|e| e.to_string())?;
    transport::discard_download(&part);
    log::info!("snapshot restore: database created from {} at seq {}", p.object, meta.seq);
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
        if let Some(s) = self.saving.take() {
            if !s.handle.is_finished() {
                self.saving = Some(s);
                return;
            }
            match s.handle.join() {
                Ok(Ok(msg)) => log::debug!("snapshot: {msg}"),
                Ok(Err(e)) => log::warn!("snapshot save failed: {e}"),
                Err(_) => log::warn!("snapshot save failed: the save thread panicked"),
            }
        }
        if !self.cfg.snapshot.enabled || !self.cfg.snapshot.save || Instant::now() < self.next_save || !self.link_up() {
            return;
        }
        if !self.schema.paused.is_empty() {
            // a paused table's copy here does not match the fleet's definition: others save
            return;
        }
        let interval = Duration::from_millis(self.cfg.snapshot.interval_ms());
        // up to 10% jitter, so nodes started together do not all look at once
        let jitter = interval.mul_f64((self.node_id % 1000) as f64 / 10_000.0);
        self.next_save = Instant::now() + interval + jitter;
        let (cfg, urls, node) = (self.cfg.clone(), self.urls.clone(), self.node_id);
        let spawned = std::thread::Builder::new().name("snapshot-save".into()).spawn(move || {
            let mut probe = cfg.clone();
            probe.replicate = false;
            let t = Transport::connect(&probe, &urls, node, 0).map_err(|e| e.to_string())?;
            match save(&cfg, &t, node, false)? {
                Saved::Uploaded(p) => Ok(format!("uploaded {}", p.object)),
                Saved::Skipped(why) => Ok(format!("no save: {why}")),
            }
        });
        match spawned {
            Ok(handle) => self.saving = Some(Saving { handle }),
            Err(e) => log::warn!("cannot start the snapshot thread: {e}"),
        }
    }

    /// When the first save check is due.
    pub(super) fn first_save_at(cfg: &Config) -> Instant {
        Instant::now() + FIRST_SAVE_DELAY.min(Duration::from_millis(cfg.snapshot.interval_ms()))
    }

    /// After connecting (or when the stream skipped ahead): restores the current snapshot if
    /// this node cannot catch up from the stream, or never replicated.
    pub(super) fn catch_up(&mut self, stop: &Stop) {
        self.restore_check = false;
        if !self.cfg.replicate || !self.link_up() {
            return;
        }
        let cursor = self.position();
        let Some(first) = self.transport.as_ref().and_then(|t| t.first_seq()) else { return };
        let gap = first > cursor + 1;
        if !gap && cursor > 0 {
            return;
        }
        if !self.cfg.snapshot.enabled {
            if gap {
                log::error!(
                    "the stream no longer holds messages {}..{} that this node has not applied, and [snapshot] enabled = false: those changes are missing here",
                    cursor + 1,
                    first - 1
                );
            }
            return;
        }
        match self.restore_latest(stop, false) {
            Ok(Some(msg)) => log::info!("{msg}"),
            Ok(None) if gap => {
                self.gap_reported = true;
                log::error!(
                "the stream no longer holds messages {}..{} that this node has not applied, and no snapshot ahead of seq {cursor} exists yet: those changes are missing here until one is saved",
                cursor + 1,
                first - 1
                )
            }
            Ok(None) => {}
            Err(e) => {
                log::error!("snapshot restore failed: {e}");
                if gap {
                    // try again later rather than apply past the hole
                    self.restore_check = true;
                    self.next_restore = Instant::now() + Duration::from_secs(30);
                }
            }
        }
    }

    /// Position in the stream, counting our own frames passed over but not yet written down.
    fn position(&self) -> u64 {
        let cursor = db::get_meta(&self.conn, apply::CURSOR_KEY).ok().flatten().unwrap_or(0) as u64;
        cursor.max(self.own_cursor.unwrap_or(0))
    }

    /// Restores the current snapshot if it is ahead of this node (or `force`). Returns what it
    /// did, or None when no snapshot applies.
    pub fn restore_latest(&mut self, stop: &Stop, force: bool) -> Result<Option<String>, String> {
        let Some(t) = self.transport.as_ref() else { return Err("not connected".into()) };
        let Some(p) = latest(&self.cfg, t)? else {
            return Ok(None);
        };
        let cursor = self.position();
        if !force && p.seq <= cursor {
            return Ok(None);
        }
        if self.bad_snapshot.as_deref() == Some(p.nuid.as_str()) && !force {
            return Err(format!("snapshot {} failed verification before; waiting for a newer one", p.object));
        }
        let started = Instant::now();
        let _restoring = crate::metrics::restoring();
        let (meta, fetched) = match fetch_verified(&self.cfg, t, &p, stop, Some(&self.conn)) {
            Ok(x) => x,
            Err(e) => {
                if !stop.is_set() && e != "stopped" && !e.contains("interrupted") {
                    self.bad_snapshot = Some(p.nuid.clone());
                }
                return Err(e);
            }
        };
        let part = snapshot::temp_path(&self.cfg.db_path, "download");
        let done = snapshot::install_into(&mut self.conn, &self.cfg, &self.schema, &mut self.hlc, self.node_id, &part, &meta)
            .map_err(|e| format!("installing snapshot {}: {e}", p.object));
        transport::discard_download(&part);
        let done = done?;
        crate::metrics::add(crate::metrics::Counter::SnapshotRestores, 1);
        // New tables need capture; parked changes get another try; the consumer restarts at
        // the snapshot's position.
        self.schema_version = -1;
        self.data_version = None;
        self.outbox_dirty = true;
        self.own_cursor = None;
        self.unapplied.clear();
        self.transport = None;
        self.next_connect = Instant::now();
        self.bad_snapshot = None;
        self.gap_reported = false;
        Ok(Some(format!(
            "snapshot restore: installed {} at seq {} from node {}: {} tables, {} rows, {} local unpublished changes kept; {:.1} MiB fetched in {:.1} s (was at seq {cursor})",
            p.object,
            meta.seq,
            meta.node,
            done.tables,
            done.rows,
            done.kept_local,
            mib(fetched.bytes_fetched),
            started.elapsed().as_secs_f64()
        )))
    }

    /// Connects now, on this thread (for one-off commands).
    pub fn connect_now(&mut self) -> Result<(), String> {
        let cursor = self.position();
        let t = Transport::connect(&self.cfg, &self.urls, self.node_id, cursor).map_err(|e| e.to_string())?;
        self.adopt(t);
        Ok(())
    }

    /// `harmonylite snapshot save`: saves now (still under the lease).
    pub fn save_now(&mut self) -> Result<Saved, String> {
        // what the app wrote since the node last ran gets its version before the copy
        self.stamp_if_changed().map_err(|e| e.to_string())?;
        let Some(t) = self.transport.as_ref() else { return Err("not connected".into()) };
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
    p.parent().map_or(true, |d| d.as_os_str().is_empty() || d.is_dir())
}
