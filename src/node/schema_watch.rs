//! Watching the application's schema: new tables and columns are adopted at run time, tables
//! are paused and resumed (see [`crate::schema`]), and parked changes are retried.

use std::time::Instant;

use rusqlite::Connection;

use super::{Node, NodeError};
use crate::apply;
use crate::capture::{self, Schema};
use crate::db;
use crate::hlc::Hlc;
use crate::schema;
use crate::state;

impl Node {
    pub(super) fn check_schema(&mut self) -> Result<(), NodeError> {
        let sv = db::schema_version(&self.conn)?;
        if sv == self.schema_version && !self.pause_lifted()? {
            return Ok(());
        }
        let mut schema = capture::scan(&self.conn, &self.cfg)?;
        if self.replicated.update(&schema) {
            // statements compiled under the old names would keep their authorizer decisions
            self.conn.flush_prepared_statement_cache();
        }
        report_skipped(&schema, Some(&self.schema));
        let recorded = schema::recorded_columns(&self.conn)?;
        let queued = capture::install(&mut self.conn, &schema, &recorded, self.node_id)?.total();
        schema.paused = std::mem::take(&mut self.schema.paused);
        if schema::reconcile_and_report(&mut self.conn, &mut schema)? {
            self.outbox.dirty = true;
        }
        let changed: Vec<&str> = schema
            .tables
            .iter()
            .filter(|t| {
                self.schema
                    .get(t.name())
                    .is_none_or(|old| old.header != t.header)
            })
            .map(|t| t.name())
            .collect();
        if !changed.is_empty() {
            log::info!(
                "schema change adopted tables={} queued_rows={queued}",
                changed.join(",")
            );
        }
        self.schema = schema;
        self.refilter()?;
        // the version read before the scan: if the application changed the schema meanwhile (or
        // the install did), the next tick looks again; a second look changes nothing
        self.schema_version = sv;
        self.data_version = None;
        // retrying parked changes stamps the log first (capture before apply), the resync's
        // rows and the application's alike: the outbox must be read again, or they wait there
        // until the next local write
        self.outbox.dirty = true;
        retry_parked(&mut self.conn, &self.schema, &mut self.hlc, self.node_id)?;
        self.note_parked(None)
    }

    /// Follows the parked changes' bytes (`added` by a batch, or None: measured again) and
    /// holds or resumes the intake of new frames: at `max_parked_bytes` the node fetches
    /// nothing more (it keeps its stream position, and the stream keeps the frames; were
    /// retention to discard them, the hole is found and a snapshot restore brings them) until a
    /// schema change lets parked changes apply. Parking grows only by applying frames and
    /// shrinks only by a retry, so this runs after those; a batch adds its bytes rather than
    /// reading every parked row again.
    pub(super) fn note_parked(&mut self, added: Option<u64>) -> Result<(), NodeError> {
        self.parked_bytes = match added {
            Some(b) => self.parked_bytes + b,
            None => apply::parked_size(&self.conn)?.bytes,
        };
        let bound = self.cfg.max_parked_bytes;
        let over = bound > 0 && self.parked_bytes >= bound;
        if over == self.intake_held {
            return Ok(());
        }
        self.intake_held = over;
        let size = apply::parked_size(&self.conn)?;
        db::set_meta(&self.conn, state::INTAKE_HELD_KEY, over as i64)?;
        if over {
            let tables = apply::parked_tables(&self.conn)?;
            let why = tables
                .first()
                .map_or(String::new(), |(t, why)| format!(" ({t}: {why})"));
            let names: Vec<&str> = tables.iter().map(|(t, _)| t.as_str()).collect();
            log::error!(
                "parked changes reached max_parked_bytes={bound} bytes={} changes={} tables={}{why}: this node takes in no new changes until they apply (nothing is dropped; it holds its stream position and resumes by itself); upgrade this node's application schema to have the tables and columns they need, or run `harmonylite schema accept` for a paused table, or raise max_parked_bytes",
                size.bytes,
                size.changes,
                names.join(",")
            );
        } else {
            log::info!(
                "parked changes below max_parked_bytes={bound} bytes={} changes={}: taking in new changes again",
                size.bytes,
                size.changes
            );
        }
        Ok(())
    }

    /// While a table is paused, looks once a second whether `harmonylite schema accept` (another
    /// process) lifted the pause.
    fn pause_lifted(&mut self) -> Result<bool, NodeError> {
        if self.schema.paused.is_empty() || self.pause_checked.elapsed() < super::PAUSE_CHECK_EVERY
        {
            return Ok(false);
        }
        self.pause_checked = Instant::now();
        let names = schema::paused_names(&self.conn)?;
        Ok(names.len() != self.schema.paused.len()
            || names.iter().any(|n| !self.schema.is_paused(n)))
    }
}

/// Warns about tables we do not replicate, once per change of that list.
/// Applies what parked changes the schema allows now, and says so when any applied.
pub(super) fn retry_parked(
    conn: &mut Connection,
    schema: &Schema,
    hlc: &mut Hlc,
    node: u64,
) -> Result<(), NodeError> {
    let (done, left) = apply::retry_parked(conn, schema, hlc, node)?;
    if done > 0 {
        log::info!("retried parked changes applied={done} still_parked={left}");
    }
    Ok(())
}

/// Migration tools' bookkeeping tables are left out on purpose: one info line names them. An
/// ORM's temporary copies of tables it rebuilds come and go with every migration: debug only.
pub(super) fn report_skipped(now: &Schema, before: Option<&Schema>) {
    let new = |name: &String| before.is_none_or(|b| !b.skipped.iter().any(|(n, _)| n == name));
    let mut bookkeeping = Vec::new();
    for (name, why) in now.skipped.iter().filter(|(n, _)| new(n)) {
        if why == capture::MIGRATION_BOOKKEEPING {
            bookkeeping.push(name.as_str());
        } else if why == capture::MIGRATION_TEMP {
            log::debug!("table {name} is not replicated: {why}");
        } else {
            log::warn!("table {name} is not replicated: {why}");
        }
    }
    if !bookkeeping.is_empty() {
        log::info!(
            "migration bookkeeping tables are not replicated tables={} (each node's migrations record what they applied to that node; name a table in `tables` to replicate it)",
            bookkeeping.join(",")
        );
    }
}
