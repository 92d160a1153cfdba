//! `/health`: 200 `{"status":"ok"}` or 503 `{"status":"unhealthy","reasons":[...]}`.
//!
//! Unhealthy when: the main loop has not run for longer than [`stall_limit_ms`] (a snapshot
//! restore in progress excepted: it holds the loop on purpose and reports its own progress),
//! the database cannot be read, a table is paused by a schema change, another process uses
//! this node's id (a cloned SD card, see `node/ops.rs`), or the NATS link has been down for
//! longer than `[health_check] link_grace_ms`.

use crate::config::Config;
use crate::metrics::{self, Liveness};
use serde::Serialize;

use crate::status::{self, Status};

/// The loop may be quiet this long (or 20 polls, whichever is longer) before it counts as stalled.
pub const MIN_STALL_MS: u64 = 10_000;

pub fn stall_limit_ms(polling_interval_ms: u64) -> u64 {
    MIN_STALL_MS.max(20 * polling_interval_ms)
}

/// The reasons the node is unhealthy, empty when it is healthy.
pub fn reasons(
    live: &Liveness,
    db: Result<&Status, &str>,
    stall_ms: u64,
    grace_ms: u64,
    now_ms: u64,
) -> Vec<String> {
    let mut out = Vec::new();
    let secs = |ms: u64| ms as f64 / 1000.0;
    if !live.restoring {
        if live.last_tick_ms == 0 {
            out.push("starting: the main loop has not run yet".to_string());
        } else if now_ms.saturating_sub(live.last_tick_ms) > stall_ms {
            let age = now_ms.saturating_sub(live.last_tick_ms);
            out.push(format!(
                "main loop stalled: last ran {:.1} s ago (limit {:.1} s)",
                secs(age),
                secs(stall_ms)
            ));
        }
    }
    if live.disk_full {
        out.push("disk full: the node cannot write its database (it retries and resumes by itself once space is freed; nothing is lost)".to_string());
    }
    match db {
        Err(e) => out.push(format!("database not readable: {e}")),
        Ok(st) => {
            for (t, why) in &st.paused_tables {
                out.push(format!(
                    "table {t} is paused: {why} (see harmonylite schema accept)"
                ));
            }
            if let Some(d) = &st.duplicate_node {
                out.push(format!(
                    "duplicate node id: {d}; give one of the two a new node_id"
                ));
            }
            if let Some(r) = &st.refused {
                out.push(format!(
                    "the NATS server refuses this node's publishes: {r}"
                ));
            }
        }
    }
    if live.link_up == Some(false) && now_ms.saturating_sub(live.link_since_ms) > grace_ms {
        let down = now_ms.saturating_sub(live.link_since_ms);
        out.push(format!(
            "NATS link down for {:.1} s ([health_check] link_grace_ms = {grace_ms})",
            secs(down)
        ));
    }
    out
}

/// The answer to a `/health` request: status code and JSON body.
pub fn answer(cfg: &Config) -> (u16, String) {
    let now = crate::hlc::now_ms();
    let live = metrics::liveness();
    let st = status::read(cfg).map_err(|e| e.to_string());
    let reasons = reasons(
        &live,
        st.as_ref().map_err(String::as_str),
        stall_limit_ms(cfg.polling_interval),
        cfg.health_check.link_grace_ms,
        now,
    );
    let code = if reasons.is_empty() { 200 } else { 503 };
    let detail = cfg
        .health_check
        .detailed
        .then(|| detail(&live, st.as_ref().ok(), now));
    (code, body(&reasons, detail))
}

/// The JSON body: `{"status":"ok"}` or `{"status":"unhealthy","reasons":[...]}`, then the
/// detail's fields when `[health_check] detailed = true`.
#[derive(Debug, Serialize)]
struct Body<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    reasons: &'a [String],
    #[serde(flatten)]
    detail: Option<Detail>,
}

/// `detailed = true`: what the node is doing, for a person looking at a failing check.
#[derive(Debug, Serialize)]
struct Detail {
    main_loop_age_ms: Option<u64>,
    restoring: bool,
    link_up: Option<bool>,
    link_since_ms: Option<u64>,
    /// Absent when the database cannot be read.
    #[serde(flatten)]
    db: Option<DbDetail>,
}

#[derive(Debug, Serialize)]
struct DbDetail {
    node_id: Option<u64>,
    outbox_changes: u64,
    outbox_oldest_age_ms: Option<u64>,
    parked_changes: u64,
    last_publish_ms: Option<u64>,
    last_apply_ms: Option<u64>,
}

fn body(reasons: &[String], detail: Option<Detail>) -> String {
    let status = if reasons.is_empty() {
        "ok"
    } else {
        "unhealthy"
    };
    let body = Body {
        status,
        reasons,
        detail,
    };
    // plain data with string keys: serializing cannot fail
    serde_json::to_string(&body).unwrap_or_default()
}

