//! NATS JetStream: connection, stream and consumer setup, pipelined publish-with-ack, fetch.
//!
//! The only module that touches the `nats` crate (deprecated upstream; kept behind this wall so
//! it can be replaced). `js.publish` waits about 5 ms per message, so publishes go out with a
//! reply inbox and their acks are read from one subscription: many frames in flight at once.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nats::jetstream::{
    AckPolicy, BatchOptions, ConsumerConfig, DeliverPolicy, JetStream, PullSubscribeOptions,
    PullSubscription, ReplayPolicy, StorageType, StreamConfig,
};

use crate::apply::Incoming;
use crate::config::{Config, ConsumerFilter};

mod nodes;
mod snapstore;
mod status_service;
pub use nodes::NodeRecord;
pub use snapstore::{
    discard as discard_download, download_object, state_path as download_state_path, Fetched,
    Pointer, SnapStore,
};
pub use status_service::{ask_fleet, probe_payload, prober, Asker, Publish, Twin};

/// Deadline for every acknowledgement of one publish batch.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a liveness probe (PING answered by PONG), e.g. before the shutdown flush.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of the headers the server counts against `max_payload` with each frame (the
/// `Nats-Msg-Id` header is about 70 bytes): frames are at most `max_payload` minus this.
pub const HEADER_ALLOWANCE: usize = 256;
/// Bytes one fetch may hold in memory: a batch asks for this many bytes' worth of frames of
/// the largest size (at least one frame, at most [`FETCH_BATCH`] frames). Four times a publish
/// round ([`crate::node::ROUND_BYTES`]): a writer reads its own frames back to move its
/// position, and a fetch no larger than a round let it fall behind its own output (frames are
/// counted at their largest size here, compressed in the round), so a stream keeping few
/// messages dropped them before it read them and it saw a hole (`tests/memory.rs`).
pub const FETCH_BYTES: usize = 8 * 1024 * 1024;
/// How often a wait for acks looks at the link state.
const ACK_POLL: Duration = Duration::from_millis(100);
/// Deadline for stream and consumer management requests.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Most messages asked for in one pull request (see [`FETCH_BYTES`]).
pub const FETCH_BATCH: usize = 32;
/// How long one pull request waits on the server. Messages are delivered as soon as they
/// arrive, so a long wait costs no latency; it saves wakeups and, on a metered link, bytes: an
/// idle node's renewal and the server's answer to it were 430 payload bytes every 30 s
/// (3 MB a day). Liveness does not depend on it (the PING of `[nats] ping_interval_ms` does).
const PULL_EXPIRES: Duration = Duration::from_secs(300);
/// A request whose end (batch delivered, or the server's 408) is still unseen this long after
/// its expiry was lost (a reconnect); another is sent.
const PULL_GRACE: Duration = Duration::from_secs(5);
/// The server redelivers a frame not acked this long after delivery. Acks are sent once a
/// batch is applied (one transaction, a few milliseconds to seconds on an SD card), so 30 s is
/// never reached by a live node; redelivery is harmless anyway (apply is idempotent).
const CONSUMER_ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages the server may hand out before our acks.
const MAX_ACK_PENDING: i64 = 4096;

#[derive(Debug)]
pub enum TransportError {
    /// `auth`: the configured authentication method's keys, for the hint on a refusal.
    Connect {
        urls: String,
        source: io::Error,
        auth: Option<&'static str>,
    },
    /// A credentials or TLS file named in `[nats]` is missing or wrong (the message names it).
    Files(String),
    Setup {
        what: String,
        source: io::Error,
    },
    Publish {
        subject: String,
        reason: String,
    },
    Fetch(io::Error),
}

impl TransportError {
    /// Whether the condition passes by itself (a server down, a link that stalled, a timeout).
    /// Not transient: a refusal only the operator can lift (credentials the server rejects, a
    /// permission the account lacks, a key file missing). The node retries those too, since
    /// the operator may fix them at any time, but at its longest backoff and as an error.
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Files(_) => false,
            TransportError::Connect { source, .. }
            | TransportError::Setup { source, .. }
            | TransportError::Fetch(source) => !refusal(&source.to_string()),
            TransportError::Publish { reason, .. } => !refusal(reason),
        }
    }
}

