//! The names of HarmonyLite's own state in the database, and the node lock next to it.
//!
//! A bottom module: it imports nothing of ours, and every module that reads or writes this
//! state (`db`, `apply`, `gap`, `snapshot`, `node`, `status`, `cleanup`) imports it from
//! here, so a newcomer finds every `__hl_meta` key in one list and no two modules depend on
//! each other only for a name. Reading and writing the keys is `db::get_meta`/`db::set_meta`;
//! the per-table objects (`__hl_log_*`, `__hl_ver_*`, triggers) are named by `capture`.

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

// ---- keys of `__hl_meta` (`db::META_TABLE`), one integer or text value each ----

/// This node's id (configured, else derived once and kept), see `db::node_id`.
pub const NODE_ID_KEY: &str = "node_id";
/// The stream position: the last stream sequence applied or skipped. Moves in the
/// transaction that applies the data (exactly-once apply).
pub const CURSOR_KEY: &str = "cursor";
/// The hybrid logical clock's high-water mark, persisted with the stamps it issued.
pub const HLC_KEY: &str = "hlc";
/// The stream position up to which our own frames are applied like any other's: set when the
/// database was rebuilt from a snapshot (see `apply::own_replay_until`).
pub const OWN_REPLAY_KEY: &str = "own_replay_until";
/// Unique-key conflicts resolved on this database (for `harmonylite status`).
pub const UNIQUE_CONFLICTS_KEY: &str = "unique_conflicts";
/// Primary-key collisions seen on this database (for `harmonylite status`).
pub const PK_COLLISIONS_KEY: &str = "pk_collisions";
/// The newest primary-key collision, as text (for `harmonylite status`).
pub const LAST_PK_COLLISION_KEY: &str = "last_pk_collision";
/// The tables this node has received every change of, from the stream's start (see
/// `apply::Backfill`): `*` for all, else their names joined by U+001F (text).
pub const RECEIVED_KEY: &str = "received_tables";
/// While a backfill runs, the position up to which frames are read again.
pub const BACKFILL_UNTIL_KEY: &str = "backfill_until";
/// While a backfill runs, the received tables once it is done (text).
pub const BACKFILL_TO_KEY: &str = "backfill_received";
/// The oldest stream sequence of a hole this node cannot fetch any more (see `gap`).
pub const GAP_FROM_KEY: &str = "gap_from";
/// The newest stream sequence of that hole (inclusive).
pub const GAP_TO_KEY: &str = "gap_to";
/// Tombstones (see `tombstones`): the horizon below which this node collected them (an HLC
/// version), and how many it collected in all.
pub const COLLECTED_BELOW_KEY: &str = "tombstones_collected_below";
pub const COLLECTED_KEY: &str = "tombstones_collected";

/// What the running node writes for `status` (read from the database, so `status` works
/// whether the node runs or not): the link, 1 up or 0 down, and since when (Unix ms).
pub const LINK_UP_KEY: &str = "link_up";
pub const LINK_SINCE_KEY: &str = "link_since_ms";
/// When a publish round was last acknowledged, and a frame last applied (Unix ms).
pub const LAST_PUBLISH_KEY: &str = "last_publish_ms";
pub const LAST_APPLY_KEY: &str = "last_apply_ms";
/// 1 while the outbox is over its `[replication_log]` budget.
pub const OVER_BUDGET_KEY: &str = "outbox_over_budget";
/// 1 while parked changes are at `max_parked_bytes` and the node takes in no new frames.
pub const INTAKE_HELD_KEY: &str = "intake_held";
/// The server's refusal of this node's publishes (a permissions violation), as text, until a
/// publish round goes through again.
pub const REFUSED_KEY: &str = "refused";
/// The stream's last sequence when the node last looked (at most every 30 s while it
/// receives, written only when it changed): `status` shows how far behind the node is.
pub const STREAM_LAST_KEY: &str = "stream_last_seq";
/// Another process answering with this node's id (a cloned SD card), as text, until a probe
/// finds none (see `node/ops.rs`); written only when it changes.
pub const DUPLICATE_KEY: &str = "duplicate_node_id";

/// The last `harmonylite verify` (see `verify`): when its result reached this node (Unix ms),
/// the rows it found different and the rows it had re-announced.
pub const VERIFY_LAST_MS_KEY: &str = "verify_last_ms";
pub const VERIFY_DIFFERENT_KEY: &str = "verify_different_rows";
pub const VERIFY_REPAIRED_KEY: &str = "verify_repaired_rows";

