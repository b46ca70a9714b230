//! WebSocket tunnels: after the upgrade request was authorized like any
//! request and the upstream answered `101`, bytes flow both ways between
//! the client (an upgraded HTTP/1.1 connection, or an RFC 8441 HTTP/2
//! stream) and the upstream's upgraded HTTP/1.1 connection.
//!
//! A tunnel has no requests for the gateway to check, so it is watched
//! instead: it ends when it moved no byte for `listener.idle_timeout`, at
//! the end of a drain, and as soon as a reload's state refuses the client's
//! certificate (revocation reaches tunnels too).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::activity::CLOSE_GRACE;
use super::client::ClientConnection;
use crate::exchange::{Progress, Watch};
use crate::gateway::Gateway;
use crate::metrics::Metrics;

/// Both ends of a tunnel, once their upgrades complete.
pub(super) struct PendingTunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
}

/// A [`PendingTunnel`] on its way from the service to the connection that
/// runs it, as a response extension (which must be `Clone`).
#[derive(Clone)]
pub(super) struct Handoff(Arc<std::sync::Mutex<Option<PendingTunnel>>>);

impl Handoff {
    pub(super) fn new(tunnel: PendingTunnel) -> Handoff {
        Handoff(Arc::new(std::sync::Mutex::new(Some(tunnel))))
    }

    pub(super) fn take(&self) -> Option<PendingTunnel> {
        self.0.lock().expect("tunnel handoff lock poisoned").take()
    }
}

/// The listener settings a tunnel lives by.
#[derive(Debug, Clone, Copy)]
pub(super) struct TunnelLimits {
    /// `listener.idle_timeout`: no byte either way for this long ends it.
    pub(super) idle: Duration,
    /// `listener.shutdown_timeout`: how long it may outlive the drain's start.
    pub(super) shutdown: Duration,
}

/// What ended a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Closed,
    Idle,
    Drained,
    Refused(&'static str),
}

impl PendingTunnel {
    pub(super) fn new(client: OnUpgrade, upstream: OnUpgrade) -> PendingTunnel {
        PendingTunnel { client, upstream }
    }

    /// Carries bytes both ways until either side closes, the tunnel is
    /// idle for `idle_timeout`, the drain ends, or `refused` completes.
    pub(super) async fn run(
        self,
        gw: &Gateway,
        client: &ClientConnection,
        limits: TunnelLimits,
        refused: impl Future<Output = &'static str>,
    ) {
        let peer = client.peer;
        let (downstream, upstream) = match tokio::try_join!(self.client, self.upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade did not complete");
                return;
            }
        };
        let _open = OpenTunnel::count(&gw.metrics);
        let progress = Arc::new(Progress::new());
        let mut downstream = Touching::new(TokioIo::new(downstream), &progress);
        let mut upstream = Touching::new(TokioIo::new(upstream), &progress);
        let ended = tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {
                if let Err(e) = copied {
                    tracing::debug!(%peer, error = %e, "tunnel ended with an error");
                }
                Ended::Closed
            }
            () = idle(&progress, limits.idle) => Ended::Idle,
            () = drain_ended(gw, limits.shutdown) => Ended::Drained,
            reason = refused => Ended::Refused(reason),
        };
        let identity = &client.verified.identity;
        match ended {
            Ended::Closed => tracing::debug!(%peer, "tunnel closed"),
            Ended::Idle => {
                tracing::debug!(%peer, "tunnel idle for listener.idle_timeout; closing");
            }
            Ended::Drained => tracing::info!(%peer, "tunnel closed at the end of the drain"),
            Ended::Refused(reason) => {
                gw.metrics.connections.refused_by_reload.inc();
                tracing::warn!(
                    %peer,
                    subject = %identity.subject,
                    fingerprint = %identity.fingerprint_sha256,
                    reason,
                    "a reload refused the client's certificate; closing its tunnel"
                );
            }
        }
        // Both ends are told, each bounded: a peer that stopped reading
        // cannot hold the task.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let _ = tokio::join!(downstream.inner.shutdown(), upstream.inner.shutdown());
        })
        .await;
    }
}

/// Completes once nothing moved either way for `idle`.
async fn idle(progress: &Progress, idle: Duration) {
    loop {
        match progress.watch(idle, Instant::now()) {
            Watch::Until(at) => tokio::time::sleep_until(at.into()).await,
            Watch::Expired => return,
        }
    }
}

/// Completes shortly before the drain's `shutdown_timeout` runs out, so
/// that the tunnel has closed by the time the daemon counts what is open.
async fn drain_ended(gw: &Gateway, shutdown_timeout: Duration) {
    gw.drain_started().await;
    let margin = (shutdown_timeout / 4).min(Duration::from_secs(1));
    tokio::time::sleep(shutdown_timeout - margin).await;
}

/// `certgate_tunnels_active` for as long as it lives.
struct OpenTunnel<'a>(&'a Metrics);

impl<'a> OpenTunnel<'a> {
    fn count(metrics: &'a Metrics) -> OpenTunnel<'a> {
        metrics.connections.tunnels_active.inc();
        OpenTunnel(metrics)
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.connections.tunnels_active.dec();
    }
}

/// One end of a tunnel: every byte read or written is progress.
struct Touching<T> {
    inner: T,
    progress: Arc<Progress>,
}

impl<T> Touching<T> {
    fn new(inner: T, progress: &Arc<Progress>) -> Touching<T> {
        Touching {
            inner,
            progress: progress.clone(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Touching<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.progress.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touching<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.progress.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
