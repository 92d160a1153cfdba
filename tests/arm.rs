//! The ARM builds replicate: for each static binary in `HL_ARM_BINS`, an emulated node (user-mode
//! qemu, picked by the file name's target suffix) and a native node share a loopback
//! nats-server; rows written on each side reach the other with exact values (integers at the
//! i64 limits, REAL bit patterns, UTF-8 text, blobs, NULL, a row larger than a frame) and the
//! two databases converge. The emulated node's peak RSS (VmHWM of the qemu process, so it
//! includes the emulator) is printed, and it must stop cleanly on SIGTERM.
//!
//! Environment:
//! - `HL_ARM_BINS`: colon-separated paths, named like cross/build.sh names them
//!   (`...-aarch64-unknown-linux-musl` runs under `qemu-aarch64-static`,
//!   `...-armv7-unknown-linux-musleabihf` under `qemu-arm-static`, `...-x86_64-unknown-linux-musl`
//!   natively). Unset: the test prints that it is skipped and passes.
//! - `HL_ARM_REQUIRED=1`: fail (instead of skipping) when `HL_ARM_BINS` is unset or empty.
//!
//! `bash cross/qemu-test.sh` builds the binaries and runs this with both set.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Emulated SQLite and startup are several times slower than native: generous deadlines.
const READY: Duration = Duration::from_secs(90);
const CONVERGE: Duration = Duration::from_secs(120);

const SCHEMA: &str = "CREATE TABLE v(id INTEGER PRIMARY KEY, x); \
                      CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)";

/// The binaries to test, or None (skip). Panics when they are required and absent.
fn arm_bins() -> Option<Vec<PathBuf>> {
    let required = std::env::var("HL_ARM_REQUIRED").as_deref() == Ok("1");
    let list = std::env::var("HL_ARM_BINS").unwrap_or_default();
    let bins: Vec<PathBuf> = list
        .split(':')
        .filter(|s| !s.trim().is_empty())
        .map(PathBuf::from)
        .collect();
    if bins.is_empty() {
        if required {
            panic!(
                "HL_ARM_REQUIRED=1 but HL_ARM_BINS is unset or empty: set HL_ARM_BINS to the \
                 colon-separated ARM binaries (dist/harmonylite-<target>), e.g. by running \
                 `bash cross/qemu-test.sh`, which builds them with cross/build.sh"
            );
        }
        // Straight to stderr, not through eprintln!, so the note shows without --nocapture.
        let _ = writeln!(
            std::io::stderr(),
            "arm: skipped (HL_ARM_BINS is not set; `bash cross/qemu-test.sh` builds the ARM \
             binaries and runs this test under qemu)"
        );
        return None;
    }
    for b in &bins {
        assert!(
            b.is_file(),
            "HL_ARM_BINS names {}, which does not exist (build it with `bash cross/build.sh`)",
            b.display()
        );
    }
    Some(bins)
}

/// The arch label and the program that runs `bin` (None: runs natively), from its file name.
fn runner(bin: &Path) -> (&'static str, Option<PathBuf>) {
    let name = bin.file_name().unwrap().to_string_lossy().into_owned();
    let (arch, qemu) = if name.ends_with("aarch64-unknown-linux-musl") {
        ("aarch64", Some("qemu-aarch64-static"))
    } else if name.ends_with("armv7-unknown-linux-musleabihf") {
        ("armv7", Some("qemu-arm-static"))
    } else if name.ends_with("x86_64-unknown-linux-musl") {
        ("x86_64", None)
    } else {
        panic!(
            "{}: cannot tell the architecture from the file name; it must end with \
             aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf or \
             x86_64-unknown-linux-musl (as cross/build.sh names its output)",
            bin.display()
        );
    };
    let Some(qemu) = qemu else {
        return (arch, None);
    };
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(qemu))
            .find(|p| p.is_file())
    });
    let found = found.unwrap_or_else(|| {
        panic!(
            "{qemu} is not on PATH, needed to run {}: install qemu-user-static \
             (Debian: apt-get install -y qemu-user-static)",
            bin.display()
        )
    });
    (arch, Some(found))
}

