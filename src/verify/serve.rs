//! The node's side of `verify`: one request, one read transaction on a connection of its own,
//! one JSON answer. Runs on the service thread (`transport/status_service.rs`), never in the
//! node loop; a malformed request gets an answer with `error`, never a panic.

use std::collections::{HashMap, HashSet};

use rusqlite::Connection;

use super::{
    key_hash, key_text, prefix, row_hash, Answer, Request, RowEntry, TableDigest, ANSWER_ROWS,
    FANOUT, MAX_DEPTH, MAX_PREFIXES, PART_BYTES, PROTOCOL,
};
use crate::capture::{self, Schema, Table};
use crate::config::Config;
use crate::db::{self, quote, Context, DbError};
use crate::frame::{self, Change, Changes, Op, Repair};
use crate::state::{CURSOR_KEY, VERIFY_DIFFERENT_KEY, VERIFY_LAST_MS_KEY, VERIFY_REPAIRED_KEY};
use crate::transport::{Outgoing, Publish};

/// The largest request read (a request names at most [`MAX_PREFIXES`] buckets, or the keys of
/// [`super::ROWS_LIMIT`]-ish rows: far less).
const MAX_REQUEST: usize = 512 * 1024;

/// Answers one verify request of `node`. `max_frame` bounds repair frames; `publish` sends
/// them (JetStream, acknowledged) before the answer says how many rows were re-announced.
pub fn answer(
    cfg: &Config,
    node: u64,
    max_frame: usize,
    body: &[u8],
    publish: &Publish,
) -> Vec<String> {
    let mut a = Answer {
        node_id: node,
        protocol: PROTOCOL,
        ..Default::default()
    };
    let req = if body.len() > MAX_REQUEST {
        Err(format!(
            "verify request of {} bytes, over the limit of {MAX_REQUEST}",
            body.len()
        ))
    } else {
        Request::parse(body).map_err(|e| {
            format!("malformed verify request: {e} (expected JSON such as {{\"op\":\"digest\"}}; use harmonylite verify)")
        })
    };
    let result = req.and_then(|req| serve(cfg, node, max_frame, &req, publish, &mut a));
    if let Err(e) = result {
        log::warn!("verify request not served: {e}");
        a.error = Some(e);
    }
    parts(a)
}

/// The answer as one message, or several of at most about [`PART_BYTES`] each, its buckets or
/// rows split in order.
fn parts(mut a: Answer) -> Vec<String> {
    // plain data: serializing cannot fail
    let whole = serde_json::to_string(&a).unwrap_or_default();
    let items = a.buckets.len().max(a.rows.len());
    if whole.len() <= PART_BYTES || items < 2 {
        a.parts = 1;
        return vec![serde_json::to_string(&a).unwrap_or_default()];
    }
    let per = (PART_BYTES * items / whole.len()).max(1);
    let (buckets, rows) = (std::mem::take(&mut a.buckets), std::mem::take(&mut a.rows));
    let n = items.div_ceil(per);
    let mut buckets = buckets.into_iter();
    let mut rows = rows.into_iter();
    (0..n)
        .map(|i| {
            let part = Answer {
                buckets: buckets.by_ref().take(per).collect(),
                rows: rows.by_ref().take(per).collect(),
                part: i as u32,
                parts: n as u32,
                ..a.clone()
            };
            serde_json::to_string(&part).unwrap_or_default()
        })
        .collect()
}

