//! The command line and the config file, as a user meets them: exit codes and messages that
//! name the file and the key; SIGTERM and SIGINT end a running node with exit code 0.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

const QUICK: Duration = Duration::from_secs(20);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `text` as `<dir>/<name>`, runs `harmonylite --config` on it and returns the output.
fn run_config(dir: &Path, name: &str, text: &str) -> std::process::Output {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    run_bin(&["--config", path.to_str().unwrap()], QUICK)
}

fn assert_exit(out: &std::process::Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit code {code}, got {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

#[test]
fn help_exits_0_and_mentions_config() {
    let out = run_bin(&["--help"], QUICK);
    assert_exit(&out, 0, "--help");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("--config"),
        "--help does not mention --config:\n{text}"
    );
}

#[test]
fn version_prints_the_crate_version_commit_and_target() {
    let out = run_bin(&["--version"], QUICK);
    assert_exit(&out, 0, "--version");
    let text = stdout(&out);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")),
        "--version does not print {}:\n{text}",
        env!("CARGO_PKG_VERSION")
    );
    // The commit this checkout is at (the test runs from the repository), and the host
    // triple the test build targets (std::env::consts gives its architecture and OS).
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let want = head.unwrap_or_else(|| "unknown".into());
    assert!(
        text.contains(&format!("(commit {want}, target ")),
        "--version does not name commit {want}:\n{text}"
    );
    let arch = std::env::consts::ARCH;
    assert!(
        text.contains(&format!("target {arch}-")) && text.contains("-linux"),
        "--version does not name the {arch} Linux target:\n{text}"
    );
}

#[test]
fn missing_config_file_exits_2_naming_it() {
    let dir = TestDir::new("cfg-missing");
    let path = dir.join("nope.toml");
    let out = run_bin(&["--config", path.to_str().unwrap()], QUICK);
    assert_exit(&out, 2, "missing config file");
    let err = stderr(&out);
    assert!(
        err.contains(path.to_str().unwrap()),
        "stderr does not name {}:\n{err}",
        path.display()
    );
}

#[test]
fn toml_syntax_error_exits_2_naming_the_file() {
    let dir = TestDir::new("cfg-syntax");
    let db = dir.join("app.db");
    app(&db, "CREATE TABLE t(id INTEGER PRIMARY KEY)");
    let out = run_config(
        dir.path(),
        "bad.toml",
        &format!(
            "db_path = {}\npublish = = true\n",
            toml_str(db.to_str().unwrap())
        ),
    );
    assert_exit(&out, 2, "TOML syntax error");
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml"),
        "stderr does not name the file:\n{err}"
    );
    assert!(err.contains("error"), "stderr does not say error:\n{err}");
}

#[test]
fn unknown_key_exits_2_naming_it() {
    let dir = TestDir::new("cfg-unknown");
    let db = dir.join("app.db");
    app(&db, "CREATE TABLE t(id INTEGER PRIMARY KEY)");
    let out = run_config(
        dir.path(),
        "typo.toml",
        &format!(
            "db_path = {}\n[nats]\nulrs = [\"nats://127.0.0.1:4222\"]\n",
            toml_str(db.to_str().unwrap())
        ),
    );
    assert_exit(&out, 2, "unknown key [nats] ulrs");
    let err = stderr(&out);
    assert!(err.contains("ulrs"), "stderr does not name `ulrs`:\n{err}");
    assert!(
        err.contains("typo.toml"),
        "stderr does not name the file:\n{err}"
    );
}

#[test]
fn ill_typed_polling_interval_exits_2_naming_it() {
    let dir = TestDir::new("cfg-type");
    let db = dir.join("app.db");
    app(&db, "CREATE TABLE t(id INTEGER PRIMARY KEY)");
    let out = run_config(
        dir.path(),
        "typed.toml",
        &format!(
            "db_path = {}\npolling_interval = \"fast\"\n",
            toml_str(db.to_str().unwrap())
        ),
    );
    assert_exit(&out, 2, "polling_interval = \"fast\"");
    let err = stderr(&out);
    assert!(
        err.contains("polling_interval"),
        "stderr does not name polling_interval:\n{err}"
    );
}

