//! `/metrics`, `/health` and the status service over NATS, with real processes: a nats-server,
//! the harmonylite binary per node, and the app (tests/app.py) writing from its own process.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";
const ROWS: usize = 50;

/// The value of the sample `series` (a name, with its labels if any) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn scrape(port: u16, path: &str) -> String {
    match http_get(port, path) {
        Some((200, body)) => body,
        other => panic!("GET {path} on port {port}: {other:?}"),
    }
}

/// Sends `bytes` as they are and returns whatever comes back before the server closes.
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn ops_toml(node_id: u64, metrics: u16, health: u16) -> String {
    format!(
        "node_id = {node_id}\n[prometheus]\nenable = true\nbind = \"127.0.0.1:{metrics}\"\n\
         [health_check]\nenable = true\nbind = \"127.0.0.1:{health}\"\ndetailed = true\nlink_grace_ms = 2000\n"
    )
}

#[test]
fn metrics_and_health_follow_replication_and_the_link() {
    let dir = TestDir::new("metrics");
    let mut nats = NatsServer::start(dir.path());
    let [ma, ha, mb] = free_ports::<3>();
    app(&dir.join("a.db"), SCHEMA);
    app(&dir.join("b.db"), SCHEMA);
    let mut a = Node::start_ready(dir.path(), "a", &ops_toml(1, ma, ha), Some(&nats.url()));
    // b serves both paths from one listener
    let mut b = Node::start_ready(dir.path(), "b", &ops_toml(2, mb, mb), Some(&nats.url()));
    a.wait_connected();
    b.wait_connected();

    app(
        &a.db,
        &format!("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {ROWS}) INSERT INTO t SELECT i, 'v' || i FROM c"),
    );
    wait_until("b holds every row", Duration::from_secs(30), || {
        count(&b.db, "t") == ROWS as i64
    });

    let n = ROWS as f64;
    wait_until(
        "a's outbox is empty and its changes published",
        Duration::from_secs(20),
        || {
            let m = scrape(ma, "/metrics");
            sample(&m, "harmonylite_outbox_changes") == Some(0.0)
                && sample(&m, "harmonylite_changes_published_total") >= Some(n)
        },
    );
    let m = scrape(ma, "/metrics");
    assert!(
        sample(&m, "harmonylite_changes_captured_total") >= Some(n),
        "{m}"
    );
    assert!(
        sample(&m, "harmonylite_published_bytes_total") > Some(0.0),
        "{m}"
    );
    // at least one statement stamps each change (SQLite's statement trace counts them)
    assert!(
        sample(&m, "harmonylite_sqlite_statements_total") >= Some(n),
        "{m}"
    );
    assert_eq!(sample(&m, "harmonylite_node_id"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "harmonylite_nats_link_up"), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "harmonylite_outbox_oldest_age_seconds"),
        Some(0.0),
        "{m}"
    );
    assert!(
        m.contains("# TYPE harmonylite_changes_captured_total counter\n"),
        "{m}"
    );

    wait_until(
        "b counts every row applied",
        Duration::from_secs(10),
        || sample(&scrape(mb, "/metrics"), "harmonylite_changes_applied_total") == Some(n),
    );
    let m = scrape(mb, "/metrics");
    assert_eq!(
        sample(&m, "harmonylite_changes_applied_total"),
        Some(n),
        "{m}"
    );
    assert_eq!(
        sample(&m, "harmonylite_changes_captured_total"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "harmonylite_frames_undecodable_total"),
        Some(0.0),
        "{m}"
    );
    assert!(
        sample(&m, "harmonylite_received_bytes_total") > Some(0.0),
        "{m}"
    );
    let lag = sample(&m, "harmonylite_replication_lag_seconds{origin=\"1\"}");
    assert!(
        lag.is_some_and(|s| (0.0..30.0).contains(&s)),
        "lag of origin 1: {lag:?}\n{m}"
    );
    assert!(
        sample(&m, "harmonylite_last_apply_timestamp_seconds").is_some_and(|t| t > 1.6e9),
        "{m}"
    );

    // health: ok on both; b answers /health on its metrics listener
    let (code, body) = http_get(ha, "/health").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("{\"status\":\"ok\"")
            && body.contains("\"outbox_changes\":0")
            && body.contains("\"node_id\":1"),
        "{body}"
    );
    assert_eq!(http_get(mb, "/health").map(|r| r.0), Some(200));

    // unknown paths, other methods, junk: answered, and the node keeps serving
    assert_eq!(http_get(ha, "/nope").map(|r| r.0), Some(404));
    assert_eq!(
        http_get(ma, "/health").map(|r| r.0),
        Some(404),
        "a's health has its own port"
    );
    assert!(
        raw(ha, b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n").starts_with("HTTP/1.0 405 ")
    );
    assert!(raw(
        ha,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n"
    )
    .starts_with("HTTP/1.0 400 "));
    assert!(raw(ha, &[b'x'; 20_000]).starts_with("HTTP/1.0 400 "));
    drop(TcpStream::connect(("127.0.0.1", ha)).unwrap()); // connect and leave
    let (code, _) = http_get(ha, "/health").unwrap();
    assert_eq!(code, 200);
    assert!(a.is_running());

    // the server goes away: after the grace, 503 naming NATS
    nats.stop();
    wait_until(
        "a's health reports the NATS link down",
        Duration::from_secs(20),
        || matches!(http_get(ha, "/health"), Some((503, body)) if body.contains("\"status\":\"unhealthy\"") && body.contains("NATS link down for")),
    );
    assert_eq!(
        sample(&scrape(ma, "/metrics"), "harmonylite_nats_link_up"),
        Some(0.0)
    );
    nats.start_again();
    wait_until(
        "a is healthy again after the server is back",
        Duration::from_secs(30),
        || matches!(http_get(ha, "/health"), Some((200, _))),
    );
    assert!(sample(&scrape(ma, "/metrics"), "harmonylite_nats_reconnects_total") >= Some(1.0));
    assert!(a.stop().success());
    assert!(b.stop().success());
}

