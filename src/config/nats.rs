//! `[nats]`: servers, names, authentication and TLS, and the checks of the key and certificate
//! files (made before each connection attempt, not at load, so a fixed file needs no restart).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_EMBEDDED_LISTEN, DEFAULT_PING_INTERVAL_MS,
    DEFAULT_RECONNECT_MAX_MS, DEFAULT_RECONNECT_MIN_MS, DEFAULT_SERVER_BIN, DEFAULT_STATUS_SUBJECT,
    DEFAULT_STREAM_PREFIX, DEFAULT_SUBJECT_PREFIX, DEFAULT_WRITE_TIMEOUT_MS,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nats {
    /// Servers to connect to; empty means: start an embedded nats-server.
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    #[serde(default = "default_stream_prefix")]
    pub stream_prefix: String,
    /// Prefix of the status request/reply subjects (never inside `<subject_prefix>.>`).
    #[serde(default = "default_status_subject")]
    pub status_subject: String,
    /// Authentication: at most one of user_name/user_password, token, seed_file, creds_file.
    pub user_name: Option<String>,
    pub user_password: Option<Secret>,
    /// A server's `authorization { token }`.
    pub token: Option<Secret>,
    /// A file holding a user nkey seed (`SU...`): the node signs the server's nonce with it.
    pub seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and seed) for servers in operator (JWT) mode.
    pub creds_file: Option<PathBuf>,
    /// TLS: CA certificates (PEM) to trust instead of the system's; a client certificate and
    /// its key (PEM) for servers that verify clients. File paths are relative to the config's
    /// folder.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The nats-server binary for the embedded mode.
    #[serde(default = "default_server_bin")]
    pub server_bin: PathBuf,
    /// Listen address of the embedded nats-server.
    #[serde(default = "default_embedded_listen")]
    pub embedded_listen: String,
    /// Deadline of one connection attempt, milliseconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Reconnect backoff: first delay and cap, milliseconds (doubling, with jitter).
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Liveness: when the server has said nothing for this long, a PING goes out; silent for
    /// three intervals despite PINGs, the link is declared down and replaced. Milliseconds.
    #[serde(default = "default_ping_interval")]
    pub ping_interval_ms: u64,
    /// A write to the server that moves no byte for this long fails, and the connection is
    /// replaced (a stalled link no longer holds a publish forever). Milliseconds.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_ms: u64,
    /// Embedded mode: a nats-server config file (`-c`) for what our flags do not set (cluster,
    /// leaf nodes, accounts); HarmonyLite-Go's key. Relative to the config's folder.
    pub server_config: Option<PathBuf>,
    /// HarmonyLite-Go's name for the embedded server's address: becomes `embedded_listen`.
    pub bind_address: Option<String>,
    /// HarmonyLite-Go's connect retries: accepted and ignored (the node never gives up).
    pub connect_retries: Option<i64>,
    /// HarmonyLite-Go's wait between reconnect attempts: becomes `reconnect_min_ms`.
    pub reconnect_wait_seconds: Option<u64>,
}

/// A secret from the config (password, token). Its `Debug` hides the value, so printing a
/// `Config` cannot leak it; `expose` is for the one place that hands it to the NATS client.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(hidden)")
    }
}

fn default_connect_timeout() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_reconnect_min() -> u64 {
    DEFAULT_RECONNECT_MIN_MS
}
fn default_reconnect_max() -> u64 {
    DEFAULT_RECONNECT_MAX_MS
}
fn default_ping_interval() -> u64 {
    DEFAULT_PING_INTERVAL_MS
}
fn default_write_timeout() -> u64 {
    DEFAULT_WRITE_TIMEOUT_MS
}
fn default_subject_prefix() -> String {
    DEFAULT_SUBJECT_PREFIX.into()
}
fn default_stream_prefix() -> String {
    DEFAULT_STREAM_PREFIX.into()
}
fn default_status_subject() -> String {
    DEFAULT_STATUS_SUBJECT.into()
}
fn default_server_bin() -> PathBuf {
    DEFAULT_SERVER_BIN.into()
}
fn default_embedded_listen() -> String {
    DEFAULT_EMBEDDED_LISTEN.into()
}

impl Default for Nats {
    fn default() -> Self {
        Nats {
            urls: Vec::new(),
            subject_prefix: default_subject_prefix(),
            stream_prefix: default_stream_prefix(),
            status_subject: default_status_subject(),
            user_name: None,
            user_password: None,
            token: None,
            seed_file: None,
            creds_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_bin: default_server_bin(),
            embedded_listen: default_embedded_listen(),
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            reconnect_min_ms: DEFAULT_RECONNECT_MIN_MS,
            reconnect_max_ms: DEFAULT_RECONNECT_MAX_MS,
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            server_config: None,
            bind_address: None,
            connect_retries: None,
            reconnect_wait_seconds: None,
        }
    }
}

impl Nats {
    /// The authentication methods set, by their key names (a valid config sets at most one).
    pub fn auth_methods(&self) -> Vec<&'static str> {
        [
            (self.user_name.is_some(), "user_name/user_password"),
            (self.token.is_some(), "token"),
            (self.seed_file.is_some(), "seed_file"),
            (self.creds_file.is_some(), "creds_file"),
        ]
        .into_iter()
        .filter_map(|(set, keys)| set.then_some(keys))
        .collect()
    }

    /// Reads every file this table names and checks it holds what the key says (a PEM
    /// certificate, a PEM key, a user seed, a creds file). The error names the key and the file,
    /// never the file's content. Called before every connection attempt, so a fixed or rotated
    /// file is used by the next one.
    pub fn check_files(&self) -> Result<(), String> {
        let pem = [
            (
                "ca_file",
                &self.ca_file,
                "-----BEGIN CERTIFICATE-----",
                "a PEM certificate",
            ),
            (
                "cert_file",
                &self.cert_file,
                "-----BEGIN CERTIFICATE-----",
                "a PEM certificate",
            ),
            (
                "key_file",
                &self.key_file,
                "PRIVATE KEY-----",
                "a PEM private key",
            ),
            (
                "creds_file",
                &self.creds_file,
                "JWT-----",
                "a NATS user JWT (a .creds file)",
            ),
        ];
        for (key, path, marker, what) in pem {
            let Some(path) = path else { continue };
            if !read_file(key, path)?.contains(marker) {
                return Err(format!(
                    "[nats] {key}: {} does not hold {what}",
                    path.display()
                ));
            }
        }
        self.user_seed().map(|_| ())
    }

    /// The key pair of `seed_file`, read now (the file may have been replaced since start).
    pub fn user_seed(&self) -> Result<Option<nkeys::KeyPair>, String> {
        let Some(path) = &self.seed_file else {
            return Ok(None);
        };
        let text = read_file("seed_file", path)?;
        // `nk -gen user` writes the seed alone; a .creds file has it on a line of its own too
        let seed = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("SU"))
            .ok_or_else(|| {
                format!(
                    "[nats] seed_file: {} holds no user nkey seed (a line starting with SU)",
                    path.display()
                )
            })?;
        // the nkeys error is not shown: it would not help, and the seed must never be
        let kp = nkeys::KeyPair::from_seed(seed).map_err(|_| {
            format!(
                "[nats] seed_file: {}: the user seed is damaged (bad length or checksum)",
                path.display()
            )
        })?;
        Ok(Some(kp))
    }
}

fn read_file(key: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("[nats] {key}: cannot read {}: {e}", path.display()))
}
