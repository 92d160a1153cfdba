//! `harmonylite status`: what a person running the node wants to know, read from the database
//! (not the process), so it works whether the node runs or not.

use std::fmt::Write as _;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use crate::capture;
use crate::config::Config;
use crate::db::{self, Context, DbError, META_TABLE};
use crate::hlc;
use crate::state::{
    self, CURSOR_KEY, FRAGMENT_TABLE, HLC_KEY, LAST_APPLY_KEY, LAST_PK_COLLISION_KEY,
    LAST_PUBLISH_KEY, LINK_SINCE_KEY, LINK_UP_KEY, NODE_ID_KEY, OVER_BUDGET_KEY, PARKED_TABLE,
    PK_COLLISIONS_KEY, RESTORED_MS_KEY, RESTORED_SEQ_KEY, RESTORE_DONE_KEY, RESTORE_TOTAL_KEY,
    SAVED_MS_KEY, SAVED_SEQ_KEY, UNIQUE_CONFLICTS_KEY,
};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub db_path: String,
    pub node_id: Option<u64>,
    pub installed: bool,
    pub tables: Vec<String>,
    pub not_replicated: Vec<(String, String)>,
    pub stream_position: u64,
    /// Stream messages this node never applied and the stream no longer holds (inclusive),
    /// until a snapshot restore repairs them.
    pub stream_gap: Option<(u64, u64)>,
    pub hlc: u64,
    pub outbox_changes: u64,
    pub outbox_oldest_age_ms: Option<u64>,
    pub outbox_over_budget: bool,
    pub parked_changes: u64,
    /// Bytes the parked changes take (their frames), and the age of the oldest.
    pub parked_bytes: u64,
    pub parked_oldest_age_ms: Option<u64>,
    /// Parked changes reached `max_parked_bytes`: the node takes in no new frames until they
    /// apply (see `apply`, `Node::note_parked`).
    pub intake_held: bool,
    /// Parked changes per table, with the reason of the latest one parked.
    pub parked_by_table: Vec<(String, u64, String)>,
    /// Tables paused by a schema change, with the reason.
    pub paused_tables: Vec<(String, String)>,
    pub fragments_waiting: u64,
    /// Unique-key conflicts resolved here (the losing row deleted), see `apply`.
    pub unique_conflicts: u64,
    /// Primary-key collisions seen (two nodes created the same key), and the newest one.
    pub pk_collisions: u64,
    pub last_pk_collision: Option<String>,
    /// Tombstones collected here in all, and the wall-clock time (Unix ms) below which the
    /// last collection went (see `tombstones`).
    pub tombstones_collected: u64,
    pub tombstones_collected_below_ms: Option<u64>,
    pub last_publish_ms: Option<u64>,
    pub last_apply_ms: Option<u64>,
    pub link_up: Option<bool>,
    pub link_since_ms: Option<u64>,
    /// A restore in progress: bytes downloaded and total.
    pub restore_progress: Option<(u64, u64)>,
    pub restored_seq: Option<u64>,
    pub restored_ms: Option<u64>,
    pub snapshot_saved_seq: Option<u64>,
    pub snapshot_saved_ms: Option<u64>,
    /// A node process holds the database's lock file right now.
    pub node_running: bool,
    /// Each replicated table's direction on this node: (table, publish, replicate).
    pub directions: Vec<(String, bool, bool)>,
    /// The NATS server refuses this node's publishes (a permissions violation), until a
    /// publish goes through.
    pub refused: Option<String>,
    /// The node cannot write its database for lack of space. Known only inside the node's
    /// process (the status service, `status --fleet`): the database cannot record it.
    pub disk_full: bool,
    /// The stream's last sequence when the node last looked, and how far the position is
    /// behind it (messages; those of tables this node does not receive count until its
    /// consumer passes them).
    pub stream_last_seq: Option<u64>,
    pub behind: Option<u64>,
    /// This machine's name and this build's version (of the node answering, in `--fleet`).
    pub hostname: String,
    pub version: String,
    /// Another process answers with this node's id (a cloned SD card): who, as text.
    pub duplicate_node: Option<String>,
    /// The answering process's per-start token (only in the status service's answers, which
    /// is how a node tells itself from a clone).
    pub instance: Option<String>,
    /// The last `harmonylite verify` whose result reached this node: (Unix ms, rows found
    /// different, rows re-announced).
    pub verify: Option<(u64, u64, u64)>,
}

