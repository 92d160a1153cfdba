//! Status over NATS request/reply, so a fleet can be asked through the broker without opening
//! ports on gateways. Each node answers on `<status_subject>.<stream_prefix>.<node_id>` and
//! `.all` (subjects outside the stream's, checked by the config); `harmonylite status --fleet`
//! asks.
//!
//! The same subjects catch a cloned SD card: two processes with one node id never exchange
//! rows (each takes the other's frames for its own) and nothing else would show it. Each node
//! asks its own subject now and then ([`Transport::probe_twins`], a tiny request answered
//! with the process's per-start token, no database read) and every answer with another token
//! is another process using its id.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nats::jetstream::PublishOptions;

use super::{client_options, redact_urls, Outgoing, Transport, TransportError, ACK_TIMEOUT};
use crate::config::Config;

/// Publishes frames and waits for JetStream's acks (the verify service's repairs); returns the
/// stream sequence of the last one (0: none sent).
pub type Publish = dyn Fn(Vec<Outgoing>) -> Result<u64, String> + Send + Sync;

/// How often the answering thread looks whether its transport is gone.
const SERVICE_POLL: Duration = Duration::from_millis(500);
/// A probe's payload starts with this, then ` <token> <hostname>` of the process asking (so
/// a node that connected first learns of a clone from the clone's probe, not minutes later
/// from its own). It is answered with `{"node_id":..,"instance":..,"hostname":..}` only.
pub const PROBE_REQUEST: &[u8] = b"instance";

/// The payload of a probe from the process with `instance` on `hostname`.
pub fn probe_payload(instance: &str, hostname: &str) -> Vec<u8> {
    let mut p = PROBE_REQUEST.to_vec();
    p.extend_from_slice(format!(" {instance} {hostname}").as_bytes());
    p
}

/// The process that sent a probe (`None`: not a probe).
pub fn prober(payload: &[u8]) -> Option<Twin> {
    let rest = payload.strip_prefix(PROBE_REQUEST)?;
    let text = String::from_utf8_lossy(rest);
    let mut words = text.split_whitespace();
    Some(Twin {
        instance: words.next().unwrap_or_default().to_string(),
        hostname: words.next().unwrap_or_default().to_string(),
    })
}

/// Another process that answered a probe on this node's subject.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Twin {
    /// Its per-start token (empty: a build without one).
    #[serde(default)]
    pub instance: String,
    #[serde(default)]
    pub hostname: String,
}

impl Transport {
    /// Answers status requests for `node` and for `all` with `reply()`, one thread per subject,
    /// each ending within `SERVICE_POLL` of this transport being dropped (a new transport after
    /// a reconnect subscribes anew; the client itself resubscribes across its own reconnects).
    /// Exact subjects, not a wildcard: a node hears only requests meant for it, and a request for
    /// a node nobody runs gets the server's "no responders" at once.
    pub fn serve_status(
        &self,
        cfg: &Config,
        node: u64,
        reply: impl Fn(&[u8]) -> String + Send + Sync + 'static,
    ) -> Result<(), TransportError> {
        let subjects = [node.to_string(), "all".to_string()].map(|t| cfg.status_subject(&t));
        self.serve(subjects, "status-service", move |request| {
            vec![reply(request)]
        })
    }

    /// Answers `harmonylite verify` requests (`<status subject>.verify`, for `node` and `all`)
    /// like [`Transport::serve_status`]. Nothing is computed unless asked. `reply` gets the
    /// request's body, the largest frame the server takes, and a publisher for repair frames
    /// (JetStream, each acknowledged within [`ACK_TIMEOUT`], with its message id); it returns
    /// the answer's messages (a large answer is sent in several, each within `max_payload`).
    pub fn serve_verify(
        &self,
        cfg: &Config,
        node: u64,
        reply: impl Fn(&[u8], usize, &Publish) -> Vec<String> + Send + Sync + 'static,
    ) -> Result<(), TransportError> {
        let suffix = crate::verify::SUBJECT_SUFFIX;
        let subjects = [node.to_string(), "all".to_string()]
            .map(|t| format!("{}.{suffix}", cfg.status_subject(&t)));
        let (max_frame, js) = (self.max_frame(), self.js.clone());
        let publish = move |frames: Vec<Outgoing>| -> Result<u64, String> {
            let mut last = 0;
            for f in frames {
                let opts = PublishOptions {
                    id: Some(f.msg_id.clone()),
                    timeout: Some(ACK_TIMEOUT),
                    ..Default::default()
                };
                let ack = js
                    .publish_with_options(&f.subject, &f.data, &opts)
                    .map_err(|e| format!("publish to {} not acknowledged: {e}", f.subject))?;
                last = last.max(ack.sequence);
            }
            Ok(last)
        };
        self.serve(subjects, "verify-service", move |body| {
            reply(body, max_frame, &publish)
        })
    }

    fn serve(
        &self,
        subjects: [String; 2],
        thread: &str,
        reply: impl Fn(&[u8]) -> Vec<String> + Send + Sync + 'static,
    ) -> Result<(), TransportError> {
        let reply = Arc::new(reply);
        for subject in subjects {
            let sub = self
                .nc
                .subscribe(&subject)
                .map_err(|source| TransportError::Setup {
                    what: format!("subscribe to {subject}"),
                    source,
                })?;
            let (live, reply) = (self.live.clone(), reply.clone());
            std::thread::Builder::new()
                .name(thread.into())
                .spawn(move || {
                    while live.load(Ordering::Relaxed) {
                        match sub.next_timeout(SERVICE_POLL) {
                            Ok(msg) if msg.reply.is_some() => {
                                for part in reply(&msg.data) {
                                    if let Err(e) = msg.respond(part) {
                                        log::debug!(
                                            "status request on {}: cannot answer: {e}",
                                            msg.subject
                                        );
                                        break;
                                    }
                                }
                            }
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                            Err(_) => break, // the connection is closed
                        }
                    }
                })
                .map_err(|source| TransportError::Setup {
                    what: format!("start the {thread} thread"),
                    source,
                })?;
        }
        Ok(())
    }
}

