//! Compressed frames (`[replication_log] compress`): nodes that compress and a node that does
//! not, on one stream, converge with exact values (telemetry, non-ASCII text, REAL bits, blobs,
//! large rows that fragment, raw and compressed), and the compressing node publishes fewer bytes
//! for the same readings.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);
const HEAVY: Duration = Duration::from_secs(240);
const SCHEMA: &str = "CREATE TABLE readings(id INTEGER PRIMARY KEY, device TEXT NOT NULL, ts INTEGER NOT NULL, payload TEXT NOT NULL);
     CREATE TABLE v(id INTEGER PRIMARY KEY, x);
     CREATE TABLE big(id INTEGER PRIMARY KEY, data, note TEXT);";
const READINGS: i64 = 1000;

/// The value of the sample `series` in a Prometheus scrape.
fn sample(port: u16, series: &str) -> f64 {
    let text = http_get(port, "/metrics").expect("metrics").1;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// `n` telemetry rows from ids `first..`: 8 devices, one reading a second each, a JSON payload
/// of 10 numeric fields drifting as sensors do.
fn readings_sql(first: i64, n: i64, seed: u64) -> String {
    const FIELDS: [(&str, f64, f64); 10] = [
        ("temperature", 21.5, 0.05),
        ("humidity", 48.0, 0.2),
        ("pressure", 1013.2, 0.1),
        ("voltage", 229.8, 0.3),
        ("current", 3.42, 0.02),
        ("co2", 612.0, 2.0),
        ("pm25", 12.4, 0.3),
        ("lux", 340.0, 5.0),
        ("battery", 87.0, 0.01),
        ("rssi", -67.0, 1.0),
    ];
    let mut rng = Rng::new(seed);
    let mut state: Vec<Vec<f64>> = (0..8)
        .map(|_| FIELDS.iter().map(|f| f.1).collect())
        .collect();
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let d = (i % 8) as usize;
            let fields: Vec<String> = FIELDS
                .iter()
                .enumerate()
                .map(|(k, f)| {
                    let step = (rng.below(2001) as f64 - 1000.0) / 1000.0 * f.2;
                    state[d][k] += step;
                    format!("\"{}\":{:.2}", f.0, state[d][k])
                })
                .collect();
            format!(
                "({}, 'gw-{seed:04}-sensor-{d:02}', {}, '{{{}}}')",
                first + i,
                1_764_500_000_000 + i / 8 * 1000 + rng.below(40) as i64,
                fields.join(",")
            )
        })
        .collect();
    format!("INSERT INTO readings VALUES {}", rows.join(",\n"))
}