/// This build's version, as `--version` and `status` show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An outbox whose oldest change is older than this while the link is up is not draining
/// (`status --check`): a normal round takes well under a second.
pub const CHECK_OUTBOX_AGE_MS: u64 = 60_000;

/// This machine's name (the kernel's), empty when it cannot be read.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// This process's token: random, made once per start. Two processes answering for one node
/// id with different tokens are two nodes sharing the id.
pub fn instance() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 8];
        if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
            // no system randomness: the clock and the process id still differ between clones
            b = (crate::hlc::now_ms() ^ ((std::process::id() as u64) << 40)).to_le_bytes();
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    })
}

pub fn read(cfg: &Config) -> Result<Status, DbError> {
    let path = &cfg.db_path;
    let conn = db::open_read_only(path)?;
    let mut st = Status {
        db_path: path.display().to_string(),
        node_running: state::is_locked(path),
        hostname: hostname(),
        version: VERSION.to_string(),
        ..Default::default()
    };
    let mut schema = capture::scan(&conn, cfg)?;
    crate::schema::load_paused(&conn, &mut schema)?;
    st.paused_tables = schema
        .paused
        .iter()
        .map(|(t, w)| (t.clone(), w.clone()))
        .collect();
    st.paused_tables.sort();
    st.tables = schema.tables.iter().map(|t| t.name().to_string()).collect();
    st.directions = schema
        .tables
        .iter()
        .map(|t| {
            (
                t.name().to_string(),
                cfg.publishes(t.name()),
                cfg.replicates(t.name()),
            )
        })
        .collect();
    st.not_replicated = schema.skipped.clone();
    st.installed = exists(&conn, META_TABLE)?;
    if !st.installed {
        return Ok(st);
    }
    let meta = |key: &str| -> Result<Option<i64>, DbError> { db::get_meta(&conn, key) };
    st.node_id = meta(NODE_ID_KEY)?.map(|v| v as u64);
    st.stream_position = meta(CURSOR_KEY)?.unwrap_or(0) as u64;
    st.hlc = meta(HLC_KEY)?.unwrap_or(0) as u64;
    st.stream_gap = crate::gap::read(&conn)?.map(|g| (g.from, g.to));
    st.outbox_over_budget = meta(OVER_BUDGET_KEY)? == Some(1);
    st.last_publish_ms = meta(LAST_PUBLISH_KEY)?.map(|v| v as u64);
    st.last_apply_ms = meta(LAST_APPLY_KEY)?.map(|v| v as u64);
    st.link_up = meta(LINK_UP_KEY)?.map(|v| v == 1);
    st.unique_conflicts = meta(UNIQUE_CONFLICTS_KEY)?.unwrap_or(0) as u64;
    st.pk_collisions = meta(PK_COLLISIONS_KEY)?.unwrap_or(0) as u64;
    st.tombstones_collected = meta(state::COLLECTED_KEY)?.unwrap_or(0) as u64;
    st.tombstones_collected_below_ms = meta(state::COLLECTED_BELOW_KEY)?
        .filter(|&v| v > 0)
        .map(|v| crate::hlc::wall_ms(v as u64));
    st.refused = db::get_meta_text(&conn, state::REFUSED_KEY)?;
    // in the node's own process (the status service) this is its state; elsewhere false
    st.disk_full = crate::metrics::liveness().disk_full;
    st.last_pk_collision = crate::db::get_meta_text(&conn, LAST_PK_COLLISION_KEY)?;
    st.link_since_ms = meta(LINK_SINCE_KEY)?.map(|v| v as u64);
    // written only while the node is behind: a value below the position is from then
    st.stream_last_seq = meta(state::STREAM_LAST_KEY)?.map(|v| (v as u64).max(st.stream_position));
    st.behind = st
        .stream_last_seq
        .map(|last| last.saturating_sub(st.stream_position));
    st.duplicate_node = db::get_meta_text(&conn, state::DUPLICATE_KEY)?;
    let u = |v: Option<i64>| v.map(|v| v as u64);
    st.restore_progress = u(meta(RESTORE_DONE_KEY)?).zip(u(meta(RESTORE_TOTAL_KEY)?));
    st.restored_seq = u(meta(RESTORED_SEQ_KEY)?);
    st.restored_ms = u(meta(RESTORED_MS_KEY)?);
    st.snapshot_saved_seq = u(meta(SAVED_SEQ_KEY)?);
    st.snapshot_saved_ms = u(meta(SAVED_MS_KEY)?);
    if let Some(at) = u(meta(state::VERIFY_LAST_MS_KEY)?) {
        let different = u(meta(state::VERIFY_DIFFERENT_KEY)?).unwrap_or(0);
        let repaired = u(meta(state::VERIFY_REPAIRED_KEY)?).unwrap_or(0);
        st.verify = Some((at, different, repaired));
    }
    let now = hlc::now_ms();
    for t in &schema.tables {
        if !exists(&conn, &format!("__hl_ver_{}", t.name()))? {
            continue;
        }
        let (n, oldest): (i64, Option<i64>) = conn
            .query_row(
                &format!("SELECT count(*), min(ver) FROM {} WHERE pending > 0", t.ver),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ctx("read outbox")?;
        let logged: i64 = if exists(&conn, &format!("__hl_log_{}", t.name()))? {
            conn.query_row(&format!("SELECT count(*) FROM {}", t.log), [], |r| r.get(0))
                .ctx("read change log")?
        } else {
            0
        };
        st.outbox_changes += (n + logged) as u64;
        if let Some(v) = oldest {
            let age = now.saturating_sub(hlc::wall_ms(v as u64));
            st.outbox_oldest_age_ms =
                Some(st.outbox_oldest_age_ms.map_or(age, |a: u64| a.max(age)));
        }
    }
    st.intake_held = meta(state::INTAKE_HELD_KEY)? == Some(1);
    if exists(&conn, PARKED_TABLE)? {
        st.parked_changes = count(&conn, PARKED_TABLE)?;
        // the park time column comes with the node's first start on this build
        let dated: bool = conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM pragma_table_info('{PARKED_TABLE}') WHERE name = 'at'"
                ),
                [],
                |r| r.get(0),
            )
            .ctx("read parked table columns")?;
        let (bytes, oldest): (i64, Option<i64>) = conn
            .query_row(
                &format!(
                    "SELECT coalesce(sum(length(frame)), 0), {} FROM {PARKED_TABLE}",
                    if dated { "min(at)" } else { "NULL" }
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ctx("measure parked changes")?;
        st.parked_bytes = bytes as u64;
        st.parked_oldest_age_ms = oldest.map(|at| now.saturating_sub(at as u64));
        let mut s = conn
            .prepare(&format!(
                "SELECT tbl, count(*), (SELECT reason FROM {PARKED_TABLE} p2 WHERE p2.tbl = p.tbl ORDER BY id DESC LIMIT 1) \
                 FROM {PARKED_TABLE} p GROUP BY tbl ORDER BY tbl"
            ))
            .ctx("read parked changes")?;
        st.parked_by_table = s
            .query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })
            .and_then(|rows| rows.collect())
            .ctx("read parked changes")?;
    }
    if exists(&conn, FRAGMENT_TABLE)? {
        st.fragments_waiting = count(&conn, FRAGMENT_TABLE)?;
    }
    Ok(st)
}

