//! systemd integration: `sd_notify` readiness, reload and stop
//! notifications, a status line, the watchdog, and socket activation.
//! Every call is a no-op when the process was not started by systemd
//! (no `NOTIFY_SOCKET`, no `LISTEN_FDS`).

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::gateway::Gateway;
use crate::state::State;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// One-line summary for `systemctl status`.
pub fn status_line(state: &State) -> String {
    let servers = state.certs.iter().filter(|c| c.kind != "client_ca").count();
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

pub fn ready(state: &State) {
    let status = status_line(state);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Pings the watchdog at half of `WATCHDOG_USEC` from a task on the main
/// runtime: if the runtime stalls, the pings stop and systemd restarts us.
pub fn spawn_watchdog(gw: Arc<Gateway>) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            // Touch the state so a wedged swap would also stop the pings.
            let _ = gw.state().generation;
            send(&[NotifyState::Watchdog]);
        }
    });
}

/// Listening sockets passed by systemd socket activation, in order.
/// The first is the mTLS listener, the second (if any) the admin listener.
#[allow(unsafe_code)]
pub fn activated_listeners() -> std::io::Result<Vec<std::net::TcpListener>> {
    use std::os::fd::FromRawFd;
    if std::env::var_os("LISTEN_FDS").is_none() {
        return Ok(Vec::new());
    }
    let fds = sd_notify::listen_fds()?;
    let mut out = Vec::new();
    for fd in fds {
        // SAFETY: systemd passed these descriptors to this process (LISTEN_PID
        // checked by listen_fds) and nothing else owns them.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        out.push(listener);
    }
    Ok(out)
}
