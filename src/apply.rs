//! Applying other nodes' frames: row-level last-writer-wins on (HLC version, node id), with
//! tombstones, in one transaction per batch together with the stream cursor.
//!
//! Invariants held here:
//! - capture before apply: pending local log rows are stamped first, in the same transaction;
//! - no echo: log rows our own writes produce are discarded before commit;
//! - exactly once: the cursor advances with the data; a frame at or below it is passed over;
//! - nothing dropped: a change that cannot be applied (unknown table or column, a constraint the
//!   local schema adds) is parked in `__hl_parked` and retried when the schema changes;
//! - referential integrity: a row whose parent (through a foreign key of this node's schema,
//!   directly or through parked children) is parked parks with it, and the retry applies parked
//!   changes in their stream order, parents first. Each parked change keeps its key (`k`,
//!   [`key_bytes`]), so the question "is this parent parked?" is one indexed lookup per change,
//!   asked only while something is parked.
//!
//! # Unique keys other than the primary key
//!
//! Two nodes can create rows with different primary keys and the same value of a UNIQUE column
//! (`name = CharField(unique=True)`). Applying the other node's row then fails with `UNIQUE
//! constraint failed`. `resolve_unique` settles it the way last-writer-wins settles a row:
//! the row with the higher (version, node id) wins, the other is deleted, on every node.
//! - The loser gets a tombstone at its own version, not a new one: nothing new is made, so a
//!   node that sees the two rows in either order ends with the same table and the same version
//!   rows. Received first, the loser is applied and later deleted when the winner arrives;
//!   received second, it is not applied and only its tombstone is written. Either way a replay
//!   of the loser's frame, or a later frame at or below its version, is stale.
//! - The local row may be a change of this node not yet published: capture before apply stamped
//!   it in this transaction, so it has its version and compares like any other. If it wins, it
//!   stays pending and is published; the other node then deletes its own row the same way. If it
//!   loses, its version row becomes a tombstone at the same version and keeps its `pending` flag:
//!   the outbox publishes a delete at that version. That delete is needed when the row existed
//!   elsewhere before (an update here gave it the conflicting value): other nodes hold its older
//!   image, which does not conflict there and would otherwise stay. Where the row never existed,
//!   the delete only writes a tombstone at the loser's version, which every node that applies
//!   the winner writes anyway.
//! - Bounded: one resolution per change. A row that conflicts with two rows (through two unique
//!   indexes), a partial or expression index, a conflicting row without a version, or an upsert
//!   that still fails after the loser is gone is parked as before (a savepoint undoes the
//!   attempt). Chains (a row conflicting with a row that conflicts with a third) are resolved
//!   pairwise and may end differently by arrival order; they are not claimed to converge.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, CachedStatement, Connection};

use crate::capture::{self, Schema, Table};
use crate::config::Config;
use crate::db::{self, quote, Context, DbError};
use crate::frame::{self, Change, Changes, Frame, Op, TableHeader, Value};
use crate::hlc::Hlc;
use crate::state::{
    BACKFILL_TO_KEY, BACKFILL_UNTIL_KEY, FRAGMENT_TABLE, HLC_KEY, LAST_APPLY_KEY,
    LAST_PK_COLLISION_KEY, OWN_REPLAY_KEY, PARKED_TABLE, PK_COLLISIONS_KEY, RECEIVED_KEY,
    UNIQUE_CONFLICTS_KEY,
};

/// A message taken from the stream.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub seq: u64,
    pub subject: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyStats {
    /// Local changes stamped first (capture before apply).
    pub stamped: u64,
    pub frames: u64,
    pub applied: u64,
    pub stale: u64,
    pub parked: u64,
    /// Bytes of the frames kept for the changes parked (see `max_parked_bytes`).
    pub parked_bytes: u64,
    pub undecodable: u64,
    pub own: u64,
    /// Changes that met a unique constraint other than the primary key and were resolved.
    pub unique_conflicts: u64,
    /// New rows that arrived for a key this node holds a different row of, from another node.
    pub pk_collisions: u64,
    /// Stream messages dropped because their subject and content disagree.
    pub rejected: u64,
    /// Changes of tables this node does not replicate, dropped (the server did not filter them).
    pub not_replicated: u64,
    /// Incomplete fragment sets deleted past [`FRAGMENT_HORIZON_SEQS`] (one change each).
    pub fragment_sets_dropped: u64,
    /// The origin whose stamps were furthest ahead of our clock, and by how many ms (if ahead).
    pub ahead: Option<(u64, u64)>,
    /// The newest version seen from each origin (for the replication lag metric).
    pub newest: Vec<(u64, u64)>,
}

/// Creates the tables this module owns.
pub fn prepare(conn: &Connection) -> Result<(), DbError> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {PARKED_TABLE}(id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, reason TEXT NOT NULL, frame BLOB NOT NULL, k BLOB, at INTEGER);
         CREATE TABLE IF NOT EXISTS {FRAGMENT_TABLE}(origin INTEGER NOT NULL, id INTEGER NOT NULL, idx INTEGER NOT NULL,
             count INTEGER NOT NULL, data BLOB NOT NULL, seq INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(origin, id, idx)) WITHOUT ROWID;"
    ))
    .ctx("create apply tables")?;
    // databases from before parked keys: their parked rows have none (NULL), and hold back
    // every child of their table until they are retried (and parked again with a key)
    let has_k: bool = conn
        .query_row(
            &format!("SELECT count(*) FROM pragma_table_info('{PARKED_TABLE}') WHERE name = 'k'"),
            [],
            |r| r.get(0),
        )
        .ctx("read parked table columns")?;
    if !has_k {
        conn.execute_batch(&format!("ALTER TABLE {PARKED_TABLE} ADD COLUMN k BLOB"))
            .ctx("add the parked key column")?;
    }
    conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS {PARKED_TABLE}_k ON {PARKED_TABLE}(tbl, k)"
    ))
    .ctx("create the parked key index")?;
    // databases from before park times: their parked rows count as parked now (the upgrade)
    let has_at: bool = conn
        .query_row(
            &format!("SELECT count(*) FROM pragma_table_info('{PARKED_TABLE}') WHERE name = 'at'"),
            [],
            |r| r.get(0),
        )
        .ctx("read parked table columns")?;
    if !has_at {
        conn.execute_batch(&format!("ALTER TABLE {PARKED_TABLE} ADD COLUMN at INTEGER"))
            .ctx("add the park time column")?;
        conn.execute(
            &format!("UPDATE {PARKED_TABLE} SET at = ?1 WHERE at IS NULL"),
            [crate::hlc::now_ms() as i64],
        )
        .ctx("date parked changes")?;
    }
    // databases from before the fragment horizon: the stream position of each piece
    let has_seq: bool = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM pragma_table_info('{FRAGMENT_TABLE}') WHERE name = 'seq'"
            ),
            [],
            |r| r.get(0),
        )
        .ctx("read fragment table columns")?;
    if !has_seq {
        conn.execute_batch(&format!(
            "ALTER TABLE {FRAGMENT_TABLE} ADD COLUMN seq INTEGER NOT NULL DEFAULT 0"
        ))
        .ctx("add the fragment position column")?;
    }
    Ok(())
}

