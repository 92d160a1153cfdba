//! Unit tests of `apply`: last-writer-wins, tombstones, cursor, echo, parking, fragments.

use super::*;
use crate::config::Config;
use crate::frame::FrameBuilder;

struct Db {
    path: std::path::PathBuf,
    cfg: Config,
    conn: Connection,
    schema: Schema,
    hlc: Hlc,
}

const ME: u64 = 5;

fn setup(name: &str) -> Db {
    setup_with(name, "")
}

/// `t` and the tables `more` creates.
fn setup_with(name: &str, more: &str) -> Db {
    setup_config(name, more, "")
}

/// Like [`setup_with`], with `toml` added to the node's config.
fn setup_config(name: &str, more: &str, toml: &str) -> Db {
    let path = std::env::temp_dir().join(format!("hl-apply-{name}-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    Connection::open(&path)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); {more}"
        ))
        .unwrap();
    let mut conn = db::open(&path).unwrap();
    prepare(&conn).unwrap();
    let cfg = Config::parse(&format!(
        "db_path = {:?}\n{toml}\n[nats]\nsubject_prefix = \"x\"\n",
        path.display().to_string()
    ))
    .unwrap();
    let schema = capture::scan(&conn, &cfg).unwrap();
    capture::install(&mut conn, &schema, &Default::default(), ME).unwrap();
    Db {
        path,
        cfg,
        conn,
        schema,
        hlc: Hlc::new(0),
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.path.display()));
        }
    }
}

fn header() -> TableHeader {
    TableHeader {
        name: "t".into(),
        columns: vec!["id".into(), "v".into()],
        pk: vec![0],
    }
}

fn msg(seq: u64, origin: u64, changes: &[(u64, Op)]) -> Incoming {
    let mut b = FrameBuilder::new(origin, 1 << 16);
    for (v, op) in changes {
        b.push(&header(), *v, op.clone());
    }
    Incoming {
        seq,
        subject: format!("x.{origin}"), // the single-subject layout: any tables
        data: b.finish(),
    }
}

fn up(id: i64, v: &str) -> Op {
    Op::Upsert(vec![Value::Integer(id), Value::Text(v.as_bytes().to_vec())])
}

fn del(id: i64) -> Op {
    Op::Delete(vec![Value::Integer(id)])
}

