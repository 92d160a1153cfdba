//! The NATS link: connecting in the background with a deadline and backoff, adopting a new
//! transport, dropping a failed one, and recording the link state for `status`.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Attempt, Node, REPEAT_LOG_EVERY};
use crate::apply;
use crate::config::ConsumerFilter;
use crate::db;
use crate::embedded::EmbeddedServer;
use crate::retry::Backoff;
use crate::state;
use crate::transport::{Transport, TransportError};

/// The NATS link's own state: the transport, the attempt in flight, the backoff between
/// attempts and what was last reported. Time is passed in (`now`), so the decisions are
/// tested without waiting.
pub(super) struct Link {
    /// The servers to connect to (an embedded server's own url when `[nats] urls` is empty).
    pub(super) urls: String,
    pub(super) embedded: Option<EmbeddedServer>,
    pub(super) transport: Option<Transport>,
    pub(super) backoff: Backoff,
    pub(super) next_connect: Instant,
    pub(super) last_connect_error: Option<String>,
    pub(super) last_connect_log: Instant,
    pub(super) connecting: Option<Attempt>,
    /// When the link went down (for the "after N s offline" line).
    pub(super) offline_since: Option<Instant>,
    /// The link state last written for `status` (written on change only).
    pub(super) recorded: Option<bool>,
    /// Cuts the current transport's link; taken by [`super::Stop::overdue`] while the loop has
    /// not reached its shutdown (a shutdown flush has its own deadline and is left alone).
    pub(super) cutter: Arc<Mutex<Option<crate::transport::LinkCutter>>>,
}

impl Link {
    pub(super) fn new(
        urls: String,
        embedded: Option<EmbeddedServer>,
        backoff: Backoff,
        now: Instant,
    ) -> Link {
        Link {
            urls,
            embedded,
            transport: None,
            backoff,
            next_connect: now,
            last_connect_error: None,
            last_connect_log: now,
            connecting: None,
            offline_since: None,
            recorded: None,
            cutter: Arc::new(Mutex::new(None)),
        }
    }

    /// A failure at `now` (an attempt, or a link that broke): the link is down since the first
    /// one, and the next attempt waits the backoff. Returns that wait.
    pub(super) fn failed(&mut self, now: Instant) -> Duration {
        self.offline_since.get_or_insert(now);
        let delay = self.backoff.fail();
        self.next_connect = now + delay;
        delay
    }

    /// Whether the failure `msg` is news at `now`: another message than the last, or the same
    /// one not reported for [`REPEAT_LOG_EVERY`]. Records it either way.
    pub(super) fn news(&mut self, msg: &str, now: Instant) -> bool {
        let news = self.last_connect_error.as_deref() != Some(msg)
            || now.duration_since(self.last_connect_log) > REPEAT_LOG_EVERY;
        if news {
            self.last_connect_log = now;
        }
        self.last_connect_error = Some(msg.to_string());
        news
    }

    /// Connected: the backoff starts from its minimum again. Returns how long the link was
    /// down, if it was.
    pub(super) fn up(&mut self, now: Instant) -> Option<Duration> {
        self.last_connect_error = None;
        self.backoff.reset();
        self.offline_since
            .take()
            .map(|since| now.duration_since(since))
    }
}