/// An incomplete fragment set whose newest piece lies this many stream messages behind the
/// cursor is deleted: it can no longer complete. A publisher sends every piece of a change
/// again whenever it retries (the change leaves its outbox only once all are acknowledged), so a
/// set is only left incomplete when the stream lost some of its pieces, a hole that a snapshot
/// restore repairs. The bound is large because a retry within the server's duplicate window
/// (2 min by default) is not stored again: pieces kept from the first attempt must still be
/// here then, and a million messages is far more than a fleet publishes in that window.
pub const FRAGMENT_HORIZON_SEQS: u64 = 1_000_000;

/// Applies a batch of stream messages in one transaction.
pub fn apply_batch(
    conn: &mut Connection,
    cfg: &Config,
    schema: &Schema,
    hlc: &mut Hlc,
    node: u64,
    msgs: &[Incoming],
) -> Result<ApplyStats, DbError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .ctx("begin apply")?;
    let mut stats = ApplyStats {
        stamped: capture::stamp(&tx, schema, hlc, node)?,
        ..Default::default()
    };
    let mut cursor = db::cursor(&tx)?;
    let own_until = own_replay_until(&tx)?;
    let own_suffix = format!(".{node}");
    let mut fragments = false;
    let backfill = Backfill::read(&tx)?;
    let mut backfill_done = false;
    for m in msgs {
        // at or below the cursor: applied before, unless a backfill reads it again for the
        // tables this node did not receive then
        let again = m.seq <= cursor;
        let replicates =
            |t: &str| cfg.replicates(t) && !(again && backfill.as_ref().is_some_and(|b| b.had(t)));
        match &backfill {
            Some(b) if again && m.seq <= b.until => backfill_done |= m.seq == b.until,
            Some(_) if !again => backfill_done = true,
            _ if again => continue,
            _ => {}
        }
        if !again {
            cursor = m.seq;
        }
        stats.frames += 1;
        // Our own frames are in this database already, except those a rebuilt node published
        // in its previous life (at or below `own_until`): those apply like any other.
        let replay_own = m.seq <= own_until;
        if m.subject.ends_with(&own_suffix) && !replay_own {
            stats.own += 1;
            continue;
        }
        let source = Source::of(&cfg.nats.subject_prefix, &m.subject);
        match frame::decode(&m.data) {
            Ok(Frame::Changes(c)) if c.origin == node && !replay_own => stats.own += 1,
            Ok(Frame::Changes(c)) => match source.check(&c) {
                Ok(()) => apply_changes(&tx, &replicates, schema, hlc, &c, None, &mut stats)?,
                Err(why) => reject(m, &why, &mut stats),
            },
            Ok(Frame::Repair(r)) => match source.check(&r.changes) {
                Ok(()) => {
                    let (c, o) = (&r.changes, Some(&r.origins[..]));
                    apply_changes(&tx, &replicates, schema, hlc, c, o, &mut stats)?
                }
                Err(why) => reject(m, &why, &mut stats),
            },
            Ok(Frame::Fragment(f)) if source.origin() != Some(f.origin) => {
                let why = format!("a fragment of node {}'s frame on this subject", f.origin);
                reject(m, &why, &mut stats);
            }
            Ok(Frame::Fragment(f)) => {
                fragments = true;
                tx.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO {FRAGMENT_TABLE}(origin, id, idx, count, data, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ))
                .and_then(|mut s| s.execute(params![f.origin as i64, f.id as i64, f.index, f.count, f.data, m.seq as i64]))
                .ctx("store fragment")?;
                if let Some(whole) = take_complete(&tx, f.origin, f.id, f.count)? {
                    match frame::decode(&whole) {
                        Ok(Frame::Changes(c)) => match source.check(&c) {
                            Ok(()) => apply_changes(
                                &tx,
                                &|t| cfg.replicates(t),
                                schema,
                                hlc,
                                &c,
                                None,
                                &mut stats,
                            )?,
                            Err(why) => reject(m, &why, &mut stats),
                        },
                        // a re-announced row too large for one frame (`verify --repair`)
                        Ok(Frame::Repair(r)) => match source.check(&r.changes) {
                            Ok(()) => {
                                let (c, o) = (&r.changes, Some(&r.origins[..]));
                                let replicates = |t: &str| cfg.replicates(t);
                                apply_changes(&tx, &replicates, schema, hlc, c, o, &mut stats)?
                            }
                            Err(why) => reject(m, &why, &mut stats),
                        },
                        Ok(Frame::Fragment(_)) => {
                            stats.undecodable += 1;
                            log::warn!("skipping undecodable frame seq={} subject={}: reassembled fragments do not form a frame", m.seq, m.subject);
                        }
                        Err(e) => {
                            stats.undecodable += 1;
                            log::warn!(
                                "skipping undecodable frame seq={} subject={} bytes={}: reassembled fragments: {e}",
                                m.seq,
                                m.subject,
                                whole.len()
                            );
                        }
                    }
                }
            }
            Err(e) => {
                stats.undecodable += 1;
                log::warn!(
                    "skipping undecodable frame seq={} subject={} bytes={}: {e}",
                    m.seq,
                    m.subject,
                    m.data.len()
                );
            }
        }
    }
    if fragments {
        stats.fragment_sets_dropped = prune_fragments(&tx, cursor)?;
    }
    if backfill_done {
        Backfill::finish(&tx)?;
    }
    capture::discard_echoes(&tx, schema)?;
    db::set_cursor(&tx, cursor)?;
    db::set_meta(&tx, HLC_KEY, hlc.last() as i64)?;
    if stats.applied > 0 {
        db::set_meta(&tx, LAST_APPLY_KEY, crate::hlc::now_ms() as i64)?;
    }
    tx.commit().ctx("commit apply")?;
    Ok(stats)
}

/// A replay of the stream for tables this node starts to receive. A node that leaves tables out
/// (`[table.<name>] replicate = false`) is never sent their frames; when it starts to receive
/// one (a migration created it here, or the config changed), what other nodes wrote to it
/// before is behind the node's position. The node then reads the stream again from its start
/// up to that position (`until`), applying only the tables it did not receive (`had` is the
/// set it did); last-writer-wins makes this safe against anything applied since. Planned by
/// the node ([`plan_backfill`]); finished when the replay reaches `until` (or the consumer has
/// nothing left to deliver), which makes the new set the received one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfill {
    pub until: u64,
    /// The tables received before (None: all of them, nothing to replay).
    had: Option<Vec<String>>,
}

const NAMES_SEP: char = '\u{1f}';

/// A received set as stored: None is every table.
fn received_text(tables: Option<&[String]>) -> String {
    tables.map_or("*".into(), |t| t.join(&NAMES_SEP.to_string()))
}

fn received_parse(text: &str) -> Option<Vec<String>> {
    (text != "*").then(|| {
        text.split(NAMES_SEP)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()
    })
}

impl Backfill {
    fn read(conn: &Connection) -> Result<Option<Backfill>, DbError> {
        let Some(until) = db::get_meta(conn, BACKFILL_UNTIL_KEY)? else {
            return Ok(None);
        };
        let had =
            db::get_meta_text(conn, RECEIVED_KEY)?.map_or(Some(Vec::new()), |t| received_parse(&t));
        Ok(Some(Backfill {
            until: until as u64,
            had,
        }))
    }

