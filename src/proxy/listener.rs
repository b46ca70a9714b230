//! Accepting client connections: a bounded accept loop that backs off when
//! the process runs out of file descriptors, and the TLS handshake under the
//! current state (bounded by `listener.handshake_timeout`); the verified
//! connection is then served by `connection`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::client::ClientConnection;
use super::verified::VerifiedClients;
use super::{connection, refusal};
use crate::gateway::Gateway;
use crate::metrics::ActiveConnection;
use crate::state::State;
use crate::tls::{classify_error, keep_refused_leaf, HandshakeFailure};

/// First and longest pause after `accept` fails for lack of descriptors or
/// memory: retrying at once would spin on the same error.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections until the gateway drains; every connection task is
/// spawned on `tracker` so the caller can wait for them to finish.
/// Accepts and serves mTLS connections until the drain starts. Connections
/// that present the same chain share one entry of `verified_clients`.
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    verified_clients: Arc<VerifiedClients>,
    tracker: TaskTracker,
) {
    let max = gw.state().config.listener.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        // Beyond max_connections, new connections wait in the kernel backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = gw.drain_started() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = gw.drain_started() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF_MIN;
                a
            }
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "connection failed before accept; ignored");
                continue;
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOMEM: the pending connection stays in the
                // backlog; retry once descriptors may have been freed.
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = gw.drain_started() => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let (gw, verified_clients) = (gw.clone(), verified_clients.clone());
        tracker.spawn(async move {
            handle_connection(gw, &verified_clients, tcp, peer).await;
            drop(permit);
        });
    }
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

async fn handle_connection(
    gw: Arc<Gateway>,
    verified_clients: &Arc<VerifiedClients>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let _active = ActiveConnection::open(&gw.metrics);
    let _ = tcp.set_nodelay(true);
    let state = gw.state();
    let limits = state.config.listener.clone();
    // Boxed: the handshake's state (rustls mid-handshake, ~1.6 KiB) is
    // needed only until it completes, and the task lives as long as the
    // connection.
    let Some(tls) = Box::pin(handshake(&gw, &state, tcp, peer)).await else {
        return;
    };
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    let verified = match verified_clients.get(chain, &state) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "verified client certificate has unreadable identity fields; closing");
            return;
        }
    };
    let client = Arc::new(ClientConnection::new(peer, verified, &state, &gw.metrics));
    drop(state);
    connection::serve(gw, tls, client, &limits).await;
}

/// The TLS handshake, counted and logged; `None` when it failed or timed out.
async fn handshake(
    gw: &Gateway,
    state: &State,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Box<TlsStream<TcpStream>>> {
    let started = Instant::now();
    // Fallible: a refused handshake hands the socket back, for the close
    // that delivers the alert.
    let accept = TlsAcceptor::from(state.tls.clone())
        .accept(tcp)
        .into_fallible();
    let accept = tokio::time::timeout(
        state.config.listener.handshake_timeout,
        keep_refused_leaf(accept),
    );
    // A handshake still under way when the drain starts could only lead to
    // a 503, and a silent peer would hold the drain for handshake_timeout.
    let outcome = tokio::select! {
        outcome = accept => outcome,
        _ = gw.drain_started() => {
            tracing::debug!(%peer, "TLS handshake abandoned: draining");
            return None;
        }
    };
    match outcome {
        Ok((Ok(tls), _)) => {
            gw.metrics.handshakes.ok(started.elapsed().as_secs_f64());
            // Boxed: the stream (~1.2 KiB, mostly rustls state) would
            // otherwise be laid out several times over in the connection
            // task, which is kept for every open connection.
            Some(Box::new(tls))
        }
        Ok((Err((e, tcp)), leaf)) => {
            let reason = classify_error(&e);
            gw.metrics.handshakes.failed(reason);
            refusal::log(peer, reason, &e, leaf.as_ref());
            refusal::close(tcp).await;
            None
        }
        Err(_) => {
            gw.metrics.handshakes.failed(HandshakeFailure::Timeout);
            tracing::info!(%peer, reason = "timeout", "TLS handshake not completed within listener.handshake_timeout");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_per_connection_accept_errors_skip_the_backoff() {
        assert!(is_connection_error(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(
            !is_connection_error(&io::Error::from_raw_os_error(24)),
            "EMFILE backs off"
        );
        assert!(
            !is_connection_error(&io::Error::from_raw_os_error(23)),
            "ENFILE backs off"
        );
    }
}