#[test]
fn missing_db_path_exits_2_naming_it() {
    let dir = TestDir::new("cfg-nodb");
    let out = run_config(
        dir.path(),
        "nodb.toml",
        "publish = true\n[nats]\nurls = [\"nats://127.0.0.1:4222\"]\n",
    );
    assert_exit(&out, 2, "missing db_path");
    let err = stderr(&out);
    assert!(
        err.contains("db_path"),
        "stderr does not name db_path:\n{err}"
    );
}

#[test]
fn db_that_does_not_exist_exits_1_naming_it_and_creates_nothing() {
    let dir = TestDir::new("cfg-nofile");
    let db = dir.join("absent.db");
    let cfg = dir.join("n.toml");
    // A reachable-looking URL: the DB check must come first (nothing listens there).
    fs::write(
        &cfg,
        node_toml(&db, "", Some(&format!("nats://127.0.0.1:{}", free_port()))),
    )
    .unwrap();
    // The short form -c is accepted too.
    let out = run_bin(&["-c", cfg.to_str().unwrap()], QUICK);
    assert_exit(&out, 1, "db_path that does not exist");
    let err = stderr(&out);
    assert!(
        err.contains(db.to_str().unwrap()),
        "stderr does not name {}:\n{err}",
        db.display()
    );
    assert!(
        !db.exists(),
        "the node created {} instead of refusing",
        db.display()
    );
}

#[test]
fn sigterm_and_sigint_exit_0() {
    let dir = TestDir::new("cfg-signals");
    let nats = NatsServer::start(dir.path());
    app(
        &dir.join("n1.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
    );
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&nats.url()));
    let st = n1.stop();
    assert_eq!(
        st.code(),
        Some(0),
        "SIGTERM: exit status {st}; log:\n{}",
        n1.log()
    );
    n1.restart_ready();
    let st = n1.stop_with("INT");
    assert_eq!(
        st.code(),
        Some(0),
        "SIGINT: exit status {st}; log:\n{}",
        n1.log()
    );
    // The app's table is untouched by start and stop.
    assert_eq!(dump(&n1.db, "t"), Vec::<String>::new());
}

/// The embedded default: no `[nats] urls`, the node starts its own nats-server on
/// `embedded_listen`; another node pointing at that address replicates with it; on SIGTERM the
/// child nats-server is gone too.
#[test]
fn embedded_nats_server_is_started_and_stopped_with_the_node() {
    let dir = TestDir::new("embedded");
    let port = free_port();
    let _reaper = Reaper {
        port,
        dir: dir.path().to_path_buf(),
    };
    let listen = format!("127.0.0.1:{port}");
    let bin = nats_server_bin();
    let embedded = format!(
        "[nats]\nembedded_listen = {}\nserver_bin = {}\n",
        toml_str(&listen),
        toml_str(bin.to_str().unwrap())
    );
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";
    app(&dir.join("n1.db"), schema);
    app(&dir.join("n2.db"), schema);
    let mut n1 = Node::start_ready(dir.path(), "n1", &embedded, None);
    assert!(
        port_open(port),
        "n1 is ready but nothing listens on {listen}; log:\n{}",
        n1.log()
    );
    let children = nats_servers_of(port, dir.path());
    assert!(
        !children.is_empty(),
        "no nats-server process with port {port} or {} in its command line",
        dir.path().display()
    );

    let mut n2 = Node::start_ready(dir.path(), "n2", "", Some(&format!("nats://{listen}")));
    app(&n1.db, "INSERT INTO t VALUES (1, 'from n1')");
    app(&n2.db, "INSERT INTO t VALUES (2, 'from n2')");
    let expected = ["integer=1|text='from n1'", "integer=2|text='from n2'"];
    wait_dump(&n1.db, "t", &expected, Duration::from_secs(60));
    wait_dump(&n2.db, "t", &expected, Duration::from_secs(60));

    // n2 first: a node whose server is gone is another test's business.
    let st = n2.stop();
    assert_eq!(st.code(), Some(0), "n2 SIGTERM exit status {st}");
    let st = n1.stop();
    assert_eq!(
        st.code(),
        Some(0),
        "n1 SIGTERM exit status {st}; log:\n{}",
        n1.log()
    );
    wait_until_or(
        &format!("the embedded nats-server on {listen} is gone"),
        Duration::from_secs(10),
        || !port_open(port) && nats_servers_of(port, dir.path()).is_empty(),
        || {
            format!(
                "nats-server processes: {:?}",
                nats_servers_of(port, dir.path())
            )
        },
    );
}

