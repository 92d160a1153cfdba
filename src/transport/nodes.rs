//! The node registry: a key-value bucket `<stream>-nodes` where each node keeps one small
//! record (key: its id) that says how old a change it may still publish and below which
//! version it has collected tombstones (see [`crate::tombstones`]). Only the newest value per
//! key is kept; the server stamps each with its own clock, so "seen within `node_ttl`" never
//! depends on a node's clock. Behind a leaf node the record is written through the hub's
//! JetStream domain (see [`Transport::kv_write`]); reads go through the JetStream API, which
//! the leaf already sends there.

use std::io;
use std::time::Instant;

use nats::jetstream::SubscribeOptions;

use super::{Transport, API_TIMEOUT};

/// One node's record as read back, with the server's time of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node: u64,
    pub value: String,
    /// When the server stored it, Unix milliseconds (server clock).
    pub written_ms: u64,
}

fn bucket(stream: &str) -> String {
    format!("{stream}-nodes")
}

fn err(what: &str) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Transport {
    /// `e`, or the server's refusal if it reported one meanwhile (a refused request only times
    /// out; the refusal comes on its own, naming the subject).
    fn or_refusal(&self, e: io::Error) -> io::Error {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_some() {
            let m = r.take().unwrap_or_default();
            return io::Error::new(io::ErrorKind::PermissionDenied, m);
        }
        e
    }

    fn nodes_kv(&self, replicas: usize) -> io::Result<nats::kv::Store> {
        let name = bucket(&self.stream);
        match self.js.key_value(&name).map_err(|e| self.or_refusal(e)) {
            Ok(k) => Ok(k),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(e),
            Err(_) => self
                .js
                .create_key_value(&nats::kv::Config {
                    bucket: name.clone(),
                    description: "HarmonyLite node records: oldest change each node may still publish, tombstone horizon".into(),
                    history: 1,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .map_err(err(&format!("create key-value bucket {name}"))),
        }
    }

    /// Writes this node's record (creating the bucket if needed).
    pub fn put_node_record(&self, node: u64, value: &str, replicas: usize) -> io::Result<()> {
        let kv = self.nodes_kv(replicas).map_err(|e| self.or_refusal(e))?;
        let key = node.to_string();
        self.kv_write(&kv, &format!("KV_{}", bucket(&self.stream)), |kv| {
            kv.put(&key, value)
        })
        .map(|_| ())
        .map_err(err("write this node's record"))
        .map_err(|e| self.or_refusal(e))
    }

    /// Every node's newest record. Reads the bucket's stream with an ordered consumer that
    /// delivers the last value per key, each wait bounded by [`API_TIMEOUT`].
    pub fn node_records(&self, replicas: usize) -> io::Result<Vec<NodeRecord>> {
        self.read_records(replicas).map_err(|e| self.or_refusal(e))
    }

    fn read_records(&self, replicas: usize) -> io::Result<Vec<NodeRecord>> {
        let kv = self.nodes_kv(replicas)?;
        let stream = format!("KV_{}", bucket(&self.stream));
        let keys = self
            .js
            .stream_info(&stream)
            .map_err(err("read the node records' stream"))?
            .state
            .messages;
        let mut out = Vec::new();
        if keys == 0 {
            return Ok(out);
        }
        let prefix = format!("$KV.{}.", kv.bucket());
        let sub = self
            .js
            .subscribe_with_options(
                &format!("{prefix}>"),
                // bound to the stream by name: no stream lookup (`$JS.API.STREAM.NAMES`) that a
                // gateway's permissions would have to allow
                &SubscribeOptions::bind_stream(stream.clone())
                    .deliver_last_per_subject()
                    .ack_none(),
            )
            .map_err(err("read the node records"))?;
        let deadline = Instant::now() + API_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = sub
                .next_timeout(left)
                .map_err(err("read the node records"))?;
            let Some(info) = m.jetstream_message_info() else {
                continue;
            };
            let pending = info.pending;
            let written_ms = (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
            let deleted = m
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some();
            if let (Some(node), false) = (
                m.subject
                    .strip_prefix(&prefix)
                    .and_then(|k| k.parse::<u64>().ok()),
                deleted,
            ) {
                out.push(NodeRecord {
                    node,
                    value: String::from_utf8_lossy(&m.data).into_owned(),
                    written_ms,
                });
            }
            if pending == 0 {
                break;
            }
        }
        let _ = sub.unsubscribe();
        Ok(out)
    }
}
