//! The node's hooks for operations: liveness and counters for `/metrics` and `/health`
//! ([`crate::metrics`]), the status and verify services over NATS, and catching another process that uses
//! this node's id (a cloned SD card).
//!
//! Two nodes with one id never exchange rows: each takes the other's frames for its own and
//! passes over them. Nothing in the data shows it, so each node asks its own status subject at
//! connect and then every [`TWIN_PROBE_EVERY`] (about 500 bytes each: cheap on cellular) and
//! counts the answers that carry another process's token. What it finds is logged as an error
//! at each probe and written to `__hl_meta` only when it changes (an idle node writes
//! nothing), so `status`, `/health` and `status --check` show it. The data path is untouched:
//! nothing is applied or dropped because of it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Node;
use crate::apply::ApplyStats;
use crate::db;
use crate::metrics::{self, Counter};
use crate::state;
use crate::transport::{prober, Transport, Twin};

/// How often a connected node looks for another process answering as its id (and once at
/// each connect).
pub const TWIN_PROBE_EVERY: Duration = Duration::from_secs(900);
/// How long the answers to one probe are collected.
pub const TWIN_PROBE_WINDOW: Duration = Duration::from_secs(2);

/// What the probes found, handed from the probe thread to the loop.
#[derive(Default)]
pub(super) struct Twins {
    /// What the probes and the probe requests of others found since the loop last looked.
    latest: Arc<Mutex<Heard>>,
    /// What `__hl_meta` holds now (read at open), so it is written only on a change.
    recorded: Option<String>,
}

impl Twins {
    pub(super) fn new(recorded: Option<String>) -> Twins {
        Twins {
            latest: Arc::default(),
            recorded,
        }
    }
}

/// Handed from the probe thread and the status service to the loop.
#[derive(Default)]
struct Heard {
    /// The other processes found since the loop last looked (empty: a probe found none;
    /// None: nothing new).
    news: Option<Vec<Twin>>,
    /// When another process was last heard of.
    last: Option<Instant>,
}

/// Adds what a probe sent at `sent` (or another's probe request, heard now) found. A probe
/// that found nobody does not clear a clone heard after it was sent (the clone started
/// during its window).
fn merge(heard: &Mutex<Heard>, found: Vec<Twin>, sent: Instant) {
    let mut h = heard.lock().unwrap_or_else(|e| e.into_inner());
    if found.is_empty() && h.last.is_some_and(|t| t >= sent) {
        return;
    }
    if !found.is_empty() {
        h.last = Some(Instant::now());
    }
    let seen = h.news.get_or_insert_with(Vec::new);
    for t in found {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }
}

/// The answer to a probe: `{"node_id":..,"instance":..,"hostname":..}`.
fn probe_answer(node_id: u64) -> String {
    #[derive(serde::Serialize)]
    struct Probe<'a> {
        node_id: u64,
        instance: &'a str,
        hostname: &'a str,
    }
    let hostname = crate::status::hostname();
    let p = Probe {
        node_id,
        instance: crate::status::instance(),
        hostname: &hostname,
    };
    serde_json::to_string(&p).unwrap_or_default()
}

impl Node {
    /// Once per loop iteration: the loop is alive, and the link state is what `status`,
    /// `/health` and the metrics show (a link the client lost is down too, not only a
    /// transport the node dropped).
    pub(super) fn heartbeat(&mut self) {
        let up = self.link_up();
        metrics::tick(up);
        self.record_link(up);
        self.note_twins();
    }

