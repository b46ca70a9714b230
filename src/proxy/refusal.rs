//! A refused handshake: the log line that names the refused certificate,
//! and the close that lets the client read the TLS alert.
//!
//! A TLS 1.3 client considers the handshake done once it has sent its
//! certificate, and Java, curl and most HTTP clients send their first
//! request in the same flight. The gateway refuses the certificate after it
//! has read that flight, so the client's request sits unread in the
//! socket; closing a socket with unread data makes the kernel send a reset
//! instead of a FIN (RFC 2525 §2.17), and a reset makes the client's kernel
//! discard the alert it had not yet read: the client sees "connection
//! reset" instead of `certificate_revoked`. So after the alert the write
//! side is shut (FIN after the alert), and what the client sent is read and
//! discarded until it closes, bounded in time and bytes so that a client
//! that keeps sending cannot hold the connection.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::identity::Identity;
use crate::tls::HandshakeFailure;

/// How long a refused client has to read the alert and close.
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// The most read and discarded from a refused client.
const DRAIN_BYTES: usize = 64 * 1024;

/// Logs the refusal with the presented leaf's subject, issuer, serial and
/// fingerprint, when the client presented one.
pub(super) fn log(
    peer: SocketAddr,
    reason: HandshakeFailure,
    error: &std::io::Error,
    leaf: Option<&CertificateDer<'_>>,
) {
    let identity = leaf.map(|der| Identity::from_der(der));
    let id = identity.as_ref().and_then(|i| i.as_ref().ok());
    // The fingerprint needs no parsing: even a certificate x509-parser
    // cannot read is named by it.
    let fingerprint = leaf.map(|der| crate::identity::fingerprint_sha256(der));
    tracing::info!(
        %peer,
        reason = reason.label(),
        error = %error,
        subject = id.map(|i| i.subject.as_str()),
        issuer = id.map(|i| i.issuer.as_str()),
        serial = id.map(|i| i.serial.as_str()),
        fingerprint = fingerprint.as_deref(),
        unreadable_certificate = identity
            .as_ref()
            .and_then(|i| i.as_ref().err())
            .map(tracing::field::display),
        "TLS handshake refused"
    );
}

/// Closes a connection whose handshake failed after the alert was written:
/// FIN, then read and discard what the client sent until it closes, for at
/// most [`DRAIN_TIME`] and [`DRAIN_BYTES`].
pub(super) async fn close(mut tcp: TcpStream) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = DRAIN_BYTES;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}
