//! The node's side of tombstone collection (the argument is in [`crate::tombstones`]):
//! keeping this node's record fresh, the rejoin rule before the first publish of a connection,
//! and collection rounds.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{Node, NodeError};
use crate::db;
use crate::tombstones::{self, Fleet, Record};

/// Tombstones deleted per transaction: the write lock is held a few milliseconds at a time.
const COLLECT_BATCH: u64 = 5_000;
/// Time spent collecting per tick (in batches of [`COLLECT_BATCH`]).
const COLLECT_BUDGET: Duration = Duration::from_millis(50);
/// How long publishing waits for this node's record after a connect. Past it the node
/// publishes without one: a bucket out of reach must not stop replication.
const JOIN_GRACE: Duration = Duration::from_secs(15);
/// Backoff of a failed join (reading and writing the node records before publishing).
const JOIN_RETRY_MIN: Duration = Duration::from_secs(1);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(60);
/// The longest an idle node goes without refreshing its record (so it stays live).
const KEEPALIVE_MAX: Duration = Duration::from_secs(3600);

/// A collection waiting until this node has applied up to `until_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Round {
    below: u64,
    until_seq: u64,
    started: Instant,
    /// This node applied up to `until_seq`: collecting (it takes as many ticks as it needs).
    reached: bool,
}

/// What the node keeps in memory about its record and the fleet's horizon.
pub(super) struct Horizon {
    /// This connection wrote our record (and applied the rejoin rule): publishing may start.
    joined: bool,
    /// The server refuses our record (permissions): we publish anyway, the others hold back.
    refused: bool,
    /// The record could not be written within [`JOIN_GRACE`] of connecting (the bucket is out
    /// of reach: no answer on `$KV.` nor through the hub's domain behind a leaf node): we
    /// publish anyway, as for `refused`.
    unrecorded: bool,
    connected_at: Instant,
    last_put: Option<Instant>,
    /// Activity markers at the last write: the clock's mark and the stream position.
    put_marks: (u64, u64),
    next_round: Instant,
    round: Option<Round>,
    /// Origins applied since the last round (checked against the records).
    origins: BTreeSet<u64>,
    /// The fleet as last read (status, logs).
    pub fleet: Option<Fleet>,
    /// Origin that publishes without a record, last time it paused collection.
    unregistered: Option<u64>,
    /// When joining may be tried again after a failure, and its backoff.
    next_join: Instant,
    join_backoff: crate::retry::Backoff,
}

impl Horizon {
    pub(super) fn new(now: Instant) -> Horizon {
        Horizon {
            joined: false,
            refused: false,
            unrecorded: false,
            connected_at: now,
            last_put: None,
            put_marks: (0, 0),
            next_round: now,
            round: None,
            origins: BTreeSet::new(),
            fleet: None,
            unregistered: None,
            next_join: now,
            join_backoff: crate::retry::Backoff::new(JOIN_RETRY_MIN, JOIN_RETRY_MAX),
        }
    }

    /// The link went down: the next connection writes the record again first.
    pub(super) fn disconnected(&mut self) {
        self.joined = false;
        self.unrecorded = false;
        self.round = None;
        self.connected_at = Instant::now();
        self.next_join = self.connected_at;
        self.join_backoff.reset();
    }

    /// Publishing waits until the record is written on this connection (at most
    /// [`JOIN_GRACE`]).
    pub(super) fn may_publish(&self) -> bool {
        self.joined || self.refused || self.unrecorded
    }

    /// Without a record of ours in the bucket, nothing is read there either.
    fn without_record(&self) -> bool {
        self.refused || self.unrecorded
    }

    pub(super) fn saw_origins(&mut self, origins: impl Iterator<Item = u64>) {
        self.origins.extend(origins);
    }

    /// Whether the record is due: after activity every `interval`, else every keep-alive.
    fn put_due(
        &self,
        now: Instant,
        marks: (u64, u64),
        interval: Duration,
        keepalive: Duration,
    ) -> bool {
        match self.last_put {
            None => true,
            Some(t) => {
                let since = now.saturating_duration_since(t);
                (marks != self.put_marks && since >= interval) || since >= keepalive
            }
        }
    }
}

