//! `[logging] format`: with `"json"` every stderr line is one JSON object (`ts`, `level`,
//! `target`, `msg`); in both formats a node with nothing to do logs nothing per tick.

mod common;

use std::time::Duration;

use common::*;

/// How long an idle, connected node is watched for log lines.
const QUIET: Duration = Duration::from_secs(3);

/// `2025-01-31T12:00:00.123Z`
fn is_rfc3339_utc_ms(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
        && &ts[..4] >= "2024"
}

/// Parses every line of `log` as a JSON object with exactly the keys ts, level, target, msg
/// (all strings); returns (level, target, msg) per line.
fn parse_json_log(log: &str) -> Vec<(String, String, String)> {
    log.lines()
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {}: not JSON ({e}): {line}", i + 1));
            let obj = v
                .as_object()
                .unwrap_or_else(|| panic!("line {}: not an object: {line}", i + 1));
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(
                keys,
                ["level", "msg", "target", "ts"],
                "line {}: {line}",
                i + 1
            );
            let s = |k: &str| {
                obj[k]
                    .as_str()
                    .unwrap_or_else(|| panic!("line {}: {k} is not a string: {line}", i + 1))
                    .to_string()
            };
            assert!(is_rfc3339_utc_ms(&s("ts")), "line {}: ts: {line}", i + 1);
            let level = s("level");
            assert!(
                ["error", "warn", "info", "debug"].contains(&level.as_str()),
                "line {}: level: {line}",
                i + 1
            );
            (level, s("target"), s("msg"))
        })
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = TestDir::new("log-json");
    let nats = NatsServer::start(dir.path());
    // a table without a primary key is named in a warning: its name needs every escape
    let odd = "odd \"name\" \\ é\tx\ny";
    app(
        &dir.join("n1.db"),
        &format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE {}(a, b);",
            quote_ident(odd)
        ),
    );
    let mut n1 = Node::start_ready(
        dir.path(),
        "n1",
        "[logging]\nformat = \"json\"\nverbose = true",
        Some(&nats.url()),
    );
    n1.wait_connected();
    app(&n1.db, "INSERT INTO t VALUES (1, 'a \"quoted\" value')");
    wait_until("n1 published its write", Duration::from_secs(20), || {
        query_one(&n1.db, "SELECT count(*) FROM __hl_ver_t WHERE pending = 0").as_deref()
            == Some("integer=1")
    });
    assert!(n1.stop().success());

    let lines = parse_json_log(&n1.log());
    let msgs: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
    let find = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.2.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in {msgs:#?}"))
    };
    // key=value pairs stay inside msg, as in the text format
    let ready = find("node ready node_id=");
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("info", "harmonylite::node")
    );
    assert!(ready.2.contains(" tables=t "), "{}", ready.2);
    let connected = find("connected to nats");
    assert_eq!(connected.0, "info");
    let warning = find("table odd");
    assert_eq!(warning.0, "warn");
    assert_eq!(
        warning.2,
        format!("table {odd} is not replicated: it has no PRIMARY KEY; add one to replicate it")
    );
    assert!(
        lines.iter().any(|l| l.0 == "debug"),
        "verbose = true logs debug lines: {msgs:#?}"
    );
    find("node stopped");
}

/// No writes, connected: nothing per tick at info level, in either format.
#[test]
fn an_idle_node_is_quiet_in_both_formats() {
    let dir = TestDir::new("log-quiet");
    let nats = NatsServer::start(dir.path());
    for (i, name) in ["text", "json"].iter().enumerate() {
        app(
            &dir.join(&format!("{name}.db")),
            &format!(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES ({i}, 'x');"
            ),
        );
    }
    let mut text = Node::start_ready(dir.path(), "text", "", Some(&nats.url()));
    let mut json = Node::start_ready(
        dir.path(),
        "json",
        "[logging]\nformat = \"json\"",
        Some(&nats.url()),
    );
    text.wait_connected();
    json.wait_connected();
    // settled: each published its backfilled row and applied the other's
    wait_until(
        "both nodes hold both rows, published",
        Duration::from_secs(20),
        || {
            [&text.db, &json.db].iter().all(|db| {
                query_one(db, "SELECT count(*) FROM __hl_ver_t WHERE pending = 0").as_deref()
                    == Some("integer=2")
            })
        },
    );
    let (t0, j0) = (text.log(), json.log());
    // a fixed wait on purpose: the property is that nothing happens during it
    std::thread::sleep(QUIET);
    let (t1, j1) = (text.log(), json.log());
    assert_eq!(&t1[t0.len()..], "", "the text node logged while idle");
    assert_eq!(&j1[j0.len()..], "", "the json node logged while idle");
    parse_json_log(&j1);
    assert!(
        t1.lines()
            .all(|l| l.contains(" INFO  [harmonylite") || l.contains(" WARN  [")),
        "{t1}"
    );
    assert!(text.stop().success() && json.stop().success());
}
