//! The application side of the tests: run tests/app.py, dump tables exactly, wait for
//! conditions and for convergence.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::POLL;

/// The application script.
pub const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/app.py");

// ---------------------------------------------------------------------------------------------
// The application

/// Runs `sql` on `db` through tests/app.py; Err(stderr) on failure.
pub fn app_result(db: &Path, sql: &str) -> Result<(), String> {
    let out = Command::new(python())
        .arg(APP)
        .arg(db)
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run python3 {APP}: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
    }
}

/// Runs `sql` on `db` through tests/app.py; panics with its stderr on failure.
pub fn app(db: &Path, sql: &str) {
    if let Err(e) = app_result(db, sql) {
        let shown: String = sql.chars().take(300).collect();
        panic!("app {} failed: {e}\nsql: {shown}", db.display());
    }
}

/// Runs a query through tests/app.py; one JSON line per row.
pub fn app_query(db: &Path, sql: &str) -> Vec<String> {
    let out = Command::new(python())
        .arg(APP)
        .arg(db)
        .arg("--query")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run python3 {APP}: {e}"));
    assert!(
        out.status.success(),
        "app query on {} failed: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

// ---------------------------------------------------------------------------------------------
// Dumps

/// Opens `db` read-only.
pub fn open_ro(db: &Path) -> Connection {
    let c = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {} read-only: {e}", db.display()));
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Renders one value exactly, with its storage class (SQLite's `typeof`), in SQL `quote()`
/// form: `integer=5`, `real=0.1`, `real=-0.0`, `text='it''s'`, `blob=X'00FF'`, `null=NULL`.
/// Reals use Rust's shortest round-trip form, which identifies every bit (and the sign of zero).
pub fn render(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "null=NULL".to_string(),
        ValueRef::Integer(i) => format!("integer={i}"),
        ValueRef::Real(f) => format!("real={f:?}"),
        ValueRef::Text(t) => format!("text='{}'", String::from_utf8_lossy(t).replace('\'', "''")),
        ValueRef::Blob(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
            format!("blob=X'{hex}'")
        }
    }
}

/// Rows of any query, each rendered as `render(col1)|render(col2)|...`.
pub fn dump_query(db: &Path, sql: &str) -> Vec<String> {
    let c = open_ro(db);
    dump_query_on(&c, sql).unwrap_or_else(|e| panic!("{}: {sql}: {e}", db.display()))
}

fn dump_query_on(c: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = c.prepare(sql)?;
    let ncols = st.column_count();
    let rows = st.query_map([], |r| {
        let mut parts = Vec::with_capacity(ncols);
        for i in 0..ncols {
            parts.push(render(r.get_ref(i)?));
        }
        Ok(parts.join("|"))
    })?;
    rows.collect()
}

/// Every row of a user table, ordered by its primary key (all pk columns, in key order; all
/// columns for a table without one), each rendered exactly (see `render`). Empty if the table
/// does not exist.
pub fn dump(db: &Path, table: &str) -> Vec<String> {
    let c = open_ro(db);
    let mut cols: Vec<(String, i64)> = Vec::new();
    {
        let mut st = c
            .prepare(&format!("PRAGMA table_info({})", quote_ident(table)))
            .unwrap();
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, i64>(5)?)))
            .unwrap();
        for row in rows {
            cols.push(row.unwrap());
        }
    }
    if cols.is_empty() {
        return Vec::new();
    }
    let mut pk: Vec<&(String, i64)> = cols.iter().filter(|(_, k)| *k > 0).collect();
    pk.sort_by_key(|(_, k)| *k);
    let order: Vec<String> = if pk.is_empty() {
        cols.iter().map(|(n, _)| quote_ident(n)).collect()
    } else {
        pk.iter().map(|(n, _)| quote_ident(n)).collect()
    };
    let list: Vec<String> = cols.iter().map(|(n, _)| quote_ident(n)).collect();
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        list.join(", "),
        quote_ident(table),
        order.join(", ")
    );
    dump_query_on(&c, &sql).unwrap_or_else(|e| panic!("dump {} {table}: {e}", db.display()))
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `SELECT count(*) FROM table`.
pub fn count(db: &Path, table: &str) -> i64 {
    let c = open_ro(db);
    c.query_row(
        &format!("SELECT count(*) FROM {}", quote_ident(table)),
        [],
        |r| r.get(0),
    )
    .unwrap_or_else(|e| panic!("count {} {table}: {e}", db.display()))
}

/// A single value of a query, rendered (`None` if no row).
pub fn query_one(db: &Path, sql: &str) -> Option<String> {
    dump_query(db, sql).into_iter().next()
}

