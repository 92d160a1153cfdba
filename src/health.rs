//! `/health`: 200 `{"status":"ok"}` or 503 `{"status":"unhealthy","reasons":[...]}`.
//!
//! Unhealthy when: the main loop has not run for longer than [`stall_limit_ms`] (a snapshot
//! restore in progress excepted: it holds the loop on purpose and reports its own progress),
//! the database cannot be read, a table is paused by a schema change, or the NATS link has been down for longer than
//! `[health_check] link_grace_ms`.

use crate::config::Config;
use crate::metrics::{self, Liveness};
use crate::status::{self, json_str, Status};

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
    match db {
        Err(e) => out.push(format!("database not readable: {e}")),
        Ok(st) => {
            for (t, why) in &st.paused_tables {
                out.push(format!(
                    "table {t} is paused: {why} (see harmonylite schema accept)"
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
    let mut body = format!(
        "{{\"status\":\"{}\"",
        if code == 200 { "ok" } else { "unhealthy" }
    );
    if !reasons.is_empty() {
        let list: Vec<String> = reasons.iter().map(|r| json_str(r)).collect();
        body.push_str(&format!(",\"reasons\":[{}]", list.join(",")));
    }
    if cfg.health_check.detailed {
        body.push_str(&detail(&live, st.as_ref().ok(), now));
    }
    body.push('}');
    (code, body)
}

/// `detailed = true`: what the node is doing, for a person looking at a failing check.
fn detail(live: &Liveness, st: Option<&Status>, now: u64) -> String {
    let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
    let loop_age = (live.last_tick_ms > 0).then(|| now.saturating_sub(live.last_tick_ms));
    let mut o = format!(
        ",\"main_loop_age_ms\":{},\"restoring\":{},\"link_up\":{},\"link_since_ms\":{}",
        opt(loop_age),
        live.restoring,
        live.link_up.map_or("null".into(), |u| u.to_string()),
        opt((live.link_since_ms > 0).then_some(live.link_since_ms))
    );
    if let Some(st) = st {
        o.push_str(&format!(
            ",\"node_id\":{},\"outbox_changes\":{},\"outbox_oldest_age_ms\":{},\"parked_changes\":{},\"last_publish_ms\":{},\"last_apply_ms\":{}",
            opt(st.node_id),
            st.outbox_changes,
            opt(st.outbox_oldest_age_ms),
            st.parked_changes,
            opt(st.last_publish_ms),
            opt(st.last_apply_ms)
        ));
    }
    o
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
        }
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
}
