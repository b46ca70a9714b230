//! systemd integration: `sd_notify` readiness, reload and stop
//! notifications, a status line, the watchdog, and socket activation.
//! Every call is a no-op when the process was not started by systemd
//! (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`, no `LISTEN_FDS`).

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::state::State;

/// Set once STOPPING=1 was sent. A reload that finishes during the drain
/// must not tell systemd READY=1 again: the service is going down.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// How much longer than `listener.shutdown_timeout` systemd is asked to
/// wait before it escalates to SIGKILL: time to log and exit after the drain.
const STOP_MARGIN: Duration = Duration::from_secs(5);

fn send(states: &[NotifyState<'_>]) {
    // sd_notify::notify does nothing (and succeeds) without NOTIFY_SOCKET.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// One-line summary for `systemctl status`.
pub fn status_line(state: &State) -> String {
    let servers = state.certs.iter().filter(|c| c.kind.is_served()).count();
    let next = state
        .next_server_expiry()
        .map(|c| format!(", next expiry {}", c.not_after))
        .unwrap_or_default();
    format!(
        "generation {}, {} server certificate(s), {} client CA(s), {} CRL(s){}",
        state.generation,
        servers,
        state.certs.len() - servers,
        state.crls.len(),
        next
    )
}

/// READY=1 with the status line: after start-up and after every reload
/// attempt (a failed reload still ends the RELOADING=1 phase).
pub fn ready(state: &State) {
    if STOPPING.load(Ordering::Relaxed) {
        return;
    }
    let status = status_line(state);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// RELOADING=1 with MONOTONIC_USEC, which `Type=notify-reload` requires.
pub fn reloading() {
    if STOPPING.load(Ordering::Relaxed) {
        return;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// STOPPING=1, and asks systemd to wait for the whole drain (`drain` plus
/// a margin) even when the unit's TimeoutStopSec= is shorter.
pub fn stopping(drain: Duration) {
    STOPPING.store(true, Ordering::Relaxed);
    let extend = u32::try_from((drain + STOP_MARGIN).as_micros()).unwrap_or(u32::MAX);
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining"),
        NotifyState::ExtendTimeoutUsec(extend),
    ]);
}

/// The watchdog ping period, half of `WATCHDOG_USEC`, following
/// sd_watchdog_enabled(3): the watchdog is for this process when
/// `WATCHDOG_PID` is unset or names it. (sd-notify's own check wrongly
/// requires `WATCHDOG_PID` to be set.)
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// Pings the watchdog from a task on the main runtime: if the runtime
/// stalls, the pings stop and systemd restarts the service.
pub fn spawn_watchdog() {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    let Some(period) = watchdog_period(usec.as_deref(), pid.as_deref(), std::process::id()) else {
        return;
    };
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

/// Listening sockets passed by systemd socket activation, in the order of
/// the socket unit's `Listen*=` lines: the mTLS listener, then (optionally)
/// the admin listener.
///
/// # Errors
///
/// A descriptor that is not a TCP socket, more than two descriptors, or a
/// malformed `LISTEN_FDS` or `LISTEN_FDNAMES`.
#[allow(unsafe_code)]
pub fn activated_listeners() -> std::io::Result<Vec<TcpListener>> {
    use std::os::fd::FromRawFd;
    // The descriptors are for LISTEN_PID only (sd_listen_fds(3)); checked
    // first because sd-notify would otherwise still match LISTEN_FDNAMES
    // against an empty list and fail.
    let pid = std::env::var("LISTEN_PID").ok();
    if pid.and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    // Not unset_env: removing variables while the runtime's threads exist
    // is a data race with any libc getenv, and no child process inherits
    // them (LISTEN_PID would not match it anyway).
    let fds: Vec<_> = sd_notify::listen_fds_with_names(false)?.collect();
    if fds.len() > 2 {
        return Err(std::io::Error::other(format!(
            "got {} sockets; expected the mTLS listener and at most the admin listener",
            fds.len()
        )));
    }
    let mut out = Vec::new();
    for (fd, name) in fds {
        // SAFETY: systemd passed these descriptors to this process
        // (LISTEN_PID matched) and nothing else in the process owns them.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        let addr = listener.local_addr().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("descriptor {fd} ({name}) is not a TCP socket: {e}"),
            )
        })?;
        listener.set_nonblocking(true)?;
        tracing::info!(fd, name = %name, address = %addr, "using socket passed by systemd");
        out.push(listener);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_period_follows_sd_watchdog_enabled() {
        // (case, WATCHDOG_USEC, WATCHDOG_PID, ping period in ms); we are pid 42.
        let cases = [
            ("no WATCHDOG_USEC", None, None, None),
            ("usec without pid", Some("400000"), None, Some(200)),
            ("usec with our pid", Some("400000"), Some("42"), Some(200)),
            ("usec for another pid", Some("400000"), Some("43"), None),
            ("garbage pid", Some("400000"), Some("x"), None),
            ("zero usec", Some("0"), None, None),
            ("garbage usec", Some("soon"), None, None),
        ];
        for (name, usec, pid, want_ms) in cases {
            let want = want_ms.map(Duration::from_millis);
            assert_eq!(watchdog_period(usec, pid, 42), want, "case {name}");
        }
    }
}
