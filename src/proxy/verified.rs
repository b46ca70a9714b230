//! Verified clients, shared by the connections that present their chain.
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

/// The verified clients of the open connections, by chain.
#[derive(Default)]
pub struct VerifiedClients {
    live: Mutex<HashMap<ChainKey, Weak<VerifiedClient>>>,
}

/// What the gateway knows of one verified client certificate chain.
pub struct VerifiedClient {
    key: ChainKey,
    chain: Vec<CertificateDer<'static>>,
    pub identity: Identity,
    pub headers: IdentityHeaders,
    /// The latest generation's verdict on the chain.
    verdict: Mutex<Verdict>,
    registry: Arc<VerifiedClients>,
}

/// One state generation's verdict on a chain: the roles it grants, or why
/// it refuses the chain.
#[derive(Debug, Clone)]
struct Verdict {
    generation: u64,
    outcome: Result<Arc<Grant>, &'static str>,
}

/// The roles a state generation grants a verified client.
#[derive(Debug)]
pub struct Grant {
    pub generation: u64,
    pub roles: Roles,
    /// `x-client-roles`, joined once.
    pub roles_header: HeaderValue,
}

impl VerifiedClients {
    /// The verified client for the chain of a connection that `state`'s
    /// handshake just accepted: the one an open connection already shares,
    /// or a new one.
    ///
    /// A `resumed` session's chain comes from its ticket, which another
    /// replica or an older generation may have issued (shared ticket keys):
    /// rustls does not call the verifier when it resumes. So a new client
    /// from such a session gets its first verdict from `state`'s verifier
    /// (CAs, CRLs, expiry), and a refused one is refused on its first
    /// request like any client a reload refuses. `peer` names the
    /// connection, for the log.
    ///
    /// # Errors
    /// The leaf certificate cannot be parsed for identity fields.
    pub fn get(
        self: &Arc<Self>,
        chain: &[CertificateDer<'_>],
        state: &State,
        resumed: bool,
        peer: SocketAddr,
    ) -> Result<Arc<VerifiedClient>, IdentityError> {
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
        let chain: Vec<CertificateDer<'static>> =
            chain.iter().map(|c| c.clone().into_owned()).collect();
        let outcome = match resumed {
            true => verify(&chain, state)
                .inspect_err(|e| log_refusal(&identity, state, peer, e, RESUMED_REFUSED)),
            false => Ok(()),
        };
        let fresh = Arc::new(VerifiedClient {
            key,
            headers: IdentityHeaders::new(&identity),
            verdict: Mutex::new(Verdict {
                generation: state.generation,
                outcome: outcome
                    .map(|()| grant(&identity, state))
                    .map_err(|e| classify_rustls(&e).label()),
            }),
            chain,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChainKey, Weak<VerifiedClient>>> {
        self.live.lock().expect("verified clients lock poisoned")
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

impl Drop for VerifiedClient {
    fn drop(&mut self) {
        let mut live = self.registry.lock();
        // A connection presenting the chain again after this one lost its
        // last reference may already have put a new entry there.
        if live.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            live.remove(&self.key);
        }
    }
}

impl VerifiedClient {
    /// The client's leaf certificate (DER).
    pub fn leaf_der(&self) -> &[u8] {
        &self.chain[0]
    }

    /// The chain as the client presented it, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// What `state`'s generation grants the client, re-verifying the chain
    /// first when `state` is newer than the generation that last checked
    /// it. `peer` names the connection that asked, for the log.
    ///
    /// # Errors
    /// Why the current state refuses the chain (revoked by a new CRL, CA
    /// removed): the label of the handshake result it would get.
    pub fn grant(&self, state: &State, peer: SocketAddr) -> Result<Arc<Grant>, &'static str> {
        let cached = self.verdict.lock().expect("verdict lock poisoned").clone();
        if cached.generation >= state.generation {
            return cached.outcome;
        }
        let fresh = self.recheck(state, peer);
        let mut slot = self.verdict.lock().expect("verdict lock poisoned");
        // Connections sharing the client may race here; keep the newest.
        if slot.generation < fresh.generation {
            *slot = fresh.clone();
        }
        fresh.outcome
    }

    fn recheck(&self, state: &State, peer: SocketAddr) -> Verdict {
        let outcome = match verify(&self.chain, state) {
            Ok(()) => Ok(grant(&self.identity, state)),
            Err(e) => {
                log_refusal(&self.identity, state, peer, &e, RELOAD_REFUSED);
                Err(classify_rustls(&e).label())
            }
        };
        Verdict {
            generation: state.generation,
            outcome,
        }
    }
}

const RELOAD_REFUSED: &str = "open connection's client certificate refused by the reloaded state";
const RESUMED_REFUSED: &str =
    "resumed TLS session's client certificate refused by the current state";

/// `state`'s verdict on a chain: the verifier of its handshakes, now.
fn verify(chain: &[CertificateDer<'static>], state: &State) -> Result<(), rustls::Error> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    state
        .verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
}

fn log_refusal(
    identity: &Identity,
    state: &State,
    peer: SocketAddr,
    error: &rustls::Error,
    why: &'static str,
) {
    tracing::warn!(
        %peer,
        subject = %identity.subject,
        fingerprint = %identity.fingerprint_sha256,
        generation = state.generation,
        reason = classify_rustls(error).label(),
        error = %error,
        "{why}"
    );
}

/// Maps the identity to roles under `state`.
fn grant(identity: &Identity, state: &State) -> Arc<Grant> {
    let roles = state.roles.roles_for(identity);
    let joined = roles.joined();
    Arc::new(Grant {
        generation: state.generation,
        roles_header: HeaderValue::from_str(&joined)
            .unwrap_or_else(|_| HeaderValue::from_static("")),
        roles,
    })
}