#[test]
fn a_bind_address_in_use_stops_the_start_naming_the_key() {
    let dir = TestDir::new("metrics-bind");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    app(&dir.join("a.db"), SCHEMA);
    let cfg = dir.join("a.toml");
    let extra = format!("[prometheus]\nenable = true\nbind = \"127.0.0.1:{port}\"\n");
    std::fs::write(
        &cfg,
        node_toml(&dir.join("a.db"), &extra, Some("nats://127.0.0.1:1")),
    )
    .unwrap();
    let out = run_bin(
        &["--config", cfg.to_str().unwrap()],
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "[prometheus] bind: cannot listen on 127.0.0.1:{port}: Address"
        )),
        "{err}"
    );
}

#[test]
fn fleet_status_answers_through_nats() {
    let dir = TestDir::new("fleet");
    let nats = NatsServer::start(dir.path());
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| {
            app(&dir.join(&format!("n{i}.db")), SCHEMA);
            Node::start_ready(
                dir.path(),
                &format!("n{i}"),
                &format!("node_id = {i}\n"),
                Some(&nats.url()),
            )
        })
        .collect();
    for n in &mut nodes {
        n.wait_connected();
    }
    let cfg = nodes[0].config.to_str().unwrap().to_string();
    let fleet = |extra: &[&str]| {
        let mut args = vec!["status", "--config", cfg.as_str(), "--fleet"];
        args.extend_from_slice(extra);
        run_bin(&args, Duration::from_secs(20))
    };

    let mut lines = Vec::new();
    wait_until(
        "--fleet --json lists three nodes",
        Duration::from_secs(20),
        || {
            let out = fleet(&["--json", "--timeout-ms", "1000"]);
            lines = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from)
                .collect();
            out.status.success() && lines.len() == 3
        },
    );
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with('{') && line.contains(&format!(",\"node_id\":{},", i + 1)),
            "{lines:?}"
        );
        assert!(
            line.contains("\"link_up\":true") && line.contains("\"node_running\":true"),
            "{line}"
        );
    }

    let out = fleet(&["--node", "2", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().count() == 1 && text.contains(",\"node_id\":2,"),
        "{text}"
    );

    // a node nobody runs: the server says there are no responders, so the command does not
    // sit out its 60 s (run_bin kills it after 20 s, which would fail here)
    let out = fleet(&["--node", "9", "--timeout-ms", "60000"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node answered on hlrs.status.HLRS.9"));

    let out = fleet(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let firsts: Vec<&str> = text
        .lines()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(firsts, ["node 1", "node 2", "node 3"], "{text}");
    assert!(text.contains("link up, outbox 0"), "{text}");

    for n in &mut nodes {
        assert!(n.stop().success());
    }
    let out = fleet(&["--timeout-ms", "500"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no node answered on hlrs.status.HLRS.all within 500 ms"),
        "{err}"
    );
}