    fn had(&self, table: &str) -> bool {
        self.had
            .as_ref()
            .is_none_or(|had| had.iter().any(|t| t == table))
    }

    /// The replay is done: the tables it read become received ones.
    pub fn finish(conn: &Connection) -> Result<(), DbError> {
        if let Some(to) = db::get_meta_text(conn, BACKFILL_TO_KEY)? {
            db::set_meta(conn, RECEIVED_KEY, &to)?;
        }
        conn.execute(
            &format!("DELETE FROM {} WHERE key IN (?1, ?2)", db::META_TABLE),
            [BACKFILL_UNTIL_KEY, BACKFILL_TO_KEY],
        )
        .ctx("finish backfill")?;
        log::info!(
            "backfill done: the tables this node now receives hold what was written to them before"
        );
        Ok(())
    }

    /// Whether a backfill runs (the consumer then starts at the stream's first message).
    pub fn active(conn: &Connection) -> Result<bool, DbError> {
        Ok(db::get_meta(conn, BACKFILL_UNTIL_KEY)?.is_some())
    }
}

/// Compares the tables this node receives now (`now`; None: all) with those it received so far
/// and plans a [`Backfill`] for the new ones. At `cursor` 0 the stream is read from its start
/// anyway: nothing to plan. Returns whether a backfill runs.
pub fn plan_backfill(
    conn: &Connection,
    now: Option<&[String]>,
    cursor: u64,
) -> Result<bool, DbError> {
    let text = received_text(now);
    let before = db::get_meta_text(conn, RECEIVED_KEY)?;
    let running = Backfill::active(conn)?;
    let missing = match before.as_deref().map(received_parse) {
        // first start of this database with the direction recorded, or every table received
        None | Some(None) => false,
        Some(Some(had)) => match now {
            None => true,
            Some(now) => now.iter().any(|t| !had.contains(t)),
        },
    };
    if !missing || (cursor == 0 && !running) {
        db::set_meta(conn, RECEIVED_KEY, &text)?;
        if running {
            Backfill::finish(conn)?;
        }
        return Ok(false);
    }
    if !running {
        db::set_meta(conn, BACKFILL_UNTIL_KEY, cursor as i64)?;
        log::info!("this node starts to receive tables it did not before: reading the stream again from its start up to seq {cursor} for them (backfill)");
    }
    db::set_meta(conn, BACKFILL_TO_KEY, &text)?;
    Ok(true)
}

/// Where a stream message's subject says it comes from.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// `<subject_prefix>.<table token>.<node id>`: one table's changes from one node.
    Table { token: String, origin: u64 },
    /// `<subject_prefix>.<node id>`: the single-subject layout of builds before per-table
    /// subjects (any tables in a frame).
    Legacy { origin: u64 },
    /// Anything else: not a frame of this layout.
    Outside,
}

impl Source {
    fn of(prefix: &str, subject: &str) -> Source {
        let Some(rest) = subject
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('.'))
        else {
            return Source::Outside;
        };
        let mut parts = rest.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(n), None, None) => n
                .parse()
                .map_or(Source::Outside, |origin| Source::Legacy { origin }),
            (Some(t), Some(n), None) if !t.is_empty() => {
                n.parse().map_or(Source::Outside, |origin| Source::Table {
                    token: t.to_string(),
                    origin,
                })
            }
            _ => Source::Outside,
        }
    }

    fn origin(&self) -> Option<u64> {
        match self {
            Source::Table { origin, .. } | Source::Legacy { origin } => Some(*origin),
            Source::Outside => None,
        }
    }

    /// The frame must come from the node its subject names, and carry only the table its
    /// subject names: broker permissions on subjects are then a fence no frame can climb over.
    fn check(&self, c: &Changes) -> Result<(), String> {
        match self {
            Source::Outside => {
                Err("its subject is outside <subject_prefix>.<table>.<node_id>".into())
            }
            Source::Table { origin, .. } | Source::Legacy { origin } if *origin != c.origin => {
                Err(format!(
                    "it claims origin node {} on the subject of node {origin}",
                    c.origin
                ))
            }
            Source::Table { token, .. } => {
                match c
                    .tables
                    .iter()
                    .find(|t| crate::config::subject_token(&t.name) != *token)
                {
                    Some(t) => Err(format!(
                        "it carries table {} on the subject of table token {token}",
                        t.name
                    )),
                    None => Ok(()),
                }
            }
            Source::Legacy { origin } => {
                if let Some(more) = crate::logging::repeated(&format!("legacy subject {origin}")) {
                    log::warn!("node {origin} publishes on the single-subject layout of older builds: its frames are applied, but per-table direction cannot keep its tables from nodes that do not replicate them; upgrade it{more}");
                }
                Ok(())
            }
        }
    }
}

/// Drops a stream message whose subject and content disagree (counted, logged).
fn reject(m: &Incoming, why: &str, stats: &mut ApplyStats) {
    stats.rejected += 1;
    if let Some(more) = crate::logging::repeated(&format!("reject {why}")) {
        log::warn!(
            "dropping frame seq={} subject={}: {why}{more}",
            m.seq,
            m.subject
        );
    }
}

/// Returns the reassembled bytes once every fragment of (origin, id) is stored, and removes them.
fn take_complete(
    conn: &Connection,
    origin: u64,
    id: u64,
    count: u32,
) -> Result<Option<Vec<u8>>, DbError> {
    let have: i64 = conn
        .prepare_cached(&format!(
            "SELECT count(*) FROM {FRAGMENT_TABLE} WHERE origin = ?1 AND id = ?2 AND count = ?3"
        ))
        .and_then(|mut s| s.query_row(params![origin as i64, id as i64, count], |r| r.get(0)))
        .ctx("count fragments")?;
    if have < count as i64 {
        return Ok(None);
    }
    let mut whole = Vec::new();
    {
        let mut s = conn
            .prepare_cached(&format!("SELECT data FROM {FRAGMENT_TABLE} WHERE origin = ?1 AND id = ?2 AND count = ?3 ORDER BY idx"))
            .ctx("read fragments")?;
        // the same filter as the count above: a stray piece of another count is not read
        let mut rows = s
            .query(params![origin as i64, id as i64, count])
            .ctx("read fragments")?;
        while let Some(r) = rows.next().ctx("read fragments")? {
            whole.extend_from_slice(
                r.get_ref(0)
                    .ctx("read fragments")?
                    .as_bytes()
                    .unwrap_or_default(),
            );
        }
    }
    conn.prepare_cached(&format!(
        "DELETE FROM {FRAGMENT_TABLE} WHERE origin = ?1 AND id = ?2"
    ))
    .and_then(|mut s| s.execute(params![origin as i64, id as i64]))
    .ctx("delete fragments")?;
    Ok(Some(whole))
}