fn detail(live: &Liveness, st: Option<&Status>, now: u64) -> Detail {
    Detail {
        main_loop_age_ms: (live.last_tick_ms > 0).then(|| now.saturating_sub(live.last_tick_ms)),
        restoring: live.restoring,
        link_up: live.link_up,
        link_since_ms: (live.link_since_ms > 0).then_some(live.link_since_ms),
        db: st.map(|st| DbDetail {
            node_id: st.node_id,
            outbox_changes: st.outbox_changes,
            outbox_oldest_age_ms: st.outbox_oldest_age_ms,
            parked_changes: st.parked_changes,
            last_publish_ms: st.last_publish_ms,
            last_apply_ms: st.last_apply_ms,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn live(tick: u64, link_up: Option<bool>, since: u64) -> Liveness {
        Liveness {
            last_tick_ms: tick,
            link_up,
            link_since_ms: since,
            restoring: false,
            disk_full: false,
        }
    }

    #[test]
    fn a_full_disk_is_unhealthy() {
        let mut l = live(NOW, Some(true), 0);
        l.disk_full = true;
        let r = reasons(&l, Ok(&Status::default()), 10_000, 30_000, NOW);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].starts_with("disk full: the node cannot write its database"),
            "{r:?}"
        );
    }

    #[test]
    fn a_running_connected_node_is_healthy() {
        let st = Status::default();
        assert!(reasons(
            &live(NOW - 100, Some(true), 0),
            Ok(&st),
            10_000,
            30_000,
            NOW
        )
        .is_empty());
        // link down, but within the grace
        assert!(reasons(
            &live(NOW - 100, Some(false), NOW - 29_000),
            Ok(&st),
            10_000,
            30_000,
            NOW
        )
        .is_empty());
    }

    #[test]
    fn each_failure_is_named() {
        let st = Status::default();
        assert_eq!(
            reasons(&live(0, None, 0), Ok(&st), 10_000, 30_000, NOW),
            ["starting: the main loop has not run yet"]
        );
        assert_eq!(
            reasons(
                &live(NOW - 12_000, Some(true), 0),
                Ok(&st),
                10_000,
                30_000,
                NOW
            ),
            ["main loop stalled: last ran 12.0 s ago (limit 10.0 s)"]
        );
        assert_eq!(
            reasons(
                &live(NOW, Some(false), NOW - 31_000),
                Err("gone"),
                10_000,
                30_000,
                NOW
            ),
            [
                "database not readable: gone",
                "NATS link down for 31.0 s ([health_check] link_grace_ms = 30000)"
            ]
        );
        let paused = Status {
            paused_tables: vec![("t".into(), "column x was dropped".into())],
            ..Default::default()
        };
        assert_eq!(
            reasons(&live(NOW, Some(true), 0), Ok(&paused), 10_000, 30_000, NOW),
            ["table t is paused: column x was dropped (see harmonylite schema accept)"]
        );
        let restoring = Liveness {
            restoring: true,
            ..live(NOW - 60_000, Some(true), 0)
        };
        assert!(reasons(&restoring, Ok(&st), 10_000, 30_000, NOW).is_empty());
        assert_eq!(stall_limit_ms(100), 10_000);
        assert_eq!(stall_limit_ms(1_000), 20_000);
    }

    /// The bytes of the body before it was serde-derived (formatted by hand) are kept.
    #[test]
    fn the_body_is_the_documented_object() {
        assert_eq!(body(&[], None), r#"{"status":"ok"}"#);
        let reasons = ["a \"b\"".to_string(), "c\\".to_string()];
        assert_eq!(
            body(&reasons, None),
            r#"{"status":"unhealthy","reasons":["a \"b\"","c\\"]}"#
        );
        let live = Liveness {
            last_tick_ms: 900,
            link_up: Some(true),
            link_since_ms: 500,
            restoring: false,
            disk_full: false,
        };
        let st = Status {
            node_id: Some(3),
            outbox_changes: 2,
            outbox_oldest_age_ms: Some(7),
            parked_changes: 1,
            last_publish_ms: Some(8),
            last_apply_ms: None,
            ..Default::default()
        };
        assert_eq!(
            body(&[], Some(detail(&live, Some(&st), 1000))),
            r#"{"status":"ok","main_loop_age_ms":100,"restoring":false,"link_up":true,"link_since_ms":500,"node_id":3,"outbox_changes":2,"outbox_oldest_age_ms":7,"parked_changes":1,"last_publish_ms":8,"last_apply_ms":null}"#
        );
        let starting = Liveness {
            last_tick_ms: 0,
            link_up: None,
            link_since_ms: 0,
            restoring: true,
            disk_full: false,
        };
        assert_eq!(
            body(&reasons[..1], Some(detail(&starting, None, 1000))),
            r#"{"status":"unhealthy","reasons":["a \"b\""],"main_loop_age_ms":null,"restoring":true,"link_up":null,"link_since_ms":null}"#
        );
    }
}
