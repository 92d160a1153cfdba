//! HarmonyLite-Go's keys: a user's `config.toml`, written out as its sample file does, starts a
//! node. Each key is mapped where its meaning carries over (reconnect wait to the backoff,
//! `bind_address` and `server_config` to the embedded server, `[snapshot.nats]` to the snapshot
//! buckets, `leader_ttl` to the upload lease, `format = "console"` to text); the others are
//! accepted and named, with why, in [`Config::ignored`] (one warning line at start). Keys that
//! exist in neither program stay errors: a typo must not pass silently.

use std::fmt;

use serde::Deserialize;

use super::{Config, DEFAULT_EMBEDDED_LISTEN, DEFAULT_POLLING_INTERVAL_MS};

/// `[snapshot.nats]`: the snapshot buckets (object store and key-value bucket, one name).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotNats {
    /// Replicas of the snapshot buckets (absent: `[replication_log] replicas`).
    pub replicas: Option<usize>,
    /// The buckets' name (absent: `<stream_prefix>-snapshots`).
    pub bucket: Option<String>,
}

/// `[snapshot.s3]`, `[snapshot.webdav]`, `[snapshot.sftp]`: HarmonyLite-Go's other stores, with
/// its keys; accepted, never used (`[snapshot] store` other than "nats" is refused). Its
/// `Debug` shows none of the values: they hold credentials.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRemote {
    pub url: Option<String>,
    pub endpoint: Option<String>,
    pub path: Option<String>,
    pub use_ssl: Option<bool>,
    pub access_key: Option<String>,
    pub secret: Option<String>,
    pub session_token: Option<String>,
    pub bucket: Option<String>,
}

impl fmt::Debug for SnapshotRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotRemote(ignored)")
    }
}

/// HarmonyLite-Go's "random port" for the embedded server.
const GO_RANDOM_PORT: &str = ":-1";

impl Config {
    /// Maps HarmonyLite-Go's keys onto ours and lists the ignored ones (before validation, so
    /// a mapped value is checked like one of ours).
    pub(super) fn adopt_go_keys(&mut self) -> Result<(), String> {
        let mut ignored: Vec<(&'static str, String)> = Vec::new();
        let mut ignore = |key: &'static str, why: &str| ignored.push((key, why.to_string()));
        if self.scan_max_changes.is_some() {
            ignore(
                "scan_max_changes",
                "frames are bounded in bytes by max_frame_bytes, not in rows",
            );
        }
        if self.cleanup_interval.is_some() {
            ignore(
                "cleanup_interval",
                "a change leaves the outbox as soon as JetStream acknowledges it",
            );
        }
        if self.sleep_timeout.is_some() {
            ignore("sleep_timeout", "the node runs until it is stopped");
        }
        if self.polling_interval == 0 {
            // HarmonyLite-Go's default: no fallback poll (it watches the file). Polling is
            // how this node sees changes, so it polls at our default.
            self.polling_interval = DEFAULT_POLLING_INTERVAL_MS;
            ignore(
                "polling_interval = 0",
                "the change log is polled every 100 ms (polling is how this node sees changes)",
            );
        }
        if self.replication_log.update_existing.is_some() {
            ignore(
                "[replication_log] update_existing",
                "a stream that exists keeps its limits; change them with nats stream edit",
            );
        }
        for (key, set) in [
            ("[snapshot.s3]", self.snapshot.s3.is_some()),
            ("[snapshot.webdav]", self.snapshot.webdav.is_some()),
            ("[snapshot.sftp]", self.snapshot.sftp.is_some()),
        ] {
            if set {
                ignore(key, "snapshots live in NATS (store = \"nats\")");
            }
        }
        let n = &mut self.nats;
        if n.connect_retries.is_some() {
            ignore(
                "[nats] connect_retries",
                "the node never gives up: it retries with the reconnect backoff",
            );
        }
        if let Some(secs) = n.reconnect_wait_seconds.filter(|s| *s > 0) {
            // one fixed wait there: the first step of the backoff here, which doubles up to
            // reconnect_max_ms (raised to the wait if it is shorter)
            n.reconnect_min_ms = secs.saturating_mul(1000);
            n.reconnect_max_ms = n.reconnect_max_ms.max(n.reconnect_min_ms);
        }
        if let Some(bind) = n.bind_address.take().filter(|b| !b.is_empty()) {
            if bind == GO_RANDOM_PORT {
                ignore(
                    "[nats] bind_address = \":-1\"",
                    "the embedded server listens on embedded_listen (127.0.0.1:4222 by default)",
                );
            } else if n.embedded_listen != DEFAULT_EMBEDDED_LISTEN {
                return Err("[nats] bind_address and embedded_listen: both set the embedded server's address; keep one".into());
            } else {
                n.embedded_listen = super::listen_addr(&bind);
            }
        }
        // HarmonyLite-Go's sample writes "" for keys it does not use
        for p in [
            &mut n.server_config,
            &mut n.seed_file,
            &mut n.ca_file,
            &mut n.cert_file,
            &mut n.key_file,
        ] {
            if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *p = None;
            }
        }
        if n.user_name.as_deref() == Some("") {
            n.user_name = None;
        }
        if n.user_password
            .as_ref()
            .is_some_and(|p| p.expose().is_empty())
        {
            n.user_password = None;
        }
        if self.logging.format.as_deref() == Some("console") {
            self.logging.format = Some("text".into());
        }
        if let Some(ttl) = self.snapshot.leader_ttl {
            if ttl < 1000 {
                return Err("[snapshot] leader_ttl: expected milliseconds, at least 1000".into());
            }
        }
        let sn = &self.snapshot.nats;
        if sn.replicas.is_some_and(|r| !(1..=5).contains(&r)) {
            return Err("[snapshot.nats] replicas: expected 1 to 5".into());
        }
        if let Some(b) = &sn.bucket {
            let ok = !b.is_empty()
                && b.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_".contains(&c));
            if !ok {
                return Err(format!(
                    "[snapshot.nats] bucket: {b:?} is not a bucket name (letters, digits, - and _)"
                ));
            }
        }
        self.ignored = ignored;
        Ok(())
    }