/// A server's answer that no retry changes: an authorization or permissions violation.
pub fn is_refusal(message: &str) -> bool {
    refusal(message)
}

/// The server had no subscriber for a request's subject (nats-server's 503 status).
pub fn no_responders(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound && e.to_string().contains("no responders")
}

fn refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("authorization violation")
        || m.contains("permissions violation")
        || m.contains("authentication expired")
        || m.contains("authentication revoked")
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Connect { urls, source, auth } => {
                write!(
                    f,
                    "cannot connect to NATS at {urls}: {source}{}",
                    connect_hint(source, *auth)
                )
            }
            TransportError::Files(msg) => f.write_str(msg),
            TransportError::Setup { what, source } => write!(f, "{what}: {source}"),
            TransportError::Publish { subject, reason } => {
                write!(f, "publish to {subject} not acknowledged: {reason}")
            }
            TransportError::Fetch(e) => write!(f, "fetch from the stream failed: {e}"),
        }
    }
}

impl std::error::Error for TransportError {}

impl Drop for Transport {
    fn drop(&mut self) {
        self.live.store(false, Ordering::Relaxed);
    }
}

/// What failed and which keys to check, for a refused connection. The client's words
/// ("Authorization Violation", a TLS alert) say what failed, not which of our keys to look at.
fn connect_hint(e: &io::Error, auth: Option<&str>) -> String {
    let text = e.to_string().to_ascii_lowercase();
    if text.contains("authorization violation") {
        match auth {
            Some(keys) => format!(" (authorization failed: the server refused [nats] {keys})"),
            None => " (authorization failed: the server wants credentials; set [nats] user_name/user_password, token, seed_file or creds_file)".into(),
        }
    } else if text.contains("invalid peer certificate") {
        " (TLS: the server's certificate is not trusted; set [nats] ca_file to the CA that signed it, and check the host in [nats] urls)".into()
    } else if text.contains("received fatal alert") {
        " (TLS: the server refused this node's client certificate; check [nats] cert_file and key_file)".into()
    } else if text.contains("tls") || text.contains("certificate") {
        " (TLS: check [nats] ca_file, cert_file and key_file)".into()
    } else {
        String::new()
    }
}

/// Client options for the configured authentication method (the config allows at most one).
/// The files are checked here, at every attempt, so a fixed file is used by the next one and a
/// missing file is reported by key and path (the client would only say "No such file").
fn auth_options(n: &crate::config::Nats) -> Result<nats::Options, TransportError> {
    n.check_files().map_err(TransportError::Files)?;
    if let (Some(user), Some(pass)) = (&n.user_name, &n.user_password) {
        return Ok(nats::Options::with_user_pass(user, pass.expose()));
    }
    if let Some(token) = &n.token {
        return Ok(nats::Options::with_token(token.expose()));
    }
    if let Some(kp) = n.user_seed().map_err(TransportError::Files)? {
        // signing with a seeded key pair does not fail; an empty signature would be refused
        return Ok(nats::Options::with_nkey(&kp.public_key(), move |nonce| {
            kp.sign(nonce).unwrap_or_default()
        }));
    }
    if let Some(creds) = &n.creds_file {
        // parse once here for an error that names the file; the client re-reads it per connect
        let text = std::fs::read_to_string(creds).map_err(|e| {
            TransportError::Files(format!(
                "[nats] creds_file: cannot read {}: {e}",
                creds.display()
            ))
        })?;
        nats::Options::with_static_credentials(&text).map_err(|e| {
            TransportError::Files(format!("[nats] creds_file: {}: {e}", creds.display()))
        })?;
        return Ok(nats::Options::with_credentials(creds));
    }
    Ok(nats::Options::new())
}

