//! Accepting client connections: a bounded accept loop that backs off when
//! the process runs out of file descriptors, the PROXY protocol header when
//! the listener takes one, and the TLS handshake under the current state
//! (header and handshake together bounded by `listener.handshake_timeout`);
//! the verified connection is then served by `connection`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::HandshakeKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::client::ClientConnection;
use super::proxy_header;
use super::verified::VerifiedClients;
use super::{connection, refusal};
use crate::config::ProxyProtocol;
use crate::gateway::Gateway;
use crate::metrics::{ActiveConnection, ProxyHeaderResult};
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
    tcp_peer: SocketAddr,
) {
    let _active = ActiveConnection::open(&gw.metrics);
    let _ = tcp.set_nodelay(true);
    let state = gw.state();
    let limits = state.config.listener.clone();
    // Boxed: the handshake's state (rustls mid-handshake, ~1.6 KiB) is
    // needed only until it completes, and the task lives as long as the
    // connection.
    let Some((tls, peer)) = Box::pin(handshake(&gw, &state, tcp, tcp_peer)).await else {
        return;
    };
    let session = tls.get_ref().1;
    let chain = session.peer_certificates().unwrap_or_default();
    // Without shared ticket keys a session resumes only under the state
    // whose own keys and cache issued it, whose verifier accepted the chain
    // then: checking again would only cost a resumption its saving. With
    // shared keys the ticket may come from another replica or generation.
    let foreign_session = session.handshake_kind() == Some(HandshakeKind::Resumed)
        && limits.session_ticket_keys.is_some();
    let verified = match verified_clients.get(chain, &state, foreign_session, peer) {
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

/// The PROXY header (when the listener takes one) and the TLS handshake,
/// counted and logged: the TLS stream and the client's address, or `None`
/// when either failed or the two did not finish within the handshake
/// timeout.
async fn handshake(
    gw: &Gateway,
    state: &State,
    mut tcp: TcpStream,
    tcp_peer: SocketAddr,
) -> Option<(Box<TlsStream<TcpStream>>, SocketAddr)> {
    let started = Instant::now();
    let limits = &state.config.listener;
    let deadline = tokio::time::Instant::from_std(started) + limits.handshake_timeout;
    let peer = match limits.proxy_protocol {
        ProxyProtocol::Off => tcp_peer,
        _ => {
            let header = proxy_header::client_address(&mut tcp, tcp_peer, limits, deadline);
            let read = tokio::select! {
                read = header => read,
                _ = gw.drain_started() => return None,
            };
            match read {
                Ok(client) => {
                    gw.metrics.connections.proxy_header(ProxyHeaderResult::Ok);
                    client
                }
                Err(e) => {
                    let result = e.result();
                    gw.metrics.connections.proxy_header(result);
                    tracing::info!(peer = %tcp_peer, result = result.label(), error = %e, "PROXY protocol header refused; closing");
                    return None;
                }
            }
        }
    };
    // Fallible: a refused handshake hands the socket back, for the close
    // that delivers the alert.
    let accept = TlsAcceptor::from(state.tls.clone())
        .accept(tcp)
        .into_fallible();
    let accept = tokio::time::timeout_at(deadline, keep_refused_leaf(accept));
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
            Some((Box::new(tls), peer))
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
