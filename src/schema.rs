//! Rolling schema changes: the definition each replicated table had when this node last
//! replicated it, and pausing a table whose change cannot be replicated safely.
//!
//! A fleet upgrades one node at a time. Added columns, new tables and new indexes need nothing
//! from the operator: frames carry column names, a receiver parks what it cannot apply yet (see
//! [`crate::apply`]) and applies a sender's missing columns with their defaults. A dropped or
//! retyped column is different: this node would publish rows without the column (and other
//! nodes would reset it to its default), or apply values of the old type. Such a table is
//! *paused*: local changes stay captured in the outbox, unpublished, and incoming changes for it
//! are parked. It resumes by itself when its definition is compatible again (the column is
//! back), or when the operator runs `harmonylite schema accept TABLE`, which adopts the new
//! definition: values other nodes still send for a dropped column are then ignored here.
//!
//! `__hl_tables(tbl, def, dropped, paused)`: `def` is the accepted definition (postcard list of
//! columns), `dropped` the accepted dropped column names, `paused` the reason or NULL.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::capture::{Schema, Table};
pub use crate::db::{affinity, Affinity};
use crate::db::{Context, DbError};

pub const TABLES_TABLE: &str = "__hl_tables";

/// A column as far as replication cares: name, declared type, position in the primary key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub decl: String,
    pub pk: bool,
}

#[derive(Clone, PartialEq)]
struct Record {
    def: Vec<Column>,
    dropped: Vec<String>,
    paused: Option<String>,
}

/// Creates the table of definitions.
pub fn prepare(conn: &Connection) -> Result<(), DbError> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLES_TABLE}(tbl TEXT PRIMARY KEY, def BLOB NOT NULL, dropped BLOB, paused TEXT) WITHOUT ROWID"
    ))
    .ctx("create table definitions")
}

fn columns(t: &Table) -> Vec<Column> {
    let h = &t.header;
    h.columns
        .iter()
        .enumerate()
        .map(|(i, name)| Column {
            name: name.clone(),
            decl: t.decl[i].clone(),
            pk: h.pk.contains(&(i as u16)),
        })
        .collect()
}

/// Why `now` cannot be replicated as a continuation of `before`, if it cannot: a non-key column
/// dropped or given another type affinity. Added columns are fine, and so is a declared type
/// SQLite treats the same (`varchar(100)` to `varchar(200)`, `INT` to `BIGINT`: a length is not
/// enforced, the values stored do not change). NOT NULL, defaults, CHECK and foreign keys may
/// change: a value one node cannot take is parked there, not lost. A changed primary key is
/// handled by capture (its bookkeeping is reset), not here.
pub fn incompatible(before: &[Column], now: &[Column]) -> Option<String> {
    let mut reasons = Vec::new();
    for old in before.iter().filter(|c| !c.pk) {
        match now.iter().find(|c| c.name == old.name) {
            None => reasons.push(format!("column {} was dropped", old.name)),
            Some(c) if affinity(&c.decl) != affinity(&old.decl) => reasons.push(format!(
                "column {} changed type from {:?} to {:?}",
                old.name, old.decl, c.decl
            )),
            Some(_) => {}
        }
    }
    (!reasons.is_empty()).then(|| reasons.join(", "))
}

/// The column names of every recorded definition: what each table's row digests were computed
/// over (see [`crate::capture::Recorded`]).
pub fn recorded_columns(conn: &Connection) -> Result<crate::capture::Recorded, DbError> {
    let rows: Vec<(String, Vec<u8>)> = conn
        .prepare(&format!("SELECT tbl, def FROM {TABLES_TABLE}"))
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .ctx("read table definitions")?;
    Ok(rows
        .into_iter()
        .filter_map(|(t, def)| {
            postcard::from_bytes::<Vec<Column>>(&def)
                .ok()
                .map(|d| (t, d.into_iter().map(|c| c.name).collect()))
        })
        .collect())
}

