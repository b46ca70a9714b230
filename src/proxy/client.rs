//! The verified client behind one TLS connection: its peer address, the
//! credential it presented (shared with the client's other connections, see
//! `credential`), and the per-request authentication against the current
//! state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderValue;

use super::credential::{Authn, Credential};
use super::GatewayError;
use crate::metrics::Metrics;
use crate::state::State;

pub struct ClientContext {
    pub peer: SocketAddr,
    pub credential: Arc<Credential>,
    /// `x-forwarded-for`, formatted once rather than per request.
    pub forwarded_for: HeaderValue,
    /// The newest generation whose role grants this connection has counted
    /// (generations start at 1).
    counted_generation: AtomicU64,
}

impl ClientContext {
    /// The context of a connection that `state`'s handshake just verified;
    /// counts the roles granted to it.
    pub fn new(
        peer: SocketAddr,
        credential: Arc<Credential>,
        state: &State,
        metrics: &Metrics,
    ) -> ClientContext {
        let client = ClientContext {
            peer,
            credential,
            forwarded_for: super::headers::forwarded_for(peer.ip()),
            counted_generation: AtomicU64::new(0),
        };
        // Refusals are reported by the request that meets them.
        let _ = client.authenticate(state, metrics);
        client
    }

    /// The client's roles under `state`, re-verifying the chain first when
    /// `state` is newer than the generation that last checked it.
    ///
    /// # Errors
    /// [`GatewayError::CertificateRejected`] when the certificate has expired
    /// since the handshake or the current state no longer accepts the chain.
    pub fn authenticate(
        &self,
        state: &State,
        metrics: &Metrics,
    ) -> Result<Arc<Authn>, GatewayError> {
        let credential = &self.credential;
        if crate::clock::unix_now() > credential.identity.not_after_unix {
            return Err(GatewayError::CertificateRejected("certificate expired"));
        }
        let authn = credential.authn(state, self.peer);
        match &authn.outcome {
            Ok(granted) => {
                // Once per connection and generation: at the handshake, and
                // on the first request after each reload.
                let counted = self
                    .counted_generation
                    .fetch_max(authn.generation, Ordering::Relaxed);
                if counted < authn.generation {
                    self.note_grants(&granted.roles.names, state, metrics);
                }
                Ok(authn)
            }
            Err(reason) => Err(GatewayError::CertificateRejected(reason)),
        }
    }

    /// Counts each granted role and logs grants of audited roles.
    fn note_grants(&self, roles: &[Arc<str>], state: &State, metrics: &Metrics) {
        let identity = &self.credential.identity;
        for role in roles {
            metrics.requests.role_granted(role);
            if state.config.roles.audit.iter().any(|a| **a == **role) {
                tracing::warn!(
                    target: "certgate::audit",
                    peer = %self.peer,
                    subject = %identity.subject,
                    fingerprint = %identity.fingerprint_sha256,
                    role = %role,
                    generation = state.generation,
                    "security audit: audited role granted"
                );
            }
        }
    }
}
