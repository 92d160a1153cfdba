//! Fleets: a hub that replicates everything and gateways with per-table direction
//! (`[table.readings] replicate = false`: telemetry goes up and never comes down;
//! `[table.settings] publish = false`: pushed from the hub, local edits stay local), on
//! per-table subjects with a filtered consumer, against a real nats-server.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);
const SCHEMA: &str = "CREATE TABLE readings(id TEXT PRIMARY KEY, device TEXT NOT NULL, ts INTEGER NOT NULL, payload TEXT NOT NULL);
     CREATE TABLE settings(k TEXT PRIMARY KEY, v TEXT NOT NULL);";
const GATEWAY: &str = "[table.readings]\nreplicate = false\n[table.settings]\npublish = false\n";

/// The value of the sample `series` in a Prometheus scrape.
fn sample(port: u16, series: &str) -> f64 {
    let text = http_get(port, "/metrics").expect("metrics").1;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// A nats-server with JetStream whose config is `conf` (its users and their permissions), and
/// its url.
fn server_with_users(dir: &TestDir, conf: &str) -> (NatsServer, String) {
    let path = dir.join("nats.conf");
    std::fs::write(&path, conf).unwrap();
    let [port, mon] = free_ports::<2>();
    let nats = NatsServer::start_custom(
        dir.path(),
        "nats",
        port,
        mon,
        true,
        &["-c".into(), path.display().to_string()],
    );
    (nats, format!("nats://127.0.0.1:{port}"))
}

/// A node's `[nats]` table logging in as `user`.
fn login(user: &str, password: &str) -> String {
    format!("[nats]\nuser_name = \"{user}\"\nuser_password = \"{password}\"\n")
}

fn readings(db: &Path, device: &str) -> i64 {
    query_one(
        db,
        &format!("SELECT count(*) FROM readings WHERE device = '{device}'"),
    )
    .and_then(|v| v.strip_prefix("integer=").map(|n| n.parse().unwrap()))
    .unwrap()
}

#[test]
fn readings_go_up_settings_come_down_and_local_settings_stay_local() {
    let dir = TestDir::new("fleet");
    let nats = NatsServer::start(dir.path());
    let ports = free_ports::<4>();
    let mut nodes = Vec::new();
    for (i, name) in ["hub", "gw1", "gw2", "gw3"].into_iter().enumerate() {
        app(&dir.join(&format!("{name}.db")), SCHEMA);
        let mut toml = format!(
            "node_id = {}\n[prometheus]\nenable = true\nbind = \"127.0.0.1:{}\"\n",
            i + 1,
            ports[i]
        );
        if i > 0 {
            toml += GATEWAY;
        }
        let mut n = Node::start_ready(dir.path(), name, &toml, Some(&nats.url()));
        n.wait_connected();
        nodes.push(n);
    }
    let (hub, gws) = (&nodes[0], &nodes[1..]);

    // (a) readings: every gateway's reach the hub and no other gateway, and the gateways
    // download nothing for them
    let before: Vec<f64> = ports[1..]
        .iter()
        .map(|&p| sample(p, "harmonylite_received_bytes_total"))
        .collect();
    for (g, gw) in gws.iter().enumerate() {
        let values: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    "('gw{g}-{i}', 'gw{g}', {i}, '{{\"t\": {}.5, \"h\": {}}}')",
                    20 + i % 7,
                    40 + i % 11
                )
            })
            .collect();
        app(
            &gw.db,
            &format!("INSERT INTO readings VALUES {}", values.join(", ")),
        );
    }
    wait_until_or(
        "the hub holds every gateway's 200 readings",
        T,
        || (0..3).all(|g| readings(&hub.db, &format!("gw{g}")) == 200),
        || format!("hub: {}", status_json(&hub.config)),
    );
    for (g, gw) in gws.iter().enumerate() {
        wait_until(&format!("{} publishes its readings", gw.name), T, || {
            json_scalar(&status_json(&gw.config), "outbox_changes") == Some("0")
        });
        for other in (0..3).filter(|o| *o != g) {
            assert_eq!(readings(&gw.db, &format!("gw{other}")), 0, "{}", gw.name);
        }
        assert_eq!(readings(&gw.db, &format!("gw{g}")), 200);
    }
    // a settle time in which frames would have arrived (the hub has them all by now)
    std::thread::sleep(Duration::from_secs(1));
    for (g, &p) in ports[1..].iter().enumerate() {
        let after = sample(p, "harmonylite_received_bytes_total");
        assert_eq!(
            after,
            before[g],
            "gw{} downloaded {} bytes while only readings were written",
            g + 1,
            after - before[g]
        );
    }

    // (b) a settings change on the hub reaches every gateway
    app(
        &hub.db,
        "INSERT INTO settings VALUES ('interval', '60'), ('mode', 'eco')",
    );
    for gw in gws {
        wait_dump(
            &gw.db,
            "settings",
            &["text='interval'|text='60'", "text='mode'|text='eco'"],
            T,
        );
    }

    // (c) a gateway's local edit of settings stays local, and does not wait in its outbox
    app(
        &gws[0].db,
        "UPDATE settings SET v = '5' WHERE k = 'interval'",
    );
    wait_until(&format!("{} stamps its edit", gws[0].name), T, || {
        query_one(
            &gws[0].db,
            "SELECT count(*) FROM __hl_ver_settings WHERE node = 2",
        )
        .as_deref()
            == Some("integer=1")
    });
    assert_eq!(
        json_scalar(&status_json(&gws[0].config), "outbox_changes"),
        Some("0")
    );
    assert!(
        gws[0]
            .log()
            .contains("table settings: local changes stay on this node, not sent ([table.settings] publish = false)"),
        "{}",
        gws[0].log()
    );
    // the hub's next change of that setting still wins over the local edit
    app(&hub.db, "UPDATE settings SET v = '30' WHERE k = 'interval'");
    let dbs: Vec<&Path> = nodes.iter().map(|n| n.db.as_path()).collect();
    wait_converged(&dbs, &["settings"], T);
    assert_eq!(
        dump(&gws[0].db, "settings"),
        ["text='interval'|text='30'", "text='mode'|text='eco'"]
    );
    // every node shows each table's direction, locally and across the fleet
    let text = run_bin(&["status", "--config", gws[0].config.to_str().unwrap()], T);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("  direction:      readings: send only")
            && text.contains("  direction:      settings: receive only"),
        "{text}"
    );
    let fleet = run_bin(
        &[
            "status",
            "--fleet",
            "--config",
            hub.config.to_str().unwrap(),
        ],
        T,
    );
    let fleet = String::from_utf8_lossy(&fleet.stdout);
    assert_eq!(
        fleet
            .lines()
            .filter(|l| l.ends_with("send only: readings, receive only: settings"))
            .count(),
        3,
        "{fleet}"
    );
    assert_eq!(fleet.lines().count(), 4, "{fleet}");
    for n in &nodes {
        assert_eq!(
            sample(
                ports[nodes.iter().position(|m| m.name == n.name).unwrap()],
                "harmonylite_frames_rejected_total"
            ),
            0.0,
            "{}",
            n.name
        );
    }
}