/// Authentication and TLS options from `[nats]` (the callbacks are the caller's).
fn client_options(n: &crate::config::Nats) -> Result<nats::Options, TransportError> {
    // The client buffers publishes made while it reconnects, in a buffer it allocates zeroed up
    // front (8 MiB by default; musl's calloc touches every page, so the static build held 8 MiB
    // more RSS per connection). We publish only while the link is up and retry with the same
    // message ids, so a small buffer loses nothing.
    let mut opts = auth_options(n)?
        .reconnect_buffer_size(RECONNECT_BUFFER)
        // Deadlines of the patched client (vendor/nats/PATCHES.md): a stalled link is found by
        // the liveness PING, and no connect, handshake or write waits on it forever.
        .ping_interval(Duration::from_millis(n.ping_interval_ms))
        .io_timeout(Duration::from_millis(n.connect_timeout_ms))
        .write_timeout(Duration::from_millis(n.write_timeout_ms));
    if let Some(ca) = &n.ca_file {
        opts = opts.add_root_certificate(ca);
    }
    if let (Some(cert), Some(key)) = (&n.cert_file, &n.key_file) {
        opts = opts.client_cert(cert, key);
    }
    Ok(opts)
}

/// A handshake step that hit its deadline says so (the socket says only "Resource temporarily
/// unavailable").
fn name_deadline(e: io::Error, timeout_ms: u64) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout_ms} ms ([nats] connect_timeout_ms): the link stalls or the server does not respond"),
        ),
        _ => e,
    }
}