fn exists(conn: &Connection, table: &str) -> Result<bool, DbError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [table],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
    .ctx("read schema")
}

fn count(conn: &Connection, table: &str) -> Result<u64, DbError> {
    conn.query_row(
        &format!("SELECT count(*) FROM {}", db::quote(table)),
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .ctx("count rows")
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => format!(
            "{:.1} s ago",
            hlc::now_ms().saturating_sub(t) as f64 / 1000.0
        ),
    }
}

impl Status {
    /// `status --check`: the first reason the node is not healthy, as one line, or None when
    /// it runs, its link is up, its outbox drains, no table is paused and no other process
    /// uses its id. `publishes`: the node's `publish` (with `false` its changes stay queued on
    /// purpose, so the outbox is not looked at).
    pub fn check(&self, now_ms: u64, publishes: bool) -> Option<String> {
        if !self.node_running {
            return Some(format!(
                "not running: no harmonylite node holds {}.hl-lock",
                self.db_path
            ));
        }
        if let Some(d) = &self.duplicate_node {
            return Some(format!(
                "duplicate node id: {d}; give one of the two a new node_id"
            ));
        }
        match self.link_up {
            Some(true) => {}
            Some(false) => {
                let down = now_ms.saturating_sub(self.link_since_ms.unwrap_or(now_ms));
                return Some(format!(
                    "link down: no NATS connection for {:.1} s",
                    down as f64 / 1000.0
                ));
            }
            None => return Some("link down: the node never connected to NATS".into()),
        }
        if let Some((t, why)) = self.paused_tables.first() {
            return Some(format!(
                "table {t} is paused: {why} (see harmonylite schema accept)"
            ));
        }
        if let Some(r) = &self.refused {
            return Some(format!(
                "outbox not draining: the NATS server refuses this node's publishes: {r}"
            ));
        }
        if let Some(age) = self
            .outbox_oldest_age_ms
            .filter(|a| publishes && *a > CHECK_OUTBOX_AGE_MS && self.outbox_changes > 0)
        {
            return Some(format!(
                "outbox not draining: {} changes, the oldest {:.1} s old",
                self.outbox_changes,
                age as f64 / 1000.0
            ));
        }
        None
    }

