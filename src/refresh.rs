//! The tasks that keep fetched revocation data current: the CRLs of
//! `client_auth.crl_urls` (every `crl_refresh`, and shortly before a CRL's
//! nextUpdate) and the OCSP responses stapled to the served certificates
//! (halfway to their nextUpdate). Each change asks the reload task for a
//! rebuild, so it is installed by the same whole-state swap as a file
//! change; a failure keeps the last good data and is counted and logged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::revocation::ocsp::{self, Query};
use crate::revocation::{self, crl, CertKey, FetchResult, OcspStatus};
use crate::state::State;

/// Checks for a changed configuration at least this often while waiting.
const CONFIG_CHECK: Duration = Duration::from_secs(1);

/// Runs both refreshers until the process exits. `rebuild` triggers a
/// state rebuild.
pub async fn run(gw: Arc<Gateway>, rebuild: mpsc::Sender<()>) {
    tokio::join!(crls(gw.clone(), rebuild.clone()), staples(gw, rebuild));
}

/// Counts the outcomes of a CRL refresh; true when a CRL changed.
pub fn count(metrics: &Metrics, outcomes: &[crl::UrlOutcome]) -> bool {
    let mut changed = false;
    for outcome in outcomes {
        let result = match &outcome.result {
            Ok(result) => *result,
            Err(_) => FetchResult::Error,
        };
        changed |= result == FetchResult::Ok;
        metrics.revocation.crl_fetched(result);
    }
    changed
}

async fn crls(gw: Arc<Gateway>, rebuild: mpsc::Sender<()>) {
    // The fetch at start ran before the first state was built.
    loop {
        let state = gw.state();
        let wait = next_crl_fetch(&state, crate::clock::unix_now());
        wait_or_config_change(&gw, &state, wait, |s| &s.config.client_auth.crl_urls).await;
        let state = gw.state();
        let outcomes = crl::refresh(&state.sources, &state.config.client_auth).await;
        if count(&gw.metrics, &outcomes) {
            let _ = rebuild.try_send(());
        }
    }
}

/// When the CRLs are next fetched: after `crl_refresh`, or sooner, shortly
/// before a held CRL's nextUpdate (a tenth of its validity, at most five
/// minutes, before), so a new CRL is in place when the old one runs out.
fn next_crl_fetch(state: &State, now: i64) -> Duration {
    let refresh = state.config.client_auth.crl_refresh;
    let soonest = state
        .sources
        .crls()
        .iter()
        .filter_map(|c| {
            let next = c.next_update_unix?;
            let margin = ((next - c.this_update_unix) / 10).clamp(1, 300);
            let at = next - margin;
            (at > now).then(|| Duration::from_secs((at - now) as u64))
        })
        .min()
        .unwrap_or(refresh);
    soonest.min(refresh).max(Duration::from_secs(1))
}

/// Sleeps for `wait`, or less when a reload changes what `watched` reads
/// from the configuration (so a new URL is fetched without waiting out the
/// old interval).
async fn wait_or_config_change<T: PartialEq>(
    gw: &Gateway,
    state: &State,
    wait: Duration,
    watched: impl Fn(&State) -> &T,
) {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + CONFIG_CHECK)).await;
        if watched(&gw.state()) != watched(state) {
            return;
        }
    }
}

/// A served certificate that can be stapled.
struct Served {
    subject: String,
    leaf: Vec<u8>,
    issuer: rustls::pki_types::CertificateDer<'static>,
    responder: String,
}

/// The served certificates (default and SNI) with a responder and an
/// issuer in their chain; those without are logged once each.
fn served(state: &State, warned: &mut HashSet<CertKey>) -> HashMap<CertKey, Served> {
    let certs = &state.server_certs;
    let mut out = HashMap::new();
    for ck in std::iter::once(&certs.default).chain(certs.by_name.values()) {
        let Some(leaf) = ck.cert.first() else {
            continue;
        };
        let key = revocation::cert_key(leaf);
        let subject = crate::identity::Identity::from_der(leaf)
            .map(|id| id.subject)
            .unwrap_or_default();
        let responder = ocsp::responder_url(leaf);
        let issuer = ocsp::find_issuer(leaf, &ck.cert[1..]);
        match (responder, issuer) {
            (Some(responder), Some(issuer)) => {
                out.insert(
                    key,
                    Served {
                        subject,
                        leaf: leaf.to_vec(),
                        issuer,
                        responder,
                    },
                );
            }
            (responder, _) => {
                if warned.insert(key) {
                    let why = if responder.is_none() {
                        "the certificate names no OCSP responder"
                    } else {
                        "its chain does not include the issuer's certificate"
                    };
                    tracing::warn!(
                        subject,
                        reason = why,
                        "cannot staple OCSP for a served certificate"
                    );
                }
            }
        }
    }
    out
}

