//! NATS security: every authentication method and TLS with client certificates, each against
//! a real nats-server configured for it, with two real nodes replicating rows through it; wrong
//! credentials, a missing CA or a foreign client certificate are refused without crashing the
//! node; no secret (password, token, seed) ever reaches a log line or `harmonylite status`.
//!
//! Keys, JWTs and certificates are made at test time: nkeys through the crate's own
//! dependency, JWTs by hand (the NATS JWT format: ed25519-nkey signed claims), certificates
//! with the `openssl` CLI.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// How long a row may take to reach the other node.
const CONVERGE: Duration = Duration::from_secs(20);
/// How long a refused node may take to log its second failed attempt.
const REFUSAL: Duration = Duration::from_secs(15);
const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A secret unique to this run (letters and digits: no quoting in any config format).
fn secret(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}{}x{nanos}", std::process::id())
}

/// A nats-server with JetStream, its config `conf` written to `<dir>/<name>.conf`.
fn server(dir: &TestDir, name: &str, conf: &str) -> NatsServer {
    let path = dir.join(&format!("{name}.conf"));
    fs::write(&path, conf).unwrap();
    let [port, mon] = free_ports::<2>();
    NatsServer::start_custom(
        dir.path(),
        name,
        port,
        mon,
        true,
        &["-c".into(), path.display().to_string()],
    )
}

/// `extra` for `Node::start`: `nats_toml` in `[nats]` and debug logging (so the secret test
/// sees every line the node can write).
fn node_extra(nats_toml: &str) -> String {
    format!("[nats]\n{nats_toml}\n[logging]\nverbose = true\n")
}

/// Two nodes with `nats_toml` in their `[nats]` table: a row written on each reaches the other.
fn replicating_pair(dir: &TestDir, url: &str, nats_toml: &str) -> Vec<Node> {
    let nodes = start_cluster(
        dir.path(),
        url,
        &["n1", "n2"],
        SCHEMA,
        &node_extra(nats_toml),
    );
    app(&nodes[0].db, "INSERT INTO t VALUES (1, 'from n1')");
    app(&nodes[1].db, "INSERT INTO t VALUES (2, 'from n2')");
    for n in &nodes {
        wait_dump(
            &n.db,
            "t",
            &["integer=1|text='from n1'", "integer=2|text='from n2'"],
            CONVERGE,
        );
    }
    nodes
}