    /// The line `status --check` prints when the node is healthy.
    pub fn check_ok(&self) -> String {
        let node = self.node_id.map_or("?".to_string(), |n| n.to_string());
        let behind = self
            .behind
            .map_or(String::new(), |b| format!(", {b} behind"));
        format!(
            "ok: node {node} running, link up, outbox {}{behind}",
            self.outbox_changes
        )
    }

    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "database:         {}", self.db_path);
        let _ = writeln!(
            o,
            "node id:          {}",
            self.node_id
                .map_or("not assigned (never ran)".into(), |n| n.to_string())
        );
        if let Some(d) = &self.duplicate_node {
            let _ = writeln!(o, "DUPLICATE NODE ID: {d}; give one of the two a new node_id (see README, \"Duplicate node ids\")");
        }
        let _ = writeln!(
            o,
            "node process:     {}",
            if self.node_running {
                "running"
            } else {
                "not running"
            }
        );
        let _ = writeln!(o, "host:             {}", self.hostname);
        let _ = writeln!(o, "version:          {}", self.version);
        let _ = writeln!(
            o,
            "replicated:       {}",
            if self.tables.is_empty() {
                "(none)".into()
            } else {
                self.tables.join(", ")
            }
        );
        for (t, publish, replicate) in &self.directions {
            let way = match (publish, replicate) {
                (true, true) => continue,
                (true, false) => {
                    "send only (replicate = false: other nodes' changes are not downloaded)"
                }
                (false, true) => "receive only (publish = false: local changes stay here)",
                (false, false) => "local only (publish = false, replicate = false)",
            };
            let _ = writeln!(o, "  direction:      {t}: {way}");
        }
        for (t, why) in &self.not_replicated {
            let _ = writeln!(o, "not replicated:   {t}: {why}");
        }
        let _ = writeln!(
            o,
            "capture:          {}",
            if self.installed {
                "installed"
            } else {
                "not installed (the node never ran)"
            }
        );
        let behind = match (self.stream_last_seq, self.behind) {
            (Some(last), Some(b)) => format!(" ({b} behind the stream's last, {last})"),
            _ => String::new(),
        };
        let _ = writeln!(o, "stream position:  {}{behind}", self.stream_position);
        if let Some((from, to)) = self.stream_gap {
            let _ = writeln!(o, "STREAM GAP:       messages {from}..{to} missing here until a snapshot covering them is restored");
        }
        let link = match self.link_up {
            None => "unknown (never connected)".to_string(),
            Some(up) => format!(
                "{} since {}",
                if up { "up" } else { "down" },
                ago(self.link_since_ms)
            ),
        };
        let _ = writeln!(o, "link:             {link}");
        let oldest = self.outbox_oldest_age_ms.map_or(String::new(), |a| {
            format!(", oldest {:.1} s", a as f64 / 1000.0)
        });
        let budget = if self.outbox_over_budget {
            ", OVER BUDGET"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "outbox:           {} changes{oldest}{budget}",
            self.outbox_changes
        );
        let _ = writeln!(o, "last publish:     {}", ago(self.last_publish_ms));
        let _ = writeln!(o, "last apply:       {}", ago(self.last_apply_ms));
        for (t, why) in &self.paused_tables {
            let _ = writeln!(
                o,
                "PAUSED:           {t}: {why} (see `harmonylite schema accept`)"
            );
        }
        if let Some(r) = &self.refused {
            let _ = writeln!(o, "REFUSED:          {r}");
        }
        if self.disk_full {
            let _ = writeln!(
                o,
                "DISK FULL:        the node cannot write its database (it retries and resumes once space is freed)"
            );
        }
        let oldest = self.parked_oldest_age_ms.map_or(String::new(), |a| {
            format!(", oldest {:.1} s", a as f64 / 1000.0)
        });
        let _ = writeln!(
            o,
            "parked changes:   {} ({} bytes{oldest})",
            self.parked_changes, self.parked_bytes
        );
        if self.intake_held {
            let _ = writeln!(o, "INTAKE HELD:      parked changes reached max_parked_bytes: no new changes are taken in until they apply (upgrade this node's schema, or `harmonylite schema accept` for a paused table)");
        }
        for (t, n, why) in &self.parked_by_table {
            let _ = writeln!(o, "  parked:         {t}: {n} ({why})");
        }
        let _ = writeln!(o, "fragments held:   {}", self.fragments_waiting);
        if self.unique_conflicts > 0 {
            let _ = writeln!(
                o,
                "unique conflicts: {} resolved (the older row deleted; see the log)",
                self.unique_conflicts
            );
        }
        if self.pk_collisions > 0 {
            let _ = writeln!(
                o,
                "PK COLLISIONS:    {} (two nodes created the same key; the older row was overwritten)",
                self.pk_collisions
            );
            if let Some(last) = &self.last_pk_collision {
                let _ = writeln!(o, "  last:           {last}");
            }
        }
        if let Some(below) = self.tombstones_collected_below_ms {
            let _ = writeln!(
                o,
                "tombstones:       {} collected; none kept from before {}",
                self.tombstones_collected,
                crate::logging::rfc3339_ms(below)
            );
        }
        if let Some((done, total)) = self.restore_progress {
            let pct = done as f64 * 100.0 / total.max(1) as f64;
            let _ = writeln!(
                o,
                "snapshot restore: in progress, {done} of {total} bytes ({pct:.0}%)"
            );
        }
        let restored = match (self.restored_seq, self.restored_ms) {
            (Some(seq), ms) => format!("at seq {seq}, {}", ago(ms)),
            _ => "never".into(),
        };
        let _ = writeln!(o, "last restore:     {restored}");
        let saved = match (self.snapshot_saved_seq, self.snapshot_saved_ms) {
            (Some(seq), ms) => format!("at seq {seq}, {}", ago(ms)),
            _ => "never (by this node)".into(),
        };
        let _ = writeln!(o, "last snapshot:    {saved}");
        if let Some((at, different, repaired)) = self.verify {
            let _ = writeln!(
                o,
                "last verify:      {}, {different} rows different, {repaired} re-announced",
                ago(Some(at))
            );
        }
        o
    }

    /// The object of `status --json`, of the status service (`status --fleet --json`) and of
    /// its summary lines: field names and types are an interface (see [`StatusJson`]).
    pub fn to_json(&self) -> String {
        // plain data with string keys: serializing cannot fail
        serde_json::to_string(&StatusJson::from(self)).unwrap_or_default()
    }
}