    /// A new connection: counted, answering status requests until it is dropped, and
    /// probing for another process with this node's id.
    pub(super) fn on_connected(&self, t: &Transport) {
        if metrics::get(Counter::Connects) > 0 {
            metrics::add(Counter::Reconnects, 1);
        }
        metrics::add(Counter::Connects, 1);
        let cfg = self.cfg.clone();
        let node = self.node_id;
        let heard = self.twins.latest.clone();
        let answer = move |request: &[u8]| {
            if let Some(other) = prober(request) {
                // another process probing this node's subject is a clone too
                if other.instance != crate::status::instance() {
                    merge(&heard, vec![other], Instant::now());
                }
                return probe_answer(node);
            }
            match crate::status::read(&cfg) {
                Ok(mut st) => {
                    st.instance = Some(crate::status::instance().to_string());
                    st.to_json()
                }
                Err(e) => crate::status::error_json(node, &e.to_string()),
            }
        };
        if let Err(e) = t.serve_status(&self.cfg, self.node_id, answer) {
            log::warn!("status service not available on this connection: {e}");
            return;
        }
        let cfg = self.cfg.clone();
        let verify = move |body: &[u8], max_frame: usize, publish: &crate::transport::Publish| {
            crate::verify::answer(&cfg, node, max_frame, body, publish)
        };
        if let Err(e) = t.serve_verify(&self.cfg, self.node_id, verify) {
            log::warn!("verify service not available on this connection: {e}");
        }
        let latest = self.twins.latest.clone();
        let found = move |twins: Vec<Twin>, sent: Instant| merge(&latest, twins, sent);
        let probe = t.probe_twins(
            &self.cfg,
            self.node_id,
            crate::status::instance(),
            TWIN_PROBE_EVERY,
            TWIN_PROBE_WINDOW,
            found,
        );
        if let Err(e) = probe {
            log::warn!("cannot look for another node with this node id: {e}");
        }
    }

    /// Takes the latest probe's outcome: an error line for each probe that found another
    /// process, and `__hl_meta` written when the finding changes.
    fn note_twins(&mut self) {
        let Some(twins) = self
            .twins
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .news
            .take()
        else {
            return;
        };
        let now = twins.first().map(|t| {
            let host = if t.hostname.is_empty() {
                "unknown"
            } else {
                &t.hostname
            };
            format!(
                "another process answers as node {} (host {host}, {} in all)",
                self.node_id,
                twins.len()
            )
        });
        for t in &twins {
            log::error!(
                "duplicate node id node_id={} other_host={} other_instance={}: another harmonylite process uses this node id (a cloned SD card?); the two never exchange changes, each takes the other's for its own. Give one of them a new id: set node_id = <an id no node uses> in its config and restart it",
                self.node_id,
                if t.hostname.is_empty() { "?" } else { &t.hostname },
                if t.instance.is_empty() { "?" } else { &t.instance },
            );
        }
        if now == self.twins.recorded {
            return;
        }
        let write = match &now {
            Some(text) => db::set_meta(&self.conn, state::DUPLICATE_KEY, text.as_str()),
            None => db::delete_meta(&self.conn, state::DUPLICATE_KEY),
        };
        match write {
            Ok(()) => {
                if now.is_none() {
                    log::info!(
                        "duplicate node id gone node_id={}: no other process answers as this node",
                        self.node_id
                    );
                }
                self.twins.recorded = now;
            }
            // tried again at the next probe
            Err(e) => log::debug!("cannot record the duplicate node id: {e}"),
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
        metrics::add(Counter::FragmentsDropped, stats.fragment_sets_dropped);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn twin(i: &str) -> Twin {
        Twin {
            instance: i.into(),
            hostname: "gw".into(),
        }
    }

    #[test]
    fn a_probe_that_found_nobody_does_not_clear_a_clone_heard_since() {
        let heard = Mutex::new(Heard::default());
        let sent = Instant::now();
        // the clone's own probe request arrived during our probe's window
        merge(&heard, vec![twin("b")], Instant::now());
        merge(&heard, vec![twin("b")], Instant::now());
        merge(&heard, Vec::new(), sent);
        assert_eq!(heard.lock().unwrap().news.take(), Some(vec![twin("b")]));
        // a later probe that finds nobody clears it
        merge(&heard, Vec::new(), Instant::now());
        assert_eq!(heard.lock().unwrap().news.take(), Some(Vec::new()));
    }

    #[test]
    fn probe_requests_name_who_asks() {
        use crate::transport::prober;
        let p = crate::transport::probe_payload("00ff", "gw2");
        assert_eq!(prober(&p), Some(twin_on("00ff", "gw2")));
        assert_eq!(prober(b""), None);
        assert_eq!(prober(b"instance"), Some(twin_on("", "")));
    }

    fn twin_on(i: &str, h: &str) -> Twin {
        Twin {
            instance: i.into(),
            hostname: h.into(),
        }
    }
}
