//! Holes in the stream: messages this node never applied that the stream no longer holds.
//!
//! Invariant (DESIGN 12): a hole is seen wherever it appears (before the stream's first
//! message, between batches, inside a batch, before a batch of our own frames) and stays
//! recorded in `__hl_meta` (`gap_from`, `gap_to`, inclusive) until a snapshot whose sequence
//! covers it is restored, across restarts and failed restore attempts. Several holes are kept
//! as one covering range: a snapshot at or past its end reflects every message before it.
//!
//! Detection is pure (it looks at sequence numbers only); the record is a few meta keys.

use rusqlite::Connection;

use crate::db::{self, DbError};
use crate::state::{GAP_FROM_KEY, GAP_TO_KEY};

/// Stream sequences `from..=to` that this node never applied and cannot fetch any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
}

impl Gap {
    /// The smallest range holding both.
    pub fn union(self, other: Gap) -> Gap {
        Gap {
            from: self.from.min(other.from),
            to: self.to.max(other.to),
        }
    }
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.from, self.to)
    }
}

/// The hole a fetched batch reveals, given the position applied so far.
///
/// Assumption: our consumer's filter is the stream's whole subject space (`<subject_prefix>.>`,
/// the only subject the stream captures), so it delivers every sequence the stream still holds,
/// in order. Any sequence past `position + 1`, or past the previous one plus one, means the
/// messages between were discarded (retention limits, a purge, a deleted message). Sequences
/// at or below the position are redeliveries and say nothing.
pub fn in_batch(position: u64, seqs: impl IntoIterator<Item = u64>) -> Option<Gap> {
    let mut next = position + 1;
    let mut found: Option<Gap> = None;
    for seq in seqs {
        if seq < next {
            continue;
        }
        if seq > next {
            let g = Gap {
                from: next,
                to: seq - 1,
            };
            found = Some(found.map_or(g, |f| f.union(g)));
        }
        next = seq + 1;
    }
    found
}

/// The hole between our position and the stream's first message, if any.
pub fn before_stream(position: u64, first_seq: u64) -> Option<Gap> {
    (first_seq > position + 1).then(|| Gap {
        from: position + 1,
        to: first_seq - 1,
    })
}

/// The recorded hole, if any.
pub fn read(conn: &Connection) -> Result<Option<Gap>, DbError> {
    let from = db::get_meta(conn, GAP_FROM_KEY)?;
    let to = db::get_meta(conn, GAP_TO_KEY)?;
    Ok(match (from, to) {
        (Some(from), Some(to)) => Some(Gap {
            from: from as u64,
            to: to as u64,
        }),
        _ => None,
    })
}

/// Records `g` (merged with the hole already recorded). Returns the recorded range.
pub fn record(conn: &Connection, g: Gap) -> Result<Gap, DbError> {
    let merged = read(conn)?.map_or(g, |old| old.union(g));
    db::set_meta(conn, GAP_FROM_KEY, merged.from as i64)?;
    db::set_meta(conn, GAP_TO_KEY, merged.to as i64)?;
    Ok(merged)
}

/// Forgets the hole once a snapshot at `seq` is installed, if that snapshot covers it.
/// Returns whether a hole is still recorded.
pub fn clear_if_covered(conn: &Connection, seq: u64) -> Result<bool, DbError> {
    match read(conn)? {
        Some(g) if g.to <= seq => {
            conn.execute(
                &format!("DELETE FROM {} WHERE key IN (?1, ?2)", db::META_TABLE),
                [GAP_FROM_KEY, GAP_TO_KEY],
            )
            .map_err(|source| DbError::Sql {
                op: "clear the recorded gap",
                source,
            })?;
            Ok(false)
        }
        Some(_) => Ok(true),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_batches_have_no_hole() {
        assert_eq!(in_batch(10, [11, 12, 13]), None);
        assert_eq!(in_batch(0, [1]), None);
        // redeliveries at or below the position say nothing
        assert_eq!(in_batch(10, [9, 10, 11]), None);
        assert_eq!(in_batch(10, []), None);
    }

    #[test]
    fn a_batch_starting_past_the_position_is_a_hole() {
        assert_eq!(in_batch(10, [15, 16]), Some(Gap { from: 11, to: 14 }));
        assert_eq!(in_batch(0, [3]), Some(Gap { from: 1, to: 2 }));
    }

    #[test]
    fn a_jump_inside_a_batch_is_a_hole() {
        assert_eq!(
            in_batch(10, [11, 12, 14, 15]),
            Some(Gap { from: 13, to: 13 })
        );
        // two holes: one range covering both
        assert_eq!(in_batch(10, [12, 13, 20]), Some(Gap { from: 11, to: 19 }));
    }

    #[test]
    fn the_stream_starting_past_the_position_is_a_hole() {
        assert_eq!(before_stream(10, 11), None);
        assert_eq!(before_stream(10, 5), None);
        assert_eq!(before_stream(10, 12), Some(Gap { from: 11, to: 11 }));
        assert_eq!(before_stream(0, 1), None);
        assert_eq!(before_stream(0, 40), Some(Gap { from: 1, to: 39 }));
    }

    #[test]
    fn the_record_merges_and_is_cleared_only_by_a_covering_snapshot() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE {}(key TEXT PRIMARY KEY, value) WITHOUT ROWID",
            db::META_TABLE
        ))
        .unwrap();
        assert_eq!(read(&conn).unwrap(), None);
        assert_eq!(
            record(&conn, Gap { from: 11, to: 14 }).unwrap(),
            Gap { from: 11, to: 14 }
        );
        assert_eq!(
            record(&conn, Gap { from: 30, to: 31 }).unwrap(),
            Gap { from: 11, to: 31 }
        );
        assert_eq!(read(&conn).unwrap(), Some(Gap { from: 11, to: 31 }));
        assert!(
            clear_if_covered(&conn, 30).unwrap(),
            "a snapshot at 30 does not cover 31"
        );
        assert_eq!(read(&conn).unwrap(), Some(Gap { from: 11, to: 31 }));
        assert!(!clear_if_covered(&conn, 31).unwrap());
        assert_eq!(read(&conn).unwrap(), None);
    }
}
