//! Collecting tombstones without ever letting a late change bring a deleted row back.
//!
//! A deleted row leaves a tombstone in `__hl_ver_<t>` (its key, version, origin, `del = 1`).
//! It exists for one reason: a change of that row stamped *before* the delete that arrives
//! *after* it must lose. Once no such change can arrive any more, the tombstone is dead weight
//! (at one deleted reading a second, 86,400 rows a day).
//!
//! # The horizon
//!
//! Late changes come from two places: frames on the stream this node has not applied yet, and
//! changes another node has not published yet (its outbox, possibly weeks old). Each node
//! therefore keeps a record in the key-value bucket `<stream>-nodes` (see
//! [`crate::transport::NodeRecord`]): `low`, a version every change it will publish from now on
//! is at least (the oldest version in its outbox, or its clock when the outbox is empty), and
//! `collected`, the horizon below which it has collected tombstones itself. The server stamps
//! each record with its own clock.
//!
//! A collection round on node M:
//! 1. reads every record; the nodes whose record the server stored within `node_ttl` of the
//!    newest are *live*; the horizon `H` is the smallest `low` among them (M's own included);
//! 2. reads the stream's last sequence `L`, and waits until M has applied up to `L`;
//! 3. deletes its tombstones with a version below `H`.
//!
//! Why no late change can be older than a collected tombstone `T < H`: a frame a live node N
//! published before writing the record M read was acknowledged, so it sits at a sequence up to
//! `L` and M applied it before step 3; a frame N publishes later carries a version of at least
//! `low_N >= H > T`. Changes a node that is not live (silent longer than `node_ttl`, or never
//! registered) still holds are what the rejoin rule below is for.
//!
//! A node that applied frames from an origin without any record (a build from before node
//! records) collects nothing until that origin registers: its old changes could be anywhere.
//!
//! # A node that was silent longer than `node_ttl`
//!
//! Other nodes may have collected tombstones newer than the changes still in its outbox. The
//! documented rule: before it publishes anything after a connect, a node whose own record is
//! missing or older than `node_ttl` (1) writes its record (so every round from now on counts
//! it), (2) reads all records and takes `X`, the largest `low` or `collected` among them, and
//! (3) stamps every outbox change older than `X` again, with a fresh version above `X`. Any
//! round that did not count it used a horizon of at most `X` (horizons and lows only grow), so
//! the re-stamped changes are newer than every tombstone collected without it. The outcome,
//! the same on every node: **a write made on a node that was away longer than `node_ttl`
//! counts as made when it comes back.** An update of a row deleted elsewhere meanwhile brings
//! the row back with that update, everywhere; within `node_ttl` the later delete wins as
//! usual. Nothing it wrote is dropped. (Cassandra instead forbids such a node to rejoin
//! without a repair; cr-sqlite keeps tombstones forever.)
//!
//! # Snapshots
//!
//! A snapshot records its maker's `collected`. A restore (a merge) drops a local published
//! version the snapshot lacks when it is older than that: the maker had applied it (by the
//! argument above) and then deleted the row and collected the tombstone.

use rusqlite::{Connection, OptionalExtension};

use crate::capture::{Schema, PENDING, TOMBSTONE};
use crate::db::{self, Context, DbError};
use crate::hlc::Hlc;
use crate::state;

/// Record layout version written in every record.
const RECORD_V: &str = "1";

/// What a node promises in its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Record {
    /// Every change this node publishes from now on has at least this version.
    pub low: u64,
    /// This node collected its tombstones below this version.
    pub collected: u64,
}

impl Record {
    pub fn encode(&self) -> String {
        format!("v={RECORD_V};low={};collected={}", self.low, self.collected)
    }

