//! `[prometheus]` and `[health_check]`: the optional HTTP endpoints (served by [`crate::http`]),
//! off by default. Key names follow HarmonyLite-Go; `link_grace_ms` is ours.

use serde::Deserialize;

pub const DEFAULT_METRICS_BIND: &str = "127.0.0.1:3010";
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
pub const DEFAULT_NAMESPACE: &str = "harmonylite";
pub const DEFAULT_HEALTH_BIND: &str = "127.0.0.1:8090";
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// How long the NATS link may be down before `/health` answers 503.
pub const DEFAULT_LINK_GRACE_MS: u64 = 30_000;
/// The shortest `[anti_entropy] interval_secs` (each check reads every version table once
/// on every node).
pub const MIN_ANTI_ENTROPY_SECS: u64 = 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    #[serde(default)]
    pub enable: bool,
    /// `host:port` to listen on; `:port` (HarmonyLite-Go's style) means every interface.
    #[serde(default = "metrics_bind")]
    pub bind: String,
    #[serde(default = "metrics_path")]
    pub path: String,
    /// Metric names are `<namespace>_<subsystem>_<name>` (empty parts left out).
    #[serde(default = "namespace")]
    pub namespace: String,
    #[serde(default)]
    pub subsystem: String,
}

/// `[anti_entropy]`: `harmonylite verify --repair` run by the nodes themselves, by the one of
/// lowest id that answers (off by default: nothing runs, nothing is asked).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AntiEntropy {
    /// Seconds between two checks; 0: never.
    #[serde(default)]
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default)]
    pub enable: bool,
    #[serde(default = "health_bind")]
    pub bind: String,
    #[serde(default = "health_path")]
    pub path: String,
    /// Add the node's state (link, outbox, last publish and apply) to the answer.
    #[serde(default)]
    pub detailed: bool,
    /// Milliseconds the NATS link may be down before the node reports unhealthy.
    #[serde(default = "link_grace")]
    pub link_grace_ms: u64,
}

fn metrics_bind() -> String {
    DEFAULT_METRICS_BIND.into()
}
fn metrics_path() -> String {
    DEFAULT_METRICS_PATH.into()
}
fn namespace() -> String {
    DEFAULT_NAMESPACE.into()
}
fn health_bind() -> String {
    DEFAULT_HEALTH_BIND.into()
}
fn health_path() -> String {
    DEFAULT_HEALTH_PATH.into()
}
fn link_grace() -> u64 {
    DEFAULT_LINK_GRACE_MS
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus {
            enable: false,
            bind: metrics_bind(),
            path: metrics_path(),
            namespace: namespace(),
            subsystem: String::new(),
        }
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            enable: false,
            bind: health_bind(),
            path: health_path(),
            detailed: false,
            link_grace_ms: link_grace(),
        }
    }
}

/// `:3010` means every interface, as in HarmonyLite-Go.
pub fn listen_addr(bind: &str) -> String {
    if bind.starts_with(':') {
        format!("0.0.0.0{bind}")
    } else {
        bind.to_string()
    }
}

