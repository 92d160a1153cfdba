//! The `harmonylite verify [--repair] [--json]` command: asks every node, compares, repairs.
//!
//! Contract with `main.rs`: [`run`] returns an [`Outcome`] whose `text` is printed as is
//! (one JSON object, the [`Report`], with `--json`) and whose `agree` is the exit code (0 when
//! every table agrees on every node that answered, no node answered with an error, and every
//! node that wrote rows answered; after the repair if one was asked; else 1).
//! An error (no connection, nobody answered) is a message for `error: ...` (exit 1).
//!
//! Text output, one line per table and a verdict:
//! ```text
//! table t: in agreement (120 rows on nodes 1, 2, 3)
//! table notes: DIFFERENT on nodes 1, 2, 3: 2 rows in 2 buckets
//!   key ["a"]: node 1 ver=7345.. origin=1, node 2 none, node 3 ver=7345.. origin=1
//! node 4: did not answer (it wrote rows of t)
//! verify: 2 rows differ in 1 of 2 tables (nodes 1, 2, 3)
//! ```
//! With `--repair`: `repair: N rows re-announced (table t: node 1 re-announced 2)`, then the
//! same lines for the check made after the repair, prefixed by `after repair:`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    prefix, Answer, Request, RowEntry, FANOUT, MAX_DEPTH, MAX_PREFIXES, ROWS_LIMIT, SHOW_KEYS,
    SUBJECT_SUFFIX,
};
use crate::config::Config;
use crate::transport::Asker;

/// How long the nodes may take to reach a comparable point (same stream position, empty
/// outboxes) unless `--settle-ms` says otherwise.
pub const DEFAULT_SETTLE_MS: u64 = 10_000;
/// Between two digest rounds while the nodes settle.
const SETTLE_POLL: Duration = Duration::from_millis(500);
/// Deadline of one node's answer to a bucket, rows or repair request (each is a pass over the
/// table: about a second per million rows).
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long digests are awaited from nodes known to run (one pass over their tables each).
const DIGEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Keys named by one repair request (their buckets are at most as many, under
/// [`MAX_PREFIXES`]).
const REPAIR_KEYS: usize = 1_000;
/// Past this many differing buckets the walk stops and reports them without listing rows.
const MAX_WALK: usize = 2_048;

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub json: bool,
    pub repair: bool,
    /// How long answers to the fleet-wide digest request are collected.
    pub timeout: Duration,
    /// How long the nodes may take to settle (see [`DEFAULT_SETTLE_MS`]).
    pub settle: Duration,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub text: String,
    pub agree: bool,
    pub report: Report,
}

