//! The publish round: pending local changes into byte-bounded frames, published with acks,
//! then marked published in one transaction.

use std::time::{Duration, Instant};

use super::{Node, NodeError, ROUND_BYTES};
use crate::capture;
use crate::db::{self, DbError};
use crate::frame::{self, FrameBuilder, Pushed};
use crate::state;
use crate::transport::Outgoing;

/// The budget check's pace: an estimate, not worth a count of the outbox every poll.
const BUDGET_CHECK_EVERY: Duration = Duration::from_secs(10);

/// What the node knows of its outbox without reading it: whether it may hold changes, the
/// average size of a published change, and whether the estimate is over the budget. Time is
/// passed in (`now`).
pub(super) struct Outbox {
    /// The outbox may hold changes (set by stamping, cleared when a read finds none).
    pub(super) dirty: bool,
    /// Average encoded bytes of one published change, for the outbox estimate.
    pub(super) bytes_per_change: f64,
    /// The outbox is over `outbox_budget_bytes` (reported once per crossing).
    pub(super) over_budget: bool,
    pub(super) last_check: Instant,
}

impl Outbox {
    pub(super) fn new(now: Instant) -> Outbox {
        Outbox {
            dirty: true,
            bytes_per_change: 128.0,
            over_budget: false,
            last_check: now,
        }
    }

    /// A round of `changes` went out in `bytes`: the average follows (a moving average, so a
    /// change in row sizes shows within a few rounds).
    pub(super) fn published(&mut self, bytes: usize, changes: usize) {
        if changes > 0 {
            self.bytes_per_change =
                0.8 * self.bytes_per_change + 0.2 * (bytes as f64 / changes as f64);
        }
    }

    /// The estimated bytes of `pending` unpublished changes.
    pub(super) fn estimate(&self, pending: u64) -> u64 {
        (pending as f64 * self.bytes_per_change) as u64
    }

    /// Whether the budget check is due at `now` (and if so, it counts as done).
    pub(super) fn budget_check_due(&mut self, now: Instant) -> bool {
        let due = now.duration_since(self.last_check) > BUDGET_CHECK_EVERY;
        if due {
            self.last_check = now;
        }
        due
    }
}