/// `harmonylite status` as text and as JSON (stdout and stderr together).
fn status_outputs(node: &Node) -> Vec<String> {
    let cfg = node.config.to_str().unwrap();
    [
        vec!["status", "--config", cfg],
        vec!["status", "--config", cfg, "--json"],
    ]
    .iter()
    .map(|args| {
        let out = run_bin(args, Duration::from_secs(20));
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .collect()
}

/// Neither the node's whole log (debug level) nor its status output shows `secret`.
fn assert_hidden(nodes: &[Node], secret: &str) {
    for n in nodes {
        let log = n.log();
        assert!(
            log.contains("DEBUG"),
            "{}: the log has no debug lines; is verbose on?\n{log}",
            n.name
        );
        assert!(
            !log.contains(secret),
            "{} log shows the secret {secret:?}:\n{log}",
            n.name
        );
        for out in status_outputs(n) {
            assert!(
                !out.contains(secret),
                "{} status shows the secret {secret:?}:\n{out}",
                n.name
            );
        }
    }
}

/// Starts one node on `url` that will not get a connection (the server refuses it, or a file
/// it needs is wrong), with a row waiting in its outbox.
fn start_refused(dir: &TestDir, name: &str, url: &str, nats_toml: &str) -> Node {
    // rusqlite rather than the app: one python start per node would dominate this test's time
    let db = rusqlite::Connection::open(dir.join(&format!("{name}.db"))).unwrap();
    db.execute_batch(&format!("{SCHEMA}; INSERT INTO t VALUES (1, 'kept')"))
        .unwrap();
    Node::start(dir.path(), name, &node_extra(nats_toml), Some(url))
}

/// Waits until `n` logged `expect` and a second attempt (debug: `next attempt in`), checks it
/// still runs, never connected, and stops cleanly on SIGTERM. Returns its log.
fn assert_refused(mut n: Node, expect: &str) -> String {
    n.wait_ready();
    n.wait_log(expect, REFUSAL);
    n.wait_log("next attempt in", REFUSAL);
    assert!(
        n.is_running(),
        "{} exited after a refused connection:\n{}",
        n.name,
        n.log()
    );
    assert!(
        !n.log().contains("connected to nats"),
        "{} connected:\n{}",
        n.name,
        n.log()
    );
    let st = n.stop();
    assert!(
        st.success(),
        "{}: exit {st} after SIGTERM:\n{}",
        n.name,
        n.log()
    );
    n.log()
}

/// Runs the node binary on a config that must be refused at load: exit 2, stderr returned.
fn config_refused(dir: &TestDir, nats_toml: &str) -> String {
    let cfg = dir.join("bad.toml");
    fs::write(
        &cfg,
        node_toml(
            &dir.join("bad.db"),
            &format!("[nats]\n{nats_toml}\n"),
            Some("nats://127.0.0.1:1"),
        ),
    )
    .unwrap();
    let out = run_bin(
        &["--config", cfg.to_str().unwrap()],
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2 (bad config), stderr:\n{err}"
    );
    assert!(
        err.contains(cfg.to_str().unwrap()),
        "the error names the config file: {err}"
    );
    err
}

// ---------------------------------------------------------------------------------------------
// Authentication methods

#[test]
fn user_password_replicates_and_stays_secret() {
    let dir = TestDir::new("sec-userpass");
    let pw = secret("pw");
    let nats = server(
        &dir,
        "nats",
        &format!("authorization {{ users = [ {{ user: hl, password: \"{pw}\" }} ] }}\n"),
    );
    let nodes = replicating_pair(
        &dir,
        &nats.url(),
        &format!("user_name = \"hl\"\nuser_password = \"{pw}\""),
    );
    assert_hidden(&nodes, &pw);
}

#[test]
fn token_replicates_and_stays_secret() {
    let dir = TestDir::new("sec-token");
    let token = secret("tok");
    let nats = server(
        &dir,
        "nats",
        &format!("authorization {{ token: \"{token}\" }}\n"),
    );
    let nodes = replicating_pair(&dir, &nats.url(), &format!("token = \"{token}\""));
    assert_hidden(&nodes, &token);
}

#[test]
fn nkey_seed_file_replicates_and_stays_secret() {
    let dir = TestDir::new("sec-nkey");
    let kp = nkeys::KeyPair::new_user();
    let seed = kp.seed().unwrap();
    fs::write(dir.join("user.nk"), format!("{seed}\n")).unwrap();
    let nats = server(
        &dir,
        "nats",
        &format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            kp.public_key()
        ),
    );
    // a relative path is taken from the config file's folder
    let nodes = replicating_pair(&dir, &nats.url(), "seed_file = \"user.nk\"");
    assert_hidden(&nodes, &seed);
}

#[test]
fn creds_file_replicates_in_operator_mode() {
    let dir = TestDir::new("sec-creds");
    let op = Operator::new();
    let nats = server(&dir, "nats", &op.server_conf());
    fs::write(dir.join("node.creds"), op.user_creds()).unwrap();
    let nodes = replicating_pair(
        &dir,
        &nats.url(),
        &format!(
            "creds_file = {}",
            toml_str(&dir.join("node.creds").display().to_string())
        ),
    );
    assert_hidden(&nodes, &op.user_seed);
    // operator mode is really on: a node without the creds file is refused
    assert_refused(
        start_refused(&dir, "anon", &nats.url(), ""),
        "authorization failed",
    );
}

#[test]
fn wrong_credentials_are_refused_without_echo() {
    let dir = TestDir::new("sec-wrong");
    let (pw, wrong_pw) = (secret("pw"), secret("wrongpw"));
    let known = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let stranger_seed = stranger.seed().unwrap();
    fs::write(dir.join("stranger.nk"), &stranger_seed).unwrap();
    let users = server(
        &dir,
        "users",
        &format!(
            "authorization {{ users = [ {{ user: hl, password: \"{pw}\" }}, {{ nkey: \"{}\" }} ] }}\n",
            known.public_key()
        ),
    );
    let (token, wrong_token) = (secret("tok"), secret("wrongtok"));
    let tokens = server(
        &dir,
        "tokens",
        &format!("authorization {{ token: \"{token}\" }}\n"),
    );

    let cases = [
        (
            "pw",
            users.url(),
            format!("user_name = \"hl\"\nuser_password = \"{wrong_pw}\""),
            "[nats] user_name/user_password",
            wrong_pw.clone(),
        ),
        (
            "seed",
            users.url(),
            "seed_file = \"stranger.nk\"".to_string(),
            "[nats] seed_file",
            stranger_seed.clone(),
        ),
        (
            "tok",
            tokens.url(),
            format!("token = \"{wrong_token}\""),
            "[nats] token",
            wrong_token.clone(),
        ),
        // no credentials at all: the hint lists the keys to set
        (
            "none",
            users.url(),
            String::new(),
            "set [nats] user_name/user_password, token, seed_file or creds_file",
            pw.clone(),
        ),
    ];
    let nodes: Vec<Node> = cases
        .iter()
        .map(|(name, url, toml, ..)| start_refused(&dir, name, url, toml))
        .collect();
    for (n, (name, _, _, names, hidden)) in nodes.into_iter().zip(cases) {
        let log = assert_refused(n, "authorization failed");
        assert!(
            log.contains("Authorization Violation") && log.contains(names),
            "{name}: the refusal names {names:?}:\n{log}"
        );
        assert!(
            !log.contains(&hidden),
            "{name}: the log shows the secret {hidden:?}:\n{log}"
        );
        assert!(
            !log.contains(&pw) && !log.contains(&token),
            "{name}: the log shows a server secret:\n{log}"
        );
    }
}

#[test]
fn auth_config_errors_name_the_keys_without_values() {
    let dir = TestDir::new("sec-config");
    let token = secret("tok");
    let pw = secret("pw");
    // two methods at once: both keys named, neither value shown
    let err = config_refused(
        &dir,
        &format!("user_name = \"hl\"\nuser_password = \"{pw}\"\ntoken = \"{token}\""),
    );
    assert!(
        err.contains("[nats] user_name/user_password and token: set one authentication method"),
        "{err}"
    );
    assert!(!err.contains(&pw) && !err.contains(&token), "{err}");
    // a secret of the wrong type: the line is named, the value is not shown
    let err = config_refused(&dir, "token = 123456789");
    assert!(
        err.contains("token = <hidden>") && !err.contains("123456789"),
        "{err}"
    );
}

/// The [nats] files are read at each connect, not at load (so `status` and `cleanup` need no
/// access to the keys): a missing or wrong file is logged naming the key and the file, never
/// its content, and the node keeps running and retrying with backoff.
#[test]
fn missing_or_wrong_files_are_named_at_connect() {
    let dir = TestDir::new("sec-files");
    let account_seed = nkeys::KeyPair::new_account().seed().unwrap();
    let user_seed = nkeys::KeyPair::new_user().seed().unwrap();
    let flipped = if &user_seed[20..21] == "A" { "B" } else { "A" };
    let damaged = format!("{}{flipped}{}", &user_seed[..20], &user_seed[21..]);
    fs::write(dir.join("garbage.nk"), "hello\n").unwrap();
    fs::write(dir.join("account.nk"), &account_seed).unwrap();
    fs::write(dir.join("damaged.nk"), &damaged).unwrap();
    fs::write(dir.join("empty.pem"), "").unwrap();
    // (node, [nats] keys, expected message, file named, content that must not show)
    let cases = [
        (
            "seedmissing",
            "seed_file = \"nope.nk\"",
            "[nats] seed_file: cannot read",
            "nope.nk",
            "",
        ),
        (
            "seedgarbage",
            "seed_file = \"garbage.nk\"",
            "holds no user nkey seed",
            "garbage.nk",
            "hello",
        ),
        (
            "seedaccount",
            "seed_file = \"account.nk\"",
            "holds no user nkey seed",
            "account.nk",
            account_seed.as_str(),
        ),
        (
            "seeddamaged",
            "seed_file = \"damaged.nk\"",
            "the user seed is damaged",
            "damaged.nk",
            damaged.as_str(),
        ),
        (
            "camissing",
            "ca_file = \"missing-ca.pem\"",
            "[nats] ca_file: cannot read",
            "missing-ca.pem",
            "",
        ),
        (
            "certmissing",
            "cert_file = \"missing-cert.pem\"\nkey_file = \"empty.pem\"",
            "[nats] cert_file: cannot read",
            "missing-cert.pem",
            "",
        ),
        (
            "certempty",
            "cert_file = \"empty.pem\"\nkey_file = \"empty.pem\"",
            "does not hold a PEM certificate",
            "empty.pem",
            "",
        ),
        (
            "credsmissing",
            "creds_file = \"missing.creds\"",
            "[nats] creds_file: cannot read",
            "missing.creds",
            "",
        ),
        (
            "credsempty",
            "creds_file = \"empty.pem\"",
            "does not hold a NATS user JWT",
            "empty.pem",
            "",
        ),
    ];
    // all at once: each waits for its second attempt
    let nodes: Vec<Node> = cases
        .iter()
        .map(|(name, toml, ..)| start_refused(&dir, name, "nats://127.0.0.1:1", toml))
        .collect();
    for (n, (name, _, expect, file, content)) in nodes.into_iter().zip(cases) {
        let log = assert_refused(n, expect);
        let path = dir.join(file);
        assert!(
            log.contains(expect) && log.contains(path.to_str().unwrap()),
            "{name}: the log names {}:\n{log}",
            path.display()
        );
        assert!(
            content.is_empty() || !log.contains(content),
            "{name}: the log shows the file's content:\n{log}"
        );
    }
    // `status` does not need the files
    let cfg = dir.join("seedmissing.toml");
    let out = run_bin(
        &["status", "--config", cfg.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// TLS

#[test]
fn tls_with_client_certificates_replicates() {
    let dir = TestDir::new("sec-tls");
    let pki = Pki::new(dir.path());
    let nats = server(
        &dir,
        "nats",
        &format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n  timeout: 2\n}}\n",
            q(&pki.server_cert),
            q(&pki.server_key),
            q(&pki.ca)
        ),
    );
    let url = format!("tls://127.0.0.1:{}", nats.port());
    let files = |ca: Option<&Path>, cert: &Path, key: &Path| {
        let ca = ca
            .map(|c| format!("ca_file = {}\n", toml_str(&c.display().to_string())))
            .unwrap_or_default();
        format!(
            "{ca}cert_file = {}\nkey_file = {}",
            toml_str(&cert.display().to_string()),
            toml_str(&key.display().to_string())
        )
    };
    let good = files(Some(&pki.ca), &pki.client_cert, &pki.client_key);
    let nodes = replicating_pair(&dir, &url, &good);
    let key_pem = fs::read_to_string(&pki.client_key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert_hidden(&nodes, key_body);

    // no CA: the server's certificate is not trusted; a client certificate from another CA,
    // or none: the server refuses the node
    let noca = start_refused(
        &dir,
        "noca",
        &url,
        &files(None, &pki.client_cert, &pki.client_key),
    );
    let foreign = start_refused(
        &dir,
        "foreign",
        &url,
        &files(Some(&pki.ca), &pki.foreign_cert, &pki.foreign_key),
    );
    let nocert = start_refused(
        &dir,
        "nocert",
        &url,
        &format!("ca_file = {}", toml_str(&pki.ca.display().to_string())),
    );
    let log = assert_refused(noca, "set [nats] ca_file");
    assert!(
        log.contains("cannot connect to NATS at tls://127.0.0.1") && log.contains("UnknownIssuer"),
        "{log}"
    );
    let refused =
        "the server refused this node's client certificate; check [nats] cert_file and key_file";
    let log = assert_refused(foreign, refused);
    assert!(log.contains("UnknownCA"), "{log}");
    let log = assert_refused(nocert, refused);
    assert!(log.contains("CertificateRequired"), "{log}");
}

/// A config string for a nats-server config.
fn q(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

/// A CA, a server certificate for 127.0.0.1, a client certificate, and a client certificate
/// from another CA, made with the openssl CLI (EC P-256, PEM).
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    foreign_cert: PathBuf,
    foreign_key: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = |name: &str| {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        };
        let leaf = |name: &str, ca: &str, ext: &str| {
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            );
            fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{ca}.pem"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-set_serial",
                    "2",
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        };
        ca("ca");
        ca("other-ca");
        leaf(
            "server",
            "ca",
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        leaf(
            "client",
            "ca",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        leaf(
            "foreign",
            "other-ca",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        let p = |f: &str| dir.join(f);
        Pki {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            foreign_cert: p("foreign.pem"),
            foreign_key: p("foreign.key"),
        }
    }
}

/// Runs the openssl CLI in `dir`; a missing CLI fails the test with what to install.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("the TLS test makes its certificates with the openssl CLI, which could not run ({e}); install it (Debian: apt-get install openssl)")
    });
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Operator mode: hand-made JWTs

/// An operator, a system account, an application account with JetStream, and one user of
/// it, as NATS JWTs (header `{"typ":"JWT","alg":"ed25519-nkey"}`, claims signed by the
/// issuer's nkey, base64url without padding).
struct Operator {
    operator_jwt: String,
    system_pub: String,
    system_jwt: String,
    account_pub: String,
    account_jwt: String,
    user_jwt: String,
    user_seed: String,
}

impl Operator {
    fn new() -> Operator {
        let op = nkeys::KeyPair::new_operator();
        let sys = nkeys::KeyPair::new_account();
        let acct = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let unlimited = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
        });
        let mut with_js = unlimited.clone();
        for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
            with_js[k] = serde_json::json!(-1);
        }
        let account = |limits: &serde_json::Value| {
            serde_json::json!({
                "limits": limits, "default_permissions": { "pub": {}, "sub": {} },
                "type": "account", "version": 2,
            })
        };
        Operator {
            operator_jwt: jwt(
                &op,
                &op.public_key(),
                "op",
                serde_json::json!({
                    "type": "operator", "version": 2, "system_account": sys.public_key(),
                }),
            ),
            system_pub: sys.public_key(),
            system_jwt: jwt(&op, &sys.public_key(), "SYS", account(&unlimited)),
            account_pub: acct.public_key(),
            account_jwt: jwt(&op, &acct.public_key(), "APP", account(&with_js)),
            user_jwt: jwt(
                &acct,
                &user.public_key(),
                "node",
                serde_json::json!({
                    "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                    "type": "user", "version": 2,
                }),
            ),
            user_seed: user.seed().unwrap(),
        }
    }

    fn server_conf(&self) -> String {
        format!(
            "operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n  {}: {}\n}}\n",
            self.operator_jwt, self.system_pub, self.system_pub, self.system_jwt, self.account_pub, self.account_jwt
        )
    }

    /// A `.creds` file as `nsc` writes it.
    fn user_creds(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            self.user_jwt, self.user_seed
        )
    }
}

/// A JWT for `subject` with `nats` claims, issued and signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let b64 = |b: &[u8]| base64::encode_config(b, base64::URL_SAFE_NO_PAD);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = serde_json::json!({
        "jti": "", "iat": iat, "iss": issuer.public_key(), "name": name, "sub": subject, "nats": nats,
    });
    // the id is the hash of the claims without it (as the Go library makes it)
    let digest = ring::digest::digest(&ring::digest::SHA256, claims.to_string().as_bytes());
    claims["jti"] = serde_json::json!(base32(digest.as_ref()));
    let body = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let sig = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", b64(&sig))
}

/// RFC 4648 base32 without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut acc, mut bits) = (String::new(), 0u32, 0);
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}