fn serve(
    cfg: &Config,
    node: u64,
    max_frame: usize,
    req: &Request,
    publish: &Publish,
    a: &mut Answer,
) -> Result<(), String> {
    let text = |e: DbError| e.to_string();
    if let Request::Report {
        different,
        repaired,
    } = req
    {
        return report(cfg, *different, *repaired).map_err(text);
    }
    if let Request::Buckets {
        depth, prefixes, ..
    }
    | Request::Rows {
        depth, prefixes, ..
    }
    | Request::Repair {
        depth, prefixes, ..
    } = req
    {
        check_buckets(req, *depth, prefixes)?;
    }
    let conn = open(cfg).map_err(text)?;
    // one read transaction: the digests and the position they are reported with belong together
    let tx = conn.unchecked_transaction().map_err(|source| {
        text(DbError::Sql {
            op: "begin verify read",
            source,
        })
    })?;
    let mut schema = capture::scan(&tx, cfg).map_err(text)?;
    crate::schema::load_paused(&tx, &mut schema).map_err(text)?;
    a.position = db::get_meta(&tx, CURSOR_KEY).map_err(text)?.unwrap_or(0) as u64;
    a.outbox = outbox(&tx, &schema).map_err(text)?;
    let table = |name: &str| {
        schema.get(name).ok_or_else(|| {
            format!("table {name} is not replicated on node {node} (missing, or no primary key)")
        })
    };
    match req {
        Request::Digest { tables } => {
            let wanted: Vec<&Table> = match tables {
                None => schema.tables.iter().collect(),
                Some(names) => names.iter().map(|n| table(n)).collect::<Result<_, _>>()?,
            };
            for t in wanted {
                a.tables.push(digest(&tx, cfg, &schema, t).map_err(text)?);
            }
        }
        Request::Buckets {
            table: name,
            depth,
            prefixes,
        } => {
            let index: HashMap<u64, usize> =
                prefixes.iter().enumerate().map(|(i, p)| (*p, i)).collect();
            let mut out = vec![[(0u64, 0u64); FANOUT]; prefixes.len()];
            each_row(&tx, table(name)?, None, |r| {
                if let (false, Some(&i)) = (r.del, index.get(&prefix(r.hash, *depth))) {
                    let b = &mut out[i][(prefix(r.hash, depth + 1) & 0xff) as usize];
                    b.0 = b.0.wrapping_add(row_hash(r.hash, r.ver, r.node));
                    b.1 += 1;
                }
            })
            .map_err(text)?;
            a.buckets = out
                .iter()
                .map(|subs| {
                    (0..FANOUT)
                        .filter(|&i| subs[i].1 > 0)
                        .map(|i| (i as u8, subs[i].0, subs[i].1))
                        .collect()
                })
                .collect();
        }
        Request::Rows {
            table: name,
            depth,
            prefixes,
        } => {
            let wanted: HashSet<u64> = prefixes.iter().copied().collect();
            let listed = |h: u64| wanted.contains(&prefix(h, *depth));
            each_row(&tx, table(name)?, Some(&listed), |r| {
                if listed(r.hash) {
                    if a.rows.len() < ANSWER_ROWS {
                        a.rows.push(RowEntry {
                            h: r.hash,
                            v: r.ver,
                            n: r.node,
                            d: r.del,
                            k: r.key.clone(),
                        });
                    } else {
                        a.truncated = true;
                    }
                }
            })
            .map_err(text)?;
        }
        Request::Repair {
            table: name,
            depth,
            prefixes,
            keys,
        } => {
            let t = table(name)?;
            if !cfg.publishes(name) {
                return Err(format!(
                    "node {node} does not publish table {name} ([table.{name}] publish = false): it re-announces nothing of it"
                ));
            }
            let (frames, sent, unsendable) = repair_frames(
                &tx,
                cfg,
                node,
                max_frame,
                t,
                *depth,
                prefixes,
                keys.as_deref(),
            )
            .map_err(text)?;
            drop(tx);
            a.published_seq = publish(frames)?;
            a.repaired = sent;
            a.unsendable = unsendable;
            crate::metrics::add(crate::metrics::Counter::VerifyReannounced, sent);
            log::info!(
                "verify repair table={name} rows={sent} unsendable={unsendable}: re-announced with their versions"
            );
        }
        Request::Report { .. } => {}
    }
    Ok(())
}

/// Bad bucket numbers are the request's fault: said before any work.
fn check_buckets(req: &Request, depth: u8, prefixes: &[u64]) -> Result<(), String> {
    let deepest = match req {
        Request::Buckets { .. } => MAX_DEPTH - 1,
        _ => MAX_DEPTH,
    };
    if depth > deepest {
        return Err(format!(
            "bucket depth {depth} is over the deepest, {deepest}"
        ));
    }
    if prefixes.is_empty() || prefixes.len() > MAX_PREFIXES {
        return Err(format!(
            "a request names 1 to {MAX_PREFIXES} buckets, not {}",
            prefixes.len()
        ));
    }
    let end = 1u64 << (8 * depth as u32);
    if let Some(p) = prefixes.iter().find(|p| **p >= end) {
        return Err(format!("bucket {p} does not exist at depth {depth}"));
    }
    Ok(())
}

/// A read-only connection of the service's own.
fn open(cfg: &Config) -> Result<Connection, DbError> {
    db::open_read_only(&cfg.db_path)
}