impl Transport {
    /// Asks this node's own status subject at once and then every `every`, collecting the
    /// answers for `window` each time; `found` gets the answers whose token is not `instance`
    /// (empty: only this process answered) and when the probe was sent. One thread, ending within `SERVICE_POLL` of this
    /// transport being dropped.
    pub fn probe_twins(
        &self,
        cfg: &Config,
        node: u64,
        instance: &str,
        every: Duration,
        window: Duration,
        found: impl Fn(Vec<Twin>, Instant) + Send + 'static,
    ) -> Result<(), TransportError> {
        let subject = cfg.status_subject(&node.to_string());
        let payload = probe_payload(instance, &crate::status::hostname());
        let (nc, live, instance) = (self.nc.clone(), self.live.clone(), instance.to_string());
        let inbox = nc.new_inbox();
        let sub = nc
            .subscribe(&inbox)
            .map_err(|source| TransportError::Setup {
                what: "subscribe to the probe inbox".into(),
                source,
            })?;
        std::thread::Builder::new()
            .name("twin-probe".into())
            .spawn(move || {
                while live.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    if nc.publish_request(&subject, &inbox, &payload).is_ok() {
                        let until = sent + window;
                        let mut twins = Vec::new();
                        loop {
                            let left = until.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            match sub.next_timeout(left) {
                                Ok(msg) => {
                                    // from_str, like `status --fleet`: one copy of the parser
                                    let text = std::str::from_utf8(&msg.data).unwrap_or("");
                                    if let Ok(t) = serde_json::from_str::<Twin>(text) {
                                        if t.instance != instance {
                                            twins.push(t);
                                        }
                                    }
                                }
                                Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
                                Err(_) => return, // the connection is closed
                            }
                        }
                        if live.load(Ordering::Relaxed) {
                            found(twins, sent);
                        }
                    }
                    let next = Instant::now() + every;
                    while live.load(Ordering::Relaxed) && Instant::now() < next {
                        std::thread::sleep(SERVICE_POLL);
                    }
                }
            })
            .map_err(|source| TransportError::Setup {
                what: "start the probe thread".into(),
                source,
            })?;
        Ok(())
    }
}

/// Sends one status request to `subject` and collects the answers for `timeout` (or until
/// `want` answers arrived). Connecting has its own deadline (`[nats] connect_timeout_ms`).
pub fn ask_fleet(
    cfg: &Config,
    urls: &str,
    subject: &str,
    want: Option<usize>,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, TransportError> {
    Asker::connect(cfg, urls)?.ask(subject, b"", want, timeout)
}

/// A client connection for requests to the fleet (`status --fleet`, `verify`): one connection
/// for many requests.
pub struct Asker {
    nc: nats::Connection,
}

impl Asker {
    /// Connects within `[nats] connect_timeout_ms`.
    pub fn connect(cfg: &Config, urls: &str) -> Result<Asker, TransportError> {
        let opts = client_options(&cfg.nats)?.with_name("harmonylite status --fleet");
        let (tx, rx) = mpsc::channel();
        let target = urls.to_string();
        // the client's connect has no deadline of its own: a blackholed server would hold us
        std::thread::spawn(move || {
            let _ = tx.send(opts.connect(&target));
        });
        let connect_timeout = Duration::from_millis(cfg.nats.connect_timeout_ms);
        let connect_err = |source| TransportError::Connect {
            urls: redact_urls(urls),
            source,
            auth: cfg.nats.auth_methods().first().copied(),
        };
        match rx.recv_timeout(connect_timeout) {
            Ok(r) => r.map(|nc| Asker { nc }).map_err(connect_err),
            Err(_) => {
                let msg = format!(
                    "no connection within {} ms ([nats] connect_timeout_ms)",
                    cfg.nats.connect_timeout_ms
                );
                Err(connect_err(io::Error::new(io::ErrorKind::TimedOut, msg)))
            }
        }
    }

    /// Sends `body` to `subject` and collects the answers for `timeout` (or until `want`
    /// answers arrived; "no responders" from the server ends the wait at once).
    pub fn ask(
        &self,
        subject: &str,
        body: &[u8],
        want: Option<usize>,
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>, TransportError> {
        self.ask_until(subject, body, timeout, |out| {
            want.is_some_and(|n| out.len() >= n)
        })
    }

    /// Like [`Asker::ask`], until `done` says the answers so far are all (an answer sent in
    /// several messages).
    pub fn ask_until(
        &self,
        subject: &str,
        body: &[u8],
        timeout: Duration,
        done: impl Fn(&[Vec<u8>]) -> bool,
    ) -> Result<Vec<Vec<u8>>, TransportError> {
        let setup = |what: &str| {
            let what = what.to_string();
            move |source| TransportError::Setup { what, source }
        };
        let inbox = self.nc.new_inbox();
        let sub = self
            .nc
            .subscribe(&inbox)
            .map_err(setup("subscribe to the reply inbox"))?;
        self.nc
            .publish_request(subject, &inbox, body)
            .map_err(setup(&format!("send the request to {subject}")))?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while !done(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match sub.next_timeout(left) {
                // the server says nobody listens on the subject: no answer will come
                Ok(msg) if msg.is_no_responders() => break,
                Ok(msg) if !msg.data.is_empty() => out.push(msg.data),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = sub.unsubscribe();
        Ok(out)
    }
}
