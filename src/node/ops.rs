//! The node's hooks for operations: liveness and counters for `/metrics` and `/health`
//! ([`crate::metrics`]), and the status and verify services over NATS.

use std::sync::atomic::Ordering;
use std::time::Duration;

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

/// How often the anti-entropy thread looks at the stop flag while it waits.
const ANTI_ENTROPY_POLL: Duration = Duration::from_secs(1);
/// How long the anti-entropy check waits for the nodes to settle (like `verify`'s default).
const ANTI_ENTROPY_SETTLE: Duration = Duration::from_millis(crate::verify::DEFAULT_SETTLE_MS);

impl Node {
    /// `[anti_entropy] interval_secs`: a thread that runs `verify --repair` every interval when
    /// this node is the lowest id answering status requests, so one node of the fleet checks
    /// at a time. Nothing starts when it is 0 (the default).
    pub(super) fn start_anti_entropy(&self) {
        let every = self.cfg.anti_entropy.interval_secs;
        if every == 0 {
            return;
        }
        let (cfg, node, stopping) = (self.cfg.clone(), self.node_id, self.stopping.clone());
        let spawned = std::thread::Builder::new()
            .name("anti-entropy".into())
            .spawn(move || loop {
                let mut waited = Duration::ZERO;
                while waited < Duration::from_secs(every) {
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(ANTI_ENTROPY_POLL);
                    waited += ANTI_ENTROPY_POLL;
                }
                anti_entropy_once(&cfg, node);
            });
        if let Err(e) = spawned {
            log::warn!("anti-entropy not started: cannot start its thread: {e}");
        }
    }
}

/// One periodic check, if this node is the lowest id that answers.
fn anti_entropy_once(cfg: &crate::config::Config, node: u64) {
    let urls = super::snapshot_urls(cfg);
    let timeout = Duration::from_millis(crate::fleet::DEFAULT_TIMEOUT_MS);
    let answers =
        crate::transport::ask_fleet(cfg, &urls, &cfg.status_subject("all"), None, timeout);
    let ids = crate::verify::node_ids(&answers.unwrap_or_default());
    if ids.iter().any(|id| *id < node) {
        return;
    }
    let opts = crate::verify::Options {
        json: false,
        repair: true,
        timeout,
        settle: ANTI_ENTROPY_SETTLE,
    };
    match crate::verify::run(cfg, &opts) {
        Ok(o) if o.report.different_rows == 0 && o.agree => log::info!(
            "anti-entropy check rows_different=0 nodes={}",
            o.report.nodes.len()
        ),
        Ok(o) => log::warn!(
            "anti-entropy check rows_different={} rows_repaired={} agree_after_repair={} nodes={}: see harmonylite verify",
            o.report.different_rows,
            o.report.repaired_rows,
            o.agree,
            o.report.nodes.len()
        ),
        Err(e) => log::warn!("anti-entropy check failed: {e}"),
    }
}