/// `status --json`, field by field in its documented order. A view of [`Status`] (which
/// keeps the shapes the code wants); scripts and `status --fleet` read these names.
#[derive(Debug, Serialize)]
pub struct StatusJson<'a> {
    pub db_path: &'a str,
    pub node_running: bool,
    pub node_id: Option<u64>,
    pub capture_installed: bool,
    pub tables: &'a [String],
    pub not_replicated: Vec<TableReason<'a>>,
    pub stream_position: u64,
    pub stream_gap: Option<Gap>,
    pub hlc: u64,
    pub link_up: Option<bool>,
    pub link_since_ms: Option<u64>,
    pub outbox_changes: u64,
    pub outbox_oldest_age_ms: Option<u64>,
    pub outbox_over_budget: bool,
    pub last_publish_ms: Option<u64>,
    pub last_apply_ms: Option<u64>,
    pub parked_changes: u64,
    pub parked_bytes: u64,
    pub parked_oldest_age_ms: Option<u64>,
    pub intake_held: bool,
    pub parked_by_table: Vec<Parked<'a>>,
    pub paused_tables: Vec<TableReason<'a>>,
    pub fragments_waiting: u64,
    pub unique_conflicts: u64,
    pub pk_collisions: u64,
    pub last_pk_collision: Option<&'a str>,
    pub tombstones_collected: u64,
    pub tombstones_collected_below_ms: Option<u64>,
    pub restore_done_bytes: Option<u64>,
    pub restore_total_bytes: Option<u64>,
    pub restored_seq: Option<u64>,
    pub restored_ms: Option<u64>,
    pub snapshot_saved_seq: Option<u64>,
    pub snapshot_saved_ms: Option<u64>,
    /// Each replicated table's direction (`[table.<name>]`).
    pub directions: Vec<Direction<'a>>,
    pub refused: Option<&'a str>,
    pub disk_full: bool,
    pub stream_last_seq: Option<u64>,
    pub behind: Option<u64>,
    pub hostname: &'a str,
    pub version: &'a str,
    pub duplicate_node: Option<&'a str>,
    pub instance: Option<&'a str>,
    /// Absent until a `harmonylite verify` reported here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySeen>,
}

