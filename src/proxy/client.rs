//! One client connection: its peer address, the verified client it
//! presented (shared with the client's other connections, see `verified`),
//! and the per-request check against the current state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::verified::{Grant, VerifiedClient};
use super::GatewayError;
use crate::config::OcspMode;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::revocation::ocsp::{self, OcspError, Query};
use crate::revocation::{self, OcspAnswer, OcspStatus};
use crate::state::State;

/// How long a connection goes on without asking again after the
/// responder gave no usable answer (at most `crl_refresh`).
const OCSP_RETRY_SECS: i64 = 30;

pub struct ClientConnection {
    pub peer: SocketAddr,
    pub verified: Arc<VerifiedClient>,
    /// `x-forwarded-for`, formatted once rather than per request.
    pub forwarded_for: HeaderValue,
    /// The newest generation whose role grants this connection has counted
    /// (generations start at 1).
    counted_generation: AtomicU64,
    /// Until when (Unix seconds) the last OCSP answer lets this connection
    /// in without asking again; 0 before the first request.
    ocsp_until: AtomicI64,
}

impl ClientConnection {
    /// A connection that `state`'s handshake just verified; counts the
    /// roles granted to it.
    pub fn new(
        peer: SocketAddr,
        verified: Arc<VerifiedClient>,
        state: &State,
        metrics: &Metrics,
    ) -> ClientConnection {
        let connection = ClientConnection {
            peer,
            verified,
            forwarded_for: super::headers::forwarded_for(peer.ip()),
            counted_generation: AtomicU64::new(0),
            ocsp_until: AtomicI64::new(0),
        };
        // Refusals are reported by the request that meets them.
        let _ = connection.authenticate(state, metrics);
        connection
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
    ) -> Result<Arc<Grant>, GatewayError> {
        if crate::clock::unix_now() > self.verified.identity.not_after_unix {
            return Err(GatewayError::CertificateRejected("certificate expired"));
        }
        let grant = self
            .verified
            .grant(state, self.peer)
            .map_err(GatewayError::CertificateRejected)?;
        // Once per connection and generation: at the handshake, and on the
        // first request after each reload.
        let counted = self
            .counted_generation
            .fetch_max(grant.generation, Ordering::Relaxed);
        if counted < grant.generation {
            self.note_grants(&grant.roles.names, state, metrics);
        }
        Ok(grant)
    }

    /// Completes when a newly installed state refuses the certificate, or
    /// when it expires: what is already open for it (a long HTTP/2 stream,
    /// a tunnel, an exchange in flight) must end too, not only its next
    /// request. The reason is the refusal's label.
    pub async fn refused_later(&self, gw: &Gateway) -> &'static str {
        let mut installs = gw.state_installs();
        let not_after = self.verified.identity.not_after_unix;
        loop {
            // At most a day at a time: certificates can outlive the timer.
            let left = (not_after - crate::clock::unix_now()).clamp(0, 86_400);
            let expiry = tokio::time::sleep(Duration::from_secs(left.unsigned_abs() + 1));
            tokio::select! {
                changed = installs.changed() => {
                    if changed.is_err() {
                        // The gateway is gone; only the clock is left.
                        std::future::pending::<()>().await;
                    }
                }
                () = expiry => {
                    if crate::clock::unix_now() > not_after {
                        return "certificate expired";
                    }
                    continue;
                }
            }
            match self.authenticate(&gw.state(), &gw.metrics) {
                Ok(_) => {}
                Err(GatewayError::CertificateRejected(reason)) => return reason,
                Err(_) => return "certificate rejected",
            }
        }
    }

    /// The OCSP check of the client's leaf (`client_auth.ocsp`), before the
    /// connection's first request and again once the last answer runs out
    /// (its nextUpdate): from the cache shared by all connections, else
    /// from the responder. Awaiting the responder holds this request only,
    /// never a runtime worker.
    ///
    /// # Errors
    /// [`GatewayError::CertificateRejected`]: the leaf is revoked, or, with
    /// `ocsp = "hard"`, its status cannot be learned or is unknown.
    pub async fn check_ocsp(&self, state: &State, metrics: &Metrics) -> Result<(), GatewayError> {
        let mode = state.config.client_auth.ocsp;
        let now = crate::clock::unix_now();
        if mode == OcspMode::Off || self.ocsp_until.load(Ordering::Relaxed) > now {
            return Ok(());
        }
        let key = revocation::cert_key(self.verified.leaf_der());
        let answer = match state.sources.ocsp.get(&key, now) {
            Some(answer) => Ok(answer),
            None => {
                let asked = self.ask_responder(state).await;
                metrics
                    .revocation
                    .ocsp_checked(asked.as_ref().ok().map(|a| a.status));
                asked.map(|answer| {
                    let answer = Arc::new(answer);
                    state.sources.ocsp.insert(key, answer.clone(), now);
                    answer
                })
            }
        };
        let refuse = |reason| {
            tracing::warn!(
                peer = %self.peer,
                subject = %self.verified.identity.subject,
                fingerprint = %self.verified.identity.fingerprint_sha256,
                reason,
                "client certificate refused by OCSP"
            );
            Err(GatewayError::CertificateRejected(reason))
        };
        let retry =
            now + OCSP_RETRY_SECS.min(state.config.client_auth.crl_refresh.as_secs() as i64);
        match answer {
            Ok(answer) => match (answer.status, mode) {
                (OcspStatus::Revoked, _) => refuse("revoked"),
                (OcspStatus::Unknown, OcspMode::Hard) => refuse("ocsp_unknown"),
                (OcspStatus::Good | OcspStatus::Unknown, _) => {
                    self.ocsp_until
                        .store(answer.valid_until_unix, Ordering::Relaxed);
                    Ok(())
                }
            },
            Err(e) if mode == OcspMode::Hard => {
                tracing::warn!(peer = %self.peer, subject = %self.verified.identity.subject, error = %e, "no OCSP answer");
                refuse("ocsp_error")
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, subject = %self.verified.identity.subject, error = %e, "no OCSP answer; ocsp = \"soft\" lets the client in");
                self.ocsp_until.store(retry, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    async fn ask_responder(&self, state: &State) -> Result<OcspAnswer, OcspError> {
        let chain = self.verified.chain();
        let leaf = self.verified.leaf_der();
        let responder = ocsp::responder_url(leaf).ok_or(OcspError::NoResponder)?;
        let issuer = ocsp::find_issuer(leaf, chain[1..].iter().chain(&state.trusted_cas))
            .ok_or(OcspError::NoIssuer)?;
        Query::new(leaf, issuer, responder, true)?
            .ask(state.sources.http(), state.config.client_auth.crl_refresh)
            .await
    }

    /// Counts each granted role and logs grants of audited roles.
    fn note_grants(&self, roles: &[Arc<str>], state: &State, metrics: &Metrics) {
        let identity = &self.verified.identity;
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