impl Node {
    fn ttl_ms(&self) -> u64 {
        (self.cfg.replication_log.node_ttl_hours * 3_600_000.0) as u64
    }

    fn horizon_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.replication_log.horizon_interval_ms)
    }

    fn keepalive(&self) -> Duration {
        Duration::from_millis(self.ttl_ms() / 4)
            .min(KEEPALIVE_MAX)
            .max(self.horizon_interval())
    }

    fn read_fleet(&self) -> Result<(Fleet, Vec<(u64, Option<Record>, u64)>), String> {
        let Some(t) = self.link.transport.as_ref() else {
            return Err("not connected".into());
        };
        let records = t
            .node_records(self.cfg.replication_log.replicas)
            .map_err(|e| e.to_string())?;
        let parsed: Vec<(u64, Option<Record>, u64)> = records
            .iter()
            .map(|r| (r.node, Record::decode(&r.value), r.written_ms))
            .collect();
        Ok((tombstones::fleet(&parsed, self.ttl_ms()), parsed))
    }

    /// Writes our record; on activity the clock first moves to now, so the promise (and with
    /// it the fleet's horizon) follows the time. Returns false when it could not be written.
    fn put_record(&mut self, advance: bool) -> Result<bool, NodeError> {
        if advance {
            let now = crate::hlc::now_ms();
            if self
                .hlc
                .observe(now.min(crate::hlc::MAX_WALL_MS) << crate::hlc::LOGICAL_BITS)
            {
                db::set_meta(&self.conn, crate::state::HLC_KEY, self.hlc.last() as i64)?;
            }
        }
        let record = Record {
            low: tombstones::low(&self.conn, &self.schema, &self.hlc)?,
            collected: tombstones::collected_below(&self.conn)?,
        };
        let Some(t) = self.link.transport.as_ref() else {
            return Ok(false);
        };
        match t.put_node_record(
            self.node_id,
            &record.encode(),
            self.cfg.replication_log.replicas,
        ) {
            Ok(()) => {
                self.horizon.last_put = Some(Instant::now());
                self.horizon.put_marks = (self.hlc.last(), db::cursor(&self.conn)?);
                self.horizon.refused = false;
                self.horizon.unrecorded = false;
                Ok(true)
            }
            Err(e) => {
                self.horizon.last_put = Some(Instant::now()); // tried: again at the pace
                let msg = e.to_string();
                if crate::transport::is_refusal(&msg) {
                    if !self.horizon.refused {
                        log::error!("node record refused: {msg}; this node publishes anyway, and the others keep every tombstone until it may write to the key-value bucket of node records (see README, permissions)");
                    }
                    self.horizon.refused = true;
                } else if let Some(more) = crate::logging::repeated("node record") {
                    log::warn!("cannot write this node's record: {msg}; retrying{more}");
                }
                Ok(false)
            }
        }
    }

    /// Before the first publish of a connection: write our record, and if it had lapsed
    /// (away longer than `node_ttl`, or never written), stamp outbox changes older than any
    /// horizon the others may have used again (the rejoin rule, see [`crate::tombstones`]).
    /// A failure is retried with backoff; publishing waits meanwhile, except when the server
    /// refuses the records (permissions): then it goes on without them.
    pub(super) fn join_fleet(&mut self) -> Result<(), NodeError> {
        let now = Instant::now();
        if self.horizon.may_publish()
            || self.link.transport.is_none()
            || now < self.horizon.next_join
        {
            return Ok(());
        }
        self.horizon.next_join = now + self.horizon.join_backoff.fail();
        self.try_join()?;
        if self.horizon.may_publish() {
            self.horizon.join_backoff.reset();
            self.horizon.next_join = now;
        } else if now.saturating_duration_since(self.horizon.connected_at) >= JOIN_GRACE {
            self.publish_unrecorded()?;
        }
        Ok(())
    }

    /// Publishing without a record (the bucket did not answer within [`JOIN_GRACE`]). The
    /// rejoin rule is applied by this node's clock instead of the others' records: outbox
    /// changes older than `node_ttl_hours` are stamped again. The other nodes see frames from
    /// a node without a record and keep their tombstones.
    fn publish_unrecorded(&mut self) -> Result<(), NodeError> {
        let now_ms = crate::hlc::now_ms();
        let cutoff = now_ms
            .saturating_sub(self.ttl_ms())
            .min(crate::hlc::MAX_WALL_MS)
            << crate::hlc::LOGICAL_BITS;
        let n =
            tombstones::restamp_below(&mut self.conn, &self.schema, &mut self.hlc, cutoff, now_ms)?;
        if n > 0 {
            self.outbox.dirty = true;
        }
        log::error!(
            "node record out of reach for {} s after connecting (the key-value bucket {}-nodes does not answer, neither on $KV. nor through the JetStream domain of a hub behind a leaf node): publishing without it; other nodes keep their tombstones while this node publishes without a record restamped={n}",
            JOIN_GRACE.as_secs(),
            self.cfg.nats.stream_prefix
        );
        self.horizon.unrecorded = true;
        self.horizon.last_put = Some(Instant::now());
        Ok(())
    }

    fn try_join(&mut self) -> Result<(), NodeError> {
        let before = match self.read_fleet() {
            Ok((_, records)) => records,
            Err(e) => {
                if crate::transport::is_refusal(&e) {
                    self.put_record(false)?;
                } else if let Some(more) = crate::logging::repeated("node records") {
                    log::warn!("cannot read the node records: {e}; publishing waits{more}");
                }
                return Ok(());
            }
        };
        if !self.put_record(true)? {
            return Ok(());
        }
        let newest = before.iter().map(|r| r.2).max().unwrap_or(0);
        let mine = before.iter().find(|r| r.0 == self.node_id);
        let lapsed = mine.is_none_or(|r| r.2.saturating_add(self.ttl_ms()) < newest);
        if lapsed && tombstones::oldest_pending(&self.conn, &self.schema)?.is_some() {
            let fleet = match self.read_fleet() {
                Ok((f, _)) => f,
                Err(e) => {
                    log::warn!("cannot read the node records: {e}; publishing waits");
                    return Ok(());
                }
            };
            let n = tombstones::restamp_below(
                &mut self.conn,
                &self.schema,
                &mut self.hlc,
                fleet.ceiling,
                crate::hlc::now_ms(),
            )?;
            if n > 0 {
                self.outbox.dirty = true;
            }
            match mine {
                Some(r) if n > 0 => log::warn!(
                    "rejoined after more than node_ttl_hours={} (this node's record was last written {:.1} h before the newest): {n} unpublished change(s) older than what other nodes may have collected count as made now, so they reach every node the same way",
                    self.cfg.replication_log.node_ttl_hours,
                    (newest - r.2) as f64 / 3_600_000.0
                ),
                // a first start: its outbox holds only what it found in the database
                _ => log::debug!("node record written for the first time restamped={n}"),
            }
        }
        self.horizon.joined = true;
        Ok(())
    }

    /// Refreshes our record when due and runs collection rounds.
    pub(super) fn horizon_tick(&mut self) -> Result<(), NodeError> {
        if self.link.transport.is_none() || !self.horizon.may_publish() {
            return Ok(());
        }
        let now = Instant::now();
        let marks = (self.hlc.last(), db::cursor(&self.conn)?);
        // refused or out of reach: tried again at the keep-alive pace only (each try waits for
        // a timeout)
        let interval = if self.horizon.without_record() {
            self.keepalive()
        } else {
            self.horizon_interval()
        };
        if self.horizon.put_due(now, marks, interval, self.keepalive()) {
            let active = marks != self.horizon.put_marks;
            self.put_record(active)?;
        }
        if !self.cfg.replication_log.collect_tombstones || self.horizon.without_record() {
            return Ok(());
        }
        if let Some(mut r) = self.horizon.round {
            if !r.reached && self.position() >= r.until_seq && self.unapplied.is_empty() {
                r.reached = true;
                self.horizon.round = Some(r);
            }
            if r.reached {
                // bounded batches, for at most COLLECT_BUDGET per tick
                let until = Instant::now() + COLLECT_BUDGET;
                loop {
                    let (n, more) =
                        tombstones::collect(&mut self.conn, &self.schema, r.below, COLLECT_BATCH)?;
                    crate::metrics::add(crate::metrics::Counter::TombstonesCollected, n);
                    if n > 0 {
                        log::debug!(
                            "tombstones collected rows={n} below={} more={more}",
                            r.below
                        );
                    }
                    if !more {
                        self.horizon.round = None;
                        break;
                    }
                    if Instant::now() >= until {
                        break;
                    }
                }
            } else if now.saturating_duration_since(r.started) > 2 * self.horizon_interval() {
                log::debug!(
                    "tombstone round abandoned position={} until_seq={}",
                    self.position(),
                    r.until_seq
                );
                self.horizon.round = None; // this node could not catch up: start afresh
            }
            return Ok(());
        }
        if now < self.horizon.next_round {
            return Ok(());
        }
        self.horizon.next_round = now + self.horizon_interval();
        if crate::gap::read(&self.conn)?.is_some() || !tombstones::any(&self.conn, &self.schema)? {
            return Ok(());
        }
        let fleet = match self.read_fleet() {
            Ok((f, _)) => f,
            Err(e) => {
                log::debug!("cannot read the node records: {e}");
                return Ok(());
            }
        };
        let origins = std::mem::take(&mut self.horizon.origins);
        if let Some(&o) = origins.iter().find(|o| !fleet.known.contains(o)) {
            if self.horizon.unregistered != Some(o) {
                log::warn!("node {o} publishes changes but keeps no node record (a build from before tombstone collection, or one refused the key-value bucket): this node keeps its tombstones until it does");
                self.horizon.unregistered = Some(o);
            }
            self.horizon.origins = origins; // keep asking until it registers
            self.horizon.fleet = Some(fleet);
            return Ok(());
        }
        self.horizon.unregistered = None;
        let Some(until_seq) = self
            .link
            .transport
            .as_ref()
            .and_then(|t| t.stream_state())
            .map(|s| s.last_seq)
        else {
            return Ok(());
        };
        // our own promise is part of the horizon even if the record read lags behind it
        let own = tombstones::low(&self.conn, &self.schema, &self.hlc)?;
        let below = fleet.horizon.map_or(own, |h| h.min(own));
        log::debug!(
            "tombstone round below={below} held_by={:?} until_seq={until_seq} gone={:?}",
            fleet.held_by,
            fleet.gone
        );
        self.horizon.fleet = Some(fleet);
        // tombstones were found above (`tombstones::any`): a round is due
        self.horizon.round = Some(Round {
            below,
            until_seq,
            started: now,
            reached: false,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_is_written_after_activity_at_the_interval_or_at_the_keepalive() {
        let t0 = Instant::now();
        let mut h = Horizon::new(t0);
        let (i, k) = (Duration::from_secs(10), Duration::from_secs(100));
        assert!(h.put_due(t0, (1, 1), i, k), "never written");
        h.last_put = Some(t0);
        h.put_marks = (1, 1);
        assert!(
            !h.put_due(t0 + Duration::from_secs(50), (1, 1), i, k),
            "idle"
        );
        assert!(
            h.put_due(t0 + Duration::from_secs(100), (1, 1), i, k),
            "keep-alive"
        );
        assert!(
            !h.put_due(t0 + Duration::from_secs(5), (2, 1), i, k),
            "too soon"
        );
        assert!(
            h.put_due(t0 + Duration::from_secs(10), (1, 2), i, k),
            "applied"
        );
        h.disconnected();
        assert!(!h.may_publish());
        h.refused = true;
        assert!(h.may_publish());
    }
}
