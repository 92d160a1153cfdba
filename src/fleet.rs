//! `harmonylite status --fleet`: asks every node of the stream (or one, `--node N`) for its
//! status through NATS and prints the answers sorted by node id: one JSON object per line
//! (`--json`, the same object as `status --json`) or one summary line per node.

use std::time::Duration;

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
    let mut answers: Vec<String> = answers
        .into_iter()
        .map(|a| String::from_utf8_lossy(&a).into_owned())
        .collect();
    if answers.is_empty() {
        return Err(format!(
            "no node answered on {subject} within {} ms",
            timeout.as_millis()
        ));
    }
    answers.sort_by_key(|a| {
        field(a, "node_id")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    let lines: Vec<String> = if json {
        answers
    } else {
        answers.iter().map(|a| summary(a)).collect()
    };
    Ok(lines.join("\n") + "\n")
}

/// One line per node from its JSON answer.
fn summary(a: &str) -> String {
    let get = |k: &str| field(a, k).unwrap_or("?").to_string();
    if let Some(e) = field(a, "error") {
        return format!("node {}: error {e}", get("node_id"));
    }
    let link = match field(a, "link_up") {
        Some("true") => "up",
        Some("false") => "down",
        _ => "unknown",
    };
    let oldest = field(a, "outbox_oldest_age_ms").and_then(|v| v.parse::<u64>().ok());
    let oldest = oldest.map_or(String::new(), |ms| {
        format!(" (oldest {:.1} s)", ms as f64 / 1000.0)
    });
    let ago = |k: &str| match field(a, k).and_then(|v| v.parse::<u64>().ok()) {
        Some(t) => format!(
            "{:.1} s ago",
            crate::hlc::now_ms().saturating_sub(t) as f64 / 1000.0
        ),
        None => "never".into(),
    };
    format!(
        "node {}: link {link}, outbox {}{oldest}, last publish {}, last apply {}, position {}, parked {}{}",
        get("node_id"),
        get("outbox_changes"),
        ago("last_publish_ms"),
        ago("last_apply_ms"),
        get("stream_position"),
        get("parked_changes"),
        paused(a)
    )
}

/// `, PAUSED: t1, t2` when the node has tables paused by a schema change.
fn paused(a: &str) -> String {
    let Some(start) = a
        .find("\"paused_tables\":[")
        .map(|i| i + "\"paused_tables\":[".len())
    else {
        return String::new();
    };
    let list = &a[start..start + a[start..].find(']').unwrap_or(0)];
    let names: Vec<&str> = list
        .split("{\"table\":\"")
        .skip(1)
        .filter_map(|t| t.split('"').next())
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(", PAUSED: {}", names.join(", "))
    }
}

/// The raw value of a top-level scalar field of a status JSON object (numbers, booleans, null,
/// or a string with its quotes). Inside JSON strings every `"` is escaped, so `,"key":` or
/// `{"key":` can only be a key.
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = [format!("{{\"{key}\":"), format!(",\"{key}\":")]
        .iter()
        .find_map(|p| json.find(p.as_str()).map(|i| i + p.len()))?;
    let rest = &json[start..];
    let end = if rest.starts_with('"') {
        let mut escaped = false;
        rest.char_indices()
            .skip(1)
            .find(|&(_, c)| {
                let done = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                done
            })?
            .0
            + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_key_only() {
        let j = r#"{"db_path":"/x/\",\"node_id\":9.db","node_id":7,"link_up":true,"outbox_changes":0,"error":"a \"b\", c"}"#;
        assert_eq!(field(j, "node_id"), Some("7"));
        assert_eq!(field(j, "link_up"), Some("true"));
        assert_eq!(field(j, "error"), Some(r#""a \"b\", c""#));
        assert_eq!(field(j, "db_path"), Some(r#""/x/\",\"node_id\":9.db""#));
        assert_eq!(field(j, "missing"), None);
        let s = crate::status::Status {
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
}
