//! `harmonylite verify [--repair]`: checking that the nodes hold the same rows, and repairing
//! them where they do not.
//!
//! Eventual consistency is checked on the version tables (`__hl_ver_<t>`, see
//! [`crate::capture`]), not on the application's rows: two nodes agree on a table when they hold
//! the same live keys at the same (version, origin). A tombstone and no version row at all
//! both mean "no row" and compare equal, because tombstones are collected at different moments
//! on different nodes.
//!
//! **Digests, a tree computed on demand.** Each key is hashed ([`key_hash`], 64 bits, stable
//! across builds and platforms); a live row's hash mixes its key hash, version and origin
//! ([`row_hash`]). A *bucket* at depth `d` holds the keys whose hash starts with the same `8 d`
//! bits (depth 0: the whole table); its digest is the wrapping sum of its rows' hashes, so one
//! pass over the version table, in key order, gives any set of buckets. A 256-way tree is
//! never stored: the client walks down it, asking for the 256 sub-bucket digests of the
//! buckets that differ, until they hold few enough rows to list ([`ROWS_LIMIT`]). Agreeing
//! tables cost one pass and about a hundred bytes per table and node; a node keeps nothing and
//! does nothing until asked.
//!
//! **Where the nodes answer.** Like `status --fleet`, through NATS request/reply on
//! `<status_subject>.<stream_prefix>.<node_id|all>.verify` (no inbound port), answered on a
//! thread of the node's process with its own read-only connection: one read transaction per
//! request, so a digest and the stream position it is reported with belong together, and the
//! application's writers are never held (WAL). The node loop is not involved.
//!
//! **A comparable point.** The answers are compared only once every node reports the same
//! stream position and an empty outbox in the same read transaction as its digests: then all
//! have applied the same frames and published all their own. The client asks again until they
//! do or `--settle-ms` passes; then it compares anyway and says the nodes were not settled
//! (changes in flight show as differences).
//!
//! **Repair.** For rows listed, the client picks each differing key's newest (version,
//! origin), tombstones included, and asks the node holding it to re-announce it; for buckets
//! too large to list, every node re-announces every row of them. A node re-announces in a
//! [`crate::frame::Repair`] frame on its own subject, carrying each row's original version and
//! origin: receivers apply it with last-writer-wins like any change, so a repair is idempotent
//! and never makes anything newer. A node only re-announces tables it publishes.
//!
//! Layout: this file has the protocol and the hashes; `verify/serve.rs` is the node's side
//! (reading digests and rows, building repair frames), `verify/client.rs` the command.

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

mod client;
mod serve;

pub use client::{run, Options, Outcome, Report, DEFAULT_SETTLE_MS};
pub use serve::answer;

/// Nodes answer on `<status_subject>.<stream_prefix>.<node_id|all>.<SUBJECT_SUFFIX>`.
pub const SUBJECT_SUFFIX: &str = "verify";
/// The protocol's version, in every answer. An answer without it is from an older build.
pub const PROTOCOL: u32 = 1;
/// Sub-buckets of a bucket: one byte of the key hash per level of the tree.
pub const FANOUT: usize = 256;
/// The deepest level asked for (8 bytes of key hash; depth 7 has 2^56 buckets).
pub const MAX_DEPTH: u8 = 7;
/// The client lists rows (and so keys) once the differing buckets hold about this many rows
/// in all; above it, it goes one level down the tree.
pub const ROWS_LIMIT: u64 = 20_000;
/// The most rows one answer lists (about 100 bytes each in the node's memory); past it the
/// answer says it is truncated.
pub const ANSWER_ROWS: usize = 50_000;
/// The most buckets one request names: one pass over the table answers them all, with at
/// most 256 sub-buckets each (4 MiB of counts at most in the node's memory).
pub const MAX_PREFIXES: usize = 1_024;
/// An answer larger than this is sent in several messages (`part` of `parts`), each well
/// under NATS's default 1 MiB `max_payload`.
pub const PART_BYTES: usize = 256 * 1024;
/// Keys shown per table and node pair, at most.
pub const SHOW_KEYS: usize = 20;

/// What a node is asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Position, outbox and one digest per table (all replicated tables when `tables` is
    /// None).
    Digest { tables: Option<Vec<String>> },
    /// The 256 sub-bucket digests and live counts of each bucket `prefixes` names at `depth`.
    Buckets {
        table: String,
        depth: u8,
        prefixes: Vec<u64>,
    },
    /// Every version row (tombstones too) of the buckets `prefixes` names at `depth`.
    Rows {
        table: String,
        depth: u8,
        prefixes: Vec<u64>,
    },
    /// Re-announce the version rows of those buckets (only the keys whose hashes `keys` lists,
    /// when given).
    Repair {
        table: String,
        depth: u8,
        prefixes: Vec<u64>,
        keys: Option<Vec<u64>>,
    },
    /// The client's result, kept by every node for `status` and `/metrics`.
    Report { different: u64, repaired: u64 },
}