/// What `verify` found (the `--json` object).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub agree: bool,
    /// Every node answered with the same stream position and an empty outbox.
    pub settled: bool,
    /// Nodes that answered.
    pub nodes: Vec<u64>,
    /// Nodes that did not answer: those that wrote rows some node holds (with those tables)
    /// and those that answer status requests but not verify (no tables: an older build).
    pub silent: Vec<Silent>,
    /// Nodes that answered with an error.
    pub errors: Vec<NodeError>,
    pub tables: Vec<TableReport>,
    /// Rows found different (estimated where too many to list).
    pub different_rows: u64,
    /// Rows re-announced by `--repair`.
    pub repaired_rows: u64,
    /// The check made after the repair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_repair: Option<Box<Report>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Silent {
    pub node: u64,
    pub tables: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeError {
    pub node: u64,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TableReport {
    pub table: String,
    pub agree: bool,
    /// Live rows (the most any compared node holds).
    pub rows: u64,
    /// Nodes compared on it.
    pub nodes: Vec<u64>,
    /// Nodes that do not receive it (`replicate = false`): not compared.
    pub not_compared: Vec<u64>,
    /// Nodes that answered without it.
    pub missing_on: Vec<u64>,
    /// Depth of the buckets below (0: the whole table).
    pub depth: u8,
    /// Buckets whose digests differ.
    pub buckets: Vec<u64>,
    /// Rows that differ (listed), or at least this many (when `listed` is false).
    pub different_rows: u64,
    pub listed: bool,
    /// The differing keys (at most [`SHOW_KEYS`]).
    pub keys: Vec<KeyDiff>,
    /// Repairs asked for: (node, key hashes or None for whole buckets).
    #[serde(skip)]
    repairs: Vec<(u64, Option<Vec<u64>>)>,
}

/// One differing key: what each compared node holds (None: no live row).
#[derive(Debug, Clone, Serialize)]
pub struct KeyDiff {
    pub key: Vec<String>,
    pub holders: Vec<Holder>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Holder {
    pub node: u64,
    /// (version, origin) of its live row; None: no row or a tombstone.
    pub live: Option<(u64, u64)>,
    pub tombstone: bool,
}

/// Runs `verify` (see the module doc).
pub fn run(cfg: &Config, opts: &Options) -> Result<Outcome, String> {
    let urls = crate::node::snapshot_urls(cfg);
    let asker = Asker::connect(cfg, &urls).map_err(|e| e.to_string())?;
    let fleet = Fleet { cfg, asker };
    let mut report = fleet.check(opts, None, 0)?;
    if opts.repair && !report.agree {
        let (repaired, seq) = fleet.repair(&mut report);
        report.repaired_rows = repaired;
        let after = fleet.check(opts, Some(report.nodes.len()), seq)?;
        report.after_repair = Some(Box::new(after));
    }
    let agree = report
        .after_repair
        .as_ref()
        .map_or(report.agree, |a| a.agree);
    fleet.send(
        "all",
        &Request::Report {
            different: report.different_rows,
            repaired: report.repaired_rows,
        },
        Some(report.nodes.len()),
        opts.timeout,
    );
    let text = if opts.json {
        serde_json::to_string(&report).unwrap_or_default() + "\n"
    } else {
        render(&report, "")
            + &report
                .after_repair
                .as_ref()
                .map_or(String::new(), |a| render(a, "after repair: "))
    };
    Ok(Outcome {
        text,
        agree,
        report,
    })
}

/// Whether `answers` (the errors left out) describe a comparable point: every outbox empty,
/// and the nodes of `receiving` (those receiving a table) at one stream position, at least
/// `after`. A node that receives no table does not move its position.
fn comparable(answers: &[Answer], receiving: &[u64], after: u64) -> bool {
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.error.is_none()).collect();
    let positions: Vec<u64> = ok
        .iter()
        .filter(|a| receiving.contains(&a.node_id))
        .map(|a| a.position)
        .collect();
    ok.iter().all(|a| a.outbox == 0)
        && positions.windows(2).all(|w| w[0] == w[1])
        && positions.iter().all(|p| *p >= after)
}

struct Fleet<'a> {
    cfg: &'a Config,
    asker: Asker,
}