fn load(conn: &Connection, table: &str) -> Result<Option<Record>, DbError> {
    let row: Option<(Vec<u8>, Option<Vec<u8>>, Option<String>)> = conn
        .prepare_cached(&format!(
            "SELECT def, dropped, paused FROM {TABLES_TABLE} WHERE tbl = ?1"
        ))
        .and_then(|mut s| {
            s.query_row([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .ctx("read table definition")?;
    Ok(row.map(|(def, dropped, paused)| Record {
        def: postcard::from_bytes(&def).unwrap_or_default(),
        dropped: dropped
            .and_then(|d| postcard::from_bytes(&d).ok())
            .unwrap_or_default(),
        paused,
    }))
}

fn store(conn: &Connection, table: &str, r: &Record) -> Result<(), DbError> {
    let def = postcard::to_stdvec(&r.def).expect("encode definition");
    let dropped = postcard::to_stdvec(&r.dropped).expect("encode dropped columns");
    conn.prepare_cached(&format!(
        "INSERT INTO {TABLES_TABLE}(tbl, def, dropped, paused) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT(tbl) DO UPDATE SET def = excluded.def, dropped = excluded.dropped, paused = excluded.paused"
    ))
    .and_then(|mut s| s.execute(params![table, def, dropped, r.paused]))
    .ctx("write table definition")?;
    Ok(())
}

/// What [`reconcile`] changed.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Tables paused by this look, with the reason.
    pub paused: Vec<(String, String)>,
    /// Tables that were paused and are not any more.
    pub resumed: Vec<String>,
}

/// Compares each replicated table with its recorded definition (in the caller's write
/// transaction): records new tables, adopts added columns, pauses tables with a dropped or
/// retyped column, resumes tables that are compatible again. Fills `schema.paused` and each
/// table's ignored columns.
pub fn reconcile(conn: &Connection, schema: &mut Schema) -> Result<Changes, DbError> {
    let mut changes = Changes::default();
    schema.paused.clear();
    let names: Vec<String> = schema.tables.iter().map(|t| t.name().to_string()).collect();
    for name in names {
        let table = schema.get_mut(&name).expect("listed table");
        let now = columns(table);
        let stored = load(conn, &name)?;
        let mut rec = stored.clone().unwrap_or(Record {
            def: now.clone(),
            dropped: Vec::new(),
            paused: None,
        });
        let was = rec.paused.take();
        match incompatible(&rec.def, &now) {
            Some(reason) => {
                if was.as_deref() != Some(reason.as_str()) {
                    changes.paused.push((name.clone(), reason.clone()));
                }
                rec.paused = Some(reason);
            }
            None => {
                if was.is_some() {
                    changes.resumed.push(name.clone());
                }
                rec.def = now;
                // a dropped column that came back is replicated again
                rec.dropped.retain(|d| !table.header.columns.contains(d));
            }
        }
        table.ignored = rec.dropped.clone();
        if stored.as_ref() != Some(&rec) {
            store(conn, &name, &rec)?;
        }
        if let Some(reason) = rec.paused {
            schema.paused.insert(name, reason);
        }
    }
    Ok(changes)
}

/// [`reconcile`] in its own transaction, logging tables paused and resumed. Returns whether a
/// table resumed (its held changes can be published and its parked ones applied).
pub fn reconcile_and_report(conn: &mut Connection, schema: &mut Schema) -> Result<bool, DbError> {
    let before: Vec<String> = schema.paused.keys().cloned().collect();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .ctx("begin schema check")?;
    let changes = reconcile(&tx, schema)?;
    tx.commit().ctx("commit schema check")?;
    for (t, why) in &changes.paused {
        log::error!(
            "table {t} is paused: {why}. Its local changes are kept, unpublished, and changes from other nodes are parked; \
             other tables go on replicating. To resume: undo the change, or once every node has the new definition \
             run `harmonylite schema accept {t} --config <this node's config>`"
        );
    }
    let resumed: Vec<&String> = before
        .iter()
        .filter(|t| !schema.paused.contains_key(*t))
        .collect();
    for t in &resumed {
        log::info!(
            "table {t} resumed: held local changes are published and parked changes applied"
        );
    }
    Ok(!resumed.is_empty())
}

/// Read-only variant for `status`: fills `schema.paused` from what the node recorded.
pub fn load_paused(conn: &Connection, schema: &mut Schema) -> Result<(), DbError> {
    let present: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [TABLES_TABLE],
            |_| Ok(()),
        )
        .optional()
        .ctx("read schema")?
        .is_some();
    if !present {
        return Ok(());
    }
    let mut s = conn
        .prepare(&format!(
            "SELECT tbl, paused FROM {TABLES_TABLE} WHERE paused IS NOT NULL"
        ))
        .ctx("read paused tables")?;
    let rows: Vec<(String, String)> = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|r| r.collect())
        .ctx("read paused tables")?;
    for (t, why) in rows {
        if schema.get(&t).is_some() {
            schema.paused.insert(t, why);
        }
    }
    Ok(())
}

/// The names of the tables recorded as paused (the node compares this with what it holds, to
/// notice an `accept` made by another process).
pub fn paused_names(conn: &Connection) -> Result<Vec<String>, DbError> {
    conn.prepare_cached(&format!(
        "SELECT tbl FROM {TABLES_TABLE} WHERE paused IS NOT NULL ORDER BY tbl"
    ))
    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
    .ctx("read paused tables")
}

/// `harmonylite schema accept TABLE` for the database of `cfg`.
pub fn accept_in(cfg: &crate::config::Config, table: &str) -> Result<String, String> {
    let mut conn = crate::db::open(&cfg.db_path).map_err(|e| e.to_string())?;
    let schema = crate::capture::scan(&conn, cfg).map_err(|e| e.to_string())?;
    accept(&mut conn, &schema, table)
}

/// Adopts the table's current definition. Values other nodes
/// still send for columns dropped here are ignored from now on. Returns what was accepted.
pub fn accept(conn: &mut Connection, schema: &Schema, table: &str) -> Result<String, String> {
    let t = schema
        .get(table)
        .ok_or_else(|| format!("table {table} is not replicated here"))?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| format!("begin: {e}"))?;
    prepare(&tx).map_err(|e| e.to_string())?;
    let now = columns(t);
    let Some(mut rec) = load(&tx, table).map_err(|e| e.to_string())? else {
        return Err(format!(
            "table {table} has no recorded definition yet: start the node once first"
        ));
    };
    let Some(reason) = rec.paused.take() else {
        return Ok(format!("table {table} is not paused; nothing to accept"));
    };
    for old in &rec.def {
        if !now.iter().any(|c| c.name == old.name) && !rec.dropped.contains(&old.name) {
            rec.dropped.push(old.name.clone());
        }
    }
    rec.def = now;
    store(&tx, table, &rec).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| format!("commit: {e}"))?;
    Ok(format!(
        "table {table}: accepted its new definition ({reason}); replication of it resumes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, decl: &str, pk: bool) -> Column {
        Column {
            name: name.into(),
            decl: decl.into(),
            pk,
        }
    }

    #[test]
    fn added_columns_are_compatible_dropped_and_retyped_are_not() {
        let before = [
            col("id", "INTEGER", true),
            col("a", "TEXT", false),
            col("b", "REAL", false),
        ];
        let added = [
            col("id", "INTEGER", true),
            col("a", "text", false),
            col("b", "REAL", false),
            col("c", "BLOB", false),
        ];
        assert_eq!(incompatible(&before, &added), None);
        let reordered = [
            col("id", "INTEGER", true),
            col("b", "REAL", false),
            col("a", "TEXT", false),
        ];
        assert_eq!(incompatible(&before, &reordered), None);
        let dropped = [col("id", "INTEGER", true), col("b", "REAL", false)];
        assert_eq!(
            incompatible(&before, &dropped).as_deref(),
            Some("column a was dropped")
        );
        let retyped = [
            col("id", "INTEGER", true),
            col("a", "TEXT", false),
            col("b", "INTEGER", false),
        ];
        assert_eq!(
            incompatible(&before, &retyped).as_deref(),
            Some("column b changed type from \"REAL\" to \"INTEGER\"")
        );
    }

    #[test]
    fn a_declared_type_with_the_same_affinity_is_no_change() {
        let before = [
            col("id", "INTEGER", true),
            col("a", "varchar(100)", false),
            col("b", "INT", false),
            col("c", "DOUBLE", false),
        ];
        let same = [
            col("id", "INTEGER", true),
            col("a", "varchar(200)", false),
            col("b", "bigint", false),
            col("c", "FLOAT", false),
        ];
        assert_eq!(incompatible(&before, &same), None);
        let text_to_blob = [
            col("id", "INTEGER", true),
            col("a", "", false),
            col("b", "INT", false),
            col("c", "REAL", false),
        ];
        assert_eq!(
            incompatible(&before, &text_to_blob).as_deref(),
            Some("column a changed type from \"varchar(100)\" to \"\"")
        );
        let cases = [
            ("INTEGER", Affinity::Integer),
            ("tinyint", Affinity::Integer),
            ("CHARACTER(20)", Affinity::Text),
            ("NVARCHAR(100)", Affinity::Text),
            ("CLOB", Affinity::Text),
            ("BLOB", Affinity::Blob),
            ("", Affinity::Blob),
            ("DOUBLE PRECISION", Affinity::Real),
            ("FLOAT", Affinity::Real),
            ("DECIMAL(10,5)", Affinity::Numeric),
            ("BOOLEAN", Affinity::Numeric),
            ("DATETIME", Affinity::Numeric),
            ("FLOATING POINT", Affinity::Integer),
        ];
        for (decl, a) in cases {
            assert_eq!(affinity(decl), a, "{decl}");
        }
    }
}