/// A request on the wire: JSON with `op` and the fields of that operation. One flat struct,
/// not a tagged enum: serde's tagged enums cost several KiB of binary.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct WireRequest {
    op: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tables: Option<Vec<String>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    table: String,
    depth: u8,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prefixes: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<u64>>,
    different: u64,
    repaired: u64,
}

impl Request {
    pub fn to_json(&self) -> Vec<u8> {
        let mut w = WireRequest::default();
        match self.clone() {
            Request::Digest { tables } => (w.op, w.tables) = ("digest".into(), tables),
            Request::Buckets {
                table,
                depth,
                prefixes,
            } => (w.op, w.table, w.depth, w.prefixes) = ("buckets".into(), table, depth, prefixes),
            Request::Rows {
                table,
                depth,
                prefixes,
            } => (w.op, w.table, w.depth, w.prefixes) = ("rows".into(), table, depth, prefixes),
            Request::Repair {
                table,
                depth,
                prefixes,
                keys,
            } => {
                (w.op, w.table, w.depth, w.prefixes, w.keys) =
                    ("repair".into(), table, depth, prefixes, keys)
            }
            Request::Report {
                different,
                repaired,
            } => (w.op, w.different, w.repaired) = ("report".into(), different, repaired),
        }
        serde_json::to_vec(&w).unwrap_or_default()
    }

    /// Reads a request; the error says what is wrong with it.
    pub fn parse(body: &[u8]) -> Result<Request, String> {
        let w: WireRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let table = || -> Result<String, String> {
            match w.table.is_empty() {
                true => Err(format!("op {} needs a table", w.op)),
                false => Ok(w.table.clone()),
            }
        };
        Ok(match w.op.as_str() {
            "digest" => Request::Digest { tables: w.tables },
            "buckets" => Request::Buckets {
                table: table()?,
                depth: w.depth,
                prefixes: w.prefixes,
            },
            "rows" => Request::Rows {
                table: table()?,
                depth: w.depth,
                prefixes: w.prefixes,
            },
            "repair" => Request::Repair {
                table: table()?,
                depth: w.depth,
                prefixes: w.prefixes,
                keys: w.keys,
            },
            "report" => Request::Report {
                different: w.different,
                repaired: w.repaired,
            },
            op => {
                return Err(format!(
                    "unknown op {op:?} (expected digest, buckets, rows, repair or report)"
                ))
            }
        })
    }
}

/// A node's answer to any request (JSON). Fields not asked for are absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Answer {
    pub node_id: u64,
    pub protocol: u32,
    /// The request could not be served (malformed, unknown table, database error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub position: u64,
    pub outbox: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableDigest>,
    /// Per prefix asked: its non-empty sub-buckets as (index 0..255, digest, live rows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<Vec<(u8, u64, u64)>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<RowEntry>,
    /// More rows matched than one answer lists ([`ANSWER_ROWS`]).
    pub truncated: bool,
    /// Rows re-announced.
    pub repaired: u64,
    /// Rows that could not be re-announced (a live version whose row is gone here).
    pub unsendable: u64,
    /// The stream sequence of the last repair frame published: the client waits until every
    /// node applied up to it before it checks again.
    pub published_seq: u64,
    /// This message is part `part` (from 0) of `parts`: a large answer's `buckets` or `rows`
    /// are split over several messages, in order.
    pub part: u32,
    pub parts: u32,
}

/// One table's digest on one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TableDigest {
    pub table: String,
    /// This node receives the other nodes' changes of it (else it is not compared).
    pub replicates: bool,
    pub publishes: bool,
    pub paused: bool,
    /// Live rows.
    pub rows: u64,
    pub digest: u64,
    /// The origins of its live rows: nodes that should answer.
    pub origins: Vec<u64>,
}

/// One version row: key hash, version, origin, tombstone, and the key for display.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowEntry {
    pub h: u64,
    pub v: u64,
    pub n: u64,
    pub d: bool,
    pub k: Vec<String>,
}

/// FNV-1a over the canonical bytes of a key, then a 64-bit finalizer for an even spread of
/// the leading bytes (the tree's buckets). Stable: nodes of different builds compare it.
pub fn key_hash<'a>(key: impl Iterator<Item = ValueRef<'a>>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for v in key {
        match v {
            ValueRef::Null => eat(&[0]),
            ValueRef::Integer(i) => {
                eat(&[1]);
                eat(&i.to_le_bytes());
            }
            ValueRef::Real(f) => {
                eat(&[2]);
                eat(&f.to_bits().to_le_bytes());
            }
            ValueRef::Text(t) => {
                eat(&[3]);
                eat(&(t.len() as u64).to_le_bytes());
                eat(t);
            }
            ValueRef::Blob(b) => {
                eat(&[4]);
                eat(&(b.len() as u64).to_le_bytes());
                eat(b);
            }
        }
    }
    mix(h)
}

