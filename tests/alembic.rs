//! The second real ORM: a SQLAlchemy 2.x application (`tests/alembic_app/`, unmodified, it
//! knows nothing about replication) whose Alembic migrations run in batch mode, which on SQLite
//! rebuilds a table (create `_alembic_tmp_t`, copy, drop `t`, rename; the CREATE commits on its
//! own, before the copy's transaction). Three nodes upgrade one after the other with an ORM
//! writer running on every node the whole time, through its own node's `alembic upgrade head`
//! too; the first node's sidecar is stopped during its upgrade, the others run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/alembic_app");

/// Where SQLAlchemy and Alembic are installed (scripts/tools.sh exports it).
fn alembic_path() -> String {
    std::env::var("HL_ALEMBIC_PATH")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/alembic").to_string())
}

fn python(db: &Path) -> Command {
    let mut c = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    c.env("PYTHONPATH", alembic_path()).env("LEDGER_DB", db);
    c
}

/// `alembic ARGS` on `db`, as an operator runs it on a node; its stdout.
fn alembic(db: &Path, args: &[&str]) -> String {
    let out = python(db)
        .args(["-m", "alembic", "-c", &format!("{APP}/alembic.ini")])
        .args(args)
        .output()
        .expect("run python3 -m alembic (are SQLAlchemy and Alembic installed? source scripts/tools.sh)");
    assert!(
        out.status.success(),
        "alembic {args:?} on {} failed ({}):\n{}{}",
        db.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The revision recorded in a node's own `alembic_version`.
fn revision(db: &Path) -> Vec<String> {
    dump_query(db, "SELECT version_num FROM alembic_version")
}

/// The ledger's ORM writer on one node (`tests/alembic_app/writer.py`), on the ids starting with
/// its prefix, until told to stop; then it says what it committed.
struct Writer {
    child: Child,
    stop: PathBuf,
    out: PathBuf,
    err: PathBuf,
}

impl Writer {
    fn start(dir: &Path, db: &Path, prefix: &str, version: u8, state: Option<&Path>) -> Writer {
        let stem = dir.join(format!("writer-{prefix}-v{version}"));
        let (stop, out, err) = (
            stem.with_extension("stop"),
            stem.with_extension("json"),
            stem.with_extension("err"),
        );
        let mut c = python(db);
        c.arg(format!("{APP}/writer.py"))
            .arg(db)
            .arg(prefix)
            .arg(&stop)
            .arg(&out)
            .args(state)
            .env("LEDGER_VERSION", version.to_string())
            .stderr(std::fs::File::create(&err).unwrap());
        let child = c.spawn().expect("start the ledger writer");
        Writer {
            child,
            stop,
            out,
            err,
        }
    }

    /// Stops the writer; returns the file with what it committed, and its content.
    fn finish(mut self) -> (PathBuf, Value) {
        std::fs::write(&self.stop, "").unwrap();
        let status = self.child.wait().unwrap();
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        assert!(status.success(), "the ledger writer failed: {err}");
        let text = std::fs::read_to_string(&self.out).unwrap();
        (self.out.clone(), serde_json::from_str(&text).unwrap())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The columns each table has at the head revision, after the id.
const COLUMNS: [(&str, &[&str]); 2] = [
    ("account", &["email", "name", "note"]),
    ("entry", &["account_id", "amount", "currency"]),
];

/// A JSON value of the writer's record as `render` shows the SQLite value.
fn rendered(v: &Value) -> String {
    match v {
        Value::Null => "null=NULL".into(),
        Value::String(s) => format!("text='{}'", s.replace('\'', "''")),
        Value::Number(n) if n.is_i64() => format!("integer={n}"),
        v => panic!("unexpected value in a writer's record: {v}"),
    }
}

/// What differs between a writer's record (its final, head-revision state) and the rows of its
/// prefix on `db`: one line per missing, differing or extra row. Empty when all is there, with
/// exact values.
fn differences(db: &Path, prefix: &str, record: &Value) -> Vec<String> {
    let mut diff = Vec::new();
    for (table, cols) in COLUMNS {
        let want: BTreeMap<String, String> = record[table]
            .as_object()
            .unwrap_or_else(|| panic!("no {table} in the record of {prefix}"))
            .iter()
            .map(|(id, row)| {
                let vals: Vec<String> = cols
                    .iter()
                    .map(|c| {
                        rendered(row.get(*c).unwrap_or_else(|| {
                            panic!("{table} {id} of {prefix}'s record lacks {c}")
                        }))
                    })
                    .collect();
                (id.clone(), vals.join("|"))
            })
            .collect();
        let sql = format!(
            "SELECT id, {} FROM {table} WHERE id LIKE '{prefix}-%' ORDER BY id",
            cols.join(", ")
        );
        let have: BTreeMap<String, String> = dump_query(db, &sql)
            .into_iter()
            .map(|r| {
                let (id, rest) = r.split_once('|').unwrap();
                let id = id.strip_prefix("text='").unwrap().trim_end_matches('\'');
                (id.to_string(), rest.to_string())
            })
            .collect();
        for (id, w) in &want {
            match have.get(id) {
                None => diff.push(format!(
                    "{}: {table} {id} is missing (committed: {w})",
                    db.display()
                )),
                Some(h) if h != w => diff.push(format!(
                    "{}: {table} {id} is {h}, committed: {w} ({})",
                    db.display(),
                    cols.join("|")
                )),
                _ => {}
            }
        }
        for (id, h) in &have {
            if !want.contains_key(id) {
                diff.push(format!(
                    "{}: {table} {id} is there ({h}) but its writer deleted or never committed it",
                    db.display()
                ));
            }
        }
    }
    diff
}

fn rows_of(db: &Path, prefix: &str) -> i64 {
    ["account", "entry"]
        .iter()
        .map(|t| {
            query_one(
                db,
                &format!("SELECT count(*) FROM {t} WHERE id LIKE '{prefix}-%'"),
            )
            .and_then(|s| s.strip_prefix("integer=").map(|n| n.parse().unwrap()))
            .unwrap_or(0)
        })
        .sum()
}

fn parked_changes(node: &Node) -> String {
    json_scalar(&status_json(&node.config), "parked_changes")
        .expect("parked_changes in status --json")
        .to_string()
}

/// Three nodes run the ledger with a writer each. One node after the other runs
/// `alembic upgrade head` (0002: entry gets `currency NOT NULL DEFAULT 'EUR'`, rebuilt;
/// 0003: account gets a nullable `note`; 0004: `account.email` String(50) -> String(200),
/// rebuilt: the parent table, with its unique email) while its own writer (the old release,
/// which the expand-only migrations keep working) and the other nodes' writers go on, then
/// swaps its writer for the new release's. The first node's sidecar is stopped during its
/// upgrade. At the end every committed write is on every node with its exact values, the nodes
/// are identical, foreign keys are clean, nothing is parked, and each node's `alembic_version`
/// is its own.
#[test]
fn an_alembic_app_upgrades_one_node_at_a_time_with_writers_running() {
    let started = Instant::now();
    let dir = TestDir::new("alembic-rolling");
    let nats = NatsServer::start(dir.path());
    let names = ["n1", "n2", "n3"];
    let dbs: Vec<PathBuf> = names.iter().map(|n| dir.join(&format!("{n}.db"))).collect();
    for db in &dbs {
        alembic(db, &["upgrade", "0001"]);
    }
    let mut nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::start(dir.path(), n, "", Some(&nats.url())))
        .collect();
    for n in &mut nodes {
        n.wait_ready();
        assert!(
            n.log()
                .contains("migration bookkeeping tables are not replicated tables=alembic_version"),
            "{}",
            n.log()
        );
    }
    let mut writers: Vec<Option<Writer>> = dbs
        .iter()
        .zip(names)
        .map(|(db, p)| Some(Writer::start(dir.path(), db, p, 1, None)))
        .collect();
    // every node holds some rows of every writer
    for db in &dbs {
        for p in names {
            wait_until(&format!("{} holds rows of {p}", db.display()), T, || {
                rows_of(db, p) >= 10
            });
        }
    }
    for i in 0..3 {
        let stopped = i == 0;
        if stopped {
            nodes[i].stop();
        }
        // the migration runs while this node's writer (release 1) goes on writing
        let before = rows_of(&dbs[i], names[i]);
        alembic(&dbs[i], &["upgrade", "head"]);
        for (j, db) in dbs.iter().enumerate() {
            let want = if j <= i { "0004" } else { "0001" };
            assert_eq!(
                revision(db),
                [format!("text='{want}'")],
                "{}'s alembic_version after {} upgraded (it is not replicated)",
                names[j],
                names[i]
            );
        }
        wait_until(
            &format!("{}'s writer goes on after the upgrade", names[i]),
            T,
            || rows_of(&dbs[i], names[i]) != before,
        );
        if stopped {
            nodes[i].restart_ready();
        }
        // the new release: it takes over from what the old one committed
        let (state, _) = writers[i].take().unwrap().finish();
        writers[i] = Some(Writer::start(
            dir.path(),
            &dbs[i],
            names[i],
            2,
            Some(&state),
        ));
        let now = rows_of(&dbs[i], names[i]);
        let err = writers[i].as_ref().unwrap().err.clone();
        wait_until_or(
            &format!("{}'s new writer writes", names[i]),
            T,
            || rows_of(&dbs[i], names[i]) >= now + 5,
            || {
                format!(
                    "rows {} (from {now}); the writer's stderr:\n{}\n{}'s status: {}",
                    rows_of(&dbs[i], names[i]),
                    std::fs::read_to_string(&err).unwrap_or_default(),
                    names[i],
                    status_json(&nodes[i].config)
                )
            },
        );
    }
    let records: Vec<Value> = writers
        .iter_mut()
        .map(|w| {
            let (_, r) = w.take().unwrap().finish();
            assert_eq!(r["version"], 2);
            r
        })
        .collect();
    eprintln!(
        "committed: {}",
        records
            .iter()
            .zip(names)
            .map(|(r, p)| format!(
                "{p}: {} accounts, {} entries",
                r["account"].as_object().unwrap().len(),
                r["entry"].as_object().unwrap().len()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // every committed write is on every node, with its exact values
    for (record, p) in records.iter().zip(names) {
        for db in &dbs {
            wait_until_or(
                &format!("{} holds what {p}'s writer committed", db.display()),
                T,
                || differences(db, p, record).is_empty(),
                || differences(db, p, record).join("\n"),
            );
        }
    }
    // the check sees a lost row and a wrong value
    let mut broken = records[0].clone();
    broken["account"]["n1-a-999999"] =
        serde_json::json!({"email": "lost@example.org", "name": "lost", "note": null});
    let first = broken["entry"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .expect("n1 committed entries")
        .clone();
    broken["entry"][&first]["amount"] = serde_json::json!(123_456_789);
    let d = differences(&dbs[1], "n1", &broken);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(d[0].contains("account n1-a-999999 is missing"), "{d:#?}");
    assert!(
        d[1].contains(&format!("entry {first} is ")) && d[1].contains("integer=123456789"),
        "{d:#?}"
    );
    // identical content (the writers' rows are all there: nothing else either)
    for table in ["account", "entry"] {
        let first = dump(&dbs[0], table);
        for (db, n) in dbs.iter().zip(names).skip(1) {
            let have = dump(db, table);
            let only_here: Vec<_> = have.iter().filter(|r| !first.contains(r)).collect();
            let only_n1: Vec<_> = first.iter().filter(|r| !have.contains(r)).collect();
            assert!(
                have == first,
                "{table} differs between n1 and {n}: only on {n}: {only_here:?}; only on n1: {only_n1:?}"
            );
        }
    }
    for (n, db) in nodes.iter().zip(&dbs) {
        assert_eq!(
            dump_query(db, "PRAGMA foreign_key_check"),
            Vec::<String>::new(),
            "{}: foreign key violations",
            n.name
        );
        wait_until_or(
            &format!("{} has nothing parked", n.name),
            T,
            || parked_changes(n) == "0",
            || {
                dump_query(
                    db,
                    "SELECT tbl, count(*), reason FROM __hl_parked GROUP BY tbl, reason",
                )
                .join("\n")
            },
        );
        assert_eq!(
            dump_query(db, "SELECT count(*) FROM __hl_parked"),
            ["integer=0"],
            "{}",
            n.name
        );
        assert!(!n.log().contains("is paused"), "{}: {}", n.name, n.log());
        // each node ran its own migrations: its own bookkeeping, its own schema, and the
        // capture triggers are back on both rebuilt tables
        assert_eq!(revision(db), ["text='0004'"], "{}", n.name);
        assert!(
            alembic(db, &["current"]).contains("0004 (head)"),
            "{}",
            n.name
        );
        assert_eq!(
            dump_query(
                db,
                "SELECT type FROM pragma_table_info('account') WHERE name = 'email'"
            ),
            ["text='VARCHAR(200)'"],
            "{}",
            n.name
        );
        assert_eq!(
            dump_query(
                db,
                "SELECT \"notnull\", dflt_value FROM pragma_table_info('entry') WHERE name = 'currency'"
            ),
            ["integer=1|text='''EUR'''"],
            "{}",
            n.name
        );
        assert_eq!(
            dump_query(
                db,
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '__hl_i_%' ORDER BY name"
            ),
            ["text='__hl_i_account'", "text='__hl_i_entry'"],
            "{}",
            n.name
        );
    }
    eprintln!(
        "alembic rolling upgrade: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