impl Node {
    /// Starts a connection attempt in the background, or collects its result. The attempt runs
    /// on its own thread because the `nats` crate's connect has no deadline of its own (a
    /// blackholed link would hold the loop, and SIGTERM, forever); an attempt past
    /// `[nats] connect_timeout_ms` is abandoned.
    pub(super) fn ensure_connected(&mut self) {
        if self.link.transport.is_some() {
            return;
        }
        if let Some(attempt) = &self.link.connecting {
            match attempt.rx.try_recv() {
                Ok(Ok(t)) => {
                    self.link.connecting = None;
                    self.on_connected(&t);
                    self.adopt(t);
                }
                Ok(Err(e)) => {
                    self.link.connecting = None;
                    self.connect_failed(e.to_string(), e.is_transient());
                }
                Err(mpsc::TryRecvError::Empty)
                    if attempt.started.elapsed() < self.connect_timeout() => {}
                Err(_) => {
                    self.link.connecting = None;
                    self.connect_failed(format!(
                        "connecting to NATS at {} took longer than {} ms ([nats] connect_timeout_ms)",
                        crate::transport::redact_urls(&self.link.urls), self.cfg.nats.connect_timeout_ms
                    ), true);
                }
            }
            return;
        }
        if Instant::now() < self.link.next_connect {
            return;
        }
        // a backfill reads the stream from its start (see `apply::Backfill`)
        let cursor = match (db::cursor(&self.conn), apply::Backfill::active(&self.conn)) {
            (Ok(_), Ok(true)) => 0,
            (Ok(c), Ok(false)) => c,
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("{e}");
                return;
            }
        };
        let (tx, rx) = mpsc::channel();
        let (cfg, urls, node) = (self.cfg.clone(), self.link.urls.clone(), self.node_id);
        let filter = self.filter.clone();
        let spawned = std::thread::Builder::new()
            .name("connect".into())
            .spawn(move || {
                // the receiver may be gone (attempt abandoned): the connection is then dropped
                let _ = tx.send(Transport::connect(&cfg, &urls, node, cursor, &filter));
            });
        match spawned {
            Ok(_) => {
                self.link.connecting = Some(Attempt {
                    rx,
                    started: Instant::now(),
                })
            }
            Err(e) => self.connect_failed(format!("cannot start a connect thread: {e}"), true),
        }
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.nats.connect_timeout_ms)
    }

    pub(super) fn adopt(&mut self, t: Transport) {
        if t.cursor_reset {
            if let Err(e) = db::set_cursor(&self.conn, 0) {
                log::warn!("{e}");
                return;
            }
        }
        if self.cfg.max_frame_bytes > t.max_frame() {
            log::warn!(
                "max_frame_bytes={} does not fit the server's max_payload with the message headers: using {}",
                self.cfg.max_frame_bytes,
                t.max_frame()
            );
            self.max_frame = t.max_frame();
        }
        let cursor = db::cursor(&self.conn).unwrap_or(0);
        self.snap.restore_check = self.filter != ConsumerFilter::Nothing;
        match self.link.up(Instant::now()) {
            Some(down) => log::info!(
                "connected to nats urls={} cursor={cursor} after {:.1} s offline",
                crate::transport::redact_urls(&self.link.urls),
                down.as_secs_f64()
            ),
            None => log::info!(
                "connected to nats urls={} cursor={cursor}",
                crate::transport::redact_urls(&self.link.urls)
            ),
        }
        *self.link.cutter.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.cutter());
        self.horizon.disconnected(); // the record is written again before the first publish
        self.link.transport = Some(t);
        self.record_link(true);
    }

    /// Writes the link state for `harmonylite status` (only when it changes).
    pub(super) fn record_link(&mut self, up: bool) {
        if self.link.recorded == Some(up) {
            return;
        }
        self.link.recorded = Some(up);
        let write = db::set_meta(&self.conn, state::LINK_UP_KEY, up as i64).and_then(|_| {
            db::set_meta(
                &self.conn,
                state::LINK_SINCE_KEY,
                crate::hlc::now_ms() as i64,
            )
        });
        if let Err(e) = write {
            log::debug!("cannot record the link state: {e}");
            self.link.recorded = None;
        }
    }

    /// A failed attempt: retried with backoff. A refusal only the operator can lift
    /// (`transient` false, see [`TransportError::is_transient`]) is logged as an error.
    pub(super) fn connect_failed(&mut self, msg: String, transient: bool) {
        self.record_link(false);
        let now = Instant::now();
        let delay = self.link.failed(now);
        if self.link.news(&msg, now) {
            if transient {
                log::warn!("{msg}; retrying with backoff (local writes are kept and sent later)");
            } else {
                log::error!("{msg}; the server refuses this node: fix its credentials, permissions or key files (retrying with backoff; local writes are kept and sent later)");
            }
        } else {
            log::debug!("{msg}; next attempt in {delay:?}");
        }
    }

    pub(super) fn drop_transport(&mut self, e: &TransportError) {
        if e.is_transient() {
            log::warn!("{e}; will reconnect");
        } else if let Some(more) = crate::logging::repeated(&format!("refused {e}")) {
            log::error!("{e}; the server refuses this node: fix its permissions (reconnecting with backoff; local writes are kept){more}");
        }
        self.link.transport = None;
        self.link.failed(Instant::now());
        self.record_link(false);
    }

    /// Connected and not in the middle of a reconnect (publishing then would only fill the
    /// client's buffer and wait for acks that cannot come).
    pub(super) fn link_up(&self) -> bool {
        self.link
            .transport
            .as_ref()
            .is_some_and(|t| t.is_connected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(now: Instant) -> Link {
        let backoff = Backoff::with_seed(Duration::from_millis(250), Duration::from_secs(15), 7);
        Link::new("nats://127.0.0.1:4222".into(), None, backoff, now)
    }

    #[test]
    fn failures_back_off_and_a_connection_says_how_long_the_link_was_down() {
        let t0 = Instant::now();
        let mut l = link(t0);
        let first = l.failed(t0);
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(313));
        assert_eq!(l.next_connect, t0 + first);
        let later = t0 + Duration::from_secs(5);
        let second = l.failed(later);
        assert!(second >= Duration::from_millis(500), "{second:?}");
        // down since the first failure, not the last
        assert_eq!(
            l.up(t0 + Duration::from_secs(9)),
            Some(Duration::from_secs(9))
        );
        assert_eq!(
            l.up(t0 + Duration::from_secs(10)),
            None,
            "up again: not down"
        );
        // the backoff starts from its minimum again
        assert!(l.failed(later) <= Duration::from_millis(313));
    }

    #[test]
    fn the_same_failure_is_news_once_a_minute() {
        let t0 = Instant::now();
        let mut l = link(t0);
        assert!(l.news("refused", t0));
        assert!(!l.news("refused", t0 + Duration::from_secs(30)));
        assert!(
            l.news("timed out", t0 + Duration::from_secs(31)),
            "another cause"
        );
        assert!(
            l.news("refused", t0 + Duration::from_secs(32)),
            "changed back"
        );
        assert!(!l.news("refused", t0 + Duration::from_secs(60)));
        assert!(l.news("refused", t0 + Duration::from_secs(93)));
    }
}