/// A live row's contribution to its bucket's digest.
pub fn row_hash(key: u64, version: u64, origin: u64) -> u64 {
    mix(key ^ mix(version.wrapping_add(mix(origin ^ 0x9e37_79b9_7f4a_7c15))))
}

/// The splitmix64 finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bucket of `hash` at `depth` (its first `8 depth` bits; 0 at depth 0).
pub fn prefix(hash: u64, depth: u8) -> u64 {
    match depth {
        0 => 0,
        d => hash >> (64 - 8 * d.min(8) as u32),
    }
}

/// A key value for people, as an SQL literal: integers and reals as digits, text in single
/// quotes (doubled inside), blobs as `x'hex'`, `NULL`.
pub fn key_text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''")),
        ValueRef::Blob(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("x'{hex}'")
        }
    }
}

/// The `node_id` of each answer to a status request (other fields ignored; an answer that is
/// not a status object is left out).
pub fn node_ids(answers: &[Vec<u8>]) -> Vec<u64> {
    #[derive(Deserialize)]
    struct Id {
        node_id: Option<u64>,
    }
    answers
        .iter()
        .filter_map(|a| serde_json::from_slice::<Id>(a).ok()?.node_id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_are_stable_and_tell_storage_classes_apart() {
        let h = |v: &[ValueRef]| key_hash(v.iter().copied());
        // fixed values: nodes of different builds and platforms must agree on them
        assert_eq!(h(&[ValueRef::Integer(1)]), h(&[ValueRef::Integer(1)]));
        assert_eq!(
            h(&[ValueRef::Integer(1)]),
            0x5d3a_b85a_d03d_30f9_u64,
            "{:#x}",
            h(&[ValueRef::Integer(1)])
        );
        assert_ne!(h(&[ValueRef::Integer(1)]), h(&[ValueRef::Real(1.0)]));
        assert_ne!(h(&[ValueRef::Text(b"1")]), h(&[ValueRef::Blob(b"1")]));
        // a composite key is not the concatenation of its parts
        assert_ne!(
            h(&[ValueRef::Text(b"ab"), ValueRef::Text(b"c")]),
            h(&[ValueRef::Text(b"a"), ValueRef::Text(b"bc")])
        );
    }

    #[test]
    fn row_hashes_change_with_version_and_origin() {
        let k = key_hash([ValueRef::Integer(7)].into_iter());
        assert_ne!(row_hash(k, 10, 1), row_hash(k, 11, 1));
        assert_ne!(row_hash(k, 10, 1), row_hash(k, 10, 2));
    }

    #[test]
    fn prefixes_are_the_leading_bytes() {
        let h = 0xab_cd_ef_01_23_45_67_89_u64;
        assert_eq!(prefix(h, 0), 0);
        assert_eq!(prefix(h, 1), 0xab);
        assert_eq!(prefix(h, 2), 0xabcd);
        assert_eq!(prefix(h, 7), h >> 8);
    }

    #[test]
    fn requests_read_and_bad_ones_say_why() {
        let r = Request::parse(br#"{"op":"digest"}"#).unwrap();
        assert_eq!(r, Request::Digest { tables: None });
        let r = Request::parse(br#"{"op":"rows","table":"t","depth":1,"prefixes":[3]}"#).unwrap();
        assert!(matches!(r, Request::Rows { depth: 1, .. }));
        let all = [
            Request::Digest {
                tables: Some(vec!["t".into()]),
            },
            Request::Repair {
                table: "t".into(),
                depth: 2,
                prefixes: vec![1, 2],
                keys: Some(vec![9]),
            },
            Request::Report {
                different: 3,
                repaired: 2,
            },
        ];
        for r in all {
            assert_eq!(Request::parse(&r.to_json()), Ok(r));
        }
        let e = Request::parse(br#"{"op":"drop"}"#).unwrap_err();
        assert!(e.contains("unknown op \"drop\""), "{e}");
        assert!(Request::parse(br#"{"op":"rows"}"#)
            .unwrap_err()
            .contains("needs a table"));
        assert!(Request::parse(b"\x00garbage").is_err());
    }

    #[test]
    fn keys_read_as_sql_literals() {
        assert_eq!(key_text(ValueRef::Integer(-7)), "-7");
        assert_eq!(key_text(ValueRef::Text(b"it's")), "'it''s'");
        assert_eq!(key_text(ValueRef::Blob(&[0, 255])), "x'00ff'");
        assert_eq!(key_text(ValueRef::Real(1.5)), "1.5");
        assert_eq!(key_text(ValueRef::Null), "NULL");
    }
}