/// Column `data` of `big` row `id` as bytes (text or blob), and its storage class.
fn big(db: &Path, id: i64) -> (String, Vec<u8>) {
    open_ro(db)
        .query_row(
            "SELECT typeof(data), CAST(data AS BLOB) FROM big WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or_else(|e| panic!("{} big row {id}: {e}", db.display()))
}

fn outbox_empty(n: &Node) -> bool {
    json_scalar(&status_json(&n.config), "outbox_changes") == Some("0")
}

#[test]
fn compressing_and_raw_nodes_converge_and_compression_sends_fewer_bytes() {
    let dir = TestDir::new("compress");
    let nats = NatsServer::start(dir.path());
    let ports = free_ports::<3>();
    // n1 compresses, n2 does not, n3 takes the default (compress)
    let compress = ["compress = true\n", "compress = false\n", ""];
    let mut nodes = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].into_iter().enumerate() {
        app(&dir.join(&format!("{name}.db")), SCHEMA);
        let toml = format!(
            "node_id = {}\n[prometheus]\nenable = true\nbind = \"127.0.0.1:{}\"\n[replication_log]\n{}",
            i + 1,
            ports[i],
            compress[i]
        );
        let mut n = Node::start_ready(dir.path(), name, &toml, Some(&nats.url()));
        n.wait_connected();
        nodes.push(n);
    }
    let dbs: Vec<&Path> = nodes.iter().map(|n| n.db.as_path()).collect();
    let published = |i: usize| sample(ports[i], "harmonylite_published_bytes_total");

    // the same telemetry on the compressing and on the raw node: bytes sent for it
    let before = [published(0), published(1)];
    // in transactions of 250 rows (the app takes its SQL as one argument)
    for part in 0..READINGS / 250 {
        app(
            dbs[0],
            &readings_sql(1 + part * 250, 250, 17 + part as u64 * 2),
        );
        app(
            dbs[1],
            &readings_sql(100_001 + part * 250, 250, 18 + part as u64 * 2),
        );
    }
    wait_until_or(
        "every node holds both nodes' readings",
        T,
        || dbs.iter().all(|db| count(db, "readings") == 2 * READINGS),
        || {
            let counts: Vec<i64> = dbs.iter().map(|db| count(db, "readings")).collect();
            format!("readings per node: {counts:?}")
        },
    );
    wait_until("n1 and n2 publish everything", T, || {
        outbox_empty(&nodes[0]) && outbox_empty(&nodes[1])
    });
    let compressed = published(0) - before[0];
    let raw = published(1) - before[1];
    eprintln!(
        "wire bytes per telemetry row: compressed {:.1}, raw {:.1} ({:.1} %)",
        compressed / READINGS as f64,
        raw / READINGS as f64,
        100.0 * compressed / raw
    );
    assert!(compressed > 0.0 && raw > 0.0, "{compressed} {raw}");
    assert!(
        compressed * 2.0 <= raw,
        "the compressing node sent {compressed} bytes for {READINGS} readings, the raw one {raw}"
    );
    wait_converged(&dbs, &["readings"], T);

    // exact values both ways: from a raw node to compressing ones and back
    let values = |base: i64| {
        format!(
            "INSERT INTO v VALUES \
               ({}, -9223372036854775807 - 1), ({}, 0.1), ({}, -0.0), ({}, 5e-324), \
               ({}, 'héllo wörld, 日本語, ünïcödé ✓'), ({}, '😀🎉 👩‍👩‍👧 ' || hex(randomblob(64))), \
               ({}, x''), ({}, x'00ff10'), ({}, randomblob(3000)), ({}, NULL), \
               ({}, replace(hex(zeroblob(500)), '00', 'répété ')), ({}, zeroblob(5000))",
            base,
            base + 1,
            base + 2,
            base + 3,
            base + 4,
            base + 5,
            base + 6,
            base + 7,
            base + 8,
            base + 9,
            base + 10,
            base + 11
        )
    };
    app(dbs[0], &values(1));
    app(dbs[1], &values(101));
    app(dbs[2], &values(201));
    wait_converged(&dbs, &["v"], T);
    let classes = dump_query(
        dbs[1],
        "SELECT id, typeof(x) FROM v WHERE id < 100 ORDER BY id",
    );
    assert_eq!(classes.len(), 12, "{classes:#?}");
    assert_eq!(classes[2], "integer=3|text='real'");
    assert_eq!(classes[8], "integer=9|text='blob'");

    // large rows: compressible text from a compressing node (compressed, then fragmented),
    // random bytes from the raw node (fragmented raw), a very compressible row from n3 (fits
    // one frame once compressed), each followed by a small row
    app(
        dbs[0],
        "INSERT INTO big VALUES (1, hex(randomblob(1500000)) || ' ünïcödé ✓', 'compressed fragments')",
    );
    app(
        dbs[1],
        "INSERT INTO big VALUES (2, randomblob(1048576 + 3), 'raw fragments')",
    );
    app(
        dbs[2],
        "INSERT INTO big VALUES (3, replace(hex(zeroblob(200000)), '00', 'été ✓ '), 'one compressed frame')",
    );
    for (i, db) in dbs.iter().enumerate() {
        app(
            db,
            &format!("INSERT INTO big VALUES ({}, x'01', 'small')", 10 + i),
        );
    }
    for db in &dbs {
        wait_query(db, "SELECT count(*) FROM big", "integer=6", HEAVY);
    }
    for (id, writer, class, len) in [
        (1, 0, "text", 3_000_000 + 16),
        (2, 1, "blob", 1_048_579),
        (3, 2, "text", 2_000_000),
    ] {
        let want = big(dbs[writer], id);
        assert_eq!((want.0.as_str(), want.1.len()), (class, len), "row {id}");
        for db in &dbs {
            let got = big(db, id);
            assert!(
                got == want,
                "big row {id} on {} differs from the writer's ({} {} bytes)",
                db.display(),
                got.0,
                got.1.len()
            );
        }
    }
    wait_converged(&dbs, &["v", "readings"], T);
    for (i, &p) in ports.iter().enumerate() {
        assert_eq!(
            sample(p, "harmonylite_frames_undecodable_total"),
            0.0,
            "n{}",
            i + 1
        );
    }
}