/// Pending outbox rows and change-log rows not yet stamped: changes not yet published.
fn outbox(conn: &Connection, schema: &Schema) -> Result<u64, DbError> {
    let mut n = 0;
    for t in &schema.tables {
        if !installed(conn, t)? {
            continue;
        }
        let count = |sql: String| -> Result<u64, DbError> {
            conn.query_row(&sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .ctx("count outbox")
        };
        n += count(format!(
            "SELECT count(*) FROM {} WHERE {}",
            t.ver,
            capture::PENDING
        ))?;
        n += count(format!("SELECT count(*) FROM {}", t.log))?;
    }
    Ok(n)
}

/// Whether the node has set up capture for `t` yet (a table the application just created has
/// no version table for a moment: it holds no versions).
fn installed(conn: &Connection, t: &Table) -> Result<bool, DbError> {
    let names = [
        format!("__hl_ver_{}", t.name()),
        format!("__hl_log_{}", t.name()),
    ];
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN (?1, ?2)",
            rusqlite::params![names[0], names[1]],
            |r| r.get(0),
        )
        .ctx("read schema")?;
    Ok(n == 2)
}

/// One version row as the scan hands it out.
struct VerRow {
    hash: u64,
    ver: u64,
    node: u64,
    del: bool,
    /// The key for display (only filled by `Rows`, see [`each_row`]).
    key: Vec<String>,
}

/// Visits every version row of `t`, tombstones included; `keys_for`: the key hashes whose rows
/// get their key for display (an allocation per row, so only for the rows `Rows` lists).
fn each_row(
    conn: &Connection,
    t: &Table,
    keys_for: Option<&dyn Fn(u64) -> bool>,
    mut visit: impl FnMut(&VerRow),
) -> Result<(), DbError> {
    if !installed(conn, t)? {
        return Ok(());
    }
    let n = t.pk_len();
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT ver, node, del, {} FROM {}",
            keys.join(", "),
            t.ver
        ))
        .ctx("read versions")?;
    let mut rows = stmt.query([]).ctx("read versions")?;
    let mut r = VerRow {
        hash: 0,
        ver: 0,
        node: 0,
        del: false,
        key: Vec::new(),
    };
    while let Some(row) = rows.next().ctx("read versions")? {
        let refs = (0..n).map(|i| row.get_ref(3 + i));
        let key: Vec<_> = refs.collect::<Result<_, _>>().ctx("read versions")?;
        r.hash = key_hash(key.iter().copied());
        r.ver = row.get::<_, i64>(0).ctx("read versions")? as u64;
        r.node = row.get::<_, i64>(1).ctx("read versions")? as u64;
        r.del = row.get::<_, i64>(2).ctx("read versions")? != 0;
        if keys_for.is_some_and(|f| f(r.hash)) {
            r.key = key.into_iter().map(key_text).collect();
        }
        visit(&r);
    }
    Ok(())
}

fn digest(
    conn: &Connection,
    cfg: &Config,
    schema: &Schema,
    t: &Table,
) -> Result<TableDigest, DbError> {
    let mut d = TableDigest {
        table: t.name().to_string(),
        replicates: cfg.replicates(t.name()),
        publishes: cfg.publishes(t.name()),
        paused: schema.is_paused(t.name()),
        ..Default::default()
    };
    let mut origins = HashSet::new();
    each_row(conn, t, None, |r| {
        if !r.del {
            d.rows += 1;
            d.digest = d.digest.wrapping_add(row_hash(r.hash, r.ver, r.node));
            origins.insert(r.node);
        }
    })?;
    d.origins = origins.into_iter().collect();
    d.origins.sort_unstable();
    Ok(d)
}