/// A node whose nats-server has gone away still honours SIGTERM: it exits 0 within the stop
/// deadline (the outbox flush has its own deadline), rather than waiting for the server.
#[test]
fn sigterm_exits_promptly_when_nats_is_gone() {
    let dir = TestDir::new("sigterm-nonats");
    let mut nats = NatsServer::start(dir.path());
    app(
        &dir.join("n1.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
    );
    let mut n1 = Node::start_ready(dir.path(), "n1", "", Some(&nats.url()));
    n1.wait_connected();
    app(&n1.db, "INSERT INTO t VALUES (1, 'published')");
    nats.stop();
    n1.wait_log("disconnected", Duration::from_secs(20));
    let st = n1.stop();
    assert_eq!(
        st.code(),
        Some(0),
        "SIGTERM with nats gone: exit status {st}"
    );
}

/// `kill -9` of an embedded-mode node (no chance to stop its child): after a restart it
/// serves and replicates again.
#[test]
fn embedded_node_restarts_after_kill9() {
    let dir = TestDir::new("embedded-kill9");
    let port = free_port();
    let _reaper = Reaper {
        port,
        dir: dir.path().to_path_buf(),
    };
    let listen = format!("127.0.0.1:{port}");
    let bin = nats_server_bin();
    let embedded = format!(
        "[nats]\nembedded_listen = {}\nserver_bin = {}\n",
        toml_str(&listen),
        toml_str(bin.to_str().unwrap())
    );
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";
    app(&dir.join("n1.db"), schema);
    app(&dir.join("n2.db"), schema);
    let mut n1 = Node::start_ready(dir.path(), "n1", &embedded, None);
    let n2 = Node::start_ready(dir.path(), "n2", "", Some(&format!("nats://{listen}")));
    app(&n1.db, "INSERT INTO t VALUES (1, 'before kill')");
    wait_dump(
        &n2.db,
        "t",
        &["integer=1|text='before kill'"],
        Duration::from_secs(60),
    );

    n1.kill9();
    app(&n1.db, "INSERT INTO t VALUES (2, 'while dead')");
    n1.restart_ready();
    app(&n2.db, "INSERT INTO t VALUES (3, 'from n2 after restart')");
    let expected = [
        "integer=1|text='before kill'",
        "integer=2|text='while dead'",
        "integer=3|text='from n2 after restart'",
    ];
    wait_dump(&n1.db, "t", &expected, Duration::from_secs(60));
    wait_dump(&n2.db, "t", &expected, Duration::from_secs(60));
    let st = n1.stop();
    // Neither the server started before the kill nor the one after it may outlive the node
    // (n2 is still connected, as a user's other nodes would be).
    wait_until_or(
        "no nats-server of n1 is left after SIGTERM",
        Duration::from_secs(10),
        || nats_servers_of(port, dir.path()).is_empty(),
        || format!("left: {:?}", nats_servers_of(port, dir.path())),
    );
    assert_eq!(st.code(), Some(0), "n1 SIGTERM exit status {st}");
}