#[test]
fn a_table_key_naming_no_replicated_table_stops_the_start() {
    let dir = TestDir::new("fleet-config");
    app(&dir.join("n1.db"), SCHEMA);
    let config = dir.join("n1.toml");
    std::fs::write(
        &config,
        node_toml(
            &dir.join("n1.db"),
            "[table.reading]\nreplicate = false\n",
            Some("nats://127.0.0.1:1"),
        ),
    )
    .unwrap();
    let out = run_bin(&["--config", config.to_str().unwrap()], T);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "config: [table.reading]: the database has no such table with a primary key (replicated tables: readings, settings)"
        ),
        "{err}"
    );
}

/// A gateway (filtered on the tables it knows) gets a table the hub created and wrote to
/// earlier once a migration creates it there: the stream is read again for it (a backfill),
/// and the hub's rows written before arrive, as do later ones.
#[test]
fn a_table_a_gateway_starts_to_receive_is_backfilled_from_the_stream() {
    let dir = TestDir::new("fleet-backfill");
    let nats = NatsServer::start(dir.path());
    let alarms = "CREATE TABLE alarms(id INTEGER PRIMARY KEY, what TEXT NOT NULL)";
    app(&dir.join("hub.db"), &format!("{SCHEMA} {alarms};"));
    app(&dir.join("gw1.db"), SCHEMA);
    let mut hub = Node::start_ready(dir.path(), "hub", "node_id = 1\n", Some(&nats.url()));
    let mut gw = Node::start_ready(
        dir.path(),
        "gw1",
        &format!("node_id = 2\n{GATEWAY}"),
        Some(&nats.url()),
    );
    hub.wait_connected();
    gw.wait_connected();
    app(
        &hub.db,
        "INSERT INTO alarms VALUES (1, 'door'), (2, 'smoke')",
    );
    wait_until("the hub publishes its alarms", T, || {
        json_scalar(&status_json(&hub.config), "outbox_changes") == Some("0")
    });
    // a later message the gateway receives moves its position past the alarms'
    app(&hub.db, "INSERT INTO settings VALUES ('a', '1')");
    wait_dump(&gw.db, "settings", &["text='a'|text='1'"], T);
    assert_eq!(count(&gw.db, "readings"), 0);
    // the gateway's app migrates: alarms appears there, empty
    app(&gw.db, alarms);
    gw.wait_log("backfill", T);
    wait_dump(
        &gw.db,
        "alarms",
        &["integer=1|text='door'", "integer=2|text='smoke'"],
        T,
    );
    app(&hub.db, "INSERT INTO alarms VALUES (3, 'flood')");
    wait_until("the later alarm arrives", T, || {
        count(&gw.db, "alarms") == 3
    });
    // settings were not applied twice over anything newer, and readings still never come down
    app(&hub.db, "INSERT INTO readings VALUES ('h', 'hub', 1, '{}')");
    app(&hub.db, "UPDATE settings SET v = '2' WHERE k = 'a'");
    wait_dump(&gw.db, "settings", &["text='a'|text='2'"], T);
    assert_eq!(count(&gw.db, "readings"), 0);
    // restarted, the gateway does not read the stream again
    assert!(gw.stop().success());
    gw.restart_ready();
    gw.wait_connected();
    let log = gw.current_log();
    assert!(!log.contains("reading the stream again"), "{log}");
    assert!(hub.stop().success());
    assert!(gw.stop().success());
}