/// The repair frames of the rows of `t` in the buckets asked for: each row at the version and
/// origin it holds here, tombstones as deletes. Returns the frames, the rows they carry, and
/// the rows left out (a live version whose row is gone, or a row too large for one frame).
#[allow(clippy::too_many_arguments)]
fn repair_frames(
    conn: &Connection,
    cfg: &Config,
    node: u64,
    max_frame: usize,
    t: &Table,
    depth: u8,
    prefixes: &[u64],
    keys: Option<&[u64]>,
) -> Result<(Vec<Outgoing>, u64, u64), DbError> {
    if !installed(conn, t)? {
        return Ok((Vec::new(), 0, 0));
    }
    let wanted: HashSet<u64> = prefixes.iter().copied().collect();
    let keys: Option<HashSet<u64>> = keys.map(|k| k.iter().copied().collect());
    // the matching version rows first (their keys as SQLite values), then their rows
    let mut matched: Vec<(u64, u64, bool, Vec<frame::Value>)> = Vec::new();
    let n = t.pk_len();
    let names: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT ver, node, del, {} FROM {}",
            names.join(", "),
            t.ver
        ))
        .ctx("read versions")?;
    let mut rows = stmt.query([]).ctx("read versions")?;
    while let Some(row) = rows.next().ctx("read versions")? {
        let key: Vec<_> = (0..n)
            .map(|i| row.get_ref(3 + i))
            .collect::<Result<_, _>>()
            .ctx("read versions")?;
        let h = key_hash(key.iter().copied());
        if !wanted.contains(&prefix(h, depth)) || keys.as_ref().is_some_and(|k| !k.contains(&h)) {
            continue;
        }
        matched.push((
            row.get::<_, i64>(0).ctx("read versions")? as u64,
            row.get::<_, i64>(1).ctx("read versions")? as u64,
            row.get::<_, i64>(2).ctx("read versions")? != 0,
            key.into_iter().map(capture::value_of).collect(),
        ));
    }
    let cols: Vec<String> = t.header.columns.iter().map(|c| quote(c)).collect();
    let cond: Vec<String> = t
        .header
        .pk
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("{} = ?{}", quote(&t.header.columns[c as usize]), i + 1))
        .collect();
    let mut read = conn
        .prepare(&format!(
            "SELECT {} FROM {} WHERE {}",
            cols.join(", "),
            quote(t.name()),
            cond.join(" AND ")
        ))
        .ctx("read repaired rows")?;
    let subject = cfg.table_subject(t.name(), node);
    let stamp = crate::hlc::now_ms();
    let mut frames = Vec::new();
    let (mut sent, mut unsendable) = (0u64, 0u64);
    let mut batch = Repair {
        changes: Changes {
            origin: node,
            tables: vec![t.header.clone()],
            changes: Vec::new(),
        },
        origins: Vec::new(),
    };
    // the frame's envelope, header and counts, over-estimated
    let fixed = 64 + t.header.columns.iter().map(|c| c.len() + 2).sum::<usize>();
    let mut bytes = 0usize;
    let seal = |batch: &mut Repair, frames: &mut Vec<Outgoing>| {
        if batch.origins.is_empty() {
            return;
        }
        let empty = Repair {
            changes: Changes {
                origin: node,
                tables: vec![t.header.clone()],
                changes: Vec::new(),
            },
            origins: Vec::new(),
        };
        let mut data = frame::encode_repair(std::mem::replace(batch, empty));
        if cfg.replication_log.compress {
            data = frame::compress(data);
        }
        frames.push(Outgoing {
            subject: subject.clone(),
            msg_id: format!("{node}-repair-{stamp}-{}", frames.len()),
            data,
        });
    };
    for (ver, origin, del, key) in matched {
        let op = if del {
            Op::Delete(key)
        } else {
            let mut q = read
                .query(rusqlite::params_from_iter(key.iter()))
                .ctx("read repaired rows")?;
            match q.next().ctx("read repaired rows")? {
                Some(r) => Op::Upsert(
                    (0..cols.len())
                        .map(|i| r.get_ref(i).map(capture::value_of))
                        .collect::<Result<_, _>>()
                        .ctx("read repaired rows")?,
                ),
                None => {
                    unsendable += 1;
                    continue;
                }
            }
        };
        let weight: usize = match &op {
            Op::Upsert(v) | Op::Insert(v) | Op::Delete(v) => {
                v.iter().map(|v| v.weight()).sum::<usize>()
            }
        } + 32;
        if fixed + weight > max_frame {
            log::warn!(
                "verify repair table={} version={ver}: the row is too large for one frame and is not re-announced",
                t.name()
            );
            unsendable += 1;
            continue;
        }
        if fixed + bytes + weight > max_frame {
            seal(&mut batch, &mut frames);
            bytes = 0;
        }
        bytes += weight;
        batch.changes.changes.push(Change {
            table: 0,
            version: ver,
            op,
        });
        batch.origins.push(origin);
        sent += 1;
    }
    seal(&mut batch, &mut frames);
    Ok((frames, sent, unsendable))
}

