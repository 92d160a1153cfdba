//! `harmonylite status`: read from the database, correct while the node runs and while it
//! cannot reach NATS.

mod common;

use std::time::Duration;

use common::*;

fn status_json(cfg: &std::path::Path) -> String {
    let out = run_bin(
        &["status", "--config", cfg.to_str().unwrap(), "--json"],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn status_shows_outbox_while_offline_and_empties_after_publish() {
    let dir = TestDir::new("status");
    app(
        &dir.join("n1.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE nokey(a, b)",
    );
    let cfg = dir.join("n1.toml");

    // before the node ever ran: nothing installed, tables listed, the keyless table explained
    std::fs::write(
        &cfg,
        node_toml(&dir.join("n1.db"), "", Some("nats://127.0.0.1:1")),
    )
    .unwrap();
    let before = status_json(&cfg);
    assert!(before.contains("\"capture_installed\":false"), "{before}");
    assert!(before.contains("\"node_running\":false"), "{before}");
    assert!(before.contains("\"tables\":[\"t\"]"), "{before}");
    assert!(before.contains("\"table\":\"nokey\""), "{before}");

    // a node with no reachable server: writes wait in the outbox, the link is down
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&url));
    app(&n1.db, "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')");
    wait_until(
        "status shows 3 changes waiting and the link down",
        Duration::from_secs(20),
        || {
            let s = status_json(&dir.join("n1.toml"));
            s.contains("\"outbox_changes\":3")
                && s.contains("\"link_up\":false")
                && s.contains("\"node_running\":true")
        },
    );
    assert!(n1.stop().success());
    let stopped = status_json(&cfg);
    assert!(
        stopped.contains("\"node_running\":false") && stopped.contains("\"link_up\":false"),
        "{stopped}"
    );

    // the server appears: the outbox drains and the link is up
    let nats = NatsServer::start_custom(dir.path(), "nats", port, free_port(), true, &[]);
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&nats.url()));
    wait_until(
        "status shows an empty outbox, a publish and the link up",
        Duration::from_secs(30),
        || {
            let s = status_json(&dir.join("n1.toml"));
            s.contains("\"outbox_changes\":0")
                && s.contains("\"link_up\":true")
                && !s.contains("\"last_publish_ms\":null")
        },
    );
    let text = run_bin(
        &["status", "--config", dir.join("n1.toml").to_str().unwrap()],
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("outbox:           0 changes"), "{text}");
    assert!(text.contains("link:             up"), "{text}");
    assert!(text.contains("node process:     running"), "{text}");
    // a clean stop says so: the link is not "up" on a stopped node
    assert!(n1.stop().success());
    let stopped = status_json(&cfg);
    assert!(
        stopped.contains("\"node_running\":false") && stopped.contains("\"link_up\":false"),
        "{stopped}"
    );
}

#[test]
fn status_of_a_missing_database_exits_1_naming_it() {
    let dir = TestDir::new("status-missing");
    let cfg = dir.join("x.toml");
    std::fs::write(
        &cfg,
        node_toml(&dir.join("nope.db"), "", Some("nats://127.0.0.1:1")),
    )
    .unwrap();
    let out = run_bin(
        &["status", "--config", cfg.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.db"));
}
