//! The real `certgate` daemon: a standard [`Setup`] (temp dir, PKI,
//! config), the running [`Gateway`] process, and readers of its admin
//! endpoints and metrics.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{Proto, TestClient};
use super::files::{replace_atomically, write};
use super::pki::{Leaf, LeafSpec, TestCa};
use super::tools::eventually;

pub const BIN: &str = env!("CARGO_BIN_EXE_certgate");

/// A standard test setup: a temp dir with a client CA, a server certificate
/// and a config pointing at `upstream`. Tweak `extra` (appended TOML) and the
/// files before `start()`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub server_ca: TestCa,
    pub upstream: SocketAddr,
    /// TOML sections appended after the generated ones.
    pub extra: String,
    /// Replaces the generated `[client_auth]` section when set.
    pub client_auth: Option<String>,
    /// Replaces the generated `[listener]` section when set.
    pub listener: Option<String>,
    /// Environment variables for the daemon.
    pub env: Vec<(String, String)>,
}

impl Setup {
    pub fn new(upstream: SocketAddr) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::root("certgate test client CA");
        let server_ca = TestCa::root("certgate test server CA");
        let server = server_ca.issue(&LeafSpec::server());
        write(dir.path(), "client-ca.pem", &ca.pem);
        write(dir.path(), "server.pem", &server.chain_pem);
        write(dir.path(), "server.key", &server.key_pem);
        Setup {
            dir,
            ca,
            server_ca,
            upstream,
            extra: String::new(),
            client_auth: None,
            listener: None,
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `upstream.protocol`, set through its environment override.
    pub fn upstream_protocol(&mut self, protocol: &str) {
        self.env
            .push(("CERTGATE_UPSTREAM__PROTOCOL".into(), protocol.into()));
    }

    /// Revokes `leaves`: writes the client CA's CRL listing them and makes
    /// `[client_auth]` check it.
    pub fn revoke(&mut self, leaves: &[&Leaf]) {
        write(self.path(), "client-ca.crl.pem", &self.ca.crl(leaves));
        self.client_auth = Some(
            "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"client-ca.crl.pem\"]\n"
                .into(),
        );
    }

    pub fn config_text(&self) -> String {
        let listener = self
            .listener
            .clone()
            .unwrap_or_else(|| "[listener]\naddress = \"127.0.0.1:0\"\n".into());
        let client_auth = self
            .client_auth
            .clone()
            .unwrap_or_else(|| "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\n".into());
        format!(
            "{listener}\n[server_tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\n{client_auth}\n[upstream]\nurl = \"http://{}\"\nconnect_timeout = \"1s\"\ntimeout = \"5s\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{}\n",
            self.upstream, self.extra
        )
    }

    pub fn write_config(&self) -> PathBuf {
        write(self.path(), "certgate.toml", &self.config_text())
    }

    /// Writes the config and starts the daemon; panics if it does not get ready.
    pub fn start(&self) -> Gateway {
        let config = self.write_config();
        Gateway::start(&config, &self.env)
    }

    /// A client that trusts the server CA and presents `leaf`.
    pub fn client(&self, leaf: &Leaf) -> TestClient {
        TestClient::new(&self.server_ca.pem, Some(leaf), Proto::Http1)
    }

    pub fn client_h2(&self, leaf: &Leaf) -> TestClient {
        TestClient::new(&self.server_ca.pem, Some(leaf), Proto::Http2)
    }

    /// A client that presents no certificate.
    pub fn anonymous_client(&self) -> TestClient {
        TestClient::new(&self.server_ca.pem, None, Proto::Http1)
    }
}

/// A running `certgate run` process. Killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `certgate run -c config` with JSON logs and waits until it is
    /// ready (see [`Gateway::attach`]).
    pub fn start(config: &Path, env: &[(String, String)]) -> Gateway {
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env("CERTGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn certgate");
        Self::attach(child)
    }

