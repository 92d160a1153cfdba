//! The embedded default: with no `[nats] urls`, the node starts and supervises a local
//! `nats-server` with JetStream stored next to the database, and stops it on shutdown.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting nats-server may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline of one TCP connect to the starting server (loopback: an answer is immediate, a
/// refusal too; only a wedged server takes this long).
const CONNECT_PROBE: Duration = Duration::from_millis(200);

pub struct EmbeddedServer {
    child: Child,
    bin: PathBuf,
    /// `[nats] server_config`: passed with `-c` (our flags override what it sets).
    config: Option<PathBuf>,
    addr: SocketAddr,
    store: PathBuf,
}

impl EmbeddedServer {
    /// Starts `bin` on `listen` with its store in `<db folder>/<db name>-nats/`, reading
    /// `config` first when given.
    pub fn start(
        bin: &Path,
        listen: &str,
        db_path: &Path,
        config: Option<&Path>,
    ) -> Result<EmbeddedServer, String> {
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| format!("[nats] embedded_listen: {listen:?} is not an address"))?;
        let stem = db_path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "db".into());
        let store = db_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("{stem}-nats"));
        fs::create_dir_all(&store)
            .map_err(|e| format!("cannot create {}: {e}", store.display()))?;
        stop_orphan(&store);
        let child = spawn(bin, addr, &store, config)?;
        let mut server = EmbeddedServer {
            child,
            bin: bin.to_path_buf(),
            config: config.map(Path::to_path_buf),
            addr,
            store,
        };
        server.wait_ready()?;
        log::info!(
            "embedded nats-server started addr={} store={}",
            server.addr,
            server.store.display()
        );
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "embedded nats-server exited at start ({status}); see {}",
                    self.store.join("nats-server.log").display()
                ));
            }
            if TcpStream::connect_timeout(&self.addr, CONNECT_PROBE).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "embedded nats-server did not accept connections on {} within {}s",
                    self.addr,
                    START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts the server if it died. Called from the node loop.
    pub fn supervise(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            log::warn!("embedded nats-server exited ({status}); restarting it");
            match spawn(&self.bin, self.addr, &self.store, self.config.as_deref()) {
                Ok(child) => {
                    self.child = child;
                    if let Err(e) = self.wait_ready() {
                        log::error!("{e}");
                    }
                }
                Err(e) => log::error!("{e}"),
            }
        }
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + crate::retry::CHILD_STOP;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                log::info!("embedded nats-server stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

const PID_FILE: &str = "nats-server.pid";

/// A node killed with SIGKILL leaves its nats-server running. Its pid file and command line
/// (which names our store folder) identify it; stop it so this start can take the port back.
fn stop_orphan(store: &Path) {
    let Some(pid) = fs::read_to_string(store.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = String::from_utf8_lossy(&cmdline).contains(&*store.to_string_lossy());
    if !ours {
        return;
    }
    log::warn!("stopping the embedded nats-server left running by an earlier run pid={pid}");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let deadline = Instant::now() + crate::retry::CHILD_STOP;
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        // a zombie (already exited, not reaped by its dead parent) still has a /proc entry
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if Path::new(&format!("/proc/{pid}/cmdline")).exists() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
}

fn spawn(
    bin: &Path,
    addr: SocketAddr,
    store: &Path,
    config: Option<&Path>,
) -> Result<Child, String> {
    // Refuse a port in use: we would silently talk to someone else's server.
    TcpListener::bind(addr).map_err(|e| {
        format!("embedded nats-server: {addr} is not free ({e}); point [nats] urls at the server there, or set [nats] embedded_listen to a free address")
    })?;
    let log = File::create(store.join("nats-server.log"))
        .map_err(|e| format!("cannot create the server log in {}: {e}", store.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    let child = cmd
        .arg("-a")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .arg("-js")
        .arg("-sd")
        .arg(store)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start the embedded nats-server {:?}: {e}; install nats-server, set [nats] server_bin, or set [nats] urls",
                bin
            )
        })?;
    let _ = fs::write(store.join(PID_FILE), child.id().to_string());
    Ok(child)
}
