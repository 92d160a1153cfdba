//! Keys created on two nodes at once. Unique keys other than the primary key: the same `name`
//! created on two nodes under different ids converges to the newer row on both, with nothing
//! parked. Primary keys: the same id created on two nodes converges to the newer row, and every
//! node reports the collision (status, /metrics, log) with both origins.

mod common;

use std::time::Duration;

use common::*;

/// The value of the sample `series` in a Prometheus scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Once the first `writers` nodes hold `outbox` changes each in their outbox (written while no
/// server existed), the server appears on `port` and every node is restarted to connect.
fn server_appears(
    dir: &TestDir,
    port: u16,
    nodes: &mut [Node],
    writers: usize,
    outbox: &str,
) -> NatsServer {
    for n in &nodes[..writers] {
        wait_until(
            "the writes are in the outbox",
            Duration::from_secs(20),
            || json_scalar(&status_json(&n.config), "outbox_changes") == Some(outbox),
        );
    }
    let nats = NatsServer::start_custom(dir.path(), "nats", port, free_port(), true, &[]);
    for n in nodes.iter_mut() {
        assert!(n.stop().success());
        n.restart_ready();
    }
    nats
}

#[test]
fn the_same_unique_name_created_on_two_nodes_converges_to_the_newer_row() {
    let dir = TestDir::new("unique");
    let schema =
        "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, qty INTEGER)";
    let [m1, m2, port] = free_ports::<3>();
    let toml = |id: u64, m: u16| {
        format!("node_id = {id}\n[prometheus]\nenable = true\nbind = \"127.0.0.1:{m}\"\n")
    };
    // both nodes run before they can reach each other: no server yet
    let url = format!("nats://127.0.0.1:{port}");
    let mut nodes = Vec::new();
    for (i, (name, m)) in [("n1", m1), ("n2", m2)].into_iter().enumerate() {
        app(&dir.join(&format!("{name}.db")), schema);
        nodes.push(Node::start_ready(
            dir.path(),
            name,
            &toml(i as u64 + 1, m),
            Some(&url),
        ));
    }
    // each application creates name 'same' under its own id; n2's write is the later one
    app(&nodes[0].db, "INSERT INTO item VALUES (1, 'same', 10)");
    std::thread::sleep(Duration::from_millis(50));
    app(&nodes[1].db, "INSERT INTO item VALUES (2, 'same', 20)");
    // the server appears: each node receives the other's row
    let _nats = server_appears(&dir, port, &mut nodes, 2, "1");
    let dbs: Vec<&std::path::Path> = nodes.iter().map(|n| n.db.as_path()).collect();
    wait_until_or(
        "both nodes hold only the newer row",
        Duration::from_secs(30),
        || {
            dbs.iter()
                .all(|d| dump(d, "item") == dump(dbs[1], "item") && dump(d, "item").len() == 1)
        },
        || {
            format!(
                "n1: {:?}\nn2: {:?}\nn1 status: {}\nn2 status: {}",
                dump(dbs[0], "item"),
                dump(dbs[1], "item"),
                status_json(&nodes[0].config),
                status_json(&nodes[1].config)
            )
        },
    );
    wait_converged(&dbs, &["item"], Duration::from_secs(10));
    let winner = dump(dbs[1], "item");
    assert_eq!(winner.len(), 1);
    assert!(
        winner[0].contains("same") && winner[0].contains("20"),
        "{winner:?}"
    );
    for n in &nodes {
        let s = status_json(&n.config);
        assert_eq!(json_scalar(&s, "parked_changes"), Some("0"), "{s}");
        wait_until("the outbox drains", Duration::from_secs(20), || {
            json_scalar(&status_json(&n.config), "outbox_changes") == Some("0")
        });
    }
    // n1 lost its row: it counted the conflict, in /metrics and in status
    let metrics = http_get(m1, "/metrics").expect("metrics of n1").1;
    let n = sample(&metrics, "harmonylite_unique_conflicts_total").unwrap_or(0.0);
    assert!(n >= 1.0, "harmonylite_unique_conflicts_total on n1: {n}");
    let s = status_json(&nodes[0].config);
    assert_ne!(json_scalar(&s, "unique_conflicts"), Some("0"), "{s}");
    assert!(
        nodes[0]
            .log()
            .contains("unique conflict resolved table=item columns=name"),
        "{}",
        nodes[0].log()
    );
    assert!(nodes[0].log().contains("table item has unique constraints"));
    println!(
        "n1: unique_conflicts_total={n}; n2: {:?}; rows {winner:?}",
        sample(
            &http_get(m2, "/metrics").expect("metrics of n2").1,
            "harmonylite_unique_conflicts_total"
        )
    );
}