/// Snapshots (see `snapshot`): the stream sequence and time of the last restore here, the
/// progress of one in flight (bytes), and the last snapshot this node saved.
pub const RESTORED_SEQ_KEY: &str = "restored_seq";
pub const RESTORED_MS_KEY: &str = "restored_ms";
pub const RESTORE_DONE_KEY: &str = "restore_done_bytes";
pub const RESTORE_TOTAL_KEY: &str = "restore_total_bytes";
pub const SAVED_SEQ_KEY: &str = "snapshot_saved_seq";
pub const SAVED_MS_KEY: &str = "snapshot_saved_ms";

// ---- tables of ours shared between modules ----

/// Remote changes that cannot be applied yet (a missing parent, a paused table), see `apply`.
pub const PARKED_TABLE: &str = "__hl_parked";
/// Fragments of a frame too big for one message, held until the frame is whole.
pub const FRAGMENT_TABLE: &str = "__hl_frag";

// ---- the node lock: one node per database ----

/// `<db>.hl-lock`: the file a node locks exclusively while it runs (and `cleanup` while it
/// works). The OS releases the lock on any exit, `kill -9` included.
pub fn lock_path(db_path: &Path) -> PathBuf {
    let mut s = db_path.as_os_str().to_os_string();
    s.push(".hl-lock");
    PathBuf::from(s)
}

/// Whether a process holds the lock of this database now (for `status`).
pub fn is_locked(db_path: &Path) -> bool {
    File::open(lock_path(db_path))
        .is_ok_and(|f| matches!(f.try_lock_shared(), Err(TryLockError::WouldBlock)))
}

/// Why [`lock`] did not take the lock; each caller says it in its own words.
#[derive(Debug)]
pub enum LockError {
    /// The lock file cannot be created or opened.
    Open { path: PathBuf, source: io::Error },
    /// Another process holds it.
    Held { path: PathBuf },
    /// Locking failed for another reason (a file system without locks).
    Lock { path: PathBuf, source: io::Error },
}

/// Takes the lock of this database without waiting: the lock file, created if missing and
/// locked exclusively until it is dropped.
pub fn lock(db_path: &Path) -> Result<File, LockError> {
    let path = lock_path(db_path);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path);
    let file = match file {
        Ok(f) => f,
        Err(source) => return Err(LockError::Open { path, source }),
    };
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LockError::Held { path }),
        Err(TryLockError::Error(source)) => Err(LockError::Lock { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_status_sees_it() {
        let dir = std::env::temp_dir().join(format!("hl-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("a.db");
        assert_eq!(lock_path(&db), dir.join("a.db.hl-lock"));
        assert!(!is_locked(&db));
        let held = lock(&db).unwrap();
        assert!(is_locked(&db));
        assert!(matches!(lock(&db), Err(LockError::Held { path }) if path == lock_path(&db)));
        drop(held);
        assert!(!is_locked(&db));
        assert!(lock(&db).is_ok());
        let missing = dir.join("no/such/dir/b.db");
        assert!(matches!(lock(&missing), Err(LockError::Open { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_are_distinct() {
        let keys = [
            NODE_ID_KEY,
            CURSOR_KEY,
            HLC_KEY,
            OWN_REPLAY_KEY,
            UNIQUE_CONFLICTS_KEY,
            PK_COLLISIONS_KEY,
            LAST_PK_COLLISION_KEY,
            RECEIVED_KEY,
            BACKFILL_UNTIL_KEY,
            BACKFILL_TO_KEY,
            GAP_FROM_KEY,
            GAP_TO_KEY,
            LINK_UP_KEY,
            LINK_SINCE_KEY,
            LAST_PUBLISH_KEY,
            LAST_APPLY_KEY,
            OVER_BUDGET_KEY,
            RESTORED_SEQ_KEY,
            RESTORED_MS_KEY,
            RESTORE_DONE_KEY,
            RESTORE_TOTAL_KEY,
            SAVED_SEQ_KEY,
            SAVED_MS_KEY,
            REFUSED_KEY,
            STREAM_LAST_KEY,
            DUPLICATE_KEY,
            VERIFY_LAST_MS_KEY,
            VERIFY_DIFFERENT_KEY,
            VERIFY_REPAIRED_KEY,
        ];
        let set: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(set.len(), keys.len());
    }
}
