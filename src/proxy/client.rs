//! The verified client behind one TLS connection: its certificate chain and
//! identity (read once, at the handshake) and its authentication outcome
//! under the state generation that last checked it. When a reload installs
//! a new generation, the next request re-verifies the chain with the new
//! verifier (new CRLs, CAs) and recomputes roles, so revocation and rule
//! changes reach connections that are already open.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use rustls::pki_types::{CertificateDer, UnixTime};

use super::headers::IdentityHeaders;
use super::GatewayError;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::policy::Roles;
use crate::state::State;
use crate::tls::verify::classify_rustls;

/// Authentication as decided by one state generation.
#[derive(Debug)]
pub struct Authn {
    generation: u64,
    outcome: Result<Granted, &'static str>,
}

#[derive(Debug)]
pub struct Granted {
    pub roles: Roles,
    pub roles_header: HeaderValue,
}

pub struct ClientContext {
    pub peer: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    pub identity: Identity,
    pub headers: IdentityHeaders,
    /// `x-forwarded-for`, formatted once rather than per request.
    pub forwarded_for: HeaderValue,
    authn: Mutex<Arc<Authn>>,
}

impl ClientContext {
    /// Builds the context for a connection whose handshake `state` just verified.
    ///
    /// # Errors
    /// The leaf certificate cannot be parsed for identity fields.
    pub fn new(
        peer: SocketAddr,
        chain: Vec<CertificateDer<'static>>,
        state: &State,
        metrics: &Metrics,
    ) -> Result<ClientContext, crate::identity::IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| crate::identity::IdentityError::Parse("no client certificate".into()))?;
        let identity = Identity::from_der(leaf)?;
        let headers = IdentityHeaders::new(&identity);
        let granted = grant(&identity, state, metrics);
        Ok(ClientContext {
            peer,
            chain,
            identity,
            headers,
            forwarded_for: super::headers::forwarded_for(peer.ip()),
            authn: Mutex::new(Arc::new(Authn {
                generation: state.generation,
                outcome: Ok(granted),
            })),
        })
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
        if crate::clock::unix_now() > self.identity.not_after_unix {
            return Err(GatewayError::CertificateRejected("certificate expired"));
        }
        let cached = self.authn.lock().expect("authn lock poisoned").clone();
        let authn = if cached.generation == state.generation {
            cached
        } else {
            let fresh = Arc::new(self.recheck(state, metrics));
            let mut slot = self.authn.lock().expect("authn lock poisoned");
            // Concurrent HTTP/2 streams may race here; keep the newest.
            if slot.generation < fresh.generation {
                *slot = fresh.clone();
            }
            fresh
        };
        match &authn.outcome {
            Ok(_) => Ok(authn),
            Err(reason) => Err(GatewayError::CertificateRejected(reason)),
        }
    }

    fn recheck(&self, state: &State, metrics: &Metrics) -> Authn {
        let verified =
            state
                .verifier
                .verify_client_cert(&self.chain[0], &self.chain[1..], UnixTime::now());
        let outcome = match verified {
            Ok(_) => Ok(grant(&self.identity, state, metrics)),
            Err(e) => {
                let reason = classify_rustls(&e).label();
                tracing::warn!(
                    peer = %self.peer,
                    subject = %self.identity.subject,
                    fingerprint = %self.identity.fingerprint_sha256,
                    generation = state.generation,
                    reason,
                    error = %e,
                    "open connection's client certificate refused by the reloaded state"
                );
                Err(reason)
            }
        };
        Authn {
            generation: state.generation,
            outcome,
        }
    }
}

impl ClientContext {
    /// The client's leaf certificate (DER).
    pub fn leaf_der(&self) -> &[u8] {
        &self.chain[0]
    }
}

impl Authn {
    pub fn granted(&self) -> &Granted {
        self.outcome
            .as_ref()
            .expect("authenticate() only returns granted outcomes")
    }
}

/// Maps the identity to roles under `state`, counting each grant and logging
/// grants of audited roles.
fn grant(identity: &Identity, state: &State, metrics: &Metrics) -> Granted {
    let roles = state.roles.roles_for(identity);
    for role in &roles.names {
        metrics.role_granted(role);
        if state.config.roles.audit.iter().any(|a| **a == **role) {
            tracing::warn!(
                target: "certgate::audit",
                subject = %identity.subject,
                fingerprint = %identity.fingerprint_sha256,
                role = %role,
                generation = state.generation,
                "security audit: audited role granted"
            );
        }
    }
    let joined = roles.joined();
    Granted {
        roles_header: HeaderValue::from_str(&joined)
            .unwrap_or_else(|_| HeaderValue::from_static("")),
        roles,
    }
}