/// NATS permissions on the per-table subjects fence what a gateway may publish: its user may
/// publish only `hlrs.changes.*.17`. The gateway replicates; a node using the same user under
/// another node id is refused, says so (log, status, /health) and keeps its rows queued.
#[test]
fn broker_permissions_keep_a_gateway_to_its_own_subjects() {
    let dir = TestDir::new("fleet-perms");
    let (_nats, url) = server_with_users(
        &dir,
        r#"authorization {
  users = [
    { user: hub, password: hubpw }
    { user: gw17, password: gwpw, permissions: {
        publish: { allow: ["hlrs.changes.*.17", "$JS.API.>", "$JS.ACK.>", "_INBOX.>", "hlrs.status.>", "$O.>", "$KV.>"] }
        subscribe: { allow: ["_INBOX.>", "hlrs.status.>"] }
    } }
  ]
}
"#,
    );
    let health = free_port();
    for n in ["hub", "gw", "impostor"] {
        app(&dir.join(&format!("{n}.db")), SCHEMA);
    }
    let mut hub = Node::start_ready(
        dir.path(),
        "hub",
        &format!("node_id = 1\n{}", login("hub", "hubpw")),
        Some(&url),
    );
    let mut gw = Node::start_ready(
        dir.path(),
        "gw",
        &format!("node_id = 17\n{GATEWAY}{}", login("gw17", "gwpw")),
        Some(&url),
    );
    hub.wait_connected();
    gw.wait_connected();
    app(&hub.db, "INSERT INTO settings VALUES ('a', '1')");
    app(&gw.db, "INSERT INTO readings VALUES ('r1', 'gw', 1, '{}')");
    wait_dump(&gw.db, "settings", &["text='a'|text='1'"], T);
    wait_until("the hub has gw17's reading", T, || {
        count(&hub.db, "readings") == 1
    });

    // the same user under node id 18: its subjects are not its own
    let mut impostor = Node::start_ready(
        dir.path(),
        "impostor",
        &format!(
            "node_id = 18\n{GATEWAY}[health_check]\nenable = true\nbind = \"127.0.0.1:{health}\"\n{}",
            login("gw17", "gwpw")
        ),
        Some(&url),
    );
    impostor.wait_connected();
    app(
        &impostor.db,
        "INSERT INTO readings VALUES ('x', 'impostor', 1, '{}')",
    );
    impostor.wait_log(
        "Permissions Violation for Publish to \"hlrs.changes.readings.18\"",
        T,
    );
    wait_until("status shows the refusal", T, || {
        json_scalar(&status_json(&impostor.config), "refused").is_some_and(|r| r != "null")
    });
    let log = impostor.current_log();
    assert!(
        log.contains("ERROR") && log.contains("the NATS server refuses"),
        "{log}"
    );
    let (code, body) = http_get(health, "/health").expect("/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("refuses this node's publishes"), "{body}");
    // nothing of it got through, and it keeps the row to send once permitted
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&hub.db, "readings"), 1);
    assert_eq!(
        json_scalar(&status_json(&impostor.config), "outbox_changes"),
        Some("1")
    );
    for n in [&mut hub, &mut gw, &mut impostor] {
        assert!(n.stop().success(), "{}", n.name);
    }
}