/// Deletes the incomplete fragment sets whose newest piece is [`FRAGMENT_HORIZON_SEQS`]
/// messages or more behind `cursor`. Returns how many sets (each one change that never
/// completed) went; the node counts them in `fragments_dropped_total`.
pub fn prune_fragments(conn: &Connection, cursor: u64) -> Result<u64, DbError> {
    let Some(horizon) = cursor.checked_sub(FRAGMENT_HORIZON_SEQS) else {
        return Ok(0);
    };
    let abandoned = format!(
        "SELECT origin, id FROM {FRAGMENT_TABLE} GROUP BY origin, id HAVING max(seq) <= ?1"
    );
    let sets: i64 = conn
        .prepare_cached(&format!("SELECT count(*) FROM ({abandoned})"))
        .and_then(|mut s| s.query_row([horizon as i64], |r| r.get(0)))
        .ctx("count abandoned fragments")?;
    if sets == 0 {
        return Ok(0);
    }
    let pieces = conn
        .prepare_cached(&format!(
            "DELETE FROM {FRAGMENT_TABLE} WHERE (origin, id) IN ({abandoned})"
        ))
        .and_then(|mut s| s.execute([horizon as i64]))
        .ctx("delete abandoned fragments")?;
    log::warn!("deleted fragments of changes that never completed sets={sets} pieces={pieces} (their newest piece is {FRAGMENT_HORIZON_SEQS} or more messages behind seq {cursor}; the hole that lost the rest is repaired by a snapshot restore)");
    Ok(sets as u64)
}

/// Stream position up to which our own frames are applied like any other's: set when the
/// database was rebuilt from a snapshot (the frames this node published before are not in it).
pub fn own_replay_until(conn: &Connection) -> Result<u64, DbError> {
    Ok(db::get_meta(conn, OWN_REPLAY_KEY)?.unwrap_or(0) as u64)
}

/// How one sender's table maps onto ours.
struct Target<'a> {
    table: &'a Table,
    /// Positions of the sender's values we bind, when not all of them (columns ignored here).
    used: Option<Vec<usize>>,
    /// Why the sender's row images cannot be applied yet (a column this node lacks); its
    /// deletes need only the key and apply all the same.
    upsert_blocked: Option<String>,
    upsert: String,
    delete: String,
    get_version: String,
    set_version: String,
}

fn target<'a>(schema: &'a Schema, h: &TableHeader) -> Result<Target<'a>, String> {
    let table = schema.get(&h.name).ok_or_else(|| {
        format!(
            "table {} is not replicated here (missing, or no primary key)",
            h.name
        )
    })?;
    if let Some(why) = schema.paused.get(&h.name) {
        return Err(format!("table {} is paused here ({why})", h.name));
    }
    let ours = &table.header.columns;
    let upsert_blocked = h
        .columns
        .iter()
        .find(|c| !ours.contains(c) && !table.ignored.contains(c))
        .map(|c| format!("column {c} of table {} does not exist here yet", h.name));
    let their_pk: Vec<&String> = h.pk.iter().map(|&i| &h.columns[i as usize]).collect();
    let our_pk: Vec<&String> = table.header.pk.iter().map(|&i| &ours[i as usize]).collect();
    if their_pk != our_pk {
        return Err(format!(
            "primary key of table {} differs: sender has {their_pk:?}, here {our_pk:?}",
            h.name
        ));
    }
    let used: Vec<usize> = (0..h.columns.len())
        .filter(|&i| ours.contains(&h.columns[i]))
        .collect();
    let n = our_pk.len();
    let t = quote(&h.name);
    let cols: Vec<String> = used.iter().map(|&i| quote(&h.columns[i])).collect();
    let pk_cols: Vec<String> = our_pk.iter().map(|c| quote(c)).collect();
    let mut placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let mut set: Vec<String> = cols
        .iter()
        .filter(|c| !pk_cols.contains(c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    // A sender on an older schema lacks our newer columns: its row image sets them to their
    // defaults, so every node ends with the same row whatever order changes arrive in. A NOT
    // NULL column without a default takes its affinity's zero value, inserted rows included
    // (else the change could never apply here).
    let mut insert_cols = cols.clone();
    for (i, c) in ours.iter().enumerate() {
        if !h.columns.contains(c) && !table.header.pk.contains(&(i as u16)) {
            let value = table.defaults[i]
                .as_deref()
                .or(table.zero_fill[i])
                .unwrap_or("NULL");
            set.push(format!("{} = {value}", quote(c)));
            if let (None, Some(zero)) = (&table.defaults[i], table.zero_fill[i]) {
                insert_cols.push(quote(c));
                placeholders.push(zero.to_string());
            }
        }
    }
    let placeholders = placeholders.join(", ");
    let on_conflict = if set.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", set.join(", "))
    };
    let key_match = |prefix: &str, names: &[String]| {
        names
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{prefix}{c} IS ?{}", i + 1))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let ver = &table.ver;
    Ok(Target {
        table,
        used: (used.len() < h.columns.len()).then_some(used),
        upsert_blocked,
        upsert: format!("INSERT INTO {t}({}) VALUES ({placeholders}) ON CONFLICT({}) {on_conflict}", insert_cols.join(", "), pk_cols.join(", ")),
        delete: format!("DELETE FROM {t} WHERE {}", key_match("", &pk_cols)),
        get_version: format!(
            "SELECT ver, node, del, h FROM {ver} WHERE {}",
            key_match("", &keys)
        ),
        // `h`: the digest of the row as applied here (NULL once deleted), see capture's resync
        set_version: format!(
            "INSERT INTO {ver}({k}, ver, node, del, pending, h) VALUES ({}, ?{}, ?{}, ?{}, 0, ({})) \
             ON CONFLICT({k}) DO UPDATE SET ver = excluded.ver, node = excluded.node, del = excluded.del, pending = 0, h = excluded.h",
            (1..=n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", "),
            n + 1,
            n + 2,
            n + 3,
            table.digest_by_key(1),
            k = keys.join(", ")
        ),
    })
}

/// Applies the changes of one frame. `replicates` says which tables this node receives: the
/// server filters the others out (a consumer per replicated table), but a server older than
/// 2.10 and frames of the single-subject layout bring every table.
///
/// `origins`: a repair frame's ([`frame::Repair`]) origin of each change; each row is then
/// compared and written with its own origin, not the sender's, and the lag metric and the
/// clock-ahead warning leave the old versions it carries out.
fn apply_changes(
    conn: &Connection,
    replicates: &dyn Fn(&str) -> bool,
    schema: &Schema,
    hlc: &mut Hlc,
    c: &Changes,
    origins: Option<&[u64]>,
    stats: &mut ApplyStats,
) -> Result<(), DbError> {
    let targets: Vec<Result<Target, String>> = c.tables.iter().map(|h| target(schema, h)).collect();
    // each table's statements, taken from the cache once per frame rather than once per row
    let mut prepared: Vec<Prepared> = targets.iter().map(|_| Prepared::default()).collect();
    let now = crate::hlc::now_ms();
    let recent = if origins.is_some() {
        &[][..]
    } else {
        &c.changes
    };
    if let Some(max) = recent
        .iter()
        .map(|ch| crate::hlc::wall_ms(ch.version))
        .max()
    {
        if max > now && stats.ahead.is_none_or(|(_, a)| max - now > a) {
            stats.ahead = Some((c.origin, max - now));
        }
    }
    if let Some(v) = recent.iter().map(|ch| ch.version).max() {
        match stats.newest.iter_mut().find(|(o, _)| *o == c.origin) {
            Some(n) => n.1 = n.1.max(v),
            None => stats.newest.push((c.origin, v)),
        }
    }
    let mut warned: HashMap<usize, ()> = HashMap::new();
    let mut refused = false;
    let received: Vec<bool> = c.tables.iter().map(|t| replicates(&t.name)).collect();
    for (t, _) in c.tables.iter().zip(&received).filter(|(_, r)| !**r) {
        if let Some(more) = crate::logging::repeated(&format!("not replicated {}", t.name)) {
            log::info!("dropping changes of table {} from node {}: this node does not replicate it (the server did not filter them: older than 2.10, or a node on the single-subject layout){more}", t.name, c.origin);
        }
    }
    // Changes of this frame that park whatever the database holds (their table is missing,
    // paused, or lacks a column): a child earlier in the frame than its parent waits too.
    let mut soon: HashSet<(&str, Vec<u8>)> = HashSet::new();
    for ch in &c.changes {
        let idx = ch.table as usize;
        if !received[idx] {
            continue;
        }
        let blocked = match &targets[idx] {
            Err(_) => true,
            Ok(t) => t.upsert_blocked.is_some() && ch.op.row().is_some(),
        };
        if blocked {
            soon.insert((c.tables[idx].name.as_str(), change_key(&c.tables[idx], ch)));
        }
    }
    let soon_tables: HashSet<&str> = soon.iter().map(|(t, _)| *t).collect();
    // whether a parent can be parked at all: else no foreign key is looked at (the usual case)
    let mut waiting = !soon.is_empty() || parked_any(conn)?;
    let mut fks: Vec<Option<Vec<ForeignKey>>> = c.tables.iter().map(|_| None).collect();
    for (i, ch) in c.changes.iter().enumerate() {
        let idx = ch.table as usize;
        let header = &c.tables[idx];
        let origin = origins.map_or(c.origin, |o| o[i]);
        if !received[idx] {
            stats.not_replicated += 1;
            continue;
        }
        if !hlc.observe(ch.version) && !refused {
            refused = true;
            log::warn!(
                "node {origin} stamps changes past the year 3000 (version {}): its clock or its database is broken; this node's clock does not follow it",
                ch.version
            );
        }
        let outcome = match &targets[idx] {
            Ok(t) => {
                let parent = match (&ch.op, waiting) {
                    (Op::Upsert(values) | Op::Insert(values), true) => {
                        let fks = match &mut fks[idx] {
                            Some(f) => f,
                            None => fks[idx].insert(foreign_keys(conn, schema, header)?),
                        };
                        parked_parent(conn, fks, values, &soon, &soon_tables)?
                    }
                    _ => None,
                };
                match parent {
                    Some(p) => Outcome::Park(format!(
                        "a row of table {p} it references is parked here (it waits with it)"
                    )),
                    None => apply_one(conn, t, &mut prepared[idx], header, origin, ch, stats)?,
                }
            }
            Err(reason) => Outcome::Park(reason.clone()),
        };
        match outcome {
            Outcome::Applied => stats.applied += 1,
            Outcome::Stale => stats.stale += 1,
            Outcome::Unique => {
                stats.applied += 1;
                stats.unique_conflicts += 1;
                let n = db::get_meta(conn, UNIQUE_CONFLICTS_KEY)?.unwrap_or(0);
                db::set_meta(conn, UNIQUE_CONFLICTS_KEY, n + 1)?;
            }
            Outcome::Park(reason) => {
                if warned.insert(idx, ()).is_none() {
                    if let Some(more) = crate::logging::repeated(&format!("park {}", header.name)) {
                        log::warn!("parking changes for table {}: {reason}; they are kept and applied once the schema here allows{more}", header.name);
                    }
                }
                stats.parked_bytes += park(conn, &header.name, &reason, origin, header, ch)?;
                stats.parked += 1;
                waiting = true;
            }
        }
    }
    Ok(())
}

enum Outcome {
    Applied,
    Stale,
    /// Applied after resolving a unique-key conflict (the change won, or its tombstone was
    /// written because it lost).
    Unique,
    Park(String),
}

/// One target's statements, each prepared on first use.
#[derive(Default)]
struct Prepared<'c> {
    get_version: Option<CachedStatement<'c>>,
    upsert: Option<CachedStatement<'c>>,
    delete: Option<CachedStatement<'c>>,
    set_version: Option<CachedStatement<'c>>,
}

