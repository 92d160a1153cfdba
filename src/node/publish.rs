//! The publish round: pending local changes into byte-bounded frames, published with acks,
//! then marked published in one transaction.

use std::time::{Duration, Instant};

use super::{Node, NodeError, ROUND_BYTES};
use crate::capture;
use crate::db::{self, DbError};
use crate::frame::{self, FrameBuilder, Pushed};
use crate::status;
use crate::transport::Outgoing;

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
                    self.outbox_dirty = false;
                }
                return Ok(());
            }
            let Some(t) = self.transport.as_mut() else {
                return Ok(());
            };
            let bytes: usize = frames.iter().map(|f| f.data.len()).sum();
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            if let Err(e) = t.publish_all(&frames, timeout, &abort) {
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
            db::set_meta(&tx, status::LAST_PUBLISH_KEY, crate::hlc::now_ms() as i64)?;
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
            if changes > 0 {
                self.bytes_per_change =
                    0.8 * self.bytes_per_change + 0.2 * (bytes as f64 / changes as f64);
            }
            if !more {
                self.outbox_dirty = false;
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
        let estimate = (pending as f64 * self.bytes_per_change) as u64;
        let over = estimate > self.cfg.outbox_budget_bytes;
        if over && !self.over_budget {
            log::warn!(
                "outbox over budget: about {estimate} bytes in {pending} unpublished changes (outbox_budget_bytes={}); nothing is dropped, they are sent when NATS is reachable",
                self.cfg.outbox_budget_bytes
            );
        } else if !over && self.over_budget {
            log::info!("outbox back under budget: about {estimate} bytes in {pending} changes");
        }
        self.over_budget = over;
        db::set_meta(&self.conn, status::OVER_BUDGET_KEY, over as i64)?;
        Ok(())
    }
}
