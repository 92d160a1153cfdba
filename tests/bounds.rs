//! Bounded storage (issue #15): parked changes stop at `max_parked_bytes` without losing
//! anything, and snapshot temp files left by a crash do not stay forever.
#![allow(deprecated)] // the nats crate, used here to read the stream

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn js(nats: &NatsServer) -> nats::jetstream::JetStream {
    nats::jetstream::new(nats::connect(nats.url()).expect("connect to nats-server"))
}

fn stream_last(nats: &NatsServer) -> u64 {
    js(nats)
        .stream_info("HLRS")
        .expect("stream HLRS")
        .state
        .last_seq
}

fn num(json: &str, key: &str) -> u64 {
    json_scalar(json, key)
        .unwrap_or_else(|| panic!("{key} in {json}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {json}: {e}"))
}

fn status_text(cfg: &Path) -> String {
    let out = run_bin(&["status", "--config", cfg.to_str().unwrap()], T);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// n2's application adds a column and writes rows n1 cannot apply yet; they park on n1 until
/// `max_parked_bytes`, where n1 stops taking in new changes (of any table) and says why. When
/// n1's application gets the column, everything parked and everything held back applies, and
/// both nodes hold exactly the same rows.
#[test]
fn parked_changes_hold_the_intake_at_their_bound_and_nothing_is_lost() {
    let dir = TestDir::new("bounds-parked");
    let nats = NatsServer::start(dir.path());
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); \
                  CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT)";
    let [metrics_port] = free_ports::<1>();
    for name in ["n1", "n2"] {
        app(&dir.join(&format!("{name}.db")), schema);
    }
    let mut n1 = Node::start(
        dir.path(),
        "n1",
        &format!(
            "max_parked_bytes = 4096\n[prometheus]\nenable = true\nbind = \"127.0.0.1:{metrics_port}\"\n"
        ),
        Some(&nats.url()),
    );
    let mut n2 = Node::start(dir.path(), "n2", "", Some(&nats.url()));
    n1.wait_ready();
    n2.wait_ready();
    let (d1, d2) = (n1.db.clone(), n2.db.clone());
    app(&d1, "INSERT INTO t VALUES (1, 'from n1')");
    wait_dump(&d2, "t", &["integer=1|text='from n1'"], T);

    // n2 upgrades first: 40 rows of about 100 bytes each n1 cannot apply (no column note)
    app(&d2, "ALTER TABLE t ADD COLUMN note TEXT");
    let rows: Vec<String> = (100..140)
        .map(|i| format!("({i}, 'row {i}', '{}')", "n".repeat(100)))
        .collect();
    app(&d2, &format!("INSERT INTO t VALUES {}", rows.join(", ")));
    n1.wait_log("parked changes reached max_parked_bytes=4096", T);
    let log = n1.log();
    let line = log
        .lines()
        .find(|l| l.contains("parked changes reached max_parked_bytes"))
        .unwrap();
    assert!(
        line.contains("ERROR")
            && line.contains("tables=t")
            && line.contains("column note of table t does not exist here yet")
            && line.contains("nothing is dropped")
            && line.contains("upgrade this node's application schema")
            && line.contains("harmonylite schema accept"),
        "{line}"
    );
    let st = status_json(&n1.config);
    assert_eq!(json_scalar(&st, "intake_held"), Some("true"), "{st}");
    assert!(num(&st, "parked_bytes") >= 4096, "{st}");
    assert!(num(&st, "parked_changes") >= 40, "{st}");
    assert_ne!(
        json_scalar(&st, "parked_oldest_age_ms"),
        Some("null"),
        "{st}"
    );
    let text = status_text(&n1.config);
    assert!(text.contains("INTAKE HELD:"), "{text}");
    assert!(text.contains(" bytes, oldest "), "{text}");
    let (code, metrics) = http_get(metrics_port, "/metrics").expect("metrics answer");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("\nharmonylite_intake_held 1\n"),
        "{metrics}"
    );
    let parked_bytes = num(&st, "parked_bytes");
    assert!(
        metrics.contains(&format!("\nharmonylite_parked_bytes {parked_bytes}\n")),
        "{metrics}"
    );
    let held_at = num(&st, "stream_position");
    eprintln!(
        "held with {} changes parked in {parked_bytes} bytes",
        num(&st, "parked_changes")
    );

    // held: a later change of another table reaches the stream but not n1
    app(&d2, "INSERT INTO u VALUES (1, 'after the hold')");
    wait_until("n2 publishes its change of u", T, || {
        stream_last(&nats) > held_at && num(&status_json(&n2.config), "outbox_changes") == 0
    });
    std::thread::sleep(Duration::from_secs(2)); // many poll intervals (50 ms) of n1
    assert!(dump(&d1, "u").is_empty(), "n1 applied u while held");
    let st = status_json(&n1.config);
    assert_eq!(num(&st, "stream_position"), held_at, "{st}");
    assert_eq!(json_scalar(&st, "intake_held"), Some("true"), "{st}");

    // n1's application upgrades: the parked changes apply, the intake resumes
    app(&d1, "ALTER TABLE t ADD COLUMN note TEXT");
    n1.wait_log("taking in new changes again", T);
    wait_dump(&d1, "u", &["integer=1|text='after the hold'"], T);
    let expected = dump(&d2, "t");
    assert_eq!(expected.len(), 41);
    wait_dump(
        &d1,
        "t",
        &expected.iter().map(String::as_str).collect::<Vec<_>>(),
        T,
    );
    wait_converged(&[&d1, &d2], &["t", "u"], T);
    let st = status_json(&n1.config);
    assert_eq!(json_scalar(&st, "intake_held"), Some("false"), "{st}");
    assert_eq!(num(&st, "parked_changes"), 0, "{st}");
    assert_eq!(num(&st, "parked_bytes"), 0, "{st}");
    assert_eq!(json_scalar(&st, "parked_oldest_age_ms"), Some("null"));
    for n in [&mut n1, &mut n2] {
        assert!(n.stop().success());
    }
}