#[test]
fn the_same_id_created_on_two_nodes_is_reported_as_a_collision_on_every_node() {
    let dir = TestDir::new("pk-collision");
    let schema = "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)";
    let [m1, port] = free_ports::<2>();
    let url = format!("nats://127.0.0.1:{port}");
    let mut nodes = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].into_iter().enumerate() {
        app(&dir.join(&format!("{name}.db")), schema);
        let mut toml = format!("node_id = {}\n", i + 1);
        if i == 0 {
            toml += &format!("[prometheus]\nenable = true\nbind = \"127.0.0.1:{m1}\"\n");
        }
        nodes.push(Node::start_ready(dir.path(), name, &toml, Some(&url)));
    }
    // n1 and n2 cannot see each other yet: both applications take id 6 (as AUTOINCREMENT
    // would), with different rows; both also load the same seed row 7, which is no collision
    app(
        &nodes[0].db,
        "INSERT INTO item VALUES (6, 'bolt', 10); INSERT INTO item VALUES (7, 'seed', 1)",
    );
    // a change's time is when its node stamps it (at its next poll), not the commit: n2's row
    // is later only once n1 has stamped its own (a fixed sleep shorter than the poll was not)
    wait_until("n1 stamped its two rows", Duration::from_secs(10), || {
        json_scalar(&status_json(&nodes[0].config), "outbox_changes") == Some("2")
    });
    std::thread::sleep(Duration::from_millis(5));
    app(
        &nodes[1].db,
        "INSERT INTO item VALUES (6, 'nut', 20); INSERT INTO item VALUES (7, 'seed', 1)",
    );
    let _nats = server_appears(&dir, port, &mut nodes, 2, "2");
    let dbs: Vec<&std::path::Path> = nodes.iter().map(|n| n.db.as_path()).collect();
    wait_until_or(
        "every node reports one collision",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|n| json_scalar(&status_json(&n.config), "pk_collisions") == Some("1"))
        },
        || {
            nodes
                .iter()
                .map(|n| format!("{}: {}\n", n.name, status_json(&n.config)))
                .collect()
        },
    );
    wait_converged(&dbs, &["item"], Duration::from_secs(20));
    let rows = dump(dbs[2], "item");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].contains("nut") && rows[0].contains("20"),
        "n2's later row wins: {rows:?}"
    );
    for n in &nodes {
        let s = status_json(&n.config);
        assert_eq!(json_scalar(&s, "parked_changes"), Some("0"), "{s}");
        assert!(
            s.contains("table item key 6: nodes ")
                && s.contains("node 2's row is kept, node 1's overwritten"),
            "{}: {s}",
            n.name
        );
        let text = run_bin(
            &["status", "--config", n.config.to_str().unwrap()],
            Duration::from_secs(10),
        );
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("PK COLLISIONS:    1"), "{text}");
    }
    let log = nodes[0].log();
    assert!(
        log.contains("primary-key collision in table item key 6: nodes ")
            && log.contains("Choosing primary keys"),
        "{log}"
    );
    let metrics = http_get(m1, "/metrics").expect("metrics of n1").1;
    assert_eq!(
        sample(&metrics, "harmonylite_pk_collisions_total"),
        Some(1.0),
        "{metrics}"
    );
}