async fn staples(gw: Arc<Gateway>, rebuild: mpsc::Sender<()>) {
    // When each served certificate's response is next fetched.
    let mut due: HashMap<CertKey, i64> = HashMap::new();
    let mut warned = HashSet::new();
    loop {
        let state = gw.state();
        let cfg = &state.config;
        let now = crate::clock::unix_now();
        let refresh = cfg.client_auth.crl_refresh.as_secs().max(1) as i64;
        let served = if cfg.server_tls.ocsp_stapling {
            served(&state, &mut warned)
        } else {
            HashMap::new()
        };
        let keys: Vec<CertKey> = served.keys().copied().collect();
        for (key, answer) in state.sources.staples() {
            if answer.valid_until_unix <= now && keys.contains(&key) {
                tracing::warn!(
                    subject = served.get(&key).map_or("", |s| s.subject.as_str()),
                    responder = answer.responder,
                    "OCSP staple expired and could not be refreshed: stapling nothing"
                );
            }
        }
        let mut changed = state.sources.drop_staples(&keys, now);
        due.retain(|k, _| served.contains_key(k));
        for (key, cert) in &served {
            if due.get(key).is_some_and(|at| *at > now) {
                continue;
            }
            match fetch_staple(cert, &state).await {
                Ok(answer) => {
                    // Halfway to nextUpdate: a failed refresh has the other
                    // half to succeed before the staple runs out.
                    due.insert(*key, now + ((answer.valid_until_unix - now) / 2).max(1));
                    tracing::info!(
                        subject = cert.subject,
                        responder = cert.responder,
                        status = answer.status.label(),
                        next_update = %crate::identity::rfc3339(answer.valid_until_unix),
                        "OCSP response fetched for stapling"
                    );
                    state.sources.set_staple(*key, answer);
                    changed = true;
                }
                Err(e) => {
                    due.insert(*key, now + refresh.min(60));
                    tracing::warn!(subject = cert.subject, error = %e, "OCSP staple fetch failed; the last good response stays stapled until it expires");
                }
            }
        }
        if changed {
            let _ = rebuild.try_send(());
        }
        let expiries = state
            .sources
            .staples()
            .into_iter()
            .map(|(_, a)| a.valid_until_unix);
        let next = due
            .values()
            .copied()
            .chain(expiries)
            .min()
            .unwrap_or(now + refresh);
        let wait = Duration::from_secs((next - now).clamp(1, refresh) as u64);
        wait_or_config_change(&gw, &state, wait, |s| &s.config.server_tls).await;
    }
}

/// A verified response about a served certificate that can be stapled:
/// good, or revoked (clients that check should learn it); `unknown` says
/// nothing a client could use.
async fn fetch_staple(cert: &Served, state: &State) -> Result<revocation::OcspAnswer, String> {
    let query = Query::new(
        &cert.leaf,
        cert.issuer.clone(),
        cert.responder.clone(),
        false,
    )
    .map_err(|e| e.to_string())?;
    let answer = query
        .ask(state.sources.http(), state.config.client_auth.crl_refresh)
        .await
        .map_err(|e| e.to_string())?;
    match answer.status {
        OcspStatus::Unknown => Err(format!(
            "responder {} does not know the certificate",
            cert.responder
        )),
        OcspStatus::Revoked => {
            tracing::error!(
                subject = cert.subject,
                "the responder says a served certificate is REVOKED"
            );
            Ok(answer)
        }
        OcspStatus::Good => Ok(answer),
    }
}