/// `harmonylite snapshot save` for `node`; returns the current snapshot's nuid after it.
fn save_snapshot(nats: &NatsServer, node: &Node) -> String {
    let out = run_bin(
        &[
            "snapshot",
            "save",
            "--config",
            node.config.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains("saved snapshot"),
        "snapshot save: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let kv = js(nats)
        .key_value("HLRS-snapshots")
        .expect("snapshot bucket");
    let v = String::from_utf8(kv.get("latest").unwrap().expect("a snapshot pointer")).unwrap();
    v.split(';')
        .find_map(|f| f.strip_prefix("nuid="))
        .unwrap_or_else(|| panic!("nuid in {v}"))
        .to_string()
}

fn beside(db: &Path, suffix: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}{suffix}", db.display()))
}

/// What `kill -9` during a snapshot save or download leaves beside the database goes at the
/// next start; a partial download with its resume state stays while its snapshot is the
/// current one (the next restore resumes it) and goes once another snapshot replaced it.
#[test]
fn snapshot_temp_files_left_by_a_crash_are_removed() {
    let dir = TestDir::new("bounds-snapshot-temp");
    let nats = NatsServer::start(dir.path());
    let db = dir.join("n1.db");
    app(&db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    let junk = vec![7u8; 1 << 20];
    let leftovers = [
        ".hl-snapshot-save",
        ".hl-snapshot-save-journal",
        ".hl-snapshot-download",
        ".hl-snapshot-download.state.tmp",
    ];
    for suffix in leftovers {
        std::fs::write(beside(&db, suffix), &junk).unwrap();
    }
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&nats.url()));
    for suffix in leftovers {
        assert!(
            !beside(&db, suffix).exists(),
            "{suffix} is still there after the start"
        );
    }
    assert!(
        n1.log()
            .contains("removed a snapshot temp file left by an interrupted save or download"),
        "{}",
        n1.log()
    );
    n1.wait_connected();
    app(&db, "INSERT INTO t VALUES (1, 'one')");
    let current = save_snapshot(&nats, &n1);

    // a download of the current snapshot cut short: kept across a start for its resume
    n1.stop();
    let part = beside(&db, ".hl-snapshot-download");
    let state = beside(&db, ".hl-snapshot-download.state");
    std::fs::write(&part, &junk).unwrap();
    std::fs::write(
        &state,
        format!("nuid={current}\ndigest=SHA-256=x\nbytes=0\nchunks=0\nnext_seq=1\n"),
    )
    .unwrap();
    n1.restart_ready();
    n1.wait_connected();
    std::thread::sleep(Duration::from_secs(2)); // the look after connecting is done by now
    assert!(
        part.exists() && state.exists(),
        "the resumable download went"
    );

    // another snapshot becomes the current one: the partial download can never resume
    app(&db, "INSERT INTO t VALUES (2, 'two')");
    let newer = save_snapshot(&nats, &n1);
    assert_ne!(newer, current);
    n1.stop();
    n1.restart_ready();
    n1.wait_log("removed a partial snapshot download", T);
    assert!(!part.exists() && !state.exists());
    assert!(n1.stop().success());
}