pub(super) fn validate(p: &Prometheus, h: &HealthCheck) -> Result<(), String> {
    let name_ok = |s: &str| {
        s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    if !name_ok(&p.namespace) {
        return Err(format!(
            "[prometheus] namespace: {:?} is not a metric name part (letters, digits, _)",
            p.namespace
        ));
    }
    if !name_ok(&p.subsystem) {
        return Err(format!(
            "[prometheus] subsystem: {:?} is not a metric name part (letters, digits, _)",
            p.subsystem
        ));
    }
    for (section, bind, path) in [
        ("prometheus", &p.bind, &p.path),
        ("health_check", &h.bind, &h.path),
    ] {
        let port = bind.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(format!(
                "[{section}] bind: {bind:?} is not an address like 127.0.0.1:3010"
            ));
        }
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            return Err(format!(
                "[{section}] path: {path:?} must start with / and hold no spaces"
            ));
        }
    }
    if p.enable && h.enable && listen_addr(&p.bind) == listen_addr(&h.bind) && p.path == h.path {
        return Err(format!("[prometheus] path and [health_check] path: both are {:?} on {}; give them different paths", p.path, p.bind));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn defaults_are_off_on_loopback() {
        let c = Config::parse("db_path = \"a\"").unwrap();
        assert!(!c.prometheus.enable && !c.health_check.enable);
        assert_eq!(
            (c.prometheus.bind.as_str(), c.prometheus.path.as_str()),
            ("127.0.0.1:3010", "/metrics")
        );
        assert_eq!(
            (c.health_check.bind.as_str(), c.health_check.path.as_str()),
            ("127.0.0.1:8090", "/health")
        );
        assert_eq!(c.health_check.link_grace_ms, 30_000);
    }

    #[test]
    fn bad_keys_are_named() {
        let e = Config::parse("db_path = \"a\"\n[prometheus]\nbind = \"nowhere\"\n").unwrap_err();
        assert_eq!(
            e,
            "[prometheus] bind: \"nowhere\" is not an address like 127.0.0.1:3010"
        );
        let e = Config::parse("db_path = \"a\"\n[health_check]\npath = \"health\"\n").unwrap_err();
        assert_eq!(
            e,
            "[health_check] path: \"health\" must start with / and hold no spaces"
        );
        let e = Config::parse("db_path = \"a\"\n[prometheus]\nnamespace = \"a-b\"\n").unwrap_err();
        assert!(e.starts_with("[prometheus] namespace:"), "{e}");
        let e = Config::parse("db_path = \"a\"\n[health_check]\nnamespace = \"x\"\n").unwrap_err();
        assert!(e.contains("namespace"), "{e}");
        let same = "db_path = \"a\"\n[prometheus]\nenable = true\nbind = \":9000\"\npath = \"/x\"\n[health_check]\nenable = true\nbind = \":9000\"\npath = \"/x\"\n";
        assert!(Config::parse(same)
            .unwrap_err()
            .starts_with("[prometheus] path and [health_check] path"));
        Config::parse(&same.replace("path = \"/x\"\n[health", "[health")).unwrap();
    }

    #[test]
    fn anti_entropy_is_off_unless_set_and_not_too_often() {
        let c = Config::parse("db_path = \"a\"").unwrap();
        assert_eq!(c.anti_entropy.interval_secs, 0);
        let c = Config::parse("db_path = \"a\"\n[anti_entropy]\ninterval_secs = 600\n").unwrap();
        assert_eq!(c.anti_entropy.interval_secs, 600);
        let e = Config::parse("db_path = \"a\"\n[anti_entropy]\ninterval_secs = 5\n").unwrap_err();
        assert_eq!(
            e,
            "[anti_entropy] interval_secs: 5 is too short; use 0 (off) or at least 10"
        );
        let e = Config::parse("db_path = \"a\"\n[anti_entropy]\ninterval = 60\n").unwrap_err();
        assert!(e.contains("interval"), "{e}");
    }

    #[test]
    fn status_subject_stays_outside_the_stream() {
        let c = Config::parse("db_path = \"a\"").unwrap();
        assert_eq!(c.status_subject("all"), "hlrs.status.HLRS.all");
        let e = Config::parse("db_path = \"a\"\n[nats]\nstatus_subject = \"hlrs.changes.st\"\n")
            .unwrap_err();
        assert_eq!(e, "[nats] status_subject: \"hlrs.changes.st\" lies inside the stream's subjects hlrs.changes.>; choose a prefix outside it");
        let e = Config::parse(
            "db_path = \"a\"\n[nats]\nsubject_prefix = \"x\"\nstatus_subject = \"x\"\n",
        )
        .unwrap_err();
        assert!(e.starts_with("[nats] status_subject:"), "{e}");
    }
}