impl Node {
    /// Publishes pending local changes in rounds of up to [`ROUND_BYTES`], marking each round
    /// published only after JetStream acknowledged all of its frames. `interruptible`: the
    /// stop signal ends the wait for acks (not during the shutdown flush, which has its own
    /// deadline).
    pub(super) fn publish_round(
        &mut self,
        deadline: Instant,
        interruptible: bool,
    ) -> Result<(), NodeError> {
        let stopping = self.stopping.clone();
        let abort = move || interruptible && stopping.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            let (frames, marks, more, changes) = self.build_round()?;
            if frames.is_empty() {
                if !more {
                    self.outbox.dirty = false;
                }
                return Ok(());
            }
            let Some(t) = self.link.transport.as_mut() else {
                return Ok(());
            };
            let bytes: usize = frames.iter().map(|f| f.data.len()).sum();
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            if let Err(e) = t.publish_all(&frames, timeout, &abort) {
                if !e.is_transient() {
                    // shown by status and /health until a round goes through
                    db::set_meta(&self.conn, state::REFUSED_KEY, e.to_string())?;
                }
                self.drop_transport(&e);
                return Ok(());
            }
            let tx = self.conn.transaction().map_err(|source| DbError::Sql {
                op: "begin mark published",
                source,
            })?;
            for (i, version) in &marks {
                capture::mark_published(&tx, &self.schema.tables[*i], *version)?;
            }
            db::set_meta(&tx, state::LAST_PUBLISH_KEY, crate::hlc::now_ms() as i64)?;
            db::delete_meta(&tx, state::REFUSED_KEY)?;
            tx.commit().map_err(|source| DbError::Sql {
                op: "commit mark published",
                source,
            })?;
            crate::metrics::add(crate::metrics::Counter::Published, changes as u64);
            crate::metrics::add(
                crate::metrics::Counter::FramesPublished,
                frames.len() as u64,
            );
            crate::metrics::add(crate::metrics::Counter::BytesPublished, bytes as u64);
            log::debug!(
                "publish ok frames={} bytes={bytes} changes={changes}",
                frames.len()
            );
            self.outbox.published(bytes, changes);
            if !more {
                self.outbox.dirty = false;
                return Ok(());
            }
        }
    }

    /// Reads pending changes into frames until the round is full. Returns the frames, the
    /// highest version read per table, and whether changes remain.
    fn build_round(&self) -> Result<(Vec<Outgoing>, Vec<(usize, u64)>, bool, usize), NodeError> {
        let node = self.node_id;
        let max = self.max_frame;
        let mut frames: Vec<Outgoing> = Vec::new();
        let mut bytes = 0usize;
        let mut marks = Vec::new();
        let mut more = false;
        let mut changes = 0usize;
        let fv = self.cfg.replication_log.frame_version;
        // `frame_version = 1` means part of the fleet runs a build older than format 2, which
        // reads no compressed frames either. Rounds are bounded by the bytes sent (compressed).
        let compress = self.cfg.replication_log.compress && fv >= 2;
        // Compression comes after a frame is built, so frames stay bounded by `max` raw bytes
        // (compressed, they are smaller, never larger). Not packing more rows into a compressed
        // frame is deliberate: at the default 256 KiB a frame holds ~1,400 telemetry rows, and
        // the measured ratio is the same at 1,000 rows a frame (BENCHMARKS.md).
        let squeeze = |data: Vec<u8>| {
            if compress {
                frame::compress(data)
            } else {
                data
            }
        };
        let mut builder = FrameBuilder::with_version(node, max, fv);
        // each frame holds one table and goes out on that table's subject
        let seal = |data: Vec<u8>, subject: &str, frames: &mut Vec<Outgoing>, bytes: &mut usize| {
            *bytes += data.len();
            frames.push(Outgoing {
                subject: subject.to_string(),
                msg_id: format!("{node}-{:016x}", frame::fnv64(&data)),
                data,
            });
        };
        // One read transaction: a consistent view of rows and versions.
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|source| DbError::Sql {
                op: "begin read outbox",
                source,
            })?;
        for (i, t) in self.schema.tables.iter().enumerate() {
            if more {
                break;
            }
            if self.schema.is_paused(t.name()) {
                continue; // held in the outbox until the table resumes
            }
            let subject = self.cfg.table_subject(t.name(), node);
            let last = capture::read_pending(&tx, t, |version, op| {
                if bytes >= ROUND_BYTES {
                    more = true;
                    return false;
                }
                changes += 1;
                match builder.push(&t.header, version, op.clone()) {
                    Pushed::Added => {}
                    Pushed::Full => {
                        seal(squeeze(builder.finish()), &subject, &mut frames, &mut bytes);
                        if bytes >= ROUND_BYTES {
                            more = true;
                            return false;
                        }
                        let again = builder.push(&t.header, version, op);
                        debug_assert_eq!(again, Pushed::Added);
                    }
                    Pushed::TooLarge => {
                        if !builder.is_empty() {
                            seal(squeeze(builder.finish()), &subject, &mut frames, &mut bytes);
                        }
                        // compressed before fragmenting: a compressible large row travels in
                        // fewer fragments, or whole when it fits a frame compressed; the
                        // receiver decompresses the reassembled frame
                        let whole = squeeze(frame::encode_single(node, &t.header, version, op, fv));
                        if whole.len() <= max {
                            seal(whole, &subject, &mut frames, &mut bytes);
                        } else {
                            for part in frame::fragment(node, version, &whole, max, fv) {
                                seal(part, &subject, &mut frames, &mut bytes);
                            }
                        }
                    }
                }
                true
            })?;
            if let Some(v) = last {
                marks.push((i, v));
            }
            if !builder.is_empty() {
                seal(squeeze(builder.finish()), &subject, &mut frames, &mut bytes);
            }
        }
        drop(tx);
        Ok((frames, marks, more, changes))
    }

    /// Compares the outbox (pending changes times their average encoded size) with the budget.
    /// Crossing it is reported; nothing is dropped and the application is never blocked (the
    /// outbox holds one entry per changed row, so it cannot outgrow the tables themselves).
    pub(super) fn check_budget(&mut self) -> Result<(), NodeError> {
        let pending = capture::outbox_len(&self.conn, &self.schema)?;
        let estimate = self.outbox.estimate(pending);
        let over = estimate > self.cfg.outbox_budget_bytes;
        if over && !self.outbox.over_budget {
            log::warn!(
                "outbox over budget: about {estimate} bytes in {pending} unpublished changes (outbox_budget_bytes={}); nothing is dropped, they are sent when NATS is reachable",
                self.cfg.outbox_budget_bytes
            );
        } else if !over && self.outbox.over_budget {
            log::info!("outbox back under budget: about {estimate} bytes in {pending} changes");
        }
        self.outbox.over_budget = over;
        db::set_meta(&self.conn, state::OVER_BUDGET_KEY, over as i64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_estimate_follows_the_published_sizes() {
        let t0 = Instant::now();
        let mut o = Outbox::new(t0);
        assert_eq!(
            o.estimate(10),
            1280,
            "128 bytes a change before anything was sent"
        );
        for _ in 0..30 {
            o.published(40_000, 100);
        }
        assert!(
            (o.estimate(1000) as i64 - 400_000).abs() < 1000,
            "{}",
            o.estimate(1000)
        );
        o.published(0, 0);
        assert!(
            (o.estimate(1000) as i64 - 400_000).abs() < 1000,
            "an empty round changes nothing"
        );
        assert!(!o.budget_check_due(t0 + Duration::from_secs(10)));
        assert!(o.budget_check_due(t0 + Duration::from_secs(11)));
        assert!(!o.budget_check_due(t0 + Duration::from_secs(12)));
    }
}