fn prepared<'s, 'c>(
    slot: &'s mut Option<CachedStatement<'c>>,
    conn: &'c Connection,
    sql: &str,
) -> rusqlite::Result<&'s mut CachedStatement<'c>> {
    Ok(match slot {
        Some(stmt) => stmt,
        None => slot.insert(conn.prepare_cached(sql)?),
    })
}

/// Binds `values` to parameters `?1..`, leaving the statement ready to run.
fn bind<'v>(
    stmt: &mut CachedStatement,
    values: impl Iterator<Item = &'v Value>,
) -> rusqlite::Result<usize> {
    let mut n = 0;
    for (i, v) in values.enumerate() {
        stmt.raw_bind_parameter(i + 1, v)?;
        n = i + 1;
    }
    Ok(n)
}

fn apply_one<'c>(
    conn: &'c Connection,
    t: &Target,
    stmts: &mut Prepared<'c>,
    header: &TableHeader,
    origin: u64,
    ch: &Change,
    stats: &mut ApplyStats,
) -> Result<Outcome, DbError> {
    // the key values: picked from the row image, or the delete's own (validated to match the key)
    let (values, pk) = match &ch.op {
        Op::Upsert(values) | Op::Insert(values) => (values, Some(&header.pk)),
        Op::Delete(keys) => (keys, None),
    };
    let keys = || (0..header.pk.len()).map(move |i| &values[pk.map_or(i, |pk| pk[i] as usize)]);
    if keys().any(|k| matches!(k, Value::Null)) {
        return Ok(Outcome::Park("a primary-key value is NULL".into()));
    }
    if let (Some(_), Some(reason)) = (ch.op.row(), &t.upsert_blocked) {
        return Ok(Outcome::Park(reason.clone()));
    }
    let current: Option<Current> = prepared(&mut stmts.get_version, conn, &t.get_version)
        .and_then(|s| {
            bind(s, keys())?;
            let mut rows = s.raw_query();
            rows.next()?
                .map(|r| {
                    Ok(Current {
                        version: r.get::<_, i64>(0)? as u64,
                        node: r.get::<_, i64>(1)? as u64,
                        deleted: r.get(2)?,
                        digest: r.get(3)?,
                    })
                })
                .transpose()
        })
        .ctx("read row version")?;
    if let (Op::Insert(values), Some(cur)) = (&ch.op, &current) {
        // The origin created this key without knowing of the row here (see `Op::Insert`). The
        // same content created twice (seed data loaded on every node) is no collision.
        if !cur.deleted
            && cur.node != origin
            && cur.digest != Some(row_digest(&t.table.header, header, values))
        {
            let key: Vec<Value> = keys().cloned().collect();
            note_collision(conn, &header.name, &key, cur, origin, ch.version)?;
            stats.pk_collisions += 1;
        }
    }
    if let Some(cur) = &current {
        if (ch.version, origin) <= (cur.version, cur.node) {
            return Ok(Outcome::Stale);
        }
    }
    let result = match &ch.op {
        Op::Upsert(values) | Op::Insert(values) => prepared(&mut stmts.upsert, conn, &t.upsert)
            .and_then(|s| {
                match &t.used {
                    None => bind(s, values.iter())?,
                    Some(used) => bind(s, used.iter().map(|&i| &values[i]))?,
                };
                s.raw_execute()
            }),
        Op::Delete(keys) => prepared(&mut stmts.delete, conn, &t.delete).and_then(|s| {
            bind(s, keys.iter())?;
            s.raw_execute()
        }),
    };
    let mut deleted = matches!(ch.op, Op::Delete(_));
    let mut outcome = Outcome::Applied;
    if let Err(e) = result {
        if e.sqlite_error_code() != Some(rusqlite::ErrorCode::ConstraintViolation) {
            return Err(DbError::Sql {
                op: "apply change",
                source: e,
            });
        }
        let why = match &ch.op {
            Op::Upsert(values) | Op::Insert(values) if is_unique_violation(&e) => {
                match resolve_unique(conn, t, stmts, header, origin, ch.version, values)? {
                    Resolved::Won => None,
                    Resolved::Lost => {
                        deleted = true;
                        None
                    }
                    Resolved::Park(why) => Some(format!("; {why}")),
                }
            }
            _ => Some(String::new()),
        };
        if let Some(why) = why {
            return Ok(Outcome::Park(format!("table {}: {e}{why}", t.table.name())));
        }
        outcome = Outcome::Unique;
    }
    let stmt = prepared(&mut stmts.set_version, conn, &t.set_version).ctx("write row version")?;
    let n = bind(stmt, keys()).ctx("write row version")?;
    stmt.raw_bind_parameter(n + 1, ch.version as i64)
        .ctx("write row version")?;
    stmt.raw_bind_parameter(n + 2, origin as i64)
        .ctx("write row version")?;
    stmt.raw_bind_parameter(n + 3, deleted as i64)
        .ctx("write row version")?;
    stmt.raw_execute().ctx("write row version")?;
    Ok(outcome)
}