/// A node running an arbitrary binary through an optional runner (`[qemu] bin --config X`),
/// with the same config and log layout as `common::Node`.
struct EmuNode {
    name: String,
    log_path: PathBuf,
    child: Option<Child>,
}

impl EmuNode {
    fn start(dir: &Path, name: &str, runner: Option<&Path>, bin: &Path, nats_url: &str) -> EmuNode {
        let db = dir.join(format!("{name}.db"));
        let config = dir.join(format!("{name}.toml"));
        let log_path = dir.join(format!("{name}.log"));
        fs::write(&config, node_toml(&db, "", Some(nats_url))).unwrap();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = match runner {
            Some(r) => {
                let mut c = Command::new(r);
                c.arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {runner:?} {}: {e}", bin.display()));
        EmuNode {
            name: name.to_string(),
            log_path,
            child: Some(child),
        }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.log().contains("node ready") {
                return start.elapsed();
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited before `node ready` ({st}); log:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "{}: no `node ready` within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// (VmHWM, VmRSS) in kB of the process we spawned (qemu when emulated).
    fn memory_kb(&self) -> (u64, u64) {
        let pid = self.child.as_ref().unwrap().id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// SIGTERM and wait (the signal reaches the guest program through qemu).
    fn stop(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > timeout {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} did not exit within {timeout:?} after SIGTERM; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for EmuNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(POLL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- {} log {} (last 60 lines) ----\n{}",
                self.name,
                self.log_path.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// Values whose bits must survive 64-bit <-> 32-bit and the wire: (id, SQL literal, dump line).
fn value_rows(base: i64) -> Vec<(String, String)> {
    let vals: [(&str, &str); 16] = [
        ("-9223372036854775807 - 1", "integer=-9223372036854775808"),
        ("9223372036854775807", "integer=9223372036854775807"),
        ("4294967296", "integer=4294967296"),
        ("-2147483649", "integer=-2147483649"),
        ("9007199254740993", "integer=9007199254740993"),
        ("0.1", "real=0.1"),
        ("-0.0", "real=-0.0"),
        ("5e-324", "real=5e-324"),
        ("1.7976931348623157e308", "real=1.7976931348623157e308"),
        ("-2.2250738585072014e-308", "real=-2.2250738585072014e-308"),
        ("'héllo, 日本語, 😀'", "text='héllo, 日本語, 😀'"),
        ("'it''s' || char(10) || 'x'", "text='it''s\nx'"),
        ("''", "text=''"),
        ("x'00ff10'", "blob=X'00FF10'"),
        ("x''", "blob=X''"),
        ("NULL", "null=NULL"),
    ];
    vals.iter()
        .enumerate()
        .map(|(i, (sql, dumped))| {
            let id = base + i as i64;
            (format!("({id}, {sql})"), format!("integer={id}|{dumped}"))
        })
        .collect()
}

fn insert_sql(rows: &[(String, String)]) -> String {
    let vals: Vec<&str> = rows.iter().map(|(s, _)| s.as_str()).collect();
    format!("INSERT INTO v VALUES {}", vals.join(", "))
}

/// One emulated node and one native node on a fresh nats-server.
fn arm_and_native_converge(bin: &Path) {
    let (arch, qemu) = runner(bin);
    let how = match &qemu {
        Some(q) => format!("under {}", q.display()),
        None => "natively".to_string(),
    };
    eprintln!("arm: {arch}: {} {how}", bin.display());
    let t0 = Instant::now();

    let dir = TestDir::new(&format!("arm-{arch}"));
    let nats = NatsServer::start(dir.path());
    let emu_db = dir.join("emu.db");
    let nat_db = dir.join("native.db");
    app(&emu_db, SCHEMA);
    app(&nat_db, SCHEMA);

    let mut emu = EmuNode::start(dir.path(), "emu", qemu.as_deref(), bin, &nats.url());
    let mut native = Node::start(dir.path(), "native", "", Some(&nats.url()));
    let ready = emu.wait_ready(READY);
    native.wait_ready();
    let kind = if qemu.is_some() {
        "emulated"
    } else {
        "native musl"
    };
    eprintln!("arm: {arch}: {kind} node ready in {ready:.1?}");

    // Each side writes its own rows; both must hold both sets, exactly.
    let from_emu = value_rows(100);
    let from_native = value_rows(200);
    app(&emu_db, &insert_sql(&from_emu));
    app(&nat_db, &insert_sql(&from_native));
    let mut expected: Vec<String> = from_emu
        .iter()
        .chain(&from_native)
        .map(|(_, d)| d.clone())
        .collect();
    let exp: Vec<&str> = expected.iter().map(String::as_str).collect();
    wait_dump(&nat_db, "v", &exp, CONVERGE);
    wait_dump(&emu_db, "v", &exp, CONVERGE);
    eprintln!(
        "arm: {arch}: {} rows each way arrived exactly ({:.1?})",
        from_emu.len(),
        t0.elapsed()
    );

    // Updates and deletes crossing over: each side changes rows the other one wrote.
    app(
        &emu_db,
        "UPDATE v SET x = 'set on emu' WHERE id = 201; DELETE FROM v WHERE id = 202",
    );
    app(
        &nat_db,
        "UPDATE v SET x = 2.5 WHERE id = 101; DELETE FROM v WHERE id = 102",
    );
    expected.retain(|l| !l.starts_with("integer=102|") && !l.starts_with("integer=202|"));
    for l in expected.iter_mut() {
        if l.starts_with("integer=201|") {
            *l = "integer=201|text='set on emu'".to_string();
        } else if l.starts_with("integer=101|") {
            *l = "integer=101|real=2.5".to_string();
        }
    }
    let exp: Vec<&str> = expected.iter().map(String::as_str).collect();
    wait_dump(&nat_db, "v", &exp, CONVERGE);
    wait_dump(&emu_db, "v", &exp, CONVERGE);

    // Volume and size: 1,000 rows in one transaction on the emulated side, and a 600 KB row
    // (larger than a 256 KiB frame: sent as fragments) from each side.
    app(
        &emu_db,
        "WITH RECURSIVE c(i) AS (SELECT 1000 UNION ALL SELECT i + 1 FROM c WHERE i < 1999) \
         INSERT INTO v SELECT i, printf('row %d from emu', i) FROM c; \
         INSERT INTO big VALUES (1, randomblob(600000))",
    );
    app(&nat_db, "INSERT INTO big VALUES (2, randomblob(600000))");
    wait_converged(&[&emu_db, &nat_db], &["v", "big"], CONVERGE);
    assert_eq!(count(&nat_db, "v"), 30 + 1000);
    assert_eq!(count(&emu_db, "big"), 2);
    eprintln!("arm: {arch}: converged ({:.1?} since start)", t0.elapsed());

    let (hwm, rss) = emu.memory_kb();
    match &qemu {
        Some(q) => eprintln!(
            "arm: {arch}: emulated node peak RSS {hwm} kB (VmHWM of {}, so it includes the \
             emulator), current {rss} kB",
            q.file_name().unwrap().to_string_lossy()
        ),
        None => eprintln!("arm: {arch}: {kind} node peak RSS {hwm} kB (VmHWM), current {rss} kB"),
    }
    if let Some(pid) = native.pid() {
        if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:")) {
                eprintln!(
                    "arm: {arch}: native node (test build) {}",
                    l.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
        }
    }

    let st = emu.stop(Duration::from_secs(30));
    assert!(
        st.success(),
        "{arch} node did not exit 0 on SIGTERM ({st}); log:\n{}",
        emu.log()
    );
    let log = emu.log();
    assert!(
        !log.contains("panicked"),
        "{arch} node log has a panic:\n{log}"
    );
    eprintln!("arm: {arch}: stopped cleanly; total {:.1?}", t0.elapsed());
}

#[test]
fn arm_node_replicates_with_native_node() {
    let Some(bins) = arm_bins() else {
        return;
    };
    for bin in &bins {
        arm_and_native_converge(bin);
    }
}