/// `{"last_ms":..,"different_rows":..,"repaired_rows":..}`: the last `verify` seen here.
#[derive(Debug, Serialize)]
pub struct VerifySeen {
    pub last_ms: u64,
    pub different_rows: u64,
    pub repaired_rows: u64,
}

/// A table and why: `{"table":..,"reason":..}` (not replicated, paused).
#[derive(Debug, Serialize)]
pub struct TableReason<'a> {
    pub table: &'a str,
    pub reason: &'a str,
}

/// `{"table":..,"changes":..,"reason":..}`: parked changes of one table.
#[derive(Debug, Serialize)]
pub struct Parked<'a> {
    pub table: &'a str,
    pub changes: u64,
    pub reason: &'a str,
}

/// `{"from":..,"to":..}`: the stream messages missing here (inclusive).
#[derive(Debug, Serialize)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
}

impl<'a> From<&'a Status> for StatusJson<'a> {
    fn from(s: &'a Status) -> Self {
        let reasons = |v: &'a [(String, String)]| {
            v.iter()
                .map(|(table, reason)| TableReason { table, reason })
                .collect()
        };
        StatusJson {
            db_path: &s.db_path,
            node_running: s.node_running,
            node_id: s.node_id,
            capture_installed: s.installed,
            tables: &s.tables,
            not_replicated: reasons(&s.not_replicated),
            stream_position: s.stream_position,
            stream_gap: s.stream_gap.map(|(from, to)| Gap { from, to }),
            hlc: s.hlc,
            link_up: s.link_up,
            link_since_ms: s.link_since_ms,
            outbox_changes: s.outbox_changes,
            outbox_oldest_age_ms: s.outbox_oldest_age_ms,
            outbox_over_budget: s.outbox_over_budget,
            last_publish_ms: s.last_publish_ms,
            last_apply_ms: s.last_apply_ms,
            parked_changes: s.parked_changes,
            parked_bytes: s.parked_bytes,
            parked_oldest_age_ms: s.parked_oldest_age_ms,
            intake_held: s.intake_held,
            parked_by_table: s
                .parked_by_table
                .iter()
                .map(|(table, changes, reason)| Parked {
                    table,
                    changes: *changes,
                    reason,
                })
                .collect(),
            paused_tables: reasons(&s.paused_tables),
            fragments_waiting: s.fragments_waiting,
            unique_conflicts: s.unique_conflicts,
            pk_collisions: s.pk_collisions,
            last_pk_collision: s.last_pk_collision.as_deref(),
            tombstones_collected: s.tombstones_collected,
            tombstones_collected_below_ms: s.tombstones_collected_below_ms,
            restore_done_bytes: s.restore_progress.map(|p| p.0),
            restore_total_bytes: s.restore_progress.map(|p| p.1),
            restored_seq: s.restored_seq,
            restored_ms: s.restored_ms,
            snapshot_saved_seq: s.snapshot_saved_seq,
            snapshot_saved_ms: s.snapshot_saved_ms,
            directions: s
                .directions
                .iter()
                .map(|(table, publish, replicate)| Direction {
                    table,
                    publish: *publish,
                    replicate: *replicate,
                })
                .collect(),
            refused: s.refused.as_deref(),
            disk_full: s.disk_full,
            stream_last_seq: s.stream_last_seq,
            behind: s.behind,
            hostname: &s.hostname,
            version: &s.version,
            duplicate_node: s.duplicate_node.as_deref(),
            instance: s.instance.as_deref(),
            verify: s
                .verify
                .map(|(last_ms, different_rows, repaired_rows)| VerifySeen {
                    last_ms,
                    different_rows,
                    repaired_rows,
                }),
        }
    }
}