    /// The snapshot buckets' name: `[snapshot.nats] bucket`, else `<stream_prefix>-snapshots`.
    pub fn snapshot_bucket(&self) -> String {
        self.snapshot
            .nats
            .bucket
            .clone()
            .unwrap_or_else(|| format!("{}-snapshots", self.nats.stream_prefix))
    }

    /// The snapshot buckets' replicas: `[snapshot.nats] replicas`, else the stream's.
    pub fn snapshot_replicas(&self) -> usize {
        self.snapshot
            .nats
            .replicas
            .unwrap_or(self.replication_log.replicas)
    }

    /// The one warning line about ignored keys, if any: `key="why" ...`.
    pub fn ignored_line(&self) -> Option<String> {
        (!self.ignored.is_empty()).then(|| {
            self.ignored
                .iter()
                .map(|(k, why)| format!("{k}={why:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// HarmonyLite-Go's sample `config.toml`, every key written out with its sample value.
    pub const GO_SAMPLE: &str = r#"
db_path="/tmp/harmonylite.db"
node_id=1
seq_map_path="/tmp/seq-map.cbor"
replicate = true
publish = true
scan_max_changes = 512
cleanup_interval = 5000
sleep_timeout = 0
polling_interval = 0

[snapshot]
enabled=true
store="nats"
interval=0
leader_ttl=30000

[snapshot.nats]
replicas=1
bucket="custom-bucket-name"

[snapshot.s3]
endpoint="127.0.0.1:9000"
path="snapshots/harmonylite"
use_ssl=false
access_key="harmonylite"
secret="ChangeMe"
bucket="harmonylite"

[snapshot.webdav]
url="https://<webdav_server>/<web_dav_path>?dir=/snapshots/path/for/harmonylite&login=<username>&secret=<password>"

[snapshot.sftp]
url="sftp://<user>:<password>@<sftp_server>:<port>/path/to/save/snapshot"

[replication_log]
replicas=1
shards=1
max_entries=1024
compress=true
update_existing=false

[nats]
urls=[]
bind_address="0.0.0.0:4222"
server_config=""
subject_prefix="harmonylite-change-log"
stream_prefix="harmonylite-changes"
seed_file=""
user_name=""
user_password=""
connect_retries=5
reconnect_wait_seconds=2

[prometheus]
enable=false
bind=":3010"
namespace="harmonylite"
subsystem=""

[logging]
verbose=true
format="console"

[health_check]
enable=false
bind="0.0.0.0:8090"
path="/health"
detailed=true
"#;

    #[test]
    fn the_go_sample_parses_and_maps() {
        let c = Config::parse(GO_SAMPLE).unwrap();
        assert_eq!(c.polling_interval, 100);
        assert_eq!(c.nats.embedded_listen, "0.0.0.0:4222");
        assert_eq!(
            (c.nats.reconnect_min_ms, c.nats.reconnect_max_ms),
            (2000, 15000)
        );
        assert!(c.nats.seed_file.is_none() && c.nats.server_config.is_none());
        assert!(c.nats.user_name.is_none() && c.nats.user_password.is_none());
        assert!(c.nats.auth_methods().is_empty());
        assert_eq!(c.logging.format.as_deref(), Some("text"));
        assert_eq!(c.snapshot.lease_ms(), 30_000);
        assert_eq!(c.snapshot_bucket(), "custom-bucket-name");
        assert_eq!(c.snapshot_replicas(), 1);
        let keys: Vec<&str> = c.ignored.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "scan_max_changes",
                "cleanup_interval",
                "sleep_timeout",
                "polling_interval = 0",
                "[replication_log] update_existing",
                "[snapshot.s3]",
                "[snapshot.webdav]",
                "[snapshot.sftp]",
                "[nats] connect_retries"
            ]
        );
        let line = c.ignored_line().unwrap();
        assert!(
            line.starts_with("scan_max_changes=\"frames are bounded"),
            "{line}"
        );
        assert!(!format!("{c:?}").contains("ChangeMe"));
    }

    #[test]
    fn our_defaults_stay_without_go_keys() {
        let c = Config::parse("db_path = \"a\"").unwrap();
        assert!(c.ignored.is_empty() && c.ignored_line().is_none());
        assert_eq!(c.snapshot_bucket(), "HLRS-snapshots");
        assert_eq!(c.snapshot.lease_ms(), 600_000);
        assert_eq!(c.nats.embedded_listen, "127.0.0.1:4222");
    }

    #[test]
    fn typos_and_bad_values_are_still_named() {
        for (text, key) in [
            ("scan_max_change = 5", "scan_max_change"),
            ("[snapshot.nats]\nbuckett = \"x\"", "buckett"),
            ("[snapshot.s3]\nendpont = \"x\"", "endpont"),
            ("[nats]\nconnect_retry = 5", "connect_retry"),
        ] {
            let e = Config::parse(&format!("db_path = \"a\"\n{text}\n")).unwrap_err();
            assert!(e.contains(key), "{e}");
        }
        let e = Config::parse("db_path = \"a\"\n[snapshot.nats]\nbucket = \"a.b\"\n").unwrap_err();
        assert!(e.starts_with("[snapshot.nats] bucket:"), "{e}");
        let e = Config::parse("db_path = \"a\"\n[snapshot.nats]\nreplicas = 7\n").unwrap_err();
        assert_eq!(e, "[snapshot.nats] replicas: expected 1 to 5");
        let e = Config::parse("db_path = \"a\"\n[snapshot]\nleader_ttl = 5\n").unwrap_err();
        assert!(e.starts_with("[snapshot] leader_ttl:"), "{e}");
        let e = Config::parse(
            "db_path = \"a\"\n[nats]\nbind_address = \":4333\"\nembedded_listen = \"127.0.0.1:4444\"\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("[nats] bind_address and embedded_listen"),
            "{e}"
        );
        let c = Config::parse("db_path = \"a\"\n[nats]\nbind_address = \":-1\"\n").unwrap();
        assert_eq!(c.nats.embedded_listen, "127.0.0.1:4222");
        assert_eq!(c.ignored[0].0, "[nats] bind_address = \":-1\"");
    }
}