/// Keeps the client's result for `status` and `/metrics` (a short write of its own).
fn report(cfg: &Config, different: u64, repaired: u64) -> Result<(), DbError> {
    let conn = db::open(&cfg.db_path)?;
    let tx = conn.unchecked_transaction().ctx("begin verify report")?;
    db::set_meta(&tx, VERIFY_LAST_MS_KEY, crate::hlc::now_ms() as i64)?;
    db::set_meta(&tx, VERIFY_DIFFERENT_KEY, different as i64)?;
    db::set_meta(&tx, VERIFY_REPAIRED_KEY, repaired as i64)?;
    tx.commit().ctx("commit verify report")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use std::sync::Mutex;

    struct Db {
        cfg: Config,
        path: std::path::PathBuf,
    }

    impl Drop for Db {
        fn drop(&mut self) {
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", self.path.display()));
            }
        }
    }

    /// A node's database with `t` captured and `rows` (id, ver, node, del) in its version table.
    fn setup(name: &str, rows: &[(i64, i64, i64, bool)]) -> Db {
        let path = std::env::temp_dir().join(format!("hl-verify-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        let mut conn = db::open(&path).unwrap();
        crate::apply::prepare(&conn).unwrap();
        let cfg = Config::parse(&format!(
            "db_path = {:?}\n[nats]\nsubject_prefix = \"x\"\n",
            path.display().to_string()
        ))
        .unwrap();
        let schema = capture::scan(&conn, &cfg).unwrap();
        capture::install(&mut conn, &schema, &Default::default(), 1).unwrap();
        for &(id, ver, node, del) in rows {
            if !del {
                conn.execute("INSERT INTO t VALUES (?1, 'v' || ?1)", [id])
                    .unwrap();
                conn.execute("DELETE FROM __hl_log_t", []).unwrap();
            }
            conn.execute(
                "INSERT INTO __hl_ver_t(k0, ver, node, del, pending) VALUES (?1, ?2, ?3, ?4, 0)",
                rusqlite::params![id, ver, node, del],
            )
            .unwrap();
        }
        Db { cfg, path }
    }

    fn ask(d: &Db, body: &str) -> Answer {
        let none = |_: Vec<Outgoing>| -> Result<u64, String> { Ok(0) };
        let parts = answer(&d.cfg, 1, 1 << 16, body.as_bytes(), &none);
        assert_eq!(parts.len(), 1);
        serde_json::from_str(&parts[0]).unwrap()
    }

    #[test]
    fn digests_count_live_rows_and_a_tombstone_equals_no_row() {
        let a = setup(
            "a",
            &[(1, 10, 1, false), (2, 11, 2, false), (3, 12, 1, true)],
        );
        let b = setup("b", &[(1, 10, 1, false), (2, 11, 2, false)]);
        let c = setup("c", &[(1, 10, 1, false), (2, 13, 2, false)]);
        let digest = |d: &Db| ask(d, r#"{"op":"digest"}"#).tables[0].clone();
        let (da, db_, dc) = (digest(&a), digest(&b), digest(&c));
        assert_eq!((da.rows, da.digest), (db_.rows, db_.digest));
        assert_eq!(da.origins, vec![1, 2]);
        assert!(da.replicates && da.publishes && !da.paused);
        assert_ne!(da.digest, dc.digest, "another version of row 2");
        // the 256 buckets under the root add up to the table's digest
        let buckets = ask(
            &a,
            r#"{"op":"buckets","table":"t","depth":0,"prefixes":[0]}"#,
        );
        let sum = buckets.buckets[0]
            .iter()
            .fold(0u64, |s, b| s.wrapping_add(b.1));
        assert_eq!(sum, da.digest);
        assert_eq!(buckets.buckets[0].iter().map(|b| b.2).sum::<u64>(), 2);
        // rows: tombstones listed too, with their keys
        let rows = ask(&a, r#"{"op":"rows","table":"t","depth":0,"prefixes":[0]}"#).rows;
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().any(|r| r.d && r.k == vec!["3".to_string()]));
    }

    #[test]
    fn a_digest_of_no_tables_reports_position_and_outbox_only() {
        let d = setup("none", &[(1, 10, 1, false), (2, 11, 1, false)]);
        let conn = db::open(&d.path).unwrap();
        conn.execute("UPDATE __hl_ver_t SET pending = 1 WHERE k0 = 2", [])
            .unwrap();
        let a = ask(&d, r#"{"op":"digest","tables":[]}"#);
        assert_eq!(a.error, None);
        assert!(a.tables.is_empty());
        assert_eq!(a.outbox, 1);
    }

    #[test]
    fn large_answers_are_split_in_order_into_parts() {
        let rows: Vec<RowEntry> = (0..20_000u64)
            .map(|i| RowEntry {
                h: i,
                v: i,
                n: 1,
                d: false,
                k: vec![format!("'key {i}'")],
            })
            .collect();
        let a = Answer {
            node_id: 4,
            rows: rows.clone(),
            ..Default::default()
        };
        let parts = parts(a);
        assert!(parts.len() > 1, "{} parts", parts.len());
        let mut got = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.len() <= 2 * PART_BYTES, "part {i}: {} bytes", p.len());
            let a: Answer = serde_json::from_str(p).unwrap();
            assert_eq!(
                (a.part as usize, a.parts as usize, a.node_id),
                (i, parts.len(), 4)
            );
            got.extend(a.rows);
        }
        assert_eq!(got, rows);
    }

    #[test]
    fn a_table_not_yet_captured_holds_no_versions() {
        let d = setup("fresh", &[(1, 10, 1, false)]);
        let conn = Connection::open(&d.path).unwrap();
        conn.execute_batch("CREATE TABLE u(id INTEGER PRIMARY KEY); INSERT INTO u VALUES (1);")
            .unwrap();
        let a = ask(&d, r#"{"op":"digest"}"#);
        assert_eq!(a.error, None);
        let u = a.tables.iter().find(|t| t.table == "u").unwrap();
        assert_eq!((u.rows, u.digest), (0, 0));
    }

    #[test]
    fn bad_requests_get_an_error_answer_naming_the_problem() {
        let d = setup("bad", &[]);
        for (body, says) in [
            ("not json", "malformed verify request"),
            (r#"{"op":"drop"}"#, "malformed verify request"),
            (
                r#"{"op":"digest","tables":["nope"]}"#,
                "table nope is not replicated on node 1",
            ),
            (
                r#"{"op":"rows","table":"t","depth":9,"prefixes":[0]}"#,
                "bucket depth 9",
            ),
            (
                r#"{"op":"buckets","table":"t","depth":1,"prefixes":[256]}"#,
                "bucket 256 does not exist",
            ),
            (
                r#"{"op":"rows","table":"t","depth":1,"prefixes":[]}"#,
                "1 to 1024 buckets",
            ),
        ] {
            let a = ask(&d, body);
            let e = a.error.unwrap_or_default();
            assert!(e.contains(says), "{body}: {e}");
            assert_eq!((a.node_id, a.protocol), (1, PROTOCOL));
        }
    }

    #[test]
    fn repairs_send_rows_and_tombstones_at_their_own_version_and_origin() {
        let d = setup(
            "repair",
            &[(1, 10, 7, false), (2, 11, 1, true), (3, 12, 1, false)],
        );
        let sent = std::sync::Arc::new(Mutex::new(Vec::new()));
        let to = sent.clone();
        let publish = move |f: Vec<Outgoing>| -> Result<u64, String> {
            to.lock().unwrap().extend(f);
            Ok(42)
        };
        let keys: Vec<u64> = [1i64, 2]
            .iter()
            .map(|k| key_hash([rusqlite::types::ValueRef::Integer(*k)].into_iter()))
            .collect();
        let body = Request::Repair {
            table: "t".into(),
            depth: 0,
            prefixes: vec![0],
            keys: Some(keys),
        }
        .to_json();
        let a: Answer =
            serde_json::from_str(&answer(&d.cfg, 1, 1 << 16, &body, &publish)[0]).unwrap();
        assert_eq!((a.error, a.repaired, a.unsendable), (None, 2, 0));
        assert_eq!(a.published_seq, 42);
        let sent = std::mem::take(&mut *sent.lock().unwrap());
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].subject, "x.t.1");
        let Ok(Frame::Repair(r)) = frame::decode(&sent[0].data) else {
            panic!("not a repair frame");
        };
        assert_eq!(r.changes.origin, 1);
        let mut got: Vec<(u64, u64, bool)> = r
            .changes
            .changes
            .iter()
            .zip(&r.origins)
            .map(|(c, o)| (c.version, *o, matches!(c.op, Op::Delete(_))))
            .collect();
        got.sort();
        assert_eq!(got, vec![(10, 7, false), (11, 1, true)]);
    }
}
