//! Small helpers with no tie to the gateway: external tools, polling.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `tool` is installed. Tests that drive a tool skip with a message
/// when it is missing on a developer's machine; under CI (`CI` set), where
/// `.ci/run` installs every tool, a missing one fails the test instead.
pub fn have(tool: &str) -> bool {
    // `openssl` answers `version`, `haproxy` only `-v`, `keytool` only `-help`;
    // most other tools `--version`.
    let found = ["--version", "version", "-v", "-help"].iter().any(|arg| {
        Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    assert!(
        found || std::env::var_os("CI").is_none(),
        "`{tool}` is not installed, and CI must run every test (.ci/run installs it)"
    );
    found
}

/// Polls `check` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
