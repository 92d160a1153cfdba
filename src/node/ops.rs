//! The node's hooks for operations: liveness and counters for `/metrics` and `/health`
//! ([`crate::metrics`]), and the status and verify services over NATS.

use super::Node;
use crate::apply::ApplyStats;
use crate::metrics::{self, Counter};
use crate::transport::Transport;

impl Node {
    /// Once per loop iteration: the loop is alive, and the link state is what `status`,
    /// `/health` and the metrics show (a link the client lost is down too, not only a
    /// transport the node dropped).
    pub(super) fn heartbeat(&mut self) {
        let up = self.link_up();
        metrics::tick(up);
        self.record_link(up);
    }

    /// A new connection: counted, and answering status requests until it is dropped.
    pub(super) fn on_connected(&self, t: &Transport) {
        if metrics::get(Counter::Connects) > 0 {
            metrics::add(Counter::Reconnects, 1);
        }
        metrics::add(Counter::Connects, 1);
        let cfg = self.cfg.clone();
        let node = self.node_id;
        let answer = move || match crate::status::read(&cfg) {
            Ok(st) => st.to_json(),
            Err(e) => crate::status::error_json(node, &e.to_string()),
        };
        if let Err(e) = t.serve_status(&self.cfg, self.node_id, answer) {
            log::warn!("status service not available on this connection: {e}");
        }
        let cfg = self.cfg.clone();
        let verify = move |body: &[u8], max_frame: usize, publish: &crate::transport::Publish| {
            crate::verify::answer(&cfg, node, max_frame, body, publish)
        };
        if let Err(e) = t.serve_verify(&self.cfg, self.node_id, verify) {
            log::warn!("verify service not available on this connection: {e}");
        }
    }

    pub(super) fn count_applied(stats: &ApplyStats) {
        metrics::add(Counter::Captured, stats.stamped);
        metrics::add(Counter::Applied, stats.applied);
        metrics::add(Counter::Skipped, stats.stale);
        metrics::add(Counter::Parked, stats.parked);
        metrics::add(Counter::Undecodable, stats.undecodable);
        metrics::add(Counter::UniqueConflicts, stats.unique_conflicts);
        metrics::add(Counter::PkCollisions, stats.pk_collisions);
        metrics::add(Counter::Rejected, stats.rejected);
        metrics::add(Counter::NotReplicated, stats.not_replicated);
        metrics::observe_origins(&stats.newest);
    }
}
