//! Client credentials, shared by the connections that present them.
//!
//! A client that pools connections presents the same certificate chain on
//! every one of them, and what the gateway derives from a chain is the same
//! each time: the identity fields, the identity header values, and, per
//! state generation, whether the chain is still accepted and which roles it
//! maps to. So it is built once, at the first handshake that presents the
//! chain, shared by every open connection that presents it, and dropped
//! with the last of them. A pool of a thousand connections from one client
//! holds one identity, not a thousand, and the identity is parsed once.
//!
//! When a reload installs a new generation, the next request re-verifies
//! the chain with the new verifier (new CRLs, CAs) and recomputes roles, so
//! revocation and rule changes reach connections that are already open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use http::HeaderValue;
use rustls::pki_types::{CertificateDer, UnixTime};

use super::headers::IdentityHeaders;
use crate::identity::{Identity, IdentityError};
use crate::policy::Roles;
use crate::state::State;
use crate::tls::verify::classify_rustls;

/// SHA-256 over the chain's certificates, each with its length.
type ChainKey = [u8; 32];

/// The credentials of the open connections, by chain.
#[derive(Default)]
pub struct Credentials {
    live: Mutex<HashMap<ChainKey, Weak<Credential>>>,
}

/// What the gateway knows of one client certificate chain.
pub struct Credential {
    key: ChainKey,
    chain: Vec<CertificateDer<'static>>,
    pub identity: Identity,
    pub headers: IdentityHeaders,
    authn: Mutex<Arc<Authn>>,
    registry: Arc<Credentials>,
}

/// Authentication as decided by one state generation.
#[derive(Debug)]
pub struct Authn {
    pub generation: u64,
    pub outcome: Result<Granted, &'static str>,
}

impl Authn {
    pub fn granted(&self) -> &Granted {
        self.outcome
            .as_ref()
            .expect("authenticate() only returns granted outcomes")
    }
}

#[derive(Debug)]
pub struct Granted {
    pub roles: Roles,
    pub roles_header: HeaderValue,
}

impl Credentials {
    /// The credential for a chain that `state`'s handshake just verified:
    /// the one an open connection already shares, or a new one.
    ///
    /// # Errors
    /// The leaf certificate cannot be parsed for identity fields.
    pub fn get(
        self: &Arc<Self>,
        chain: &[CertificateDer<'_>],
        state: &State,
    ) -> Result<Arc<Credential>, IdentityError> {
        let key = chain_key(chain);
        if let Some(shared) = self.lock().get(&key).and_then(Weak::upgrade) {
            // The key is a SHA-256; comparing the bytes makes the match exact.
            if shared.chain.as_slice() == chain {
                return Ok(shared);
            }
        }
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Parse("no client certificate".into()))?;
        // Parsed outside the lock: other handshakes need not wait for it.
        let identity = Identity::from_der(leaf)?;
        let fresh = Arc::new(Credential {
            key,
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            headers: IdentityHeaders::new(&identity),
            authn: Mutex::new(Arc::new(Authn {
                generation: state.generation,
                outcome: Ok(grant(&identity, state)),
            })),
            identity,
            registry: self.clone(),
        });
        let mut live = self.lock();
        match live.get(&key).and_then(Weak::upgrade) {
            // Another handshake with the same chain got here first.
            Some(shared) if shared.chain == fresh.chain => Ok(shared),
            _ => {
                live.insert(key, Arc::downgrade(&fresh));
                Ok(fresh)
            }
        }
    }

    /// How many distinct chains have at least one open connection.
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChainKey, Weak<Credential>>> {
        self.live.lock().expect("credentials lock poisoned")
    }
}

fn chain_key(chain: &[CertificateDer<'_>]) -> ChainKey {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for cert in chain {
        ctx.update(&(cert.len() as u64).to_be_bytes());
        ctx.update(cert);
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

impl Drop for Credential {
    fn drop(&mut self) {
        let mut live = self.registry.lock();
        // A connection presenting the chain again after this one lost its
        // last reference may already have put a new credential there.
        if live.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            live.remove(&self.key);
        }
    }
}

impl Credential {
    /// The client's leaf certificate (DER).
    pub fn leaf_der(&self) -> &[u8] {
        &self.chain[0]
    }

    /// The decision of `state`'s generation, re-verifying the chain first
    /// when `state` is newer than the generation that last checked it.
    /// `peer` names the connection that asked, for the log.
    pub fn authn(&self, state: &State, peer: SocketAddr) -> Arc<Authn> {
        let cached = self.authn.lock().expect("authn lock poisoned").clone();
        if cached.generation >= state.generation {
            return cached;
        }
        let fresh = Arc::new(self.recheck(state, peer));
        let mut slot = self.authn.lock().expect("authn lock poisoned");
        // Connections sharing the credential may race here; keep the newest.
        if slot.generation < fresh.generation {
            *slot = fresh.clone();
        }
        fresh
    }

    fn recheck(&self, state: &State, peer: SocketAddr) -> Authn {
        let verified =
            state
                .verifier
                .verify_client_cert(&self.chain[0], &self.chain[1..], UnixTime::now());
        let outcome = match verified {
            Ok(_) => Ok(grant(&self.identity, state)),
            Err(e) => {
                let reason = classify_rustls(&e).label();
                tracing::warn!(
                    %peer,
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

/// Maps the identity to roles under `state`.
fn grant(identity: &Identity, state: &State) -> Granted {
    let roles = state.roles.roles_for(identity);
    let joined = roles.joined();
    Granted {
        roles_header: HeaderValue::from_str(&joined)
            .unwrap_or_else(|_| HeaderValue::from_static("")),
        roles,
    }
}