impl Fleet<'_> {
    fn subject(&self, target: &str) -> String {
        format!("{}.{SUBJECT_SUFFIX}", self.cfg.status_subject(target))
    }

    /// Sends `req` to `target` (a node id or `all`): the answers that parse, and the raw
    /// count (an answer that does not parse is from something else than a node of ours).
    fn send(
        &self,
        target: &str,
        req: &Request,
        want: Option<usize>,
        timeout: Duration,
    ) -> Vec<Answer> {
        let body = req.to_json();
        match self.asker.ask(&self.subject(target), &body, want, timeout) {
            Ok(raw) => raw
                .iter()
                .filter_map(|a| serde_json::from_slice::<Answer>(a).ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The ids of the nodes answering status requests (every running node, whatever its build).
    fn running(&self, timeout: Duration) -> Vec<u64> {
        let subject = self.cfg.status_subject("all");
        let answers = self.asker.ask(&subject, b"", None, timeout);
        let mut ids = super::node_ids(&answers.unwrap_or_default());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// One node's answer to `req` (its parts put together), or its error.
    fn ask_node(&self, node: u64, req: &Request) -> Result<Answer, String> {
        let body = req.to_json();
        let parts_of = |m: &Vec<u8>| {
            serde_json::from_slice::<Answer>(m)
                .map(|a| a.parts.max(1) as usize)
                .unwrap_or(1)
        };
        let done = |out: &[Vec<u8>]| out.first().is_some_and(|m| out.len() >= parts_of(m));
        let late = || {
            format!(
                "node {node} did not answer within {} s",
                SCAN_TIMEOUT.as_secs()
            )
        };
        let raw = self
            .asker
            .ask_until(&self.subject(&node.to_string()), &body, SCAN_TIMEOUT, done)
            .map_err(|e| e.to_string())?;
        let mut parts: Vec<Answer> = raw
            .iter()
            .filter_map(|m| serde_json::from_slice::<Answer>(m).ok())
            .collect();
        if parts.is_empty() || parts.len() < parts[0].parts.max(1) as usize {
            return Err(late());
        }
        parts.sort_by_key(|a| a.part);
        let mut a = parts.remove(0);
        for p in parts {
            a.buckets.extend(p.buckets);
            a.rows.extend(p.rows);
        }
        match a.error {
            Some(e) => Err(format!("node {node}: {e}")),
            None => Ok(a),
        }
    }

    /// Digests from every node, asked again until they are comparable (the same stream
    /// position, at least `after`, and empty outboxes) or `opts.settle` passed; then the tables
    /// compared and, where they differ, walked down to rows. A node that receives no table
    /// does not move its position: it is left out of the comparison of positions.
    fn check(&self, opts: &Options, expect: Option<usize>, after: u64) -> Result<Report, String> {
        let deadline = Instant::now() + opts.settle;
        // who runs: the status service answers at once, a digest takes a pass over the tables
        let running = self.running(opts.timeout);
        let mut want = expect.or((!running.is_empty()).then_some(running.len()));
        let (answers, settled) = loop {
            let timeout = if want.is_some() {
                DIGEST_TIMEOUT
            } else {
                opts.timeout
            };
            let answers = self.send("all", &Request::Digest { tables: None }, want, timeout);
            if answers.is_empty() {
                return Err(format!(
                    "no node answered on {} within {} ms (are the nodes running, on a build with verify, and is [nats] status_subject the same?)",
                    self.subject("all"),
                    timeout.as_millis()
                ));
            }
            let receiving: Vec<u64> = answers
                .iter()
                .filter(|a| a.error.is_none() && a.tables.iter().any(|t| t.replicates))
                .map(|a| a.node_id)
                .collect();
            let settled = comparable(&answers, &receiving, after);
            // the nodes that answered once answer again: no need to wait for the others
            want = Some(answers.len());
            if settled || Instant::now() >= deadline {
                break (answers, settled);
            }
            // Wait for a comparable point on positions and outboxes alone (an empty table
            // list: no pass over the tables), then take the digests again; at the deadline,
            // once more. Under steady writes the point may never come: without this, every
            // node would read all its tables every half second until the deadline.
            loop {
                std::thread::sleep(SETTLE_POLL);
                if Instant::now() >= deadline {
                    break;
                }
                let probe = Request::Digest {
                    tables: Some(Vec::new()),
                };
                if comparable(&self.send("all", &probe, want, timeout), &receiving, after) {
                    break;
                }
            }
        };
        let mut report = Report {
            settled,
            ..Default::default()
        };
        let mut ok = Vec::new();
        for a in answers {
            match &a.error {
                Some(e) => report.errors.push(NodeError {
                    node: a.node_id,
                    error: e.clone(),
                }),
                None => ok.push(a),
            }
        }
        ok.sort_by_key(|a| a.node_id);
        ok.dedup_by_key(|a| a.node_id);
        report.nodes = ok.iter().map(|a| a.node_id).collect();
        let answered: Vec<u64> = report
            .nodes
            .iter()
            .chain(report.errors.iter().map(|e| &e.node))
            .copied()
            .collect();
        // (node, table) of rows written by nodes that did not answer
        let mut silent: Vec<(u64, String)> = Vec::new();
        let mut names: Vec<&str> = ok
            .iter()
            .flat_map(|a| a.tables.iter().map(|t| t.table.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let mut t = TableReport {
                table: name.to_string(),
                ..Default::default()
            };
            let mut digests = Vec::new();
            for a in &ok {
                match a.tables.iter().find(|d| d.table == name) {
                    Some(d) if d.replicates => {
                        t.nodes.push(a.node_id);
                        t.rows = t.rows.max(d.rows);
                        digests.push((d.rows, d.digest));
                        for o in d.origins.iter().filter(|o| !answered.contains(o)) {
                            silent.push((*o, name.to_string()));
                        }
                    }
                    Some(_) => t.not_compared.push(a.node_id),
                    None => t.missing_on.push(a.node_id),
                }
            }
            t.agree = t.missing_on.is_empty() && digests.windows(2).all(|w| w[0] == w[1]);
            if !t.agree && t.nodes.len() > 1 {
                self.walk(&mut t)?;
            }
            report.different_rows += t.different_rows;
            report.tables.push(t);
        }
        for node in running.iter().filter(|n| !answered.contains(n)) {
            silent.push((*node, String::new()));
        }
        silent.sort_unstable();
        silent.dedup();
        for (node, table) in silent {
            if report.silent.last().is_none_or(|s| s.node != node) {
                report.silent.push(Silent {
                    node,
                    tables: Vec::new(),
                });
            }
            if let (Some(s), false) = (report.silent.last_mut(), table.is_empty()) {
                s.tables.push(table);
            }
        }
        // a node that wrote rows and did not answer may hold what nobody else does
        report.agree = report.errors.is_empty()
            && report.silent.is_empty()
            && report.tables.iter().all(|t| t.agree);
        Ok(report)
    }

    /// Walks down the tree of a table whose digests differ: the buckets that differ, level by
    /// level, until they hold few enough rows to list; then the rows.
    fn walk(&self, t: &mut TableReport) -> Result<(), String> {
        let mut depth = 0u8;
        let mut prefixes = vec![0u64];
        loop {
            // the 256 sub-buckets of each bucket, from every node
            let mut subs: Vec<(u64, Vec<Vec<(u64, u64)>>)> =
                prefixes.iter().map(|p| (*p, Vec::new())).collect();
            for (c, chunk) in prefixes.chunks(MAX_PREFIXES).enumerate() {
                for &node in &t.nodes {
                    let req = Request::Buckets {
                        table: t.table.clone(),
                        depth,
                        prefixes: chunk.to_vec(),
                    };
                    let a = self.ask_node(node, &req)?;
                    if a.buckets.len() != chunk.len() {
                        return Err(format!(
                            "node {node} answered {} buckets for {}",
                            a.buckets.len(),
                            chunk.len()
                        ));
                    }
                    for (j, sparse) in a.buckets.into_iter().enumerate() {
                        let mut dense = vec![(0u64, 0u64); FANOUT];
                        for (i, digest, rows) in sparse {
                            dense[i as usize] = (digest, rows);
                        }
                        subs[c * MAX_PREFIXES + j].1.push(dense);
                    }
                }
            }
            let mut next = Vec::new();
            let (mut estimate, mut spread) = (0u64, 0u64);
            for (p, per_node) in &subs {
                for i in 0..FANOUT {
                    let first = per_node[0].get(i).copied().unwrap_or_default();
                    if per_node
                        .iter()
                        .any(|b| b.get(i).copied().unwrap_or_default() != first)
                    {
                        next.push(p << 8 | i as u64);
                        let counts = per_node.iter().map(|b| b.get(i).map_or(0, |x| x.1));
                        let (lo, hi) =
                            counts.fold((u64::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
                        estimate += hi;
                        spread += (hi - lo).max(1);
                    }
                }
            }
            depth += 1;
            t.depth = depth;
            t.buckets = next.clone();
            if next.is_empty() {
                // the table digests differ, no bucket does: an answer changed in between
                t.different_rows = 0;
                return Ok(());
            }
            if estimate <= ROWS_LIMIT || depth >= MAX_DEPTH {
                return self.list_rows(t, next);
            }
            if next.len() > MAX_WALK {
                t.different_rows = spread;
                t.repairs = t.nodes.iter().map(|n| (*n, None)).collect();
                return Ok(());
            }
            prefixes = next;
        }
    }

    /// The rows of the differing buckets from every node, compared key by key.
    fn list_rows(&self, t: &mut TableReport, buckets: Vec<u64>) -> Result<(), String> {
        // (key hash, node, its version row), sorted: each key's rows side by side
        let mut held: Vec<(u64, u64, RowEntry)> = Vec::new();
        for chunk in buckets.chunks(MAX_PREFIXES) {
            for &node in &t.nodes {
                let req = Request::Rows {
                    table: t.table.clone(),
                    depth: t.depth,
                    prefixes: chunk.to_vec(),
                };
                let a = self.ask_node(node, &req)?;
                if a.truncated {
                    t.different_rows = t.different_rows.max(a.rows.len() as u64);
                    t.repairs = t.nodes.iter().map(|n| (*n, None)).collect();
                    return Ok(());
                }
                held.extend(a.rows.into_iter().map(|r| (r.h, node, r)));
            }
        }
        held.sort_unstable_by_key(|(h, node, _)| (*h, *node));
        t.listed = true;
        // (node holding the newest version, key hash) of each differing key
        let mut winners: Vec<(u64, u64)> = Vec::new();
        for rows in held.chunk_by(|a, b| a.0 == b.0) {
            let row = |n: &u64| rows.iter().find(|(_, m, _)| m == n).map(|(_, _, r)| r);
            let live = |n: &u64| row(n).filter(|r| !r.d).map(|r| (r.v, r.n));
            let first = live(&t.nodes[0]);
            if t.nodes.iter().all(|n| live(n) == first) {
                continue;
            }
            t.different_rows += 1;
            // the newest (version, origin) anywhere, tombstones included, is re-announced
            if let Some((h, node, _)) = rows.iter().max_by_key(|(_, _, r)| (r.v, r.n)) {
                winners.push((*node, *h));
            }
            if t.keys.len() < SHOW_KEYS {
                t.keys.push(KeyDiff {
                    key: rows[0].2.k.clone(),
                    holders: t
                        .nodes
                        .iter()
                        .map(|n| Holder {
                            node: *n,
                            live: live(n),
                            tombstone: row(n).is_some_and(|r| r.d),
                        })
                        .collect(),
                });
            }
        }
        winners.sort_unstable();
        for w in winners.chunk_by(|a, b| a.0 == b.0) {
            t.repairs
                .push((w[0].0, Some(w.iter().map(|(_, h)| *h).collect())));
        }
        Ok(())
    }

    /// Asks the nodes to re-announce what differs; returns the rows they re-announced and the
    /// stream sequence of the last repair frame.
    fn repair(&self, report: &mut Report) -> (u64, u64) {
        let (mut total, mut seq) = (0, 0);
        for t in report.tables.iter().filter(|t| !t.agree) {
            for (node, keys) in &t.repairs {
                // (buckets, keys) per request: a request names at most MAX_PREFIXES buckets
                let asks: Vec<(Vec<u64>, Option<Vec<u64>>)> = match keys {
                    Some(k) => {
                        let mut k = k.clone();
                        k.sort_by_key(|h| prefix(*h, t.depth));
                        k.chunks(REPAIR_KEYS)
                            .map(|c| {
                                let mut p: Vec<u64> =
                                    c.iter().map(|h| prefix(*h, t.depth)).collect();
                                p.dedup();
                                (p, Some(c.to_vec()))
                            })
                            .collect()
                    }
                    None => t
                        .buckets
                        .chunks(MAX_PREFIXES)
                        .map(|c| (c.to_vec(), None))
                        .collect(),
                };
                for (prefixes, keys) in asks {
                    let req = Request::Repair {
                        table: t.table.clone(),
                        depth: t.depth,
                        prefixes,
                        keys,
                    };
                    match self.ask_node(*node, &req) {
                        Ok(a) => {
                            total += a.repaired;
                            seq = seq.max(a.published_seq);
                        }
                        Err(error) => report.errors.push(NodeError { node: *node, error }),
                    }
                }
            }
        }
        (total, seq)
    }
}

fn list(nodes: &[u64]) -> String {
    nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text output (see the module doc); `lead` starts every line.
fn render(r: &Report, lead: &str) -> String {
    let mut o = String::new();
    if r.repaired_rows > 0 || r.after_repair.is_some() {
        let _ = writeln!(o, "{lead}repair: {} rows re-announced", r.repaired_rows);
    }
    if !r.settled {
        let _ = writeln!(o, "{lead}not settled: the nodes did not reach the same stream position with empty outboxes in time; changes in flight may show as differences");
    }
    for t in &r.tables {
        if t.agree {
            let _ = writeln!(
                o,
                "{lead}table {}: in agreement ({} rows on nodes {})",
                t.table,
                t.rows,
                list(&t.nodes)
            );
        } else if !t.missing_on.is_empty() {
            let _ = writeln!(
                o,
                "{lead}table {}: DIFFERENT: missing on nodes {}",
                t.table,
                list(&t.missing_on)
            );
        } else {
            let about = if t.listed { "" } else { "at least " };
            let shown: Vec<String> = t.buckets.iter().take(8).map(|b| format!("{b:x}")).collect();
            let more = if t.buckets.len() > 8 { ", ..." } else { "" };
            let _ = writeln!(
                o,
                "{lead}table {}: DIFFERENT on nodes {}: {about}{} rows in {} buckets (depth {}: {}{more})",
                t.table,
                list(&t.nodes),
                t.different_rows,
                t.buckets.len(),
                t.depth,
                shown.join(", ")
            );
            for k in &t.keys {
                let holders: Vec<String> = k
                    .holders
                    .iter()
                    .map(|h| match h.live {
                        Some((v, n)) => format!("node {} ver={v} origin={n}", h.node),
                        None if h.tombstone => format!("node {} deleted", h.node),
                        None => format!("node {} none", h.node),
                    })
                    .collect();
                let key = k.key.join(", ");
                let _ = writeln!(o, "{lead}  key {key}: {}", holders.join(", "));
            }
        }
        if !t.not_compared.is_empty() {
            let _ = writeln!(
                o,
                "{lead}  not compared on nodes {} (they do not receive {})",
                list(&t.not_compared),
                t.table
            );
        }
    }
    for s in &r.silent {
        let _ = writeln!(
            o,
            "{lead}node {}: did not answer (it wrote rows of {})",
            s.node,
            s.tables.join(", ")
        );
    }
    for e in &r.errors {
        let _ = writeln!(o, "{lead}node {}: error: {}", e.node, e.error);
    }
    let differing = r.tables.iter().filter(|t| !t.agree).count();
    if r.agree {
        let _ = writeln!(
            o,
            "{lead}verify: all {} nodes agree on {} tables ({})",
            r.nodes.len(),
            r.tables.len(),
            list(&r.nodes)
        );
    } else {
        let _ = writeln!(
            o,
            "{lead}verify: {} rows differ in {differing} of {} tables (nodes {})",
            r.different_rows,
            r.tables.len(),
            list(&r.nodes)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(node: u64, position: u64, outbox: u64) -> Answer {
        Answer {
            node_id: node,
            position,
            outbox,
            ..Default::default()
        }
    }

    #[test]
    fn comparable_needs_empty_outboxes_and_one_position_among_the_receivers() {
        let all = [1, 2, 3];
        assert!(comparable(
            &[answer(1, 9, 0), answer(2, 9, 0), answer(3, 9, 0)],
            &all,
            0
        ));
        assert!(!comparable(
            &[answer(1, 9, 1), answer(2, 9, 0), answer(3, 9, 0)],
            &all,
            0
        ));
        assert!(!comparable(
            &[answer(1, 9, 0), answer(2, 8, 0), answer(3, 9, 0)],
            &all,
            0
        ));
        // a node receiving nothing does not move its position
        assert!(comparable(
            &[answer(1, 9, 0), answer(2, 9, 0), answer(3, 2, 0)],
            &[1, 2],
            0
        ));
        // not yet past the last repair frame
        assert!(!comparable(&[answer(1, 9, 0), answer(2, 9, 0)], &all, 10));
        // an error answer is left out
        let mut err = answer(3, 1, 5);
        err.error = Some("boom".into());
        assert!(comparable(
            &[answer(1, 9, 0), answer(2, 9, 0), err],
            &all,
            0
        ));
    }
}