/// `urls` for logs: credentials written into a URL (`nats://user:secret@host`) become `***`.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
            (None, Some(at)) => format!("***{}", &u[at..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The client's own reconnect delay: doubling from `min_ms` to `max_ms`, with up to 25% jitter.
fn reconnect_delay(min_ms: u64, max_ms: u64, attempts: usize) -> Duration {
    let base = min_ms.saturating_mul(1u64 << attempts.min(20)).min(max_ms);
    let jitter = (crate::hlc::now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % (base / 4 + 1);
    Duration::from_millis((base + jitter).min(max_ms))
}

/// A live connection with our stream, our consumer and our ack inbox.
pub struct Transport {
    nc: nats::Connection,
    js: JetStream,
    stream: String,
    ack_inbox: String,
    acks: nats::Subscription,
    batch_no: u64,
    pull: Option<Puller>,
    /// Set by the client's callbacks while the TCP link is down.
    disconnected: Arc<AtomicBool>,
    /// Set by the client's reconnect callback: the outstanding pull request is gone.
    reconnected: Arc<AtomicBool>,
    /// Set once setup completed; cleared on drop, so closing does not log "disconnected".
    live: Arc<AtomicBool>,
    max_payload: usize,
    /// The stream restarted its sequence below our cursor; the caller must reset its cursor.
    pub cursor_reset: bool,
    /// The newest refusal the server reported on this connection (`-ERR 'Permissions
    /// Violation ...'`): it comes on its own, not as the answer to a publish.
    refused: Arc<std::sync::Mutex<Option<String>>>,
    /// Key-value writes go through this API prefix (`$JS.<domain>.API.`) once a bare `$KV.`
    /// write got no responders (see [`Transport::kv_write`]).
    kv_api_prefix: std::sync::Mutex<Option<String>>,
}

struct Puller {
    sub: PullSubscription,
    /// The durable consumer's name.
    durable: String,
    /// The outstanding pull request, if any. At most one is outstanding, so an idle node sends
    /// one request per [`PULL_EXPIRES`], not one per poll.
    request: Option<PullRequest>,
    last: Option<nats::Message>,
}

struct PullRequest {
    /// Messages it may still deliver.
    remaining: usize,
    expires_at: Instant,
}

/// A stream's size and sequence range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Cuts a transport's link from another thread (the stop signal's): a call blocked on a
/// stalled link returns at once with an error. Holds no connection alive.
#[derive(Clone, Debug)]
pub struct LinkCutter(nats::Interrupter);

impl LinkCutter {
    pub fn cut(&self) {
        self.0.interrupt();
    }
}

/// A published frame: subject, message id and bytes.
pub struct Outgoing {
    /// `<subject_prefix>.<table>.<node_id>` ([`Config::table_subject`]).
    pub subject: String,
    pub msg_id: String,
    pub data: Vec<u8>,
}

/// The stream's limits from `[replication_log]`, as the server states them (no limit: -1 for
/// counts and bytes, 0 for age).
fn stream_limits(cfg: &Config) -> (i64, Duration, i64) {
    let r = &cfg.replication_log;
    let bytes = if r.max_bytes == 0 {
        -1
    } else {
        r.max_bytes as i64
    };
    (
        r.max_entries,
        Duration::from_secs(r.max_age_hours * 3600),
        bytes,
    )
}

/// See [`client_options`].
const RECONNECT_BUFFER: usize = 64 * 1024;

impl Transport {
    /// Connects, makes sure the stream exists, and (when replicating) binds our durable consumer
    /// at `cursor + 1`: the database, not the server, says where we are.
    pub fn connect(
        cfg: &Config,
        urls: &str,
        node: u64,
        mut cursor: u64,
        receive: &ConsumerFilter,
    ) -> Result<Transport, TransportError> {
        let disconnected = Arc::new(AtomicBool::new(false));
        let opts = client_options(&cfg.nats)?;
        let (down, up) = (disconnected.clone(), disconnected.clone());
        let since = Arc::new(std::sync::Mutex::new(Instant::now()));
        let since_up = since.clone();
        // The server forgets our pull request when the link drops: ask anew after a reconnect.
        let reconnected = Arc::new(AtomicBool::new(false));
        let renew = reconnected.clone();
        let live = Arc::new(AtomicBool::new(false));
        let live_down = live.clone();
        let refused = Arc::new(std::sync::Mutex::new(None));
        let refused_cb = refused.clone();
        let (min, max) = (cfg.nats.reconnect_min_ms, cfg.nats.reconnect_max_ms);
        let nc = opts
            .with_name(&format!("harmonylite node {node}"))
            .error_callback(move |e| {
                let msg = e.to_string();
                if refusal(&msg) {
                    if let Some(more) = crate::logging::repeated(&format!("server refusal {msg}")) {
                        log::error!("the NATS server refuses what this node did: {msg}; this node's user lacks the permission (fix the server's permissions, or this node's node_id if it is wrong){more}");
                    }
                    *refused_cb.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
                } else {
                    log::warn!("the NATS server reports: {msg}");
                }
            })
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| reconnect_delay(min, max, attempts))
            .disconnect_callback(move || {
                down.store(true, Ordering::Relaxed);
                *since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                // a connection dropped after a failed setup, or at shutdown, is not news
                if live_down.load(Ordering::Relaxed) {
                    log::warn!("nats disconnected; reconnecting with backoff");
                }
            })
            .reconnect_callback(move || {
                up.store(false, Ordering::Relaxed);
                renew.store(true, Ordering::Relaxed);
                crate::metrics::add(crate::metrics::Counter::Reconnects, 1);
                let lost = since_up.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                log::info!("nats reconnected after {:.1} s", lost.as_secs_f64());
            })
            .connect(urls)
            .map_err(|source| TransportError::Connect {
                urls: redact_urls(urls),
                source: name_deadline(source, cfg.nats.connect_timeout_ms),
                auth: cfg.nats.auth_methods().first().copied(),
            })?;
        let js = nats::jetstream::new(nc.clone());
        let stream = cfg.nats.stream_prefix.clone();
        let filter = format!("{}.>", cfg.nats.subject_prefix);
        let setup = |what: &str| {
            let what = what.to_string();
            move |source| TransportError::Setup { what, source }
        };
        let mut cursor_reset = false;
        match js.stream_info(&stream) {
            Ok(info) => {
                if cursor > info.state.last_seq {
                    // The stream was deleted and created again: its sequence restarted.
                    log::warn!(
                        "stream {stream} ends at seq {} but this node applied up to {cursor}: the stream was recreated; reading it from the start",
                        info.state.last_seq
                    );
                    cursor = 0;
                    cursor_reset = true;
                }
                if !info.config.subjects.iter().any(|s| s == &filter) {
                    log::warn!(
                        "stream {stream} exists with subjects {:?}, not {filter}: check [nats] subject_prefix on every node",
                        info.config.subjects
                    );
                }
                let want = stream_limits(cfg);
                let have = (
                    info.config.max_msgs,
                    info.config.max_age,
                    info.config.max_bytes,
                );
                if have != want {
                    let show = |(m, a, b): (i64, Duration, i64)| {
                        format!(
                            "max_entries={m} max_age_hours={} max_bytes={b}",
                            a.as_secs() / 3600
                        )
                    };
                    log::info!(
                        "stream {stream} keeps the limits it was created with ({}), not this node's ([replication_log] {}); change them on the server (nats stream edit {stream})",
                        show(have),
                        show(want)
                    );
                }
            }
            Err(_) => {
                let (max_msgs, max_age, max_bytes) = stream_limits(cfg);
                js.add_stream(StreamConfig {
                    name: stream.clone(),
                    subjects: vec![filter.clone()],
                    max_msgs,
                    max_age,
                    max_bytes,
                    num_replicas: cfg.replication_log.replicas,
                    storage: StorageType::File,
                    ..Default::default()
                })
                .map_err(setup(&format!("create stream {stream}")))?;
                log::info!(
                    "stream created name={stream} subjects={filter} max_entries={} max_age_hours={} max_bytes={}",
                    cfg.replication_log.max_entries,
                    cfg.replication_log.max_age_hours,
                    cfg.replication_log.max_bytes
                );
            }
        }
        let ack_inbox = nc.new_inbox();
        let acks = nc
            .subscribe(&format!("{ack_inbox}.>"))
            .map_err(setup("subscribe to the ack inbox"))?;
        let (filter_subject, filter_subjects) = match receive {
            ConsumerFilter::All(all) | ConsumerFilter::One(all) => (all.clone(), Vec::new()),
            ConsumerFilter::Subjects(list) => (String::new(), list.clone()),
            ConsumerFilter::Nothing => (String::new(), Vec::new()),
        };
        let pull = if *receive != ConsumerFilter::Nothing {
            let durable = format!("hl-{node}");
            let _ = js.delete_consumer(&stream, &durable);
            let (deliver_policy, opt_start_seq) = if cursor > 0 {
                (DeliverPolicy::ByStartSeq, Some(cursor + 1))
            } else {
                (DeliverPolicy::All, None)
            };
            let info = js
                .add_consumer(
                &stream,
                ConsumerConfig {
                    durable_name: Some(durable.clone()),
                    deliver_policy,
                    opt_start_seq,
                    ack_policy: AckPolicy::All,
                    ack_wait: CONSUMER_ACK_WAIT,
                    filter_subject,
                    filter_subjects,
                    replay_policy: ReplayPolicy::Instant,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .map_err(|source| {
                let what = format!("create consumer {durable} on stream {stream}");
                match receive {
                    // a server before 2.10 ignores the list and refuses a consumer without a filter
                    ConsumerFilter::Subjects(list) => TransportError::Setup {
                        what: format!("{what} filtered on {} subjects ([table.*] replicate = false needs NATS server 2.10 or newer)", list.len()),
                        source,
                    },
                    _ => TransportError::Setup { what, source },
                }
            })?;
            if matches!(receive, ConsumerFilter::Subjects(_))
                && info.config.filter_subjects.is_empty()
            {
                log::warn!("the NATS server ignored the consumer's filter_subjects (it is older than 2.10): tables with replicate = false are downloaded and then dropped; upgrade nats-server to save the traffic");
            }
            // the client checks the subject against the consumer's single filter, if it has one
            let bind = match receive {
                ConsumerFilter::All(f) | ConsumerFilter::One(f) => f.clone(),
                _ => filter.clone(),
            };
            let sub = js
                .pull_subscribe_with_options(
                    &bind,
                    &PullSubscribeOptions::new()
                        .bind_stream(stream.clone())
                        .durable_name(durable.clone()),
                )
                .map_err(setup(&format!("bind consumer {durable}")))?;
            Some(Puller {
                sub,
                durable,
                request: None,
                last: None,
            })
        } else {
            None
        };
        let max_payload = nc.max_payload();
        Ok(Transport {
            nc,
            js,
            stream,
            ack_inbox,
            acks,
            batch_no: 0,
            pull,
            disconnected,
            reconnected,
            live: {
                live.store(true, Ordering::Relaxed);
                live
            },
            max_payload,
            cursor_reset,
            refused,
            kv_api_prefix: std::sync::Mutex::new(None),
        })
    }

    /// Runs a key-value write (`op` on `store`). Behind a leaf node whose hub runs JetStream
    /// in its own domain, the leaf link denies `$KV.>` (nats-server adds that deny, with
    /// `$JS.API.>` and `$OBJ.>`, on links between domains) and the write gets no responders;
    /// the hub maps `$JS.<domain>.API.$KV.>` back to `$KV.>`. So on "no responders" the
    /// domain is taken from the answer to `$JS.API.STREAM.INFO.<stream>` (the API itself
    /// reaches the hub through the leaf's mapping) and the write is made again through
    /// `$JS.<domain>.API.`; later writes on this connection go that way at once. Directly on
    /// a JetStream server nothing changes: the bare write answers.
    pub(crate) fn kv_write<T>(
        &self,
        store: &nats::kv::Store,
        stream: &str,
        op: impl Fn(&nats::kv::Store) -> io::Result<T>,
    ) -> io::Result<T> {
        let prefix = self
            .kv_api_prefix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let via_domain = prefix.is_some();
        match op(&store.clone().with_api_prefix(prefix)) {
            Err(e) if !via_domain && no_responders(&e) => {
                let Some(prefix) = self.domain_api_prefix(stream) else {
                    return Err(e);
                };
                let r = op(&store.clone().with_api_prefix(Some(prefix.clone())));
                if r.is_ok() {
                    log::info!("key-value writes go through {prefix}$KV.> (a leaf node between this node and the JetStream domain does not pass $KV.> itself)");
                    *self.kv_api_prefix.lock().unwrap_or_else(|e| e.into_inner()) = Some(prefix);
                }
                r
            }
            r => r,
        }
    }

    /// `$JS.<domain>.API.` for the JetStream domain `stream` lives in, if it has one.
    fn domain_api_prefix(&self, stream: &str) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            domain: String,
        }
        let m = self
            .nc
            .request_timeout(&format!("$JS.API.STREAM.INFO.{stream}"), b"", API_TIMEOUT)
            .ok()?;
        let a: Answer = serde_json::from_slice(&m.data).ok()?;
        let ok = !a.domain.is_empty()
            && !a
                .domain
                .contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace());
        ok.then(|| format!("$JS.{}.API.", a.domain))
    }

    /// A refusal the server reported for the subject of one of `frames`, if any (taken).
    fn refusal_of(&self, frames: &[Outgoing]) -> Option<String> {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let ours = r.as_deref().is_some_and(|m| {
            frames
                .iter()
                .any(|f| m.contains(&format!("\"{}\"", f.subject)))
        });
        if ours {
            r.take()
        } else {
            None
        }
    }

    /// The newest refusal the server reported on this connection, if any (taken).
    pub fn take_refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The largest frame the server accepts: its `max_payload` less the headers sent with it.
    pub fn max_frame(&self) -> usize {
        self.max_payload.saturating_sub(HEADER_ALLOWANCE).max(1024)
    }

    /// Frames of up to `max_frame` bytes asked for in one pull request.
    pub fn fetch_batch(max_frame: usize) -> usize {
        (FETCH_BYTES / max_frame.max(1)).clamp(1, FETCH_BATCH)
    }

    /// See [`LinkCutter`].
    pub fn cutter(&self) -> LinkCutter {
        LinkCutter(self.nc.interrupter())
    }

    /// Whether the server answers a PING within [`PROBE_TIMEOUT`] (for the shutdown flush:
    /// a link that stalled but is not yet found out would only hold the exit).
    pub fn answers(&self) -> bool {
        self.is_connected() && self.nc.flush_timeout(PROBE_TIMEOUT).is_ok()
    }

    pub fn is_connected(&self) -> bool {
        !self.disconnected.load(Ordering::Relaxed)
    }

    /// First sequence still held by the stream (older messages were discarded by its limits).
    pub fn first_seq(&self) -> Option<u64> {
        self.stream_state().map(|s| s.first_seq)
    }

    /// The stream's counters, as the server reports them.
    pub fn stream_state(&self) -> Option<StreamStats> {
        self.js.stream_info(&self.stream).ok().map(|i| StreamStats {
            messages: i.state.messages,
            bytes: i.state.bytes,
            first_seq: i.state.first_seq,
            last_seq: i.state.last_seq,
        })
    }

    /// The stream's last sequence, if this node's consumer has nothing left to deliver up to it
    /// and every message it delivered was acknowledged. A consumer filtered on some tables
    /// never sees the other tables' messages: this is how far its position may advance past
    /// them (the stream's last sequence is read first, so a message matching the filter
    /// published up to it is either pending or delivered, and then unacknowledged or applied).
    pub fn quiet_position(&self) -> Option<u64> {
        let p = self.pull.as_ref()?;
        let last = self.js.stream_info(&self.stream).ok()?.state.last_seq;
        let info = self.js.consumer_info(&self.stream, &p.durable).ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(last)
    }

    /// Publishes every frame with its message id and waits until JetStream acknowledged all of
    /// them. Any missing or negative ack fails the whole batch; retrying it is safe because the
    /// ids let the server drop the copies it already stored.
    ///
    /// `abort` is looked at while acks are awaited (the stop signal): the wait then ends at
    /// once with an error, and the frames stay in the outbox.
    pub fn publish_all(
        &mut self,
        frames: &[Outgoing],
        timeout: Duration,
        abort: &dyn Fn() -> bool,
    ) -> Result<(), TransportError> {
        if frames.is_empty() {
            return Ok(());
        }
        self.batch_no += 1;
        let prefix = format!("{}.{}", self.ack_inbox, self.batch_no);
        let fail = |reason: String| TransportError::Publish {
            subject: frames[0].subject.clone(),
            reason,
        };
        for (i, f) in frames.iter().enumerate() {
            let mut headers = nats::HeaderMap::new();
            headers.insert(nats::header::NATS_MSG_ID, f.msg_id.clone());
            self.nc
                .publish_with_reply_or_headers(
                    &f.subject,
                    Some(&format!("{prefix}.{i}")),
                    Some(&headers),
                    &f.data,
                )
                .map_err(|e| fail(e.to_string()))?;
        }
        // No flush here: the client's writer thread sends within ~5 ms, and
        // `flush_timeout` ignores its timeout while the link is down (it waits for a PONG until
        // the reconnect), which would hold SIGTERM hostage. The ack wait below has a deadline.
        let deadline = Instant::now() + timeout;
        let mut acked = vec![false; frames.len()];
        let mut remaining = frames.len();
        while remaining > 0 {
            // a publish the server refuses gets no ack, only an -ERR of its own
            if let Some(r) = self.refusal_of(frames) {
                return Err(fail(r));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail(format!(
                    "{remaining} of {} acks missing after {timeout:?}",
                    frames.len()
                )));
            }
            let msg = match self.acks.next_timeout(left.min(ACK_POLL)) {
                Ok(msg) => msg,
                Err(_) if self.disconnected.load(Ordering::Relaxed) => {
                    return Err(fail(format!(
                        "link lost with {remaining} of {} acks missing",
                        frames.len()
                    )));
                }
                Err(_) if abort() => {
                    return Err(fail(format!(
                        "stopping with {remaining} of {} acks missing",
                        frames.len()
                    )));
                }
                Err(_) => continue,
            };
            // acks of an earlier, timed-out batch carry another batch number
            let Some(i) = msg
                .subject
                .strip_prefix(&prefix)
                .and_then(|s| s.strip_prefix('.'))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            let body = String::from_utf8_lossy(&msg.data);
            if body.contains("\"error\"") || !body.contains("\"seq\"") {
                let status = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(nats::header::STATUS).cloned())
                    .unwrap_or_default();
                return Err(fail(format!(
                    "server answered {}",
                    [body.trim(), status.trim()].join(" ").trim()
                )));
            }
            if i < acked.len() && !acked[i] {
                acked[i] = true;
                remaining -= 1;
            }
        }
        Ok(())
    }

    /// Returns the next messages of the stream, waiting up to `wait` for the first one: at
    /// most [`Transport::fetch_batch`] frames of up to `max_frame` bytes.
    pub fn fetch(
        &mut self,
        wait: Duration,
        max_frame: usize,
    ) -> Result<Vec<Incoming>, TransportError> {
        let batch = Transport::fetch_batch(max_frame);
        let Some(p) = self.pull.as_mut() else {
            return Ok(Vec::new());
        };
        let now = Instant::now();
        if self.reconnected.swap(false, Ordering::Relaxed) {
            // Messages the server handed to the lost connection's pull request are gone with
            // it, and the consumer acks all up to the last acked one: a later ack would skip
            // them for good. The caller rebuilds the consumer at its own cursor instead.
            return Err(TransportError::Fetch(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the link was re-established; reading the stream again from this node's position",
            )));
        }
        if p.request
            .as_ref()
            .is_none_or(|r| now > r.expires_at + PULL_GRACE)
        {
            let expires = Some(PULL_EXPIRES.as_nanos() as usize);
            p.sub
                .request_batch(BatchOptions {
                    batch,
                    expires,
                    no_wait: false,
                })
                .map_err(TransportError::Fetch)?;
            p.request = Some(PullRequest {
                remaining: batch,
                expires_at: now + PULL_EXPIRES,
            });
        }
        let mut out = Vec::new();
        let mut timeout = wait;
        loop {
            match p.sub.next_timeout(timeout) {
                Ok(msg) => {
                    let status = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(nats::header::STATUS))
                        .is_some();
                    if status && msg.data.is_empty() {
                        // 409 and the like: the request is over
                        p.request = None;
                        break;
                    }
                    if let Some(info) = msg.jetstream_message_info() {
                        crate::metrics::add(crate::metrics::Counter::FramesReceived, 1);
                        crate::metrics::add(
                            crate::metrics::Counter::BytesReceived,
                            msg.data.len() as u64,
                        );
                        out.push(Incoming {
                            seq: info.stream_seq,
                            subject: msg.subject.clone(),
                            data: msg.data.clone(),
                        });
                        p.last = Some(msg);
                        if let Some(r) = p.request.as_mut() {
                            r.remaining = r.remaining.saturating_sub(1);
                            if r.remaining == 0 {
                                p.request = None;
                            }
                        }
                    }
                    if out.len() >= batch {
                        break;
                    }
                    timeout = Duration::ZERO; // drain what is already here, then apply
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
                Err(_) => {
                    // the server's 408 (request expired), or the subscription is gone
                    p.request = None;
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Acknowledges everything fetched so far (the consumer acks all up to the last one).
    pub fn ack_fetched(&mut self) -> Result<(), TransportError> {
        if let Some(msg) = self.pull.as_mut().and_then(|p| p.last.take()) {
            msg.ack().map_err(TransportError::Fetch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod redact_tests {
    use super::{redact_urls, TransportError};
    use std::io;

    #[test]
    fn refusals_are_not_transient_outages_are() {
        let io = |m: &str| io::Error::other(m.to_string());
        let setup = |m: &str| TransportError::Setup {
            what: "create consumer hl-17 on stream HLRS".into(),
            source: io(m),
        };
        assert!(!setup(
            "nats: Permissions Violation for Publish to \"$JS.API.CONSUMER.CREATE.HLRS\""
        )
        .is_transient());
        assert!(!TransportError::Publish {
            subject: "hlrs.changes.t.17".into(),
            reason: "Permissions Violation for Publish to \"hlrs.changes.t.17\"".into()
        }
        .is_transient());
        assert!(!TransportError::Files("[nats] seed_file: cannot read x".into()).is_transient());
        assert!(setup("timed out").is_transient());
        assert!(TransportError::Fetch(io("connection reset")).is_transient());
        assert!(TransportError::Connect {
            urls: "nats://127.0.0.1:1".into(),
            source: io("Connection refused (os error 111)"),
            auth: None
        }
        .is_transient());
        assert!(!TransportError::Connect {
            urls: "nats://127.0.0.1:1".into(),
            source: io("Authorization Violation"),
            auth: Some("token")
        }
        .is_transient());
    }

    #[test]
    fn credentials_in_urls_are_hidden() {
        assert_eq!(
            redact_urls("nats://u:pw@h:4222,tls://tok@h2"),
            "nats://***@h:4222,tls://***@h2"
        );
        assert_eq!(redact_urls("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact_urls("u:pw@h:4222"), "***@h:4222");
    }
}