    pub fn decode(s: &str) -> Option<Record> {
        let field = |k: &str| {
            s.split(';')
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        if field("v") != Some(RECORD_V) {
            return None;
        }
        Some(Record {
            low: field("low")?.parse().ok()?,
            collected: field("collected")?.parse().ok()?,
        })
    }
}

/// The fleet as the records describe it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fleet {
    /// Smallest `low` of the live nodes: tombstones below it may go (None: no live record).
    pub horizon: Option<u64>,
    /// The live node whose record sets the horizon.
    pub held_by: Option<u64>,
    /// Nodes whose record is older than `node_ttl` (treated as gone).
    pub gone: Vec<u64>,
    /// Largest `low` or `collected` of any record, live or not: no round ever used a horizon
    /// above it.
    pub ceiling: u64,
    /// Every node with a record, live or not.
    pub known: Vec<u64>,
}

/// Computes the fleet from `(node, record, server write time in ms)`; records that do not
/// decode are left out (a newer layout counts as no record: the node is then not live).
pub fn fleet(records: &[(u64, Option<Record>, u64)], ttl_ms: u64) -> Fleet {
    let newest = records.iter().map(|r| r.2).max().unwrap_or(0);
    let mut f = Fleet::default();
    for &(node, rec, written) in records {
        let Some(rec) = rec else { continue };
        f.known.push(node);
        f.ceiling = f.ceiling.max(rec.low).max(rec.collected);
        if written.saturating_add(ttl_ms) < newest {
            f.gone.push(node);
            continue;
        }
        if f.horizon.is_none_or(|h| rec.low < h) {
            f.horizon = Some(rec.low);
            f.held_by = Some(node);
        }
    }
    f
}

/// The oldest version in the outbox, if it holds anything.
pub fn oldest_pending(conn: &Connection, schema: &Schema) -> Result<Option<u64>, DbError> {
    let mut oldest: Option<u64> = None;
    for t in &schema.tables {
        let v: Option<i64> = conn
            .query_row(
                &format!("SELECT min(ver) FROM {} WHERE {PENDING}", t.ver),
                [],
                |r| r.get(0),
            )
            .ctx("read the oldest outbox version")?;
        if let Some(v) = v {
            oldest = Some(oldest.map_or(v as u64, |o| o.min(v as u64)));
        }
    }
    Ok(oldest)
}

/// This node's `low`: the oldest version in its outbox, else the next version its clock can
/// issue (every later stamp is above the clock's high-water mark).
pub fn low(conn: &Connection, schema: &Schema, hlc: &Hlc) -> Result<u64, DbError> {
    let next = hlc.last().saturating_add(1);
    Ok(oldest_pending(conn, schema)?.map_or(next, |o| o.min(next)))
}