fn rows(d: &Db) -> Vec<(i64, String)> {
    d.conn
        .prepare("SELECT id, v FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn apply(d: &mut Db, m: Incoming) -> ApplyStats {
    apply_batch(&mut d.conn, &d.cfg, &d.schema, &mut d.hlc, ME, &[m]).unwrap()
}

#[test]
fn newer_version_wins_older_is_ignored() {
    let mut d = setup("lww");
    apply(&mut d, msg(1, 7, &[(100, up(1, "a"))]));
    let s = apply(&mut d, msg(2, 8, &[(90, up(1, "older"))]));
    assert_eq!((s.applied, s.stale), (0, 1));
    assert_eq!(rows(&d), vec![(1, "a".to_string())]);
    apply(&mut d, msg(3, 8, &[(110, up(1, "newer"))]));
    assert_eq!(rows(&d), vec![(1, "newer".to_string())]);
}

#[test]
fn equal_versions_are_broken_by_node_id() {
    let mut d = setup("tie");
    apply(&mut d, msg(1, 7, &[(100, up(1, "from7"))]));
    apply(&mut d, msg(2, 3, &[(100, up(1, "from3"))]));
    assert_eq!(
        rows(&d),
        vec![(1, "from7".to_string())],
        "lower node id loses the tie"
    );
    apply(&mut d, msg(3, 9, &[(100, up(1, "from9"))]));
    assert_eq!(
        rows(&d),
        vec![(1, "from9".to_string())],
        "higher node id wins the tie"
    );
}

#[test]
fn delete_leaves_a_tombstone_that_beats_older_updates() {
    let mut d = setup("tomb");
    apply(&mut d, msg(1, 7, &[(100, up(1, "a"))]));
    apply(&mut d, msg(2, 7, &[(200, del(1))]));
    assert!(rows(&d).is_empty());
    let s = apply(&mut d, msg(3, 8, &[(150, up(1, "late"))]));
    assert_eq!(s.stale, 1);
    assert!(
        rows(&d).is_empty(),
        "an older update must not resurrect a deleted row"
    );
    apply(&mut d, msg(4, 8, &[(250, up(1, "recreated"))]));
    assert_eq!(rows(&d), vec![(1, "recreated".to_string())]);
}

#[test]
fn replayed_frames_and_own_frames_are_passed_over() {
    let mut d = setup("cursor");
    apply(&mut d, msg(1, 7, &[(100, up(1, "a"))]));
    // the app changes the row locally, then the same stream message arrives again
    d.conn
        .execute("UPDATE t SET v = 'local' WHERE id = 1", [])
        .unwrap();
    let s = apply(&mut d, msg(1, 7, &[(100, up(1, "a"))]));
    assert_eq!(
        s.frames, 0,
        "a sequence at or below the cursor is not applied twice"
    );
    let s = apply(&mut d, msg(2, ME, &[(u64::MAX >> 2, up(1, "mine"))]));
    assert_eq!(s.own, 1);
    assert_eq!(rows(&d), vec![(1, "local".to_string())]);
}

#[test]
fn local_write_not_yet_stamped_is_stamped_before_an_older_remote_change() {
    let mut d = setup("cba");
    // the application writes; the sidecar has not polled yet
    d.conn
        .execute("INSERT INTO t VALUES (1, 'local')", [])
        .unwrap();
    // a remote change to the same row with a version from the past
    let s = apply(&mut d, msg(1, 7, &[(1 << 16, up(1, "remote-old"))]));
    assert_eq!((s.stamped, s.stale), (1, 1));
    assert_eq!(rows(&d), vec![(1, "local".to_string())]);
    // the local write is still pending publication, and the apply left no echo in the log
    assert_eq!(capture::outbox_len(&d.conn, &d.schema).unwrap(), 1);
    let logged: i64 = d
        .conn
        .query_row("SELECT count(*) FROM \"__hl_log_t\"", [], |r| r.get(0))
        .unwrap();
    assert_eq!(logged, 0);
}

#[test]
fn applied_changes_are_not_captured_again() {
    let mut d = setup("echo");
    apply(
        &mut d,
        msg(1, 7, &[(100, up(1, "a")), (101, up(2, "b")), (102, del(1))]),
    );
    assert_eq!(rows(&d), vec![(2, "b".to_string())]);
    assert_eq!(capture::outbox_len(&d.conn, &d.schema).unwrap(), 0);
}

#[test]
fn unknown_tables_and_columns_are_parked_not_dropped() {
    let mut d = setup("park");
    let mut b = FrameBuilder::new(7, 1 << 16);
    let other = TableHeader {
        name: "missing".into(),
        columns: vec!["id".into()],
        pk: vec![0],
    };
    b.push(&other, 100, Op::Upsert(vec![Value::Integer(1)]));
    let wide = TableHeader {
        name: "t".into(),
        columns: vec!["id".into(), "v".into(), "extra".into()],
        pk: vec![0],
    };
    b.push(
        &wide,
        101,
        Op::Upsert(vec![Value::Integer(1), Value::Null, Value::Integer(3)]),
    );
    let s = apply(
        &mut d,
        Incoming {
            seq: 1,
            subject: "x.7".into(),
            data: b.finish(),
        },
    );
    assert_eq!(s.parked, 2);
    assert_eq!(parked_len(&d.conn).unwrap(), 2);
    let size = parked_size(&d.conn).unwrap();
    let frames: i64 = d
        .conn
        .query_row(
            &format!("SELECT sum(length(frame)) FROM {PARKED_TABLE}"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((size.changes, size.bytes), (2, frames as u64));
    assert_eq!(
        s.parked_bytes, size.bytes,
        "a batch reports the bytes it parked"
    );
    let parked_at = size.oldest_ms.expect("parked changes have their park time");
    // the first park time stays through a retry that parks a change again
    d.conn
        .execute(&format!("UPDATE {PARKED_TABLE} SET at = at - 60000"), [])
        .unwrap();
    assert_eq!(
        retry_parked(&mut d.conn, &d.schema, &mut d.hlc, ME).unwrap(),
        (0, 2)
    );
    let size = parked_size(&d.conn).unwrap();
    assert_eq!((size.changes, size.oldest_ms), (2, Some(parked_at - 60000)));
    // once the column exists, the parked change applies
    d.conn
        .execute_batch("ALTER TABLE t ADD COLUMN extra")
        .unwrap();
    let cfg = Config::parse(&format!("db_path = {:?}", d.path.display().to_string())).unwrap();
    d.schema = capture::scan(&d.conn, &cfg).unwrap();
    let (done, left) = retry_parked(&mut d.conn, &d.schema, &mut d.hlc, ME).unwrap();
    assert_eq!((done, left), (1, 1));
    let extra: i64 = d
        .conn
        .query_row("SELECT extra FROM t WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(extra, 3);
}

#[test]
fn a_sender_on_an_older_schema_sets_newer_columns_to_their_defaults() {
    let mut d = setup("older");
    d.conn
        .execute_batch("ALTER TABLE t ADD COLUMN qty INTEGER NOT NULL DEFAULT 4")
        .unwrap();
    let cfg = Config::parse(&format!("db_path = {:?}", d.path.display().to_string())).unwrap();
    d.schema = capture::scan(&d.conn, &cfg).unwrap();
    let wide = TableHeader {
        name: "t".into(),
        columns: vec!["id".into(), "v".into(), "qty".into()],
        pk: vec![0],
    };
    let mut b = FrameBuilder::new(7, 1 << 16);
    b.push(
        &wide,
        100,
        Op::Upsert(vec![
            Value::Integer(1),
            Value::Text(b"a".to_vec()),
            Value::Integer(9),
        ]),
    );
    apply(
        &mut d,
        Incoming {
            seq: 1,
            subject: "x.7".into(),
            data: b.finish(),
        },
    );
    // a newer row image from a node without qty: the whole row is its image, qty its default
    apply(&mut d, msg(2, 8, &[(110, up(1, "b")), (111, up(2, "c"))]));
    let got: Vec<(i64, String, i64)> = d
        .conn
        .prepare("SELECT id, v, qty FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, vec![(1, "b".to_string(), 4), (2, "c".to_string(), 4)]);
}

#[test]
fn a_not_null_column_without_default_takes_its_zero_where_a_sender_lacks_it() {
    let mut d = setup("zero");
    apply(&mut d, msg(1, 7, &[(100, up(1, "a"))]));
    // Django's AddField(default=5): a rebuild, the default applied in Python only
    d.conn
        .execute_batch(
            "CREATE TABLE new__t(id INTEGER PRIMARY KEY, v TEXT, qty INTEGER NOT NULL, r REAL NOT NULL, s varchar(9) NOT NULL, b BLOB NOT NULL, \
             d INTEGER NOT NULL DEFAULT 3); INSERT INTO new__t SELECT id, v, 5, 5.5, 'x', x'01', 4 FROM t; DROP TABLE t; ALTER TABLE new__t RENAME TO t;",
        )
        .unwrap();
    let cfg = Config::parse(&format!("db_path = {:?}", d.path.display().to_string())).unwrap();
    d.schema = capture::scan(&d.conn, &cfg).unwrap();
    // an older node updates row 1 and inserts row 2: both apply, nothing is parked
    let s = apply(&mut d, msg(2, 8, &[(110, up(1, "b")), (111, up(2, "c"))]));
    assert_eq!((s.applied, s.parked), (2, 0));
    let got: Vec<String> = d
        .conn
        .prepare("SELECT id, v, qty, r, s, quote(b), d FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{:?}|{:?}|{}|{}|{}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, rusqlite::types::Value>(2)?,
                r.get::<_, rusqlite::types::Value>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        got,
        vec![
            "1|b|Integer(0)|Real(0.0)||X''|3",
            "2|c|Integer(0)|Real(0.0)||X''|3"
        ]
    );
}

#[test]
fn paused_tables_park_and_accepted_dropped_columns_are_ignored() {
    let mut d = setup("ignored");
    d.schema
        .paused
        .insert("t".into(), "column extra was dropped".into());
    let wide = TableHeader {
        name: "t".into(),
        columns: vec!["id".into(), "extra".into(), "v".into()],
        pk: vec![0],
    };
    let mut b = FrameBuilder::new(7, 1 << 16);
    b.push(
        &wide,
        100,
        Op::Upsert(vec![
            Value::Integer(1),
            Value::Integer(3),
            Value::Text(b"a".to_vec()),
        ]),
    );
    let s = apply(
        &mut d,
        Incoming {
            seq: 1,
            subject: "x.7".into(),
            data: b.finish(),
        },
    );
    assert_eq!((s.applied, s.parked), (0, 1));
    d.schema.paused.clear();
    d.schema.get_mut("t").unwrap().ignored = vec!["extra".into()];
    let (done, left) = retry_parked(&mut d.conn, &d.schema, &mut d.hlc, ME).unwrap();
    assert_eq!((done, left), (1, 0));
    assert_eq!(rows(&d), vec![(1, "a".to_string())]);
}

fn pieces(origin: u64, id: u64, v: &str) -> Vec<Vec<u8>> {
    let whole = msg(0, origin, &[(id, up(id as i64, v))]).data;
    let parts = frame::fragment(origin, id, &whole, 128, frame::VERSION);
    assert_eq!(
        parts.len(),
        4,
        "test premise: a 300-byte change in 128-byte frames"
    );
    parts
}

fn frag_rows(d: &Db) -> i64 {
    d.conn
        .query_row(&format!("SELECT count(*) FROM {FRAGMENT_TABLE}"), [], |r| {
            r.get(0)
        })
        .unwrap()
}

#[test]
fn a_stray_fragment_of_another_count_is_not_read() {
    let mut d = setup("frag-count");
    let big = "x".repeat(300);
    let parts = pieces(7, 100, &big);
    // a leftover piece with the same (origin, id) but another count, past the set's indexes
    d.conn
        .execute(&format!("INSERT INTO {FRAGMENT_TABLE}(origin, id, idx, count, data, seq) VALUES (7, 100, 4, 9, x'00', 1)"), [])
        .unwrap();
    for (i, p) in parts.iter().enumerate() {
        let s = apply(
            &mut d,
            Incoming {
                seq: 2 + i as u64,
                subject: "x.7".into(),
                data: p.clone(),
            },
        );
        assert_eq!(s.undecodable, 0);
    }
    assert_eq!(rows(&d), vec![(100, big)]);
    assert_eq!(
        frag_rows(&d),
        0,
        "the set and the stray piece are gone once the set is read"
    );
}

#[test]
fn incomplete_fragment_sets_far_behind_the_cursor_are_deleted() {
    let mut d = setup("frag-horizon");
    let a = pieces(7, 100, &"a".repeat(300));
    let b = pieces(7, 200, &"b".repeat(300));
    // set a loses its other pieces (a hole in the stream)
    apply(
        &mut d,
        Incoming {
            seq: 5,
            subject: "x.7".into(),
            data: a[0].clone(),
        },
    );
    assert_eq!(frag_rows(&d), 1);
    let s = apply(
        &mut d,
        Incoming {
            seq: 4 + FRAGMENT_HORIZON_SEQS,
            subject: "x.7".into(),
            data: b[0].clone(),
        },
    );
    assert_eq!(
        (frag_rows(&d), s.fragment_sets_dropped),
        (2, 0),
        "a's piece is one message short of the horizon: kept"
    );
    let s = apply(
        &mut d,
        Incoming {
            seq: 5 + FRAGMENT_HORIZON_SEQS,
            subject: "x.7".into(),
            data: b[1].clone(),
        },
    );
    assert_eq!(
        (frag_rows(&d), s.fragment_sets_dropped),
        (2, 1),
        "a's piece is at the horizon: deleted and counted as one set; b's two pieces stay"
    );
    assert_eq!(
        prune_fragments(&d.conn, 5 + FRAGMENT_HORIZON_SEQS).unwrap(),
        0,
        "nothing left to drop: nothing counted again"
    );
    for (i, p) in b[2..].iter().enumerate() {
        apply(
            &mut d,
            Incoming {
                seq: 6 + FRAGMENT_HORIZON_SEQS + i as u64,
                subject: "x.7".into(),
                data: p.clone(),
            },
        );
    }
    assert_eq!(rows(&d), vec![(200, "b".repeat(300))]);
    assert_eq!(frag_rows(&d), 0);
}

#[test]
fn own_frames_apply_only_up_to_the_rebuilt_mark() {
    let mut d = setup("own-replay");
    db::set_meta(&d.conn, OWN_REPLAY_KEY, 2).unwrap();
    let s = apply(&mut d, msg(1, ME, &[(100, up(1, "before"))]));
    assert_eq!((s.applied, s.own), (1, 0));
    assert_eq!(
        d.hlc.last(),
        100,
        "the version of our own earlier write is observed"
    );
    apply(&mut d, msg(2, ME, &[(110, up(2, "before too"))]));
    let s = apply(&mut d, msg(3, ME, &[(120, up(3, "this life"))]));
    assert_eq!((s.applied, s.own), (0, 1));
    assert_eq!(
        rows(&d),
        vec![(1, "before".to_string()), (2, "before too".to_string())]
    );
}

#[test]
fn deletes_from_a_newer_schema_apply_at_once() {
    let mut d = setup("newer-delete");
    apply(&mut d, msg(1, 7, &[(100, up(1, "a")), (101, up(2, "b"))]));
    let wide = TableHeader {
        name: "t".into(),
        columns: vec!["id".into(), "v".into(), "extra".into()],
        pk: vec![0],
    };
    let mut b = FrameBuilder::new(8, 1 << 16);
    b.push(&wide, 110, Op::Delete(vec![Value::Integer(1)]));
    b.push(
        &wide,
        111,
        Op::Upsert(vec![
            Value::Integer(2),
            Value::Text(b"new".to_vec()),
            Value::Integer(3),
        ]),
    );
    let s = apply(
        &mut d,
        Incoming {
            seq: 2,
            subject: "x.8".into(),
            data: b.finish(),
        },
    );
    assert_eq!((s.applied, s.parked), (1, 1));
    assert_eq!(rows(&d), vec![(2, "b".to_string())]);
}

/// A child of `t`: (id, t_id, note).
fn child_header() -> TableHeader {
    TableHeader {
        name: "c".into(),
        columns: vec!["id".into(), "t_id".into(), "note".into()],
        pk: vec![0],
    }
}

fn child(id: i64, t_id: Option<i64>, note: &str) -> Op {
    Op::Upsert(vec![
        Value::Integer(id),
        t_id.map_or(Value::Null, Value::Integer),
        Value::Text(note.as_bytes().to_vec()),
    ])
}

fn fk_violations(d: &Db) -> Vec<String> {
    d.conn
        .prepare("PRAGMA foreign_key_check")
        .unwrap()
        .query_map([], |r| {
            Ok(format!(
                "{}:{}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn children(d: &Db) -> Vec<(i64, Option<i64>, String)> {
    d.conn
        .prepare("SELECT id, t_id, note FROM c ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn children_of_a_parked_parent_wait_with_it() {
    let mut d = setup_with(
        "fkpark",
        "CREATE TABLE c(id INTEGER PRIMARY KEY, t_id INTEGER REFERENCES t(id) ON DELETE CASCADE, note TEXT); \
         CREATE TABLE g(id INTEGER PRIMARY KEY, c_id INTEGER REFERENCES c(id));",
    );
    let wide = TableHeader {
        name: "t".into(),
        columns: vec!["id".into(), "v".into(), "extra".into()],
        pk: vec![0],
    };
    let grand = TableHeader {
        name: "g".into(),
        columns: vec!["id".into(), "c_id".into()],
        pk: vec![0],
    };
    // frame 1: a parent on the old schema; frame 2 (the sender added column extra to t): a
    // child ahead of its parent, the parent (lacks column extra here), a child of the applied
    // parent, a child of no parent, a grandchild of the parked parent
    let s = apply(&mut d, msg(1, 7, &[(99, up(2, "p2"))]));
    assert_eq!((s.applied, s.parked), (1, 0));
    let mut b = FrameBuilder::new(7, 1 << 16);
    b.push(&child_header(), 100, child(10, Some(1), "a"));
    b.push(
        &wide,
        101,
        Op::Upsert(vec![
            Value::Integer(1),
            Value::Text(b"p1".to_vec()),
            Value::Integer(9),
        ]),
    );
    b.push(&child_header(), 103, child(12, Some(2), "b"));
    b.push(&child_header(), 104, child(14, None, "orphan"));
    b.push(
        &grand,
        105,
        Op::Upsert(vec![Value::Integer(20), Value::Integer(10)]),
    );
    let s = apply(
        &mut d,
        Incoming {
            seq: 2,
            subject: "x.7".into(),
            data: b.finish(),
        },
    );
    assert_eq!((s.applied, s.parked), (2, 3));
    // frame 2: another child of the parked parent, and a row of g referencing applied child 12
    let mut b = FrameBuilder::new(7, 1 << 16);
    b.push(&child_header(), 106, child(13, Some(1), "c"));
    b.push(
        &grand,
        107,
        Op::Upsert(vec![Value::Integer(21), Value::Integer(12)]),
    );
    let s = apply(
        &mut d,
        Incoming {
            seq: 3,
            subject: "x.7".into(),
            data: b.finish(),
        },
    );
    assert_eq!((s.applied, s.parked), (1, 1));
    assert_eq!(parked_len(&d.conn).unwrap(), 4);
    assert_eq!(rows(&d), vec![(2, "p2".to_string())]);
    assert_eq!(
        children(&d),
        vec![
            (12, Some(2), "b".to_string()),
            (14, None, "orphan".to_string())
        ]
    );
    assert_eq!(fk_violations(&d), Vec::<String>::new());
    // the schema catches up: parents apply before their children
    d.conn
        .execute_batch("ALTER TABLE t ADD COLUMN extra")
        .unwrap();
    let cfg = Config::parse(&format!("db_path = {:?}", d.path.display().to_string())).unwrap();
    d.schema = capture::scan(&d.conn, &cfg).unwrap();
    let (done, left) = retry_parked(&mut d.conn, &d.schema, &mut d.hlc, ME).unwrap();
    assert_eq!((done, left), (4, 0));
    assert_eq!(rows(&d), vec![(1, "p1".to_string()), (2, "p2".to_string())]);
    assert_eq!(
        children(&d),
        vec![
            (10, Some(1), "a".to_string()),
            (12, Some(2), "b".to_string()),
            (13, Some(1), "c".to_string()),
            (14, None, "orphan".to_string())
        ]
    );
    let g: Vec<(i64, i64)> = d
        .conn
        .prepare("SELECT id, c_id FROM g ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(g, vec![(20, 10), (21, 12)]);
    assert_eq!(fk_violations(&d), Vec::<String>::new());
}

#[test]
fn a_parent_delete_applies_without_touching_children() {
    let mut d = setup_with(
        "fkdel",
        "CREATE TABLE c(id INTEGER PRIMARY KEY, t_id INTEGER REFERENCES t(id) ON DELETE CASCADE, note TEXT);",
    );
    let mut b = FrameBuilder::new(7, 1 << 16);
    b.push(&header(), 100, up(1, "p1"));
    b.push(&child_header(), 101, child(10, Some(1), "a"));
    b.push(&header(), 102, del(1));
    let s = apply(
        &mut d,
        Incoming {
            seq: 1,
            subject: "x.7".into(),
            data: b.finish(),
        },
    );
    assert_eq!((s.applied, s.parked), (3, 0));
    // the sender's own cascade travels as its own change; the apply does not cascade
    assert_eq!(children(&d), vec![(10, Some(1), "a".to_string())]);
}

#[test]
fn children_of_a_paused_parent_table_wait_until_it_resumes() {
    let mut d = setup_with(
        "fkpause",
        "CREATE TABLE c(id INTEGER PRIMARY KEY, t_id INTEGER REFERENCES t(id) ON DELETE CASCADE, note TEXT);",
    );
    d.schema
        .paused
        .insert("t".into(), "column extra was dropped".into());
    let s = apply(&mut d, msg(1, 7, &[(100, up(1, "p1"))]));
    assert_eq!((s.applied, s.parked), (0, 1));
    let mut b = FrameBuilder::new(7, 1 << 16);
    b.push(&child_header(), 101, child(10, Some(1), "a"));
    let s = apply(
        &mut d,
        Incoming {
            seq: 2,
            subject: "x.7".into(),
            data: b.finish(),
        },
    );
    assert_eq!((s.applied, s.parked), (0, 1));
    assert_eq!(children(&d), vec![]);
    assert_eq!(fk_violations(&d), Vec::<String>::new());
    // still paused: both stay, in their order
    let (done, left) = retry_parked(&mut d.conn, &d.schema, &mut d.hlc, ME).unwrap();
    assert_eq!((done, left), (0, 2));
    d.schema.paused.clear();
    let (done, left) = retry_parked(&mut d.conn, &d.schema, &mut d.hlc, ME).unwrap();
    assert_eq!((done, left), (2, 0));
    assert_eq!(rows(&d), vec![(1, "p1".to_string())]);
    assert_eq!(children(&d), vec![(10, Some(1), "a".to_string())]);
    assert_eq!(fk_violations(&d), Vec::<String>::new());
}

/// `t` with a unique index on `v` (`name = CharField(unique=True)`).
fn setup_unique(name: &str) -> Db {
    let d = setup(name);
    d.conn
        .execute_batch("CREATE UNIQUE INDEX t_v ON t(v)")
        .unwrap();
    d
}

/// The version rows of `t`: (key, version, node, deleted, pending).
fn versions(d: &Db) -> Vec<(i64, i64, i64, i64, i64)> {
    d.conn
        .prepare("SELECT k0, ver, node, del, pending FROM \"__hl_ver_t\" ORDER BY k0")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_unique_conflict_keeps_the_higher_version_whatever_the_order() {
    let a = || msg(1, 7, &[(100, up(1, "same"))]);
    let b = || msg(2, 8, &[(110, up(2, "same"))]);
    let mut first = setup_unique("uniq-ab");
    assert_eq!(apply(&mut first, a()).unique_conflicts, 0);
    let s = apply(&mut first, b());
    assert_eq!((s.applied, s.parked, s.unique_conflicts), (1, 0, 1));
    let mut second = setup_unique("uniq-ba");
    apply(&mut second, msg(1, 8, &[(110, up(2, "same"))]));
    let s = apply(&mut second, msg(2, 7, &[(100, up(1, "same"))]));
    assert_eq!((s.applied, s.parked, s.unique_conflicts), (1, 0, 1));
    for d in [&first, &second] {
        assert_eq!(rows(d), vec![(2, "same".to_string())]);
        // the loser's tombstone is at its own version and origin: nothing new to publish
        assert_eq!(versions(d), vec![(1, 100, 7, 1, 0), (2, 110, 8, 0, 0)]);
        assert_eq!(parked_len(&d.conn).unwrap(), 0);
        assert_eq!(capture::outbox_len(&d.conn, &d.schema).unwrap(), 0);
        assert_eq!(
            db::get_meta(&d.conn, UNIQUE_CONFLICTS_KEY).unwrap(),
            Some(1)
        );
    }
    // the loser's frame again (redelivered under a new stream position): its tombstone holds
    for d in [&mut first, &mut second] {
        let s = apply(d, msg(3, 7, &[(100, up(1, "same"))]));
        assert_eq!((s.applied, s.stale, s.unique_conflicts), (0, 1, 0));
        assert_eq!(rows(d), vec![(2, "same".to_string())]);
    }
    // a newer change of the loser's key applies as usual
    let s = apply(&mut second, msg(4, 7, &[(120, up(1, "other"))]));
    assert_eq!((s.applied, s.unique_conflicts), (1, 0));
    assert_eq!(
        rows(&second),
        vec![(1, "other".to_string()), (2, "same".to_string())]
    );
}

#[test]
fn an_update_that_loses_a_unique_conflict_deletes_its_row() {
    let mut d = setup_unique("uniq-update");
    apply(
        &mut d,
        msg(1, 7, &[(100, up(1, "same")), (101, up(2, "x"))]),
    );
    // node 8 renamed row 2 to "same" without having seen row 1, at an older version than row 1
    let s = apply(&mut d, msg(2, 8, &[(90, up(2, "same"))]));
    assert_eq!(
        (s.stale, s.unique_conflicts),
        (1, 0),
        "older than row 2: stale"
    );
    let s = apply(&mut d, msg(3, 8, &[(102, up(2, "same"))]));
    assert_eq!((s.applied, s.unique_conflicts), (1, 1));
    assert_eq!(rows(&d), vec![(2, "same".to_string())]);
    assert_eq!(versions(&d), vec![(1, 100, 7, 1, 0), (2, 102, 8, 0, 0)]);
}

#[test]
fn a_local_unpublished_row_in_a_unique_conflict_compares_by_its_version() {
    let future = (crate::hlc::now_ms() + 3_600_000) << 16;
    // the local row loses to a newer remote row: its tombstone stays pending, at its version
    let mut d = setup_unique("uniq-local-loses");
    d.conn
        .execute("INSERT INTO t VALUES (1, 'same')", [])
        .unwrap();
    let s = apply(&mut d, msg(1, 7, &[(future, up(2, "same"))]));
    assert_eq!((s.stamped, s.applied, s.unique_conflicts), (1, 1, 1));
    assert_eq!(rows(&d), vec![(2, "same".to_string())]);
    let v = versions(&d);
    // pending 2: the fleet never heard of key 1 from this node
    assert_eq!((v[0].0, v[0].2, v[0].3, v[0].4), (1, ME as i64, 1, 2));
    assert!(v[0].1 < future as i64);
    assert_eq!(v[1], (2, future as i64, 7, 0, 0));
    assert_eq!(
        capture::outbox_len(&d.conn, &d.schema).unwrap(),
        1,
        "the delete of row 1 at its own version is published"
    );
    // the local row wins over an older remote row: it stays, and is still to be published
    let mut d = setup_unique("uniq-local-wins");
    d.conn
        .execute("INSERT INTO t VALUES (1, 'same')", [])
        .unwrap();
    let s = apply(&mut d, msg(1, 7, &[(1 << 16, up(2, "same"))]));
    assert_eq!((s.applied, s.unique_conflicts), (1, 1));
    assert_eq!(rows(&d), vec![(1, "same".to_string())]);
    let v = versions(&d);
    // pending 2: a key new to the fleet, published as an insert
    assert_eq!((v[0].0, v[0].2, v[0].3, v[0].4), (1, ME as i64, 0, 2));
    assert_eq!(v[1], (2, 1 << 16, 7, 1, 0));
    assert_eq!(capture::outbox_len(&d.conn, &d.schema).unwrap(), 1);
}

#[test]
fn a_row_conflicting_with_two_rows_is_parked() {
    let mut d = setup_unique("uniq-two");
    d.conn
        .execute_batch("ALTER TABLE t ADD COLUMN w TEXT; CREATE UNIQUE INDEX t_w ON t(w)")
        .unwrap();
    let cfg = Config::parse(&format!("db_path = {:?}", d.path.display().to_string())).unwrap();
    d.schema = capture::scan(&d.conn, &cfg).unwrap();
    let wide = TableHeader {
        name: "t".into(),
        columns: vec!["id".into(), "v".into(), "w".into()],
        pk: vec![0],
    };
    let text = |s: &str| Value::Text(s.as_bytes().to_vec());
    let mut b = FrameBuilder::new(7, 1 << 16);
    b.push(
        &wide,
        100,
        Op::Upsert(vec![Value::Integer(1), text("a"), text("x")]),
    );
    b.push(
        &wide,
        101,
        Op::Upsert(vec![Value::Integer(2), text("b"), text("y")]),
    );
    b.push(
        &wide,
        200,
        Op::Upsert(vec![Value::Integer(3), text("a"), text("y")]),
    );
    let s = apply(
        &mut d,
        Incoming {
            seq: 1,
            subject: "x.7".into(),
            data: b.finish(),
        },
    );
    assert_eq!((s.applied, s.parked, s.unique_conflicts), (2, 1, 0));
    assert_eq!(rows(&d), vec![(1, "a".to_string()), (2, "b".to_string())]);
    let reason: String = d
        .conn
        .query_row("SELECT reason FROM __hl_parked", [], |r| r.get(0))
        .unwrap();
    assert!(reason.contains("conflicts with 2 rows"), "{reason}");
}

#[test]
fn unique_indexes_leave_out_the_primary_key_and_mark_partial_ones() {
    let d = setup("uniq-list");
    d.conn
        .execute_batch(
            "CREATE TABLE p(k TEXT PRIMARY KEY, a UNIQUE, b, c, UNIQUE(b, c)); \
             CREATE UNIQUE INDEX p_part ON p(c) WHERE c > 0; CREATE UNIQUE INDEX p_expr ON p(lower(b))",
        )
        .unwrap();
    let got: Vec<(Vec<String>, bool)> = capture::unique_indexes(&d.conn, "p")
        .unwrap()
        .into_iter()
        .map(|i| (i.columns, i.resolvable))
        .collect();
    assert_eq!(
        got,
        vec![
            (vec!["".to_string()], false),
            (vec!["c".to_string()], false),
            (vec!["a".to_string()], true),
            (vec!["b".to_string(), "c".to_string()], true),
        ],
        "by index name: p_expr, p_part, then the two autoindexes; not the key's"
    );
}

// ---------------------------------------------------------------------------------------------
// Primary-key collisions

fn ins(id: i64, v: &str) -> Op {
    Op::Insert(vec![Value::Integer(id), Value::Text(v.as_bytes().to_vec())])
}

fn last_collision(d: &Db) -> Option<String> {
    db::get_meta_text(&d.conn, LAST_PK_COLLISION_KEY).unwrap()
}

#[test]
fn an_insert_for_a_key_another_node_created_is_a_counted_collision() {
    let mut d = setup("pk-collide");
    apply(&mut d, msg(1, 7, &[(100, ins(6, "from 7"))]));
    assert_eq!(
        last_collision(&d),
        None,
        "a first insert collides with nothing"
    );
    // node 8 created key 6 too, later: it wins, and the overwrite is counted and described
    let s = apply(&mut d, msg(2, 8, &[(110, ins(6, "from 8"))]));
    assert_eq!((s.applied, s.pk_collisions), (1, 1));
    assert_eq!(rows(&d), vec![(6, "from 8".to_string())]);
    let last = last_collision(&d).expect("the collision is recorded");
    assert!(
        last.contains("table t key 6") && last.contains("nodes 7 and 8"),
        "{last}"
    );
    assert!(
        last.contains("node 8's row is kept, node 7's overwritten"),
        "{last}"
    );
    // node 9 created it as well, but earlier: it loses, and that is a collision too
    let s = apply(&mut d, msg(3, 9, &[(105, ins(6, "from 9"))]));
    assert_eq!((s.stale, s.pk_collisions), (1, 1));
    assert_eq!(rows(&d), vec![(6, "from 8".to_string())]);
    assert!(last_collision(&d)
        .unwrap()
        .contains("node 8's row is kept, node 9's overwritten"));
    assert_eq!(db::get_meta(&d.conn, PK_COLLISIONS_KEY).unwrap(), Some(2));
}

#[test]
fn updates_replays_same_content_and_reused_deleted_keys_are_no_collision() {
    let mut d = setup("pk-no-collide");
    apply(
        &mut d,
        msg(
            1,
            7,
            &[(100, ins(1, "a")), (101, ins(2, "b")), (102, ins(3, "c"))],
        ),
    );
    let s = apply(
        &mut d,
        msg(
            2,
            8,
            &[
                // an update of a row node 8 knew
                (110, up(1, "a2")),
                // the same row created on both nodes (seed data loaded everywhere)
                (111, ins(2, "b")),
            ],
        ),
    );
    assert_eq!((s.applied, s.pk_collisions), (2, 0));
    // node 7 re-creates a key it created itself (deleted in between elsewhere is not needed)
    let s = apply(&mut d, msg(3, 7, &[(120, del(3)), (121, ins(3, "c2"))]));
    assert_eq!((s.applied, s.pk_collisions), (2, 0));
    // a key deleted here and created again by another node: the deleted row is gone, no loss
    apply(&mut d, msg(4, 7, &[(130, del(1))]));
    let s = apply(&mut d, msg(5, 9, &[(140, ins(1, "new"))]));
    assert_eq!((s.applied, s.pk_collisions), (1, 0));
    assert_eq!(last_collision(&d), None);
}

#[test]
fn a_local_unpublished_insert_collides_with_a_remote_insert_of_its_key() {
    let mut d = setup("pk-local");
    d.conn
        .execute("INSERT INTO t VALUES (6, 'mine')", [])
        .unwrap();
    let s = apply(&mut d, msg(1, 7, &[(1 << 16, ins(6, "theirs"))]));
    assert_eq!((s.stamped, s.stale, s.pk_collisions), (1, 1, 1));
    assert!(last_collision(&d).unwrap().contains(&format!(
        "nodes {ME} and 7 both created it; node {ME}'s row is kept"
    )));
}

/// Stamps the application's writes and returns the outbox of `t` as it would be published.
fn stamped_ops(d: &mut Db) -> Vec<Op> {
    capture::stamp(&d.conn, &d.schema, &mut d.hlc, ME).unwrap();
    let mut ops = Vec::new();
    capture::read_pending(&d.conn, &d.schema.tables[0], |_, op| {
        ops.push(op);
        true
    })
    .unwrap();
    ops
}

#[test]
fn local_inserts_of_new_keys_are_published_as_inserts_and_changes_as_upserts() {
    let mut d = setup("pk-publish");
    apply(&mut d, msg(1, 7, &[(100, ins(1, "remote"))]));
    d.conn
        .execute_batch(
            "INSERT INTO t VALUES (2, 'new');
             UPDATE t SET v = 'changed' WHERE id = 1;
             INSERT INTO t VALUES (3, 'new then changed');",
        )
        .unwrap();
    capture::stamp(&d.conn, &d.schema, &mut d.hlc, ME).unwrap();
    // a change of key 3 before its insert was published: still a new key to the others
    d.conn
        .execute("UPDATE t SET v = 'changed again' WHERE id = 3", [])
        .unwrap();
    let mut ops = stamped_ops(&mut d);
    ops.sort_by_key(|op| format!("{:?}", op.row().map(|r| r[0].clone())));
    assert_eq!(
        ops,
        vec![up(1, "changed"), ins(2, "new"), ins(3, "changed again"),]
    );
    // the insert of a key this node saw deleted is a change of a known key
    capture::mark_published(&d.conn, &d.schema.tables[0], i64::MAX as u64).unwrap();
    apply(&mut d, msg(2, 7, &[(1 << 60, del(1))]));
    d.conn
        .execute("INSERT INTO t VALUES (1, 'again')", [])
        .unwrap();
    assert_eq!(stamped_ops(&mut d), vec![up(1, "again")]);
}

#[test]
fn version_1_frames_still_apply_and_a_version_1_writer_sends_inserts_as_upserts() {
    let mut d = setup("pk-v1");
    let mut b = FrameBuilder::with_version(7, 1 << 16, 1);
    b.push(&header(), 100, ins(1, "old build"));
    let data = b.finish();
    assert_eq!(data[2], 1, "the envelope says version 1");
    match frame::decode(&data).unwrap() {
        Frame::Changes(c) => assert_eq!(c.changes[0].op, up(1, "old build")),
        f => panic!("{f:?}"),
    }
    let s = apply(
        &mut d,
        Incoming {
            seq: 1,
            subject: "x.7".into(),
            data,
        },
    );
    assert_eq!(s.applied, 1);
    assert_eq!(rows(&d), vec![(1, "old build".to_string())]);
}

#[test]
fn a_table_this_node_does_not_publish_is_versioned_but_never_queued() {
    let mut d = setup_config("nopub", "", "[table.t]\npublish = false");
    d.conn
        .execute("INSERT INTO t VALUES (1, 'local')", [])
        .unwrap();
    capture::stamp(&d.conn, &d.schema, &mut d.hlc, ME).unwrap();
    assert_eq!(capture::outbox_len(&d.conn, &d.schema).unwrap(), 0);
    // versioned all the same: an older remote change loses, a newer one wins
    let s = apply(&mut d, msg(1, 7, &[(1 << 16, up(1, "older"))]));
    assert_eq!(s.stale, 1);
    assert_eq!(rows(&d), vec![(1, "local".to_string())]);
    let future = (crate::hlc::now_ms() + 60_000) << 16;
    apply(&mut d, msg(2, 7, &[(future, up(1, "hub"))]));
    assert_eq!(rows(&d), vec![(1, "hub".to_string())]);
}

// ---------------------------------------------------------------------------------------------
// Subjects: per-table layout, origin and table checks, direction

fn on(subject: &str, m: Incoming) -> Incoming {
    Incoming {
        subject: subject.into(),
        ..m
    }
}

#[test]
fn a_frame_must_come_from_the_node_and_table_its_subject_names() {
    let mut d = setup("subjects");
    // the per-table layout, origin and table as the subject says: applied
    let s = apply(&mut d, on("x.t.7", msg(1, 7, &[(100, ins(1, "ok"))])));
    assert_eq!((s.applied, s.rejected), (1, 0));
    // another origin than the subject's: dropped, counted
    let s = apply(&mut d, on("x.t.7", msg(2, 8, &[(110, up(1, "forged"))])));
    assert_eq!((s.applied, s.rejected), (0, 1));
    // another table than the subject's: dropped (a gateway allowed to publish readings only
    // cannot slip settings into a readings frame)
    let s = apply(
        &mut d,
        on("x.readings.7", msg(3, 7, &[(120, up(1, "smuggled"))])),
    );
    assert_eq!((s.applied, s.rejected), (0, 1));
    // outside the layout: dropped
    for (seq, subject) in [(4, "y.t.7"), (5, "x.t.7.9"), (6, "x.t.node7"), (7, "x..7")] {
        let s = apply(&mut d, on(subject, msg(seq, 7, &[(130, up(1, "stray"))])));
        assert_eq!((s.applied, s.rejected), (0, 1), "{subject}");
    }
    assert_eq!(rows(&d), vec![(1, "ok".to_string())]);
    // the cursor moved past the dropped frames all the same: they are not read again
    assert_eq!(db::cursor(&d.conn).unwrap(), 7);
    // the single-subject layout of older builds is still applied
    let s = apply(&mut d, on("x.7", msg(8, 7, &[(140, up(1, "legacy"))])));
    assert_eq!((s.applied, s.rejected), (1, 0));
    assert_eq!(rows(&d), vec![(1, "legacy".to_string())]);
}

#[test]
fn table_names_become_subject_tokens_that_round_trip_the_check() {
    use crate::config::subject_token;
    assert_eq!(subject_token("readings"), "readings");
    assert_eq!(subject_token("order.items"), "order%2Eitems");
    assert_eq!(subject_token("a b*>%"), "a%20b%2A%3E%25");
    assert_eq!(subject_token("Straße"), "Stra%C3%9Fe");
    assert_eq!(subject_token("shop_item-2"), "shop_item-2");
    let mut d = setup_with(
        "subject-token",
        "CREATE TABLE \"odd.name\"(id INTEGER PRIMARY KEY, v TEXT);",
    );
    let odd = TableHeader {
        name: "odd.name".into(),
        columns: vec!["id".into(), "v".into()],
        pk: vec![0],
    };
    let mut b = FrameBuilder::new(7, 1 << 16);
    b.push(&odd, 100, up(1, "x"));
    let m = Incoming {
        seq: 1,
        subject: d.cfg.table_subject("odd.name", 7),
        data: b.finish(),
    };
    assert_eq!(m.subject, "x.odd%2Ename.7");
    let s = apply(&mut d, m);
    assert_eq!((s.applied, s.rejected), (1, 0));
}

#[test]
fn changes_of_a_table_this_node_does_not_replicate_are_dropped_if_they_arrive() {
    let mut d = setup("not-replicated");
    d.cfg = Config::parse(
        "db_path = \"x.db\"\n[table.t]\nreplicate = false\n[nats]\nsubject_prefix = \"x\"\n",
    )
    .unwrap();
    let s = apply(&mut d, on("x.t.7", msg(1, 7, &[(100, ins(1, "no"))])));
    assert_eq!((s.applied, s.not_replicated, s.parked), (0, 1, 0));
    assert!(rows(&d).is_empty());
    assert_eq!(db::cursor(&d.conn).unwrap(), 1);
}

#[test]
fn the_same_row_from_a_node_with_another_column_order_is_no_collision() {
    let mut d = setup("pk-order");
    apply(&mut d, msg(1, 7, &[(100, ins(1, "seed"))]));
    // node 8 rebuilt t with v first (Django's AlterField moves a column last)
    let reordered = TableHeader {
        name: "t".into(),
        columns: vec!["v".into(), "id".into()],
        pk: vec![1],
    };
    let mut b = FrameBuilder::new(8, 1 << 16);
    b.push(
        &reordered,
        110,
        Op::Insert(vec![Value::Text(b"seed".to_vec()), Value::Integer(1)]),
    );
    let s = apply(
        &mut d,
        Incoming {
            seq: 2,
            subject: "x.8".into(),
            data: b.finish(),
        },
    );
    assert_eq!((s.applied, s.pk_collisions), (1, 0));
}

/// `frame` with byte `at` flipped and its checksum made right again: passes the CRC, does not
/// decompress.
fn spoil_compressed(mut frame: Vec<u8>, at: usize) -> Vec<u8> {
    assert_ne!(
        frame[2] & frame::COMPRESSED,
        0,
        "test premise: a compressed frame"
    );
    let body = frame.len() - 4;
    frame[at] ^= 0xff;
    let crc = frame::crc32(&frame[..body]).to_le_bytes();
    frame[body..].copy_from_slice(&crc);
    frame
}

#[test]
fn compressed_frames_apply_and_a_bad_compressed_body_is_skipped_and_counted() {
    let mut d = setup("compressed");
    let text = |i: i64| format!("reading {i}: {{\"temperature\": 21.{i}, \"humidity\": 48}}");
    let batch = |seq: u64, first: i64| {
        let changes: Vec<(u64, Op)> = (first..first + 20)
            .map(|i| (100 + i as u64, up(i, &text(i))))
            .collect();
        let mut m = msg(seq, 7, &changes);
        m.data = frame::compress(m.data);
        m
    };
    let good = batch(1, 0);
    assert_ne!(good.data[2] & frame::COMPRESSED, 0);
    let mut bad = batch(2, 20);
    bad.data = spoil_compressed(bad.data, 8);
    assert!(matches!(
        frame::decode(&bad.data),
        Err(frame::FrameError::Decompress(_))
    ));
    let after = batch(3, 40);
    let s = apply_batch(
        &mut d.conn,
        &d.cfg,
        &d.schema,
        &mut d.hlc,
        ME,
        &[good, bad, after],
    )
    .unwrap();
    assert_eq!((s.applied, s.undecodable), (40, 1));
    let ids: Vec<i64> = rows(&d).into_iter().map(|(id, _)| id).collect();
    let want: Vec<i64> = (0..20).chain(40..60).collect();
    assert_eq!(ids, want);
    assert_eq!(rows(&d)[25], (45, text(45)));

    // a compressed frame cut into fragments: applied once whole; a spoiled one is counted
    let big = "telemetry ".repeat(200);
    let whole = frame::compress(msg(0, 7, &[(500, up(500, &big))]).data);
    let spoiled = spoil_compressed(whole.clone(), 10);
    for (n, (data, id)) in [(whole, 500u64), (spoiled, 501)].into_iter().enumerate() {
        let parts = frame::fragment(7, id, &data, 60, frame::VERSION);
        assert!(parts.len() > 1);
        let mut s = ApplyStats::default();
        for (i, p) in parts.into_iter().enumerate() {
            s = apply(
                &mut d,
                Incoming {
                    seq: 10 + 100 * n as u64 + i as u64,
                    subject: "x.7".into(),
                    data: p,
                },
            );
        }
        assert_eq!(s.undecodable, n as u64, "set {n}");
    }
    assert_eq!(rows(&d).last(), Some(&(500, big)));
    assert_eq!(frag_rows(&d), 0);
}

/// A repair frame (`verify --repair`) from node 9 on its own subject.
fn repair_msg(seq: u64, changes: &[(u64, u64, Op)]) -> Incoming {
    let r = frame::Repair {
        changes: Changes {
            origin: 9,
            tables: vec![header()],
            changes: changes
                .iter()
                .map(|(version, _, op)| Change {
                    table: 0,
                    version: *version,
                    op: op.clone(),
                })
                .collect(),
        },
        origins: changes.iter().map(|(_, o, _)| *o).collect(),
    };
    Incoming {
        seq,
        subject: "x.t.9".into(),
        data: frame::encode_repair(r),
    }
}

fn lww_state(d: &Db) -> Vec<(i64, i64, i64, bool)> {
    let mut s = d
        .conn
        .prepare("SELECT k0, ver, node, del FROM __hl_ver_t ORDER BY k0")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn repair_frames_apply_each_row_at_its_own_version_and_origin() {
    let mut d = setup("repair");
    apply(&mut d, msg(1, 7, &[(100, up(1, "a")), (110, up(3, "c"))]));
    // node 9 re-announces a row of node 3 this node never got, a tombstone of node 7 newer
    // than its row 1, and an older version of row 3 (stale here)
    let m = repair_msg(
        2,
        &[
            (50, 3, up(2, "b")),
            (200, 7, del(1)),
            (105, 4, up(3, "old")),
        ],
    );
    let s = apply(&mut d, m.clone());
    assert_eq!(
        (s.applied, s.stale, s.pk_collisions, s.rejected),
        (2, 1, 0, 0)
    );
    assert_eq!(rows(&d), vec![(2, "b".into()), (3, "c".into())]);
    // written with the rows' origins, not the sender's
    assert_eq!(
        lww_state(&d),
        vec![(1, 200, 7, true), (2, 50, 3, false), (3, 110, 7, false)]
    );
    // idempotent: the same repair again changes nothing
    let again = Incoming { seq: 3, ..m };
    let s = apply(&mut d, again);
    assert_eq!((s.applied, s.stale), (0, 3));
    assert_eq!(rows(&d), vec![(2, "b".into()), (3, "c".into())]);
}

#[test]
fn a_repair_frame_of_another_node_on_this_subject_is_rejected() {
    let mut d = setup("repair-fence");
    let mut m = repair_msg(1, &[(50, 3, up(2, "b"))]);
    m.subject = "x.t.8".into();
    let s = apply(&mut d, m);
    assert_eq!((s.applied, s.rejected), (0, 1));
}
