//! HarmonyLite: a leaderless replication sidecar for SQLite over NATS JetStream.
//!
//! The application keeps writing its SQLite file as before; triggers capture each change into
//! tables inside the same file, the node stamps them with a hybrid logical clock, ships them in
//! postcard frames through a JetStream stream, and applies the other nodes' frames with
//! row-level last-writer-wins. All nodes converge to the same content.
//!
//! The runtime is synchronous: one thread runs the loop, every blocking call has a deadline.
//!
//! # Layout
//! - [`config`]: the TOML file, defaults, validation with errors that name the key;
//!   `config/go.rs` maps or names HarmonyLite-Go's keys.
//! - [`db`]: opening the application's database, reading and writing `__hl_meta`, node id.
//! - [`state`]: the names of our state (every `__hl_meta` key, the shared `__hl_*` tables) and
//!   the node lock (`<db>.hl-lock`).
//! - [`hlc`]: the hybrid logical clock.
//! - [`capture`]: change-log tables and triggers, stamping, reading the outbox.
//! - [`frame`]: the wire format (postcard, byte-bounded batches, fragments, checksum).
//! - [`apply`]: applying remote frames with last-writer-wins, tombstones, no echo, the cursor.
//! - [`gap`]: holes in the stream: detection and the record kept until a snapshot repairs it.
//! - [`tombstones`]: collecting tombstones once no late change can need them (the horizon, the
//!   rejoin rule); the node records live in `transport/nodes.rs`.
//! - [`transport`]: the only user of the `nats` crate (patched for link deadlines, see
//!   `vendor/nats/PATCHES.md`): stream, consumer, publish, fetch, the snapshot buckets
//!   (`transport/snapstore.rs`) and the status service with the probe for another process
//!   using this node's id (`transport/status_service.rs`).
//! - [`embedded`]: the local nats-server started when no server is configured.
//! - [`node`]: the loop that joins them. `Node` is composed of parts that own their fields:
//!   the NATS link (`Link`, `link.rs`), the outbox's bookkeeping (`Outbox`, `publish.rs`, with
//!   the publish round), snapshot scheduling and catch-up (`Snapshots`, `snapshots.rs`), this
//!   node's record and tombstone collection (`Horizon`, `horizon.rs`); schema
//!   watching (`schema_watch.rs`) and the operations hooks (`ops.rs`: liveness,
//!   the status service, duplicate node ids) are `impl Node` methods.
//! - [`snapshot`]: snapshots, database side: a consistent stripped copy, verification, the
//!   last-writer-wins merge into a live database.
//! - [`schema`]: rolling schema changes: recorded definitions, pausing a table.
//! - [`status`]: `harmonylite status`, read from the database; [`fleet`]: `status --fleet`,
//!   asking every node through NATS.
//! - [`metrics`]: counters and lag for `/metrics`; [`health`]: the `/health` verdict;
//!   [`http`]: the tiny server for both (`[prometheus]`, `[health_check]`).
//! - [`verify`]: `harmonylite verify [--repair]`: the nodes' version tables compared through
//!   NATS (digests of a 256-way tree of key-hash buckets, computed on demand by the node's
//!   verify service) and differing rows re-announced at their own version and origin.
//! - [`cleanup`]: `harmonylite cleanup`, removing everything HarmonyLite added to a database.
//! - [`logging`]: the stderr logger (text or JSON lines).
//! - [`retry`]: the one backoff, the retry policies and the shared deadlines (the shutdown
//!   budget).
//!
//! At the bottom, imported by the modules above and importing none of them (`retry` reads
//! `hlc`'s clock): [`state`] (every `__hl_meta` key, the shared `__hl_*` tables, the node
//! lock), [`retry`], [`hlc`].
#![forbid(unsafe_code)]
#![allow(deprecated)] // the sync `nats` crate is deprecated upstream; it is confined to transport

pub mod apply;
pub mod capture;
pub mod cleanup;
pub mod config;
pub mod db;
pub mod embedded;
pub mod fleet;
pub mod frame;
pub mod gap;
pub mod health;
pub mod hlc;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod retry;
pub mod schema;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod tombstones;
pub mod transport;
pub mod verify;
