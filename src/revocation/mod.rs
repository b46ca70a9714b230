//! Revocation data the gateway fetches itself: CRLs from
//! `client_auth.crl_urls` (`crl`), OCSP answers about client leaves and
//! served certificates (`ocsp`), and the bounded cache of client answers
//! (`ocsp_cache`), all over bounded HTTP (`http`).
//!
//! Nothing here swaps state. Verified CRLs and staples are kept in
//! [`Sources`], which every state generation shares; building a state reads
//! them as it reads CRL files, so a fetched CRL reaches the verifier, and
//! through it open connections, by the same whole-state swap as a file.

pub mod crl;
pub mod http;
pub mod ocsp;
pub mod ocsp_cache;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

pub use crl::FetchedCrl;
pub use ocsp::{OcspAnswer, OcspStatus};
pub use ocsp_cache::OcspCache;

/// SHA-256 of a certificate's DER: the key of staples and OCSP answers.
pub type CertKey = [u8; 32];

pub fn cert_key(der: &[u8]) -> CertKey {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The outcome of one CRL download, as `certgate_crl_fetches_total`'s
/// `result` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    /// A new CRL, verified and installed.
    Ok,
    /// 304: the CRL held is still the published one.
    NotModified,
    /// No usable answer (unreachable, slow, too large, HTTP error, a CRL
    /// that does not parse or verify, stale or older than the one held):
    /// the last good CRL is kept.
    Error,
}

impl FetchResult {
    pub const ALL: [FetchResult; 3] = [
        FetchResult::Ok,
        FetchResult::NotModified,
        FetchResult::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FetchResult::Ok => "ok",
            FetchResult::NotModified => "not_modified",
            FetchResult::Error => "error",
        }
    }
}

/// What the gateway has fetched, shared by every state generation.
#[derive(Default)]
pub struct Sources {
    http: OnceLock<http::HttpFetcher>,
    /// The last good CRL of each URL.
    crls: Mutex<BTreeMap<String, Arc<FetchedCrl>>>,
    /// The last good OCSP response of each served certificate.
    staples: Mutex<HashMap<CertKey, Arc<OcspAnswer>>>,
    /// Answers about client leaves.
    pub ocsp: OcspCache,
}

impl Sources {
    /// The HTTP client, built on first use (it reads the system's roots).
    pub fn http(&self) -> &http::HttpFetcher {
        self.http.get_or_init(http::HttpFetcher::default)
    }

    /// The last good CRL of `url`, if any.
    pub fn crl(&self, url: &str) -> Option<Arc<FetchedCrl>> {
        self.lock_crls().get(url).cloned()
    }

    /// Every CRL held, by URL.
    pub fn crls(&self) -> Vec<Arc<FetchedCrl>> {
        self.lock_crls().values().cloned().collect()
    }

    pub fn set_crl(&self, crl: FetchedCrl) {
        self.lock_crls().insert(crl.url.clone(), Arc::new(crl));
    }

    /// Forgets the CRLs of URLs no longer configured.
    pub fn retain_crls(&self, urls: &[String]) {
        self.lock_crls().retain(|url, _| urls.contains(url));
    }

    /// The staple for a served leaf, while it is still valid at `now`.
    pub fn staple(&self, leaf: &CertKey, now: i64) -> Option<Arc<OcspAnswer>> {
        self.lock_staples()
            .get(leaf)
            .filter(|a| a.valid_until_unix > now)
            .cloned()
    }

    /// Every staple held (valid or not), for the refresher.
    pub fn staples(&self) -> Vec<(CertKey, Arc<OcspAnswer>)> {
        self.lock_staples()
            .iter()
            .map(|(k, a)| (*k, a.clone()))
            .collect()
    }

    pub fn set_staple(&self, leaf: CertKey, answer: OcspAnswer) {
        self.lock_staples().insert(leaf, Arc::new(answer));
    }

    /// Drops staples that are no longer valid at `now`, or whose
    /// certificate is no longer served; true when any was dropped.
    pub fn drop_staples(&self, served: &[CertKey], now: i64) -> bool {
        let mut staples = self.lock_staples();
        let before = staples.len();
        staples.retain(|k, a| served.contains(k) && a.valid_until_unix > now);
        staples.len() != before
    }

    fn lock_crls(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<FetchedCrl>>> {
        self.crls.lock().expect("CRL sources lock poisoned")
    }

    fn lock_staples(&self) -> std::sync::MutexGuard<'_, HashMap<CertKey, Arc<OcspAnswer>>> {
        self.staples.lock().expect("staples lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(valid_until_unix: i64) -> OcspAnswer {
        OcspAnswer {
            status: OcspStatus::Good,
            responder: "http://ocsp".into(),
            this_update_unix: 0,
            valid_until_unix,
            der: vec![1],
        }
    }

    #[test]
    fn a_staple_serves_until_its_next_update_then_is_dropped() {
        let sources = Sources::default();
        let (served, gone) = ([1; 32], [2; 32]);
        sources.set_staple(served, answer(100));
        sources.set_staple(gone, answer(500));
        assert!(
            sources.staple(&served, 99).is_some(),
            "valid before nextUpdate"
        );
        assert!(
            sources.staple(&served, 100).is_none(),
            "never stapled once expired"
        );
        assert!(
            !sources.drop_staples(&[served, gone], 50),
            "nothing to drop yet"
        );
        assert!(
            sources.drop_staples(&[served], 50),
            "a certificate no longer served"
        );
        assert!(sources.drop_staples(&[served], 100), "an expired staple");
        assert!(sources.staples().is_empty());
    }
}
