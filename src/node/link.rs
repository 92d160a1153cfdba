//! The NATS link: connecting in the background with a deadline and backoff, adopting a new
//! transport, dropping a failed one, and recording the link state for `status`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Attempt, Node, REPEAT_LOG_EVERY};
use crate::apply;
use crate::config::ConsumerFilter;
use crate::db;
use crate::state;
use crate::transport::{Transport, TransportError};

impl Node {
    /// Starts a connection attempt in the background, or collects its result. The attempt runs
    /// on its own thread because the `nats` crate's connect has no deadline of its own (a
    /// blackholed link would hold the loop, and SIGTERM, forever); an attempt past
    /// `[nats] connect_timeout_ms` is abandoned.
    pub(super) fn ensure_connected(&mut self) {
        if self.transport.is_some() {
            return;
        }
        if let Some(attempt) = &self.connecting {
            match attempt.rx.try_recv() {
                Ok(Ok(t)) => {
                    self.connecting = None;
                    self.on_connected(&t);
                    self.adopt(t);
                }
                Ok(Err(e)) => {
                    self.connecting = None;
                    self.connect_failed(e.to_string(), e.is_transient());
                }
                Err(mpsc::TryRecvError::Empty)
                    if attempt.started.elapsed() < self.connect_timeout() => {}
                Err(_) => {
                    self.connecting = None;
                    self.connect_failed(format!(
                        "connecting to NATS at {} took longer than {} ms ([nats] connect_timeout_ms)",
                        crate::transport::redact_urls(&self.urls), self.cfg.nats.connect_timeout_ms
                    ), true);
                }
            }
            return;
        }
        if Instant::now() < self.next_connect {
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
        let (cfg, urls, node) = (self.cfg.clone(), self.urls.clone(), self.node_id);
        let filter = self.filter.clone();
        let spawned = std::thread::Builder::new()
            .name("connect".into())
            .spawn(move || {
                // the receiver may be gone (attempt abandoned): the connection is then dropped
                let _ = tx.send(Transport::connect(&cfg, &urls, node, cursor, &filter));
            });
        match spawned {
            Ok(_) => {
                self.connecting = Some(Attempt {
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
        self.restore_check = self.filter != ConsumerFilter::Nothing;
        match self.offline_since.take() {
            Some(since) => log::info!(
                "connected to nats urls={} cursor={cursor} after {:.1} s offline",
                crate::transport::redact_urls(&self.urls),
                since.elapsed().as_secs_f64()
            ),
            None => log::info!(
                "connected to nats urls={} cursor={cursor}",
                crate::transport::redact_urls(&self.urls)
            ),
        }
        self.last_connect_error = None;
        self.backoff.reset();
        *self.link_cutter.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.cutter());
        self.transport = Some(t);
        self.record_link(true);
    }

    /// Writes the link state for `harmonylite status` (only when it changes).
    pub(super) fn record_link(&mut self, up: bool) {
        if self.link_recorded == Some(up) {
            return;
        }
        self.link_recorded = Some(up);
        let write = db::set_meta(&self.conn, state::LINK_UP_KEY, up as i64).and_then(|_| {
            db::set_meta(
                &self.conn,
                state::LINK_SINCE_KEY,
                crate::hlc::now_ms() as i64,
            )
        });
        if let Err(e) = write {
            log::debug!("cannot record the link state: {e}");
            self.link_recorded = None;
        }
    }

    /// A failed attempt: retried with backoff. A refusal only the operator can lift
    /// (`transient` false, see [`TransportError::is_transient`]) is logged as an error.
    pub(super) fn connect_failed(&mut self, msg: String, transient: bool) {
        self.offline_since.get_or_insert_with(Instant::now);
        self.record_link(false);
        let delay = self.backoff.fail();
        if self.last_connect_error.as_deref() != Some(&msg)
            || self.last_connect_log.elapsed() > REPEAT_LOG_EVERY
        {
            if transient {
                log::warn!("{msg}; retrying with backoff (local writes are kept and sent later)");
            } else {
                log::error!("{msg}; the server refuses this node: fix its credentials, permissions or key files (retrying with backoff; local writes are kept and sent later)");
            }
            self.last_connect_log = Instant::now();
        } else {
            log::debug!("{msg}; next attempt in {delay:?}");
        }
        self.last_connect_error = Some(msg);
        self.next_connect = Instant::now() + delay;
    }

    pub(super) fn drop_transport(&mut self, e: &TransportError) {
        let delay = self.backoff.fail();
        if e.is_transient() {
            log::warn!("{e}; will reconnect");
        } else if let Some(more) = crate::logging::repeated(&format!("refused {e}")) {
            log::error!("{e}; the server refuses this node: fix its permissions (reconnecting with backoff; local writes are kept){more}");
        }
        self.transport = None;
        self.offline_since.get_or_insert_with(Instant::now);
        self.record_link(false);
        self.next_connect = Instant::now() + delay;
    }

    /// Connected and not in the middle of a reconnect (publishing then would only fill the
    /// client's buffer and wait for acks that cannot come).
    pub(super) fn link_up(&self) -> bool {
        self.transport.as_ref().is_some_and(|t| t.is_connected())
    }
}