/// One table's direction in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct Direction<'a> {
    pub table: &'a str,
    pub publish: bool,
    pub replicate: bool,
}

/// The status service's answer when the database cannot be read: `{"node_id":..,"error":..}`.
pub fn error_json(node_id: u64, error: &str) -> String {
    #[derive(Serialize)]
    struct ErrorJson<'a> {
        node_id: u64,
        error: &'a str,
    }
    serde_json::to_string(&ErrorJson { node_id, error }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of `status --json` before it was serde-derived (a hand-written formatter):
    /// field names, order, types, nulls and escapes are kept.
    #[test]
    fn json_is_the_documented_object() {
        assert_eq!(
            Status::default().to_json(),
            r#"{"db_path":"","node_running":false,"node_id":null,"capture_installed":false,"tables":[],"not_replicated":[],"stream_position":0,"stream_gap":null,"hlc":0,"link_up":null,"link_since_ms":null,"outbox_changes":0,"outbox_oldest_age_ms":null,"outbox_over_budget":false,"last_publish_ms":null,"last_apply_ms":null,"parked_changes":0,"parked_bytes":0,"parked_oldest_age_ms":null,"intake_held":false,"parked_by_table":[],"paused_tables":[],"fragments_waiting":0,"unique_conflicts":0,"pk_collisions":0,"last_pk_collision":null,"tombstones_collected":0,"tombstones_collected_below_ms":null,"restore_done_bytes":null,"restore_total_bytes":null,"restored_seq":null,"restored_ms":null,"snapshot_saved_seq":null,"snapshot_saved_ms":null,"directions":[],"refused":null,"disk_full":false,"stream_last_seq":null,"behind":null,"hostname":"","version":"","duplicate_node":null,"instance":null}"#
        );
        let full = Status {
            db_path: "/x/\"a\\b\u{1}é.db".into(),
            node_id: Some(7),
            installed: true,
            tables: vec!["t".into(), "u v".into()],
            not_replicated: vec![("w".into(), "no \"key\"".into())],
            stream_position: 41,
            stream_gap: Some((3, 9)),
            hlc: 123456789,
            outbox_changes: 2,
            outbox_oldest_age_ms: Some(1500),
            outbox_over_budget: true,
            parked_changes: 5,
            parked_bytes: 600,
            parked_oldest_age_ms: Some(2500),
            intake_held: true,
            parked_by_table: vec![("t".into(), 5, "parent missing".into())],
            paused_tables: vec![("u v".into(), "column x dropped".into())],
            fragments_waiting: 1,
            unique_conflicts: 2,
            pk_collisions: 3,
            last_pk_collision: Some("t id=1 \"x\"".into()),
            tombstones_collected: 0,
            tombstones_collected_below_ms: None,
            last_publish_ms: Some(10),
            last_apply_ms: Some(11),
            link_up: Some(false),
            link_since_ms: Some(12),
            restore_progress: Some((100, 200)),
            restored_seq: Some(13),
            restored_ms: Some(14),
            snapshot_saved_seq: Some(15),
            snapshot_saved_ms: Some(16),
            node_running: true,
            directions: vec![("t".into(), true, false), ("u v".into(), false, true)],
            refused: Some("Permissions Violation".into()),
            disk_full: true,
            stream_last_seq: Some(50),
            behind: Some(9),
            hostname: "gw1".into(),
            version: "0.1.0".into(),
            duplicate_node: Some("node 7 also answers from host gw2".into()),
            instance: Some("00ff".into()),
            verify: None,
        };
        assert_eq!(
            full.to_json(),
            r#"{"db_path":"/x/\"a\\b\u0001é.db","node_running":true,"node_id":7,"capture_installed":true,"tables":["t","u v"],"not_replicated":[{"table":"w","reason":"no \"key\""}],"stream_position":41,"stream_gap":{"from":3,"to":9},"hlc":123456789,"link_up":false,"link_since_ms":12,"outbox_changes":2,"outbox_oldest_age_ms":1500,"outbox_over_budget":true,"last_publish_ms":10,"last_apply_ms":11,"parked_changes":5,"parked_bytes":600,"parked_oldest_age_ms":2500,"intake_held":true,"parked_by_table":[{"table":"t","changes":5,"reason":"parent missing"}],"paused_tables":[{"table":"u v","reason":"column x dropped"}],"fragments_waiting":1,"unique_conflicts":2,"pk_collisions":3,"last_pk_collision":"t id=1 \"x\"","tombstones_collected":0,"tombstones_collected_below_ms":null,"restore_done_bytes":100,"restore_total_bytes":200,"restored_seq":13,"restored_ms":14,"snapshot_saved_seq":15,"snapshot_saved_ms":16,"directions":[{"table":"t","publish":true,"replicate":false},{"table":"u v","publish":false,"replicate":true}],"refused":"Permissions Violation","disk_full":true,"stream_last_seq":50,"behind":9,"hostname":"gw1","version":"0.1.0","duplicate_node":"node 7 also answers from host gw2","instance":"00ff"}"#
        );
    }

    #[test]
    fn check_names_the_first_reason() {
        let now = 1_000_000;
        let ok = Status {
            db_path: "/d.db".into(),
            node_id: Some(3),
            node_running: true,
            link_up: Some(true),
            outbox_changes: 2,
            outbox_oldest_age_ms: Some(500),
            behind: Some(4),
            ..Default::default()
        };
        assert_eq!(ok.check(now, true), None);
        assert_eq!(
            ok.check_ok(),
            "ok: node 3 running, link up, outbox 2, 4 behind"
        );
        let with = |f: &dyn Fn(&mut Status)| {
            let mut s = ok.clone();
            f(&mut s);
            s.check(now, true).unwrap()
        };
        assert_eq!(
            with(&|s| s.node_running = false),
            "not running: no harmonylite node holds /d.db.hl-lock"
        );
        assert_eq!(
            with(&|s| {
                s.link_up = Some(false);
                s.link_since_ms = Some(now - 2500);
            }),
            "link down: no NATS connection for 2.5 s"
        );
        assert_eq!(
            with(&|s| s.paused_tables = vec![("t".into(), "column x was dropped".into())]),
            "table t is paused: column x was dropped (see harmonylite schema accept)"
        );
        assert_eq!(
            with(&|s| s.outbox_oldest_age_ms = Some(61_000)),
            "outbox not draining: 2 changes, the oldest 61.0 s old"
        );
        assert!(with(&|s| s.duplicate_node = Some("x".into())).starts_with("duplicate node id: x"));
        // publish = false keeps changes queued on purpose
        let queued = Status {
            outbox_oldest_age_ms: Some(3_600_000),
            ..ok.clone()
        };
        assert_eq!(queued.check(now, false), None);
    }

    #[test]
    fn error_answers_are_escaped() {
        assert_eq!(
            error_json(7, "a\"b\\c\u{1}"),
            r#"{"node_id":7,"error":"a\"b\\c\u0001"}"#
        );
    }
}