/// Whether any table holds a collectable tombstone (one indexed row per table).
pub fn any(conn: &Connection, schema: &Schema) -> Result<bool, DbError> {
    for t in &schema.tables {
        let found: Option<i64> = conn
            .query_row(
                &format!("SELECT 1 FROM {} WHERE {TOMBSTONE} LIMIT 1", t.ver),
                [],
                |r| r.get(0),
            )
            .optional()
            .ctx("look for tombstones")?;
        if found.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes at most about `limit` tombstones older than `below`, oldest first, in one
/// transaction (a bounded hold of the write lock). Returns how many went and whether older
/// ones are left. The horizon collected below is recorded with them.
pub fn collect(
    conn: &mut Connection,
    schema: &Schema,
    below: u64,
    limit: u64,
) -> Result<(u64, bool), DbError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .ctx("begin collecting tombstones")?;
    let mut done = 0u64;
    let mut more = false;
    for t in &schema.tables {
        let left = limit.saturating_sub(done);
        if left == 0 {
            more = true;
            break;
        }
        // the version of the first tombstone past the limit bounds this table's share
        let bound: Option<i64> = tx
            .query_row(
                &format!(
                    "SELECT ver FROM {} WHERE {TOMBSTONE} AND ver < ?1 ORDER BY ver LIMIT 1 OFFSET ?2",
                    t.ver
                ),
                [below as i64, left as i64],
                |r| r.get(0),
            )
            .optional()
            .ctx("bound a tombstone collection")?;
        more |= bound.is_some();
        let upto = bound.map_or(below as i64, |b| b.min(below as i64));
        done += tx
            .execute(
                &format!("DELETE FROM {} WHERE {TOMBSTONE} AND ver < ?1", t.ver),
                [upto],
            )
            .ctx("collect tombstones")? as u64;
    }
    if !more {
        let before = db::get_meta(&tx, state::COLLECTED_BELOW_KEY)?.unwrap_or(0) as u64;
        if below > before {
            db::set_meta(&tx, state::COLLECTED_BELOW_KEY, below as i64)?;
        }
    }
    if done > 0 {
        let total = db::get_meta(&tx, state::COLLECTED_KEY)?.unwrap_or(0) as u64;
        db::set_meta(&tx, state::COLLECTED_KEY, (total + done) as i64)?;
    }
    tx.commit().ctx("commit collecting tombstones")?;
    Ok((done, more))
}

/// The horizon below which this node has collected tombstones (0: never).
pub fn collected_below(conn: &Connection) -> Result<u64, DbError> {
    Ok(db::get_meta(conn, state::COLLECTED_BELOW_KEY)?.unwrap_or(0) as u64)
}

/// The rejoin rule: every outbox change older than `x` gets a fresh version above `x` (see
/// the module doc). Returns how many rows were stamped again.
pub fn restamp_below(
    conn: &mut Connection,
    schema: &Schema,
    hlc: &mut Hlc,
    x: u64,
    now_ms: u64,
) -> Result<u64, DbError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .ctx("begin stamping old changes again")?;
    hlc.observe(x);
    let mut n = 0u64;
    for t in &schema.tables {
        let old: Vec<i64> = {
            let mut s = tx
                .prepare(&format!(
                    "SELECT DISTINCT ver FROM {} WHERE {PENDING} AND ver < ?1 ORDER BY ver",
                    t.ver
                ))
                .ctx("read old outbox changes")?;
            let v = s
                .query_map([x as i64], |r| r.get(0))
                .and_then(|r| r.collect())
                .ctx("read old outbox changes")?;
            v
        };
        for v in old {
            let fresh = hlc.stamp(now_ms);
            n += tx
                .execute(
                    &format!("UPDATE {} SET ver = ?1 WHERE {PENDING} AND ver = ?2", t.ver),
                    [fresh as i64, v],
                )
                .ctx("stamp an old outbox change again")? as u64;
        }
    }
    db::set_meta(&tx, state::HLC_KEY, hlc.last() as i64)?;
    tx.commit().ctx("commit stamping old changes again")?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_refuses_other_layouts() {
        let r = Record {
            low: 7 << 16,
            collected: 5 << 16,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode("v=2;low=1;collected=0"), None);
        assert_eq!(Record::decode("garbage"), None);
        assert_eq!(Record::decode("v=1;low=x;collected=0"), None);
    }

    #[test]
    fn horizon_is_the_lowest_live_promise_and_silent_nodes_are_gone() {
        let rec = |low, collected| Some(Record { low, collected });
        let hour = 3_600_000;
        let records = [
            (1, rec(100, 50), 10 * hour),
            (2, rec(80, 60), 10 * hour - 1000),
            (3, rec(10, 0), 2 * hour), // silent for 8 h: gone with a 1 h ttl
            (4, None, 10 * hour),      // unreadable: not live, not known
            (5, rec(90, 200), 9 * hour + 1), // 59 min ago: live
        ];
        let f = fleet(&records, hour);
        assert_eq!(f.horizon, Some(80));
        assert_eq!(f.held_by, Some(2));
        assert_eq!(f.gone, vec![3]);
        assert_eq!(f.ceiling, 200);
        assert_eq!(f.known, vec![1, 2, 3, 5]);
        // with a long ttl the silent node holds the horizon back
        let f = fleet(&records, 24 * hour);
        assert_eq!((f.horizon, f.held_by), (Some(10), Some(3)));
        assert_eq!(fleet(&[], hour), Fleet::default());
    }
}
