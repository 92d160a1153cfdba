//! `harmonylite status --fleet`: asks every node of the stream (or one, `--node N`) for its
//! status through NATS and prints the answers sorted by node id: one JSON object per line
//! (`--json`, the same object as `status --json`) or one summary line per node. Two answers
//! with one node id are two processes sharing it (a cloned SD card): both lines say so.

use std::time::Duration;

use serde::Deserialize;

use crate::config::Config;

/// How long answers are collected unless `--timeout-ms` says otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;

/// The output, or an error message (exit code 1 for both "nobody answered" and NATS errors).
pub fn run(
    cfg: &Config,
    node: Option<u64>,
    timeout: Duration,
    json: bool,
) -> Result<String, String> {
    let subject = cfg.status_subject(&node.map_or("all".to_string(), |n| n.to_string()));
    let urls = crate::node::snapshot_urls(cfg);
    let answers = crate::transport::ask_fleet(cfg, &urls, &subject, node.map(|_| 1), timeout)
        .map_err(|e| e.to_string())?;
    let answers: Vec<String> = answers
        .into_iter()
        .map(|a| String::from_utf8_lossy(&a).into_owned())
        .collect();
    if answers.is_empty() {
        return Err(format!(
            "no node answered on {subject} within {} ms",
            timeout.as_millis()
        ));
    }
    let mut answers: Vec<(Answer, String)> = answers
        .into_iter()
        .map(|a| (Answer::parse(&a), a))
        .collect();
    answers.sort_by_key(|(a, _)| a.node_id.unwrap_or(u64::MAX));
    let same_id = |id: Option<u64>| {
        id.map_or(0, |id| {
            answers
                .iter()
                .filter(|(a, _)| a.node_id == Some(id))
                .count()
        })
    };
    let counts: Vec<usize> = answers.iter().map(|(a, _)| same_id(a.node_id)).collect();
    let lines: Vec<String> = answers
        .into_iter()
        .zip(counts)
        .map(|((a, raw), n)| {
            if json {
                raw
            } else if n > 1 {
                let id = a.node_id.unwrap_or_default();
                let instance = a.instance.clone().unwrap_or_else(|| "?".into());
                // the node's own flag says the same
                let a = Answer {
                    duplicate_node: None,
                    ..a
                };
                format!(
                    "{}, DUPLICATE NODE ID: {n} nodes answer as node {id} (this one: instance {instance})",
                    a.summary()
                )
            } else {
                a.summary()
            }
        })
        .collect();
    Ok(lines.join("\n") + "\n")
}

