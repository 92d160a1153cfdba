//! A full disk is survived: the node whose database sits on a full file system reports it
//! (/health 503, /metrics `disk_full 1`, `status --fleet`), retries, and once space is freed
//! delivers every change in both directions as if nothing happened.
//!
//! Needs root (it mounts a 6 MiB tmpfs); elsewhere it says so and passes without running.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with one file, to the last byte it takes.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
    let _ = f.sync_all();
    path
}

fn sample(port: u16, series: &str) -> Option<f64> {
    let text = http_get(port, "/metrics")?.1;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_full_disk_is_reported_retried_and_loses_nothing() {
    let dir = TestDir::new("disk-full");
    let Some(small) = Tmpfs::mount(&dir.join("small"), "6m") else {
        eprintln!(
            "skipped: mounting a tmpfs needs root (run the tests as root to cover a full disk)"
        );
        return;
    };
    let nats = NatsServer::start(dir.path());
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, origin TEXT NOT NULL, v TEXT NOT NULL)";
    let small_db = small.0.join("n1.db");
    app(&small_db, schema);
    app(&dir.join("n2.db"), schema);
    let [http] = free_ports::<1>();
    // n1's config and log live outside the full file system; only its database is on it
    let mut n1 = Node::start_ready(
        dir.path(),
        "n1",
        &format!(
            "db_path = {}\n[prometheus]\nenable = true\nbind = \"127.0.0.1:{http}\"\n[health_check]\nenable = true\nbind = \"127.0.0.1:{http}\"\n",
            toml_str(&small_db.display().to_string())
        ),
        Some(&nats.url()),
    );
    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&nats.url()));
    n1.wait_connected();
    n2.wait_connected();
    app(&small_db, "INSERT INTO t VALUES (1, 'n1', 'before')");
    wait_until("n2 has n1's first row", T, || count(&n2.db, "t") == 1);

    let filler = fill(&small.0);
    // n2's application goes on writing: n1 must apply, and has no room
    let pad = "x".repeat(2000);
    for i in 0..50 {
        app(
            &n2.db,
            &format!("INSERT INTO t VALUES ({}, 'n2', '{pad}')", 1000 + i),
        );
    }
    // n1's application tries too: what it commits must travel, what fails is its own error
    let mut committed = vec![1];
    for i in 0..20 {
        let id = 2 + i;
        if app_result(
            &small_db,
            &format!("INSERT INTO t VALUES ({id}, 'n1', '{pad}')"),
        )
        .is_ok()
        {
            committed.push(id);
        }
    }
    wait_until_or(
        "n1 reports the full disk on /health and /metrics",
        T,
        || {
            http_get(http, "/health").is_some_and(|(c, b)| c == 503 && b.contains("disk full"))
                && sample(http, "harmonylite_disk_full") == Some(1.0)
        },
        || {
            format!(
                "health: {:?}\nlog:\n{}",
                http_get(http, "/health"),
                n1.current_log()
            )
        },
    );
    let fleet = run_bin(
        &["status", "--fleet", "--config", n2.config.to_str().unwrap()],
        T,
    );
    let fleet = String::from_utf8_lossy(&fleet.stdout);
    assert!(fleet.lines().any(|l| l.ends_with(", DISK FULL")), "{fleet}");
    assert!(
        n1.is_running(),
        "n1 exited on a full disk:\n{}",
        n1.current_log()
    );

    // space comes back: n1 resumes by itself, and both sides get everything
    std::fs::remove_file(&filler).unwrap();
    wait_until("n1 applied n2's 50 rows", T, || {
        query_one(&small_db, "SELECT count(*) FROM t WHERE origin = 'n2'").as_deref()
            == Some("integer=50")
    });
    wait_converged(&[small_db.as_path(), n2.db.as_path()], &["t"], T);
    let n1_rows = dump_query(&n2.db, "SELECT id FROM t WHERE origin = 'n1' ORDER BY id");
    let want: Vec<String> = committed.iter().map(|i| format!("integer={i}")).collect();
    assert_eq!(
        n1_rows, want,
        "every row n1's application committed reached n2"
    );
    wait_until("/health is 200 again", T, || {
        http_get(http, "/health").is_some_and(|(c, _)| c == 200)
    });
    assert_eq!(sample(http, "harmonylite_disk_full"), Some(0.0));
    assert!(
        n1.log().contains("ERROR") && n1.log().contains("full"),
        "{}",
        n1.log()
    );
    for n in [&mut n1, &mut n2] {
        assert!(n.stop().success(), "{}", n.name);
    }
}