/// Reading is fenced too when a gateway receives one table: its consumer is created through
/// `$JS.API.CONSUMER.CREATE.<stream>.<consumer>.<filter>`, so the gateway's user may be allowed
/// exactly that. The gateway replicates; the same user cannot create a consumer on readings.
#[test]
#[allow(deprecated)] // the sync nats client, as the node uses it
fn broker_permissions_keep_a_single_table_gateway_from_reading_other_tables() {
    let dir = TestDir::new("fleet-readfence");
    let (_nats, url) = server_with_users(
        &dir,
        r#"authorization {
  users = [
    { user: hub, password: hubpw }
    { user: gw17, password: gwpw, permissions: {
        publish: { allow: ["hlrs.changes.*.17", "$JS.API.STREAM.INFO.HLRS",
                           "$JS.API.CONSUMER.CREATE.HLRS.hl-17.hlrs.changes.settings.*",
                           "$JS.API.CONSUMER.DELETE.HLRS.hl-17", "$JS.API.CONSUMER.INFO.HLRS.hl-17",
                           "$JS.API.CONSUMER.MSG.NEXT.HLRS.hl-17", "$JS.ACK.HLRS.hl-17.>",
                           "$KV.HLRS-nodes.17", "$JS.API.STREAM.INFO.KV_HLRS-nodes",
                           "$JS.API.CONSUMER.CREATE.KV_HLRS-nodes", "$JS.API.CONSUMER.CREATE.KV_HLRS-nodes.>",
                           "$JS.API.CONSUMER.DELETE.KV_HLRS-nodes.>",
                           "_INBOX.>", "hlrs.status.>"] }
        subscribe: { allow: ["_INBOX.>", "hlrs.status.>"] }
    } }
  ]
}
"#,
    );
    for n in ["hub", "gw"] {
        app(&dir.join(&format!("{n}.db")), SCHEMA);
    }
    let mut hub = Node::start_ready(
        dir.path(),
        "hub",
        &format!("node_id = 1\n{}", login("hub", "hubpw")),
        Some(&url),
    );
    hub.wait_connected();
    let mut gw = Node::start_ready(
        dir.path(),
        "gw",
        &format!(
            "node_id = 17\n{GATEWAY}[snapshot]\nenabled = false\n{}",
            login("gw17", "gwpw")
        ),
        Some(&url),
    );
    gw.wait_connected();
    app(&hub.db, "INSERT INTO settings VALUES ('a', '1')");
    app(&gw.db, "INSERT INTO readings VALUES ('r1', 'gw', 1, '{}')");
    wait_dump(&gw.db, "settings", &["text='a'|text='1'"], T);
    wait_until("the hub has gw17's reading", T, || {
        count(&hub.db, "readings") == 1
    });
    assert!(!gw.log().contains("Permissions Violation"), "{}", gw.log());

    // the same user, by hand: no consumer on readings, by either creation subject
    let nc = nats::Options::with_user_pass("gw17", "gwpw")
        .connect(&url)
        .expect("gw17 connects");
    let body = |filter: &str| {
        format!(
            r#"{{"stream_name":"HLRS","config":{{"durable_name":"hl-17","deliver_policy":"all","ack_policy":"all","filter_subject":"{filter}","replay_policy":"instant"}}}}"#
        )
    };
    for subject in [
        "$JS.API.CONSUMER.CREATE.HLRS.hl-17.hlrs.changes.readings.*",
        "$JS.API.CONSUMER.DURABLE.CREATE.HLRS.hl-17",
        "$JS.API.CONSUMER.CREATE.HLRS.spy",
    ] {
        let answer = nc.request_timeout(
            subject,
            body("hlrs.changes.readings.*"),
            Duration::from_secs(2),
        );
        assert!(
            answer.is_err(),
            "{subject} answered: {:?}",
            answer.map(|m| String::from_utf8_lossy(&m.data).to_string())
        );
    }
    // and settings only through the one allowed subject (the node's own consumer)
    let ok = nc
        .request_timeout(
            "$JS.API.CONSUMER.CREATE.HLRS.hl-17.hlrs.changes.settings.*",
            body("hlrs.changes.settings.*"),
            Duration::from_secs(2),
        )
        .expect("the allowed creation answers");
    assert!(
        String::from_utf8_lossy(&ok.data).contains("consumer_create_response"),
        "{}",
        String::from_utf8_lossy(&ok.data)
    );
    for n in [&mut hub, &mut gw] {
        assert!(n.stop().success(), "{}", n.name);
    }
}