    /// Follows the stderr of an already spawned daemon (started by
    /// [`Gateway::start`], or by a test that passes it sockets as systemd
    /// does) and returns once it is ready to serve.
    ///
    /// The addresses come from the log: the daemon binds port 0 (or is
    /// handed sockets), and its "admin listener ready" and "certgate
    /// listening" lines are the only place that names the ports it got.
    /// Readiness is the admin listener's `/readyz` answering 200, the
    /// signal a load balancer or orchestrator uses, not the log text.
    pub fn attach(mut child: Child) -> Gateway {
        let deadline = Instant::now() + START_TIMEOUT;
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(Option<SocketAddr>, Option<SocketAddr>)>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                let mut admin = None;
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let (message, addr) = message_and_address(&line);
                    let addr = addr.and_then(|a| a.parse().ok());
                    match message.as_deref() {
                        Some("admin listener ready") => admin = addr,
                        Some("certgate listening") => {
                            let _ = tx.send((addr, admin));
                        }
                        _ => {}
                    }
                    logs.lock().unwrap().push(line);
                }
                let _ = tx.send((None, None));
            });
        }
        let (addr, admin) = rx.recv_timeout(START_TIMEOUT).unwrap_or((None, None));
        let Some(addr) = addr else {
            not_started(child, &logs, "no listening address in the log");
        };
        // Without an admin listener (`admin.address = ""` disables it)
        // there is no `/readyz` to ask. The daemon logs "certgate
        // listening" only after the mTLS listener is bound and its accept
        // loop spawned, so connections to `addr` are served from then on:
        // that line is the best readiness signal such a config leaves.
        if let Some(admin) = admin {
            let mut last = None;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    not_started(child, &logs, &format!("exited with {status}"));
                }
                last = readyz(admin).or(last);
                if last == Some(200) {
                    break;
                }
                if Instant::now() > deadline {
                    let why = format!(
                        "/readyz on {admin} did not answer 200 within {START_TIMEOUT:?} \
                         (last status: {last:?})"
                    );
                    not_started(child, &logs, &why);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        Gateway {
            child,
            addr,
            admin,
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains every one of `needles`.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> bool {
        eventually(timeout, || {
            self.logs
                .lock()
                .unwrap()
                .iter()
                .any(|l| needles.iter().all(|n| l.contains(n)))
        })
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// GET on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get_plain(self.admin.expect("admin listener enabled"), path)
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").1
    }

    /// The value of one sample, e.g. `certgate_tls_handshakes_total{result="ok"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `message` and `address` fields of a log line, JSON or logfmt
/// (`log.format = "text"`).
fn message_and_address(line: &str) -> (Option<String>, Option<String>) {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        let field = |k: &str| v[k].as_str().map(str::to_owned);
        return (field("message"), field("address"));
    }
    let pairs = logfmt::parse(line);
    let field = |k: &str| {
        pairs
            .iter()
            .find(|p| p.key == k)
            .and_then(|p| p.val.clone())
    };
    (field("message"), field("address"))
}

/// How long a starting daemon has to name its addresses and get ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Kills a daemon that did not get ready and panics with why and its logs.
fn not_started(mut child: Child, logs: &Mutex<Vec<String>>, why: &str) -> ! {
    let _ = child.kill();
    let _ = child.wait();
    // The log thread may still be draining stderr into `logs`.
    std::thread::sleep(Duration::from_millis(200));
    panic!(
        "certgate did not start ({why}); logs:\n{}",
        logs.lock().unwrap().join("\n")
    );
}

/// The status of `GET /readyz` on the admin listener, `None` while it
/// cannot be reached (not accepting yet) or does not answer in time.
fn readyz(admin: SocketAddr) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: admin\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// Reads one sample's value from Prometheus text (0 when absent).
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(sample)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

/// A minimal blocking HTTP/1.0 GET for the plain admin listener.
pub fn http_get_plain(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

impl Setup {
    /// Issues a new server certificate from `server_ca` and renames it over
    /// `server.pem`, then its key over `server.key`, as a deploy tool does:
    /// both land within one `reload.debounce` window. Before `start()`, this
    /// is how a test learns the serial of the first certificate.
    pub fn rotate_server_cert(&self) -> Leaf {
        let leaf = self.server_ca.issue(&LeafSpec::server());
        replace_atomically(self.path(), "server.pem", &leaf.chain_pem);
        replace_atomically(self.path(), "server.key", &leaf.key_pem);
        leaf
    }
}

// ------------------------------------------------ process readings ----

/// Number of open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}