/// A row's version as this node holds it.
struct Current {
    version: u64,
    node: u64,
    deleted: bool,
    /// The row's digest when last stamped or applied here (None: unknown).
    digest: Option<i64>,
}

/// The digest of a row image as [`capture::digest`] computes it for the stored row here: over
/// this node's columns in this node's order (the sender's order may differ after a rebuild),
/// a column the sender lacks counting as NULL.
fn row_digest(ours: &TableHeader, sender: &TableHeader, values: &[Value]) -> i64 {
    use rusqlite::types::ValueRef;
    capture::digest(ours.columns.iter().flat_map(|c| {
        let v = sender
            .columns
            .iter()
            .position(|s| s.eq_ignore_ascii_case(c))
            .map_or(ValueRef::Null, |i| capture::value_ref(&values[i]));
        [ValueRef::Text(c.as_bytes()), v]
    }))
}

/// Counts, records and logs (rate-limited per table) a primary-key collision: `origin` created
/// `key` of `table` at `version` while this node held a different row of it from `cur.node`.
/// Last-writer-wins still decides which row stays; this only makes the overwrite visible.
fn note_collision(
    conn: &Connection,
    table: &str,
    key: &[Value],
    cur: &Current,
    origin: u64,
    version: u64,
) -> Result<(), DbError> {
    let n = db::get_meta(conn, PK_COLLISIONS_KEY)?.unwrap_or(0) + 1;
    db::set_meta(conn, PK_COLLISIONS_KEY, n)?;
    let (winner, loser) = if (version, origin) > (cur.version, cur.node) {
        (origin, cur.node)
    } else {
        (cur.node, origin)
    };
    let what = format!(
        "table {table} key {}: nodes {} and {origin} both created it; node {winner}'s row is kept, node {loser}'s overwritten",
        show_key(key),
        cur.node
    );
    db::set_meta(conn, LAST_PK_COLLISION_KEY, &what)?;
    if let Some(more) = crate::logging::repeated(&format!("pk collision {table}")) {
        log::warn!("primary-key collision in {what} (last writer wins); give new rows keys that cannot collide between nodes (README: Choosing primary keys){more}");
    }
    Ok(())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

enum Resolved {
    /// The incoming row won: the conflicting local row is deleted and the row applied.
    Won,
    /// The incoming row lost: nothing applied; the caller writes its tombstone.
    Lost,
    Park(String),
}

/// Shows a key for a log line.
fn show_key(key: &[Value]) -> String {
    let one = |v: &Value| match v {
        Value::Null => "NULL".to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
        Value::Blob(b) => format!(
            "x'{}'",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    };
    let parts: Vec<String> = key.iter().map(one).collect();
    if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        format!("({})", parts.join(","))
    }
}

/// The incoming upsert `values` at (`version`, `origin`) failed on a unique constraint other
/// than the primary key: decides which row wins (see the module doc).
fn resolve_unique<'c>(
    conn: &'c Connection,
    t: &Target,
    stmts: &mut Prepared<'c>,
    header: &TableHeader,
    origin: u64,
    version: u64,
    values: &[Value],
) -> Result<Resolved, DbError> {
    let table = t.table;
    let ours = &table.header.columns;
    let pk_cols: Vec<String> = table
        .header
        .pk
        .iter()
        .map(|&i| quote(&ours[i as usize]))
        .collect();
    let their_key: Vec<Value> = header
        .pk
        .iter()
        .map(|&i| values[i as usize].clone())
        .collect();
    let mut found: Vec<(Vec<Value>, Vec<String>)> = Vec::new();
    let mut unresolvable = None;
    for idx in capture::unique_indexes(conn, table.name())? {
        let pos: Option<Vec<usize>> = idx
            .columns
            .iter()
            .map(|c| header.columns.iter().position(|h| h == c))
            .collect();
        let (true, Some(pos)) = (idx.resolvable, pos) else {
            unresolvable = Some(idx.name);
            continue;
        };
        if pos.iter().any(|&p| matches!(values[p], Value::Null)) {
            continue; // NULLs never conflict
        }
        let n = pos.len();
        let cond: Vec<String> = idx
            .columns
            .iter()
            .zip(&idx.collations)
            .enumerate()
            .map(|(i, (c, coll))| format!("{} = ?{} COLLATE {}", quote(c), i + 1, quote(coll)))
            .collect();
        let not_me: Vec<String> = pk_cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} IS ?{}", n + i + 1))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} AND NOT ({}) LIMIT 2",
            pk_cols.join(", "),
            quote(table.name()),
            cond.join(" AND "),
            not_me.join(" AND ")
        );
        let keys: Vec<Vec<Value>> = conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                let params: Vec<&Value> =
                    pos.iter().map(|&p| &values[p]).chain(&their_key).collect();
                s.query_map(rusqlite::params_from_iter(params), |r| {
                    (0..pk_cols.len())
                        .map(|i| r.get_ref(i).map(capture::value_of))
                        .collect()
                })?
                .collect()
            })
            .ctx("find the conflicting row")?;
        for k in keys {
            if !found.iter().any(|(f, _)| *f == k) {
                found.push((k, idx.columns.clone()));
            }
        }
    }
    if found.len() > 1 {
        return Ok(Resolved::Park(format!(
            "the row conflicts with {} rows on unique keys: not resolved",
            found.len()
        )));
    }
    if let Some(name) = unresolvable {
        return Ok(Resolved::Park(format!(
            "unique index {name} is partial, on an expression or on a column the sender lacks: not resolved"
        )));
    }
    let Some((local_key, columns)) = found.pop() else {
        return Ok(Resolved::Park("no conflicting row found".into()));
    };
    let local: Option<(i64, i64)> = prepared(&mut stmts.get_version, conn, &t.get_version)
        .and_then(|s| {
            bind(s, local_key.iter())?;
            let mut rows = s.raw_query();
            rows.next()?.map(|r| Ok((r.get(0)?, r.get(1)?))).transpose()
        })
        .ctx("read row version")?;
    let Some((lver, lnode)) = local else {
        return Ok(Resolved::Park(format!(
            "the conflicting row {} has no version here: not resolved",
            show_key(&local_key)
        )));
    };
    let (lver, lnode) = (lver as u64, lnode as u64);
    let won = (version, origin) > (lver, lnode);
    let columns = columns.join(",");
    if let Some(more) = crate::logging::repeated(&format!("unique {}", table.name())) {
        let (wk, wo, wv, lk, lo, lv) = if won {
            (
                show_key(&their_key),
                origin,
                version,
                show_key(&local_key),
                lnode,
                lver,
            )
        } else {
            (
                show_key(&local_key),
                lnode,
                lver,
                show_key(&their_key),
                origin,
                version,
            )
        };
        log::warn!(
            "unique conflict resolved table={} columns={columns} winner_key={wk} winner_origin={wo} winner_version={wv} loser_key={lk} loser_origin={lo} loser_version={lv}: the loser is deleted{more}",
            table.name()
        );
    }
    if !won {
        // the incoming row loses: an older local row under its key goes too (the caller
        // writes the tombstone at the incoming version)
        let r = prepared(&mut stmts.delete, conn, &t.delete).and_then(|s| {
            bind(s, their_key.iter())?;
            s.raw_execute()
        });
        return match r {
            Ok(_) => Ok(Resolved::Lost),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                Ok(Resolved::Park(format!(
                    "deleting the losing row failed: {e}"
                )))
            }
            Err(e) => Err(DbError::Sql {
                op: "delete the losing row",
                source: e,
            }),
        };
    }
    conn.execute_batch("SAVEPOINT hl_unique")
        .ctx("begin unique resolution")?;
    let attempt = (|| -> rusqlite::Result<()> {
        let s = prepared(&mut stmts.delete, conn, &t.delete)?;
        bind(s, local_key.iter())?;
        s.raw_execute()?;
        // its tombstone at its own version; a pending local change stays pending (see above)
        let ver_keys: Vec<String> = (0..local_key.len())
            .map(|i| format!("k{i} IS ?{}", i + 1))
            .collect();
        conn.prepare_cached(&format!(
            "UPDATE {} SET del = 1, h = NULL WHERE {}",
            table.ver,
            ver_keys.join(" AND ")
        ))?
        .execute(rusqlite::params_from_iter(local_key.iter()))?;
        let s = prepared(&mut stmts.upsert, conn, &t.upsert)?;
        match &t.used {
            None => bind(s, values.iter())?,
            Some(used) => bind(s, used.iter().map(|&i| &values[i]))?,
        };
        s.raw_execute()?;
        Ok(())
    })();
    match attempt {
        Ok(()) => {
            conn.execute_batch("RELEASE hl_unique")
                .ctx("end unique resolution")?;
            Ok(Resolved::Won)
        }
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
            conn.execute_batch("ROLLBACK TO hl_unique; RELEASE hl_unique")
                .ctx("undo unique resolution")?;
            Ok(Resolved::Park(format!(
                "after deleting the losing row {} it still fails: {e}",
                show_key(&local_key)
            )))
        }
        Err(e) => Err(DbError::Sql {
            op: "resolve a unique conflict",
            source: e,
        }),
    }
}

