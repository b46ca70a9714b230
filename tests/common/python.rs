//! The Python fixtures of `tests/fixtures/python/` (real gRPC and WebSocket
//! implementations), run with the virtualenv that
//! `tests/fixtures/python/setup` creates in `target/test-venv`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The venv's interpreter. Locally, when the venv is missing, the test says
/// so and skips (`None`); under CI (`CI` set), where `.ci/run` creates it, a
/// missing venv fails the test instead, as [`super::have`] does for tools.
pub fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/test-venv/bin/python");
    if python.is_file() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing, and CI must run every test (.ci/run runs tests/fixtures/python/setup)",
        python.display()
    );
    eprintln!(
        "skipping: no test venv at {} (run tests/fixtures/python/setup)",
        python.display()
    );
    None
}

/// A fixture script by file name.
pub fn fixture(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/python")
        .join(script)
}

/// A fixture process whose stdout is read line by line, each line a JSON
/// value. Killed on drop; a server fixture also exits when its stdin closes.
pub struct PyProcess {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
    /// Everything read so far, for failure messages.
    seen: Vec<serde_json::Value>,
}

impl PyProcess {
    pub fn spawn(python: &Path, script: &str, args: &[&str]) -> PyProcess {
        let mut child = Command::new(python)
            .arg(fixture(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {script}: {e}"));
        let stdout = child.stdout.take().expect("stdout piped");
        PyProcess {
            child,
            lines: read_lines(stdout),
            seen: Vec::new(),
        }
    }

    /// The next JSON line, or `None` once the process closed its stdout or
    /// `timeout` passed.
    pub fn next(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// The next line, which must come within `timeout`.
    pub fn expect_line(&mut self, timeout: Duration, what: &str) -> serde_json::Value {
        self.next(timeout).unwrap_or_else(|| {
            panic!(
                "no {what} within {timeout:?}; lines so far: {:?}",
                self.seen
            )
        })
    }

    /// Reads lines until one has `key`, within `timeout`.
    pub fn until(&mut self, key: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(line) if line.get(key).is_some() => return line,
                Some(_) => {}
                None => panic!(
                    "no line with {key:?} within {timeout:?}; lines: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Every line read so far.
    pub fn seen(&self) -> &[serde_json::Value] {
        &self.seen
    }
}

impl Drop for PyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // A stray non-JSON line (a warning) is kept, for failure messages.
            let value =
                serde_json::from_str(&line).unwrap_or_else(|_| serde_json::json!({ "raw": line }));
            if tx.send(value).is_err() {
                break;
            }
        }
    });
    rx
}

/// A fixture server (`grpc_server.py`, `ws_server.py`) listening on the
/// loopback port it printed.
pub struct PyServer {
    pub port: u16,
    _process: PyProcess,
}

impl PyServer {
    pub fn start(python: &Path, script: &str, args: &[&str]) -> PyServer {
        let mut process = PyProcess::spawn(python, script, args);
        let ready = process.expect_line(Duration::from_secs(20), "listening port");
        let port = ready["port"].as_u64().expect("port") as u16;
        PyServer {
            port,
            _process: process,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

/// Runs a client fixture to its end (bounded by `timeout`) and returns its
/// last line.
pub fn run_client(
    python: &Path,
    script: &str,
    args: &[&str],
    timeout: Duration,
) -> serde_json::Value {
    let mut process = PyProcess::spawn(python, script, args);
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while let Some(line) = process.next(deadline.saturating_duration_since(Instant::now())) {
        last = Some(line);
    }
    assert!(
        Instant::now() <= deadline,
        "{script} {args:?} did not finish within {timeout:?}; lines: {:?}",
        process.seen()
    );
    last.unwrap_or_else(|| panic!("{script} {args:?} printed nothing"))
}
