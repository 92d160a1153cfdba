//! `harmonylite verify [--repair]` against real nodes: divergence injected behind the nodes'
//! backs with a plain SQLite connection (no capture: the rows and their version rows changed
//! in one transaction that leaves the change log empty) is found row by row, and `--repair`
//! makes every node converge again; a node that does not receive a table is left out of its
//! comparison; malformed requests get an error answer, never a crash; a node on a build
//! before verify (it answers status, not verify) is named and fails the check.

#![allow(deprecated)] // the sync `nats` client (a stand-in for an old node), as in src/transport

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use rusqlite::Connection;

const T: Duration = Duration::from_secs(30);
const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
     CREATE TABLE notes(k TEXT PRIMARY KEY, body TEXT);";

/// `harmonylite verify --config CONFIG ARGS...`: (exit code, stdout, stderr).
fn verify(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["verify", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_bin(&all, Duration::from_secs(60));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Changes `db` behind its node's back: `sql` and the clearing of every change log, in one
/// transaction (the triggers fire, their log rows are gone before the node can stamp them).
fn behind_the_back(db: &Path, sql: &str) {
    let mut c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = c.transaction().unwrap();
    tx.execute_batch(sql).unwrap();
    tx.execute_batch("DELETE FROM __hl_log_t; DELETE FROM __hl_log_notes;")
        .unwrap();
    tx.commit().unwrap();
}

/// (version, origin) of key `id` in `__hl_ver_t` on `db`.
fn version_of(db: &Path, id: i64) -> (i64, i64) {
    let c = open_ro(db);
    c.query_row(
        "SELECT ver, node FROM __hl_ver_t WHERE k0 = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// The keys `verify --json` lists as differing in `table`.
fn differing_keys(json: &str, table: &str) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("verify --json is not one JSON object ({e}):\n{json}"));
    let tables = v["tables"].as_array().expect("tables");
    let t = tables
        .iter()
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("no table {table} in {json}"));
    t["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .map(|k| match &k["key"] {
                    serde_json::Value::Array(parts) => parts
                        .iter()
                        .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn verify_finds_rows_changed_behind_the_nodes_backs_and_repair_fixes_them() {
    let dir = TestDir::new("verify");
    let nats = NatsServer::start(dir.path());
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        app(&dir.join(&format!("{name}.db")), SCHEMA);
        // node c does not receive notes: it is left out of that table's comparison
        let receive = if name == "c" {
            "[table.notes]\nreplicate = false\n"
        } else {
            ""
        };
        let mut n = Node::start_ready(
            dir.path(),
            name,
            &format!("node_id = {}\n{receive}", i + 1),
            Some(&nats.url()),
        );
        n.wait_connected();
        nodes.push(n);
    }
    let dbs: Vec<&Path> = nodes.iter().map(|n| n.db.as_path()).collect();
    let (a, b, c) = (dbs[0], dbs[1], dbs[2]);
    let mut rows = String::new();
    for id in 1..=40 {
        rows += &format!("INSERT INTO t VALUES ({id}, 'a{id}');");
    }
    app(a, &rows);
    let mut rows = String::new();
    for id in 41..=80 {
        rows += &format!("INSERT INTO t VALUES ({id}, 'b{id}');");
    }
    rows += "INSERT INTO notes VALUES ('x', 'from b');";
    app(b, &rows);
    app(b, "DELETE FROM t WHERE id = 80;");
    wait_converged(&dbs, &["t"], T);
    wait_converged(&[a, b], &["notes"], T);
    wait_until("row 80 deleted on c", T, || {
        query_one(c, "SELECT count(*) FROM t WHERE id = 80").as_deref() == Some("integer=0")
    });

    let (code, out, err) = verify(&nodes[0].config, &[]);
    assert_eq!(
        code, 0,
        "in agreement before anything was injected:\n{out}\n{err}"
    );

    // (1) a replica loses a row and its version (origin a, lost on c)
    behind_the_back(
        c,
        "DELETE FROM t WHERE id = 7; DELETE FROM __hl_ver_t WHERE k0 = 7;",
    );
    // (2) the origin itself loses its own row (origin b, lost on b)
    behind_the_back(
        b,
        "DELETE FROM t WHERE id = 55; DELETE FROM __hl_ver_t WHERE k0 = 55;",
    );
    // (3) a node holds a live row older than the tombstone the others hold: the row deleted
    // on b comes back on c at the version it had before the delete
    let (tomb_ver, tomb_node) = version_of(c, 80);
    behind_the_back(
        c,
        &format!(
            "INSERT INTO t VALUES (80, 'b80'); UPDATE __hl_ver_t SET del = 0, ver = {}, node = {tomb_node} WHERE k0 = 80;",
            tomb_ver - 1
        ),
    );
    // a tombstone on one node and no version row at all on another compare equal
    behind_the_back(a, "DELETE FROM __hl_ver_t WHERE k0 = 80 AND del = 1;");

    let (code, out, err) = verify(&nodes[1].config, &["--json"]);
    assert_eq!(code, 1, "nodes differ:\n{out}\n{err}");
    let keys = differing_keys(&out, "t");
    assert_eq!(
        keys,
        ["55", "7", "80"].map(String::from).into_iter().collect(),
        "exactly the rows changed behind the nodes' backs:\n{out}"
    );
    assert!(
        differing_keys(&out, "notes").is_empty(),
        "notes agree:\n{out}"
    );
    let (code, text, _) = verify(&nodes[1].config, &[]);
    eprintln!("verify: harmonylite verify (after the injection):\n{text}");
    assert_eq!(code, 1);
    assert!(text.contains("DIFFER"), "the text says so:\n{text}");

    let (code, out, err) = verify(&nodes[2].config, &["--repair"]);
    assert_eq!(code, 0, "repaired:\n{out}\n{err}");
    // every node keeps what the check found and repaired, for status and /metrics
    for n in &nodes {
        let st: serde_json::Value = serde_json::from_str(&status_json(&n.config)).unwrap();
        let seen = &st["verify"];
        assert_eq!(seen["different_rows"], 3, "{}: {st}", n.name);
        assert!(
            seen["repaired_rows"].as_u64().is_some_and(|r| r >= 3),
            "{}: {st}",
            n.name
        );
    }
    wait_converged(&dbs, &["t"], T);
    for db in &dbs {
        assert_eq!(
            query_one(
                db,
                "SELECT group_concat(v) FROM t WHERE id IN (7, 55, 80) ORDER BY id"
            ),
            Some("text='a7,b55'".into()),
            "rows 7 and 55 back and 80 deleted on {}",
            db.display()
        );
    }
    let (code, out, err) = verify(&nodes[0].config, &[]);
    assert_eq!(code, 0, "in agreement after the repair:\n{out}\n{err}");

    assert_no_panic(&nodes);
}

#[test]
fn malformed_verify_requests_get_an_error_answer_and_bad_usage_exits_2() {
    let dir = TestDir::new("verify-bad");
    let nats = NatsServer::start(dir.path());
    app(&dir.join("a.db"), SCHEMA);
    let mut node = Node::start_ready(dir.path(), "a", "node_id = 3\n", Some(&nats.url()));
    node.wait_connected();
    let cfg = harmonylite::config::Config::load(&node.config).unwrap();
    let asker = harmonylite::transport::Asker::connect(&cfg, &nats.url()).unwrap();
    let subject = format!(
        "{}.{}",
        cfg.status_subject("3"),
        harmonylite::verify::SUBJECT_SUFFIX
    );
    // (body, what the error must say)
    for (body, says) in [
        (&b"not json"[..], "malformed verify request"),
        (b"{\"op\":\"drop table\"}", "unknown op \"drop table\""),
        (b"{\"op\":\"rows\",\"table\":\"t\"}", "buckets"),
        (b"\xff\x00\xfe", "malformed verify request"),
        (b"", "malformed verify request"),
    ] {
        let answers = asker
            .ask(&subject, body, Some(1), Duration::from_secs(5))
            .unwrap();
        assert_eq!(answers.len(), 1, "one answer to {body:?}");
        let a: serde_json::Value = serde_json::from_slice(&answers[0]).unwrap();
        let e = a["error"]
            .as_str()
            .unwrap_or_else(|| panic!("an error: {a}"));
        assert!(
            e.contains(says),
            "the error for {body:?} says {says:?}: {e}"
        );
    }
    assert!(node.is_running(), "the node answered and kept running");
    let (code, _, err) = verify(&node.config, &[]);
    assert_eq!(code, 0, "{err}");

    // a node on a build before verify answers status requests but not verify requests: it is
    // named, and the check does not claim agreement
    let nc = nats::connect(nats.url()).unwrap();
    let old = nc.subscribe(&cfg.status_subject("all")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let responder = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(m) = old.next_timeout(Duration::from_millis(100)) {
                let _ = m.respond(r#"{"node_id":99,"link_up":true}"#);
            }
        }
    });
    let (code, out, err) = verify(&node.config, &["--settle-ms", "1000"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    responder.join().unwrap();
    assert_eq!(code, 1, "an old node makes the check fail:\n{out}\n{err}");
    assert!(
        out.lines().any(|l| l.starts_with("node 99:")),
        "the old node is named:\n{out}"
    );

    let (code, _, err) = verify(&node.config, &["--bogus"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown argument \"--bogus\" for verify"),
        "{err}"
    );
    let out = run_bin(&["verify"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
}