// ---------------------------------------------------------------------------------------------
// Waits

/// Polls `cond` every `POLL` until true; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    wait_until_or(what, timeout, cond, String::new);
}

/// Like `wait_until`; `detail` is printed on timeout.
pub fn wait_until_or(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    detail: impl FnOnce() -> String,
) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting until {what}\n{}",
                detail()
            );
        }
        std::thread::sleep(POLL);
    }
}

fn dump_all(db: &Path, tables: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        out.extend(dump(db, t).into_iter().map(|l| format!("{t}: {l}")));
    }
    out
}

/// Waits until every DB holds identical dumps of `tables`; on timeout panics showing, for each
/// DB, the row count and the first lines that differ from the first DB.
pub fn wait_converged(dbs: &[&Path], tables: &[&str], timeout: Duration) {
    let start = Instant::now();
    loop {
        let dumps: Vec<Vec<String>> = dbs.iter().map(|d| dump_all(d, tables)).collect();
        if dumps.iter().all(|d| *d == dumps[0]) {
            return;
        }
        if start.elapsed() > timeout {
            let mut msg = format!("not converged after {timeout:?} (tables {tables:?}):\n");
            for (db, d) in dbs.iter().zip(&dumps) {
                msg.push_str(&format!("  {}: {} rows\n", db.display(), d.len()));
            }
            let base = &dumps[0];
            for (db, d) in dbs.iter().zip(&dumps).skip(1) {
                let only_base: Vec<&String> =
                    base.iter().filter(|l| !d.contains(l)).take(8).collect();
                let only_this: Vec<&String> =
                    d.iter().filter(|l| !base.contains(l)).take(8).collect();
                msg.push_str(&format!(
                    "  only in {}: {only_base:#?}\n  only in {}: {only_this:#?}\n",
                    dbs[0].display(),
                    db.display()
                ));
            }
            panic!("{msg}");
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `dump(db, table)` equals `expected` exactly, showing both on timeout.
pub fn wait_dump(db: &Path, table: &str, expected: &[&str], timeout: Duration) {
    let start = Instant::now();
    loop {
        let last = dump(db, table);
        if last == expected {
            return;
        }
        if start.elapsed() > timeout {
            panic!(
                "{} {table} after {timeout:?}:\n  got      {last:#?}\n  expected {expected:#?}",
                db.display()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `query_one(db, sql)` equals `expected`.
pub fn wait_query(db: &Path, sql: &str, expected: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let last = query_one(db, sql);
        if last.as_deref() == Some(expected) {
            return;
        }
        if start.elapsed() > timeout {
            panic!(
                "{}: `{sql}` after {timeout:?}: got {last:?}, expected {expected:?}",
                db.display()
            );
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// A long-lived application process

/// The long-lived application script (same SQLite use as `APP`, one process for many
/// transactions: for workloads that write faster than a process start per transaction).
pub const APP_SESSION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/app_session.py");

/// One `tests/app_session.py DB` process: `exec` sends a script and waits for its answer.
/// The process ends when the session is dropped (its stdin closes).
pub struct AppSession {
    db: std::path::PathBuf,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl AppSession {
    pub fn open(db: &Path) -> AppSession {
        let mut child = Command::new(python())
            .arg(APP_SESSION)
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run python3 {APP_SESSION}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        AppSession {
            db: db.to_path_buf(),
            child,
            stdin: Some(stdin),
            stdout,
        }
    }

    /// Runs `sql` (a script; one transaction when it says BEGIN ... COMMIT); Err(message) when
    /// SQLite refused it.
    pub fn exec_result(&mut self, sql: &str) -> Result<(), String> {
        use std::io::{BufRead, Write};
        let stdin = self.stdin.as_mut().expect("app session open");
        writeln!(stdin, "{}", json_str(sql))
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("app session {}: write: {e}", self.db.display()));
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("app session {}: read: {e}", self.db.display()));
        assert!(
            n > 0,
            "app session {} ended unexpectedly",
            self.db.display()
        );
        match line.trim_end() {
            "ok" => Ok(()),
            other => Err(other.strip_prefix("err ").unwrap_or(other).to_string()),
        }
    }

    /// Like `exec_result`; panics when the app's write failed.
    pub fn exec(&mut self, sql: &str) {
        if let Err(e) = self.exec_result(sql) {
            let shown: String = sql.chars().take(300).collect();
            panic!("app {} failed: {e}\nsql: {shown}", self.db.display());
        }
    }
}

impl Drop for AppSession {
    fn drop(&mut self) {
        // Closing stdin ends the script; kill it if it does not end promptly.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
