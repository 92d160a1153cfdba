//! `hl-bench --snapshot [MIB]`: saving and restoring a large snapshot, with the peak RSS of the
//! processes that do it (issue 4 sets 32 MiB for a 1 GiB restore).
//!
//! A database of MIB MiB (rows of 4 KiB random bytes) is made; `harmonylite snapshot save`
//! uploads it; a node started without a database restores it (download, SHA-256, integrity
//! check, rename); `harmonylite snapshot restore` installs it again into a second, existing
//! database (the logical copy inside one transaction). Peak RSS is `VmHWM` of each process,
//! sampled every 50 ms until it exits.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::harness::{check_interrupted, status_kib, toml_str, Server};

/// Row payload of the generated database.
const ROW_BYTES: usize = 4096;

/// One process's run: wall time and peak RSS.
pub struct Run {
    pub secs: f64,
    pub peak_rss_kib: u64,
}

pub struct SnapshotResults {
    pub db_bytes: u64,
    pub snapshot_bytes: u64,
    pub save: Run,
    pub restore_new: Run,
    pub restore_into: Run,
}

fn config(dir: &Path, name: &str, db: &Path, url: &str, extra: &str) -> Result<PathBuf, String> {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "db_path = {}\npublish = false\n{extra}\n[nats]\nurls = [{}]\nstream_prefix = \"SNAPBENCH\"\nsubject_prefix = \"snapbench\"\n",
        toml_str(&db.display().to_string()),
        toml_str(url)
    );
    fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs `bin args` to its end (or until `done` says so, then SIGTERM), sampling its peak RSS.
fn run(
    bin: &Path,
    args: &[&str],
    log: &Path,
    done: impl Fn() -> bool,
    limit: Duration,
) -> Result<Run, String> {
    let out = File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pid = child.id();
    let mut peak = 0;
    let mut secs = None;
    loop {
        if let Ok(v) = status_kib(pid, "VmHWM") {
            peak = peak.max(v);
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if !status.success() {
                return Err(format!(
                    "{} {args:?} exited with {status}:\n{}",
                    bin.display(),
                    fs::read_to_string(log).unwrap_or_default()
                ));
            }
            break;
        }
        if secs.is_none() && done() {
            secs = Some(started.elapsed().as_secs_f64());
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if started.elapsed() > limit || check_interrupted().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{} {args:?} still running after {limit:?}",
                bin.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Run {
        secs: secs.unwrap_or_else(|| started.elapsed().as_secs_f64()),
        peak_rss_kib: peak,
    })
}

/// Fills `db` with about `mib` MiB of rows, in transactions of 1,000 rows.
fn make_db(db: &Path, mib: u64) -> Result<(), String> {
    let conn = Connection::open(db).map_err(|e| e.to_string())?;
    let rows = mib * 1024 * 1024 / ROW_BYTES as u64;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )
    .map_err(|e| e.to_string())?;
    let mut done = 0;
    while done < rows {
        check_interrupted()?;
        let n = (rows - done).min(1000);
        conn.execute(
            "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i < ?2) INSERT INTO t SELECT i, randomblob(?3) FROM s",
            rusqlite::params![done as i64 + 1, (done + n) as i64, ROW_BYTES as i64],
        )
        .map_err(|e| e.to_string())?;
        done += n;
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .map_err(|e| e.to_string())
}

fn log_has(log: &Path, what: &str) -> bool {
    fs::read_to_string(log)
        .map(|t| t.contains(what))
        .unwrap_or(false)
}

pub fn measure(
    dir: &Path,
    node_bin: &Path,
    server: &Server,
    mib: u64,
) -> Result<SnapshotResults, String> {
    let limit = Duration::from_secs(600 + mib);
    let source = dir.join("snap-source.db");
    eprintln!("hl-bench: making a {mib} MiB database");
    make_db(&source, mib)?;
    let db_bytes = fs::metadata(&source).map(|m| m.len()).unwrap_or(0);
    let cfg = config(dir, "snap-source", &source, &server.url, "")?;
    let cfg_s = cfg.to_string_lossy().to_string();

    eprintln!("hl-bench: harmonylite snapshot save");
    let save_log = dir.join("snap-save.log");
    let save = run(
        node_bin,
        &["snapshot", "save", "--config", &cfg_s],
        &save_log,
        || false,
        limit,
    )?;
    let snapshot_bytes = fs::read_to_string(&save_log)
        .unwrap_or_default()
        .split(" bytes)")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);

    eprintln!("hl-bench: a node without a database restores it");
    let fresh = dir.join("snap-fresh.db");
    let cfg = config(dir, "snap-fresh", &fresh, &server.url, "")?;
    let fresh_log = dir.join("snap-fresh.log");
    let restore_new = run(
        node_bin,
        &["--config", &cfg.to_string_lossy()],
        &fresh_log,
        || log_has(&fresh_log, "node ready"),
        limit,
    )?;
    if !log_has(&fresh_log, "database created from") {
        return Err(format!(
            "the fresh node did not restore:\n{}",
            fs::read_to_string(&fresh_log).unwrap_or_default()
        ));
    }
    fs::remove_file(&fresh).ok();

    eprintln!("hl-bench: harmonylite snapshot restore into an existing database");
    let live = dir.join("snap-live.db");
    let conn = Connection::open(&live).map_err(|e| e.to_string())?;
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL); INSERT INTO t VALUES (1, x'00');",
    )
    .map_err(|e| e.to_string())?;
    drop(conn);
    let cfg = config(dir, "snap-live", &live, &server.url, "")?;
    let restore_into = run(
        node_bin,
        &["snapshot", "restore", "--config", &cfg.to_string_lossy()],
        &dir.join("snap-live.log"),
        || false,
        limit,
    )?;
    Ok(SnapshotResults {
        db_bytes,
        snapshot_bytes,
        save,
        restore_new,
        restore_into,
    })
}

pub fn report(r: &SnapshotResults) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let line = |what: &str, run: &Run| {
        format!(
            "{what:<44} {:>8.1} s {:>8.1} MiB/s   peak RSS {:>7} KiB ({:.1} MiB)\n",
            run.secs,
            mib(r.snapshot_bytes) / run.secs.max(0.001),
            run.peak_rss_kib,
            run.peak_rss_kib as f64 / 1024.0
        )
    };
    let mut o = format!(
        "database {:.1} MiB, snapshot {:.1} MiB\n",
        mib(r.db_bytes),
        mib(r.snapshot_bytes)
    );
    o += &line("snapshot save (copy, strip, upload)", &r.save);
    o += &line("restore, no database (download, verify)", &r.restore_new);
    o += &line("snapshot restore into a live database", &r.restore_into);
    o
}

pub fn json(r: &SnapshotResults) -> String {
    format!(
        "{{\"snapshot_db_bytes\":{},\"snapshot_bytes\":{},\"snapshot_save_secs\":{:.2},\"snapshot_save_peak_rss_kib\":{},\
         \"restore_new_secs\":{:.2},\"restore_new_peak_rss_kib\":{},\"restore_into_secs\":{:.2},\"restore_into_peak_rss_kib\":{}}}",
        r.db_bytes,
        r.snapshot_bytes,
        r.save.secs,
        r.save.peak_rss_kib,
        r.restore_new.secs,
        r.restore_new.peak_rss_kib,
        r.restore_into.secs,
        r.restore_into.peak_rss_kib
    )
}