fn park(
    conn: &Connection,
    table: &str,
    reason: &str,
    origin: u64,
    header: &TableHeader,
    ch: &Change,
) -> Result<u64, DbError> {
    let bytes = frame::encode_single(origin, header, ch.version, ch.op.clone(), frame::VERSION);
    conn.prepare_cached(&format!(
        "INSERT INTO {PARKED_TABLE}(tbl, reason, frame, k, at) VALUES (?1, ?2, ?3, ?4, ?5)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            table,
            reason,
            bytes,
            change_key(header, ch),
            crate::hlc::now_ms() as i64
        ])
    })
    .ctx("park change")?;
    Ok(bytes.len() as u64)
}

/// Whether anything is parked.
fn parked_any(conn: &Connection) -> Result<bool, DbError> {
    conn.prepare_cached(&format!("SELECT EXISTS(SELECT 1 FROM {PARKED_TABLE})"))
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .ctx("look for parked changes")
}

/// A byte string naming a key's values (one per key column, in the key's order), the same for
/// equal values whatever their storage: an integral real is its integer.
pub fn key_bytes<'v>(values: impl Iterator<Item = &'v Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        match v {
            Value::Null => out.push(0),
            Value::Integer(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::Real(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => {
                out.push(1);
                out.extend_from_slice(&(*f as i64).to_be_bytes());
            }
            Value::Real(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            Value::Text(b) | Value::Blob(b) => {
                out.push(if matches!(v, Value::Text(_)) { 3 } else { 4 });
                out.extend_from_slice(&(b.len() as u64).to_be_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    out
}

/// The key of the row a change is about, as [`key_bytes`].
fn change_key(header: &TableHeader, ch: &Change) -> Vec<u8> {
    match &ch.op {
        Op::Upsert(values) | Op::Insert(values) => key_bytes(
            header
                .pk
                .iter()
                .map(|&i| values.get(i as usize).unwrap_or(&Value::Null)),
        ),
        Op::Delete(keys) => key_bytes(keys.iter()),
    }
}

/// A foreign key of one of this node's tables, mapped onto a sender's columns.
struct ForeignKey {
    parent: String,
    /// Positions in the sender's row image of the referencing columns, in the order of the
    /// parent's primary key (`by_key`) or as declared; `None` where the sender lacks one.
    from: Vec<Option<usize>>,
    /// The parent's primary key is what is referenced: a parked parent is found by its key.
    /// Otherwise (a UNIQUE column) any parked row of the parent table holds the child back.
    by_key: bool,
}

/// The foreign keys of `header`'s table here (`PRAGMA foreign_key_list`).
fn foreign_keys(
    conn: &Connection,
    schema: &Schema,
    header: &TableHeader,
) -> Result<Vec<ForeignKey>, DbError> {
    let rows: Vec<(i64, String, String, Option<String>)> = conn
        .prepare_cached(
            "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
        )
        .and_then(|mut s| {
            s.query_map([&header.name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })
        .ctx("read foreign keys")?;
    let pos = |name: &str| {
        header
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
    };
    let mut out: Vec<ForeignKey> = Vec::new();
    let mut at = 0;
    while at < rows.len() {
        let id = rows[at].0;
        let group: Vec<&(i64, String, String, Option<String>)> =
            rows[at..].iter().take_while(|r| r.0 == id).collect();
        at += group.len();
        let parent = group[0].1.clone();
        let parent_pk: Option<Vec<&String>> = schema.get(&parent).map(|t| {
            t.header
                .pk
                .iter()
                .map(|&i| &t.header.columns[i as usize])
                .collect()
        });
        // the referencing columns in the order of the parent's key, when that is what they name
        let ordered: Option<Vec<&str>> =
            parent_pk
                .filter(|pk| pk.len() == group.len())
                .and_then(|pk| {
                    if group.iter().all(|r| r.3.is_none()) {
                        return Some(group.iter().map(|r| r.2.as_str()).collect());
                    }
                    pk.iter()
                        .map(|k| {
                            group
                                .iter()
                                .find(|r| {
                                    r.3.as_deref().is_some_and(|to| to.eq_ignore_ascii_case(k))
                                })
                                .map(|r| r.2.as_str())
                        })
                        .collect()
                });
        out.push(match ordered {
            Some(from) => ForeignKey {
                parent,
                from: from.iter().map(|c| pos(c)).collect(),
                by_key: true,
            },
            None => ForeignKey {
                parent,
                from: group.iter().map(|r| pos(&r.2)).collect(),
                by_key: false,
            },
        });
    }
    Ok(out)
}

/// The table of a parked row the row image `values` references, if any: one indexed lookup per
/// foreign key. A reference with a NULL column references nothing (SQL's rule); one through a
/// column the sender lacks is not known and not followed.
fn parked_parent<'f>(
    conn: &Connection,
    fks: &'f [ForeignKey],
    values: &[Value],
    soon: &HashSet<(&str, Vec<u8>)>,
    soon_tables: &HashSet<&str>,
) -> Result<Option<&'f str>, DbError> {
    for fk in fks {
        let refs: Option<Vec<&Value>> = fk
            .from
            .iter()
            .map(|p| p.and_then(|i| values.get(i)))
            .collect();
        let Some(refs) = refs else { continue };
        if refs.iter().any(|v| matches!(v, Value::Null)) {
            continue;
        }
        let parked = if fk.by_key {
            let key = key_bytes(refs.into_iter());
            soon.contains(&(fk.parent.as_str(), key.clone()))
                || conn
                    .prepare_cached(&format!(
                        "SELECT EXISTS(SELECT 1 FROM {PARKED_TABLE} WHERE tbl = ?1 AND (k = ?2 OR k IS NULL))"
                    ))
                    .and_then(|mut s| s.query_row(params![fk.parent, key], |r| r.get(0)))
                    .ctx("look for a parked parent")?
        } else {
            soon_tables.contains(fk.parent.as_str())
                || conn
                    .prepare_cached(&format!(
                        "SELECT EXISTS(SELECT 1 FROM {PARKED_TABLE} WHERE tbl = ?1)"
                    ))
                    .and_then(|mut s| s.query_row([&fk.parent], |r| r.get(0)))
                    .ctx("look for a parked parent")?
        };
        if parked {
            return Ok(Some(&fk.parent));
        }
    }
    Ok(None)
}

/// Retries parked changes (after a schema change). Returns (applied or stale, still parked).
pub fn retry_parked(
    conn: &mut Connection,
    schema: &Schema,
    hlc: &mut Hlc,
    node: u64,
) -> Result<(u64, u64), DbError> {
    // nothing parked (the usual case): no write transaction
    if parked_len(conn)? == 0 {
        return Ok((0, 0));
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .ctx("begin retry parked")?;
    capture::stamp(&tx, schema, hlc, node)?;
    // In stream order, so parents come before their children. A pass that applied something
    // is followed by another over what parked again: a child that came ahead of its parent
    // (in the same frame) applies in it. Each such pass has fewer changes to go through.
    let mut done = 0;
    let left = loop {
        let parked: Vec<(i64, Vec<u8>, Option<i64>)> = tx
            .prepare(&format!(
                "SELECT id, frame, at FROM {PARKED_TABLE} ORDER BY id"
            ))
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .ctx("read parked changes")?;
        let before = done;
        let mut left = 0;
        for (id, bytes, at) in parked {
            tx.execute(&format!("DELETE FROM {PARKED_TABLE} WHERE id = ?1"), [id])
                .ctx("unpark")?;
            let Ok(Frame::Changes(c)) = frame::decode(&bytes) else {
                continue;
            };
            let mut stats = ApplyStats::default();
            // accepted when it arrived: applied whatever the direction says now
            apply_changes(&tx, &|_| true, schema, hlc, &c, None, &mut stats)?;
            done += stats.applied + stats.stale;
            left += stats.parked;
            if stats.parked > 0 {
                // parked again: it keeps the time it first parked (its age is the wait)
                tx.execute(
                    &format!("UPDATE {PARKED_TABLE} SET at = ?1 WHERE id = last_insert_rowid()"),
                    [at],
                )
                .ctx("keep the park time")?;
            }
        }
        if left == 0 || done == before {
            break left;
        }
    };
    capture::discard_echoes(&tx, schema)?;
    db::set_meta(&tx, HLC_KEY, hlc.last() as i64)?;
    tx.commit().ctx("commit retry parked")?;
    Ok((done, left))
}

/// Parked changes in all: how many, their bytes (the frames kept), and when the oldest
/// parked (Unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParkedSize {
    pub changes: u64,
    pub bytes: u64,
    pub oldest_ms: Option<u64>,
}

/// How much is parked (one pass over the parked rows; `length` of a blob reads no content).
pub fn parked_size(conn: &Connection) -> Result<ParkedSize, DbError> {
    conn.query_row(
        &format!("SELECT count(*), coalesce(sum(length(frame)), 0), min(at) FROM {PARKED_TABLE}"),
        [],
        |r| {
            Ok(ParkedSize {
                changes: r.get::<_, i64>(0)? as u64,
                bytes: r.get::<_, i64>(1)? as u64,
                oldest_ms: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
            })
        },
    )
    .ctx("measure parked changes")
}

/// The tables with parked changes, with the reason of the latest one parked, by bytes parked.
pub fn parked_tables(conn: &Connection) -> Result<Vec<(String, String)>, DbError> {
    conn.prepare(&format!(
        "SELECT tbl, (SELECT reason FROM {PARKED_TABLE} p2 WHERE p2.tbl = p.tbl ORDER BY id DESC LIMIT 1) \
         FROM {PARKED_TABLE} p GROUP BY tbl ORDER BY sum(length(frame)) DESC, tbl"
    ))
    .and_then(|mut s| {
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    })
    .ctx("read parked tables")
}

/// Number of parked changes.
pub fn parked_len(conn: &Connection) -> Result<u64, DbError> {
    conn.query_row(&format!("SELECT count(*) FROM {PARKED_TABLE}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
    .ctx("count parked changes")
}

#[cfg(test)]
mod tests;