/// What a summary line needs of a node's answer: the object of `status --json`
/// ([`crate::status::StatusJson`]) or the service's `{"node_id":..,"error":..}`. Every field is
/// optional, so an answer from another version, or one that is not JSON at all, still gets a
/// line (its unknown values shown as `?`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Answer {
    node_id: Option<u64>,
    error: Option<String>,
    link_up: Option<bool>,
    outbox_changes: Option<u64>,
    outbox_oldest_age_ms: Option<u64>,
    last_publish_ms: Option<u64>,
    last_apply_ms: Option<u64>,
    stream_position: Option<u64>,
    parked_changes: Option<u64>,
    paused_tables: Vec<PausedTable>,
    directions: Vec<Direction>,
    disk_full: bool,
    refused: Option<String>,
    behind: Option<u64>,
    hostname: Option<String>,
    version: Option<String>,
    duplicate_node: Option<String>,
    instance: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PausedTable {
    table: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Direction {
    table: String,
    publish: bool,
    replicate: bool,
}

impl Answer {
    fn parse(a: &str) -> Answer {
        serde_json::from_str(a).unwrap_or_default()
    }

    /// One line per node.
    fn summary(&self) -> String {
        let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        let node = show(self.node_id);
        if let Some(e) = &self.error {
            // quoted and escaped, as it came
            let e = serde_json::to_string(e).unwrap_or_default();
            return format!("node {node}: error {e}");
        }
        let link = match self.link_up {
            Some(true) => "up",
            Some(false) => "down",
            None => "unknown",
        };
        let oldest = self.outbox_oldest_age_ms.map_or(String::new(), |ms| {
            format!(" (oldest {:.1} s)", ms as f64 / 1000.0)
        });
        let ago = |t: Option<u64>| match t {
            Some(t) => format!(
                "{:.1} s ago",
                crate::hlc::now_ms().saturating_sub(t) as f64 / 1000.0
            ),
            None => "never".into(),
        };
        let paused = if self.paused_tables.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = self
                .paused_tables
                .iter()
                .map(|p| p.table.as_str())
                .collect();
            format!(", PAUSED: {}", names.join(", "))
        };
        let one_way = |publish: bool, replicate: bool| -> Vec<&str> {
            self.directions
                .iter()
                .filter(|d| d.publish == publish && d.replicate == replicate)
                .map(|d| d.table.as_str())
                .collect()
        };
        let mut ways = String::new();
        for (label, publish, replicate) in [
            ("send only", true, false),
            ("receive only", false, true),
            ("local only", false, false),
        ] {
            let tables = one_way(publish, replicate);
            if !tables.is_empty() {
                ways += &format!(", {label}: {}", tables.join(", "));
            }
        }
        let behind = self
            .behind
            .map_or(String::new(), |b| format!(" ({b} behind)"));
        let host = match (&self.hostname, &self.version) {
            (Some(h), Some(v)) if !v.is_empty() => format!(" host {h}, version {v},"),
            _ => String::new(),
        };
        format!(
            "node {node}:{host} link {link}, outbox {}{oldest}, last publish {}, last apply {}, position {}{behind}, parked {}{ways}{paused}{}{}{}",
            show(self.outbox_changes),
            ago(self.last_publish_ms),
            ago(self.last_apply_ms),
            show(self.stream_position),
            show(self.parked_changes),
            if self.disk_full { ", DISK FULL" } else { "" },
            if self.refused.is_some() { ", REFUSED by the server" } else { "" },
            if self.duplicate_node.is_some() { ", DUPLICATE NODE ID (see its log)" } else { "" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(json: &str) -> String {
        Answer::parse(json).summary()
    }

    #[test]
    fn summaries_read_the_status_object() {
        let s = crate::status::Status {
            db_path: r#"/x/","node_id":9.db"#.into(),
            node_id: Some(3),
            outbox_changes: 2,
            outbox_oldest_age_ms: Some(1500),
            link_up: Some(true),
            stream_position: 41,
            ..Default::default()
        };
        assert_eq!(summary(&s.to_json()), "node 3: link up, outbox 2 (oldest 1.5 s), last publish never, last apply never, position 41, parked 0");
        let p = crate::status::Status {
            paused_tables: vec![
                ("t".into(), "column x was dropped".into()),
                ("u".into(), "y".into()),
            ],
            ..s
        };
        assert!(
            summary(&p.to_json()).ends_with(", parked 0, PAUSED: t, u"),
            "{}",
            summary(&p.to_json())
        );
    }

    #[test]
    fn summaries_name_tables_that_go_one_way() {
        let s = crate::status::Status {
            node_id: Some(17),
            directions: vec![
                ("readings".into(), true, false),
                ("settings".into(), false, true),
                ("t".into(), true, true),
            ],
            ..Default::default()
        };
        let line = summary(&s.to_json());
        assert!(
            line.ends_with(", parked 0, send only: readings, receive only: settings"),
            "{line}"
        );
    }

    #[test]
    fn summaries_show_host_version_and_lag() {
        let s = crate::status::Status {
            node_id: Some(4),
            link_up: Some(true),
            stream_position: 10,
            behind: Some(3),
            hostname: "gw4".into(),
            version: "0.1.0".into(),
            ..Default::default()
        };
        let line = summary(&s.to_json());
        assert!(
            line.contains(", position 10 (3 behind), parked 0"),
            "{line}"
        );
        assert!(
            line.starts_with("node 4: host gw4, version 0.1.0, link up"),
            "{line}"
        );
        let d = crate::status::Status {
            duplicate_node: Some("x".into()),
            ..s
        };
        assert!(summary(&d.to_json()).contains(", DUPLICATE NODE ID (see its log)"));
    }

    #[test]
    fn errors_and_strangers_get_a_line_too() {
        let e = crate::status::error_json(7, "cannot open \"x.db\", gone");
        assert_eq!(summary(&e), r#"node 7: error "cannot open \"x.db\", gone""#);
        assert_eq!(
            summary("not json"),
            "node ?: link unknown, outbox ?, last publish never, last apply never, position ?, parked ?"
        );
    }
}
