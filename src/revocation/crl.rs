//! CRLs from `client_auth.crl_urls`: a conditional GET (ETag and
//! Last-Modified of the CRL held), bounded in size and time, then the same
//! checks a CRL file gets at load (it parses, for webpki too, and verifies
//! against the trusted CA that issued it), plus two a download needs: it is
//! not past its nextUpdate, and it is not older than the CRL held (a
//! replayed old CRL would un-revoke). Only then does it replace the last
//! good one, in memory and in `crl_cache_dir`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{CertificateRevocationList, FromDer};

use super::http::{FetchError, HttpFetcher};
use super::{FetchResult, Sources};
use crate::config::ClientAuthConfig;
use crate::tls::load;

/// The largest CRL accepted. The CRLs of large enterprise CAs run to a few
/// megabytes; a body beyond this is refused before it is read.
pub const MAX_CRL_BYTES: usize = 16 << 20;

/// The longest one download may take; shorter when `crl_refresh` is.
pub const MAX_FETCH_TIME: Duration = Duration::from_secs(10);

/// How far a CRL's thisUpdate may lie in the future (clock skew between
/// the CA and the gateway).
const CLOCK_SKEW: i64 = 300;

/// A CRL fetched from a URL and verified: the last good one for its URL.
#[derive(Debug, Clone)]
pub struct FetchedCrl {
    pub url: String,
    pub der: CertificateRevocationListDer<'static>,
    pub this_update_unix: i64,
    pub next_update_unix: Option<i64>,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

/// Why a download did not replace the CRL held.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CrlFetchError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Unparsable(String),
    #[error("does not verify: {0}")]
    Untrusted(String),
    #[error("stale: its nextUpdate {0} has passed")]
    Stale(String),
    #[error("older than the CRL held: thisUpdate {fetched} before {held}")]
    Older { fetched: String, held: String },
    #[error("thisUpdate {0} is in the future")]
    NotYetValid(String),
}

/// What happened to one URL in a refresh.
#[derive(Debug)]
pub struct UrlOutcome {
    pub url: String,
    pub result: Result<FetchResult, CrlFetchError>,
}

/// The deadline of one download.
pub fn fetch_timeout(cfg: &ClientAuthConfig) -> Duration {
    cfg.crl_refresh.min(MAX_FETCH_TIME)
}

/// Fetches every configured URL once and keeps each CRL that passes,
/// forgetting those of URLs no longer configured. The verification runs
/// on the blocking pool (it reads the trusted CA files).
pub async fn refresh(sources: &Sources, cfg: &ClientAuthConfig) -> Vec<UrlOutcome> {
    let urls: Vec<String> = cfg.crl_urls.iter().map(ToString::to_string).collect();
    sources.retain_crls(&urls);
    if urls.is_empty() {
        return Vec::new();
    }
    let cas = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || trusted_cas(&cfg)).await
    };
    let cas = match cas {
        Ok(Ok(cas)) => cas,
        Ok(Err(reason)) => return all_failed(urls, &reason),
        Err(e) => return all_failed(urls, &e.to_string()),
    };
    let mut outcomes = Vec::new();
    for url in urls {
        let held = sources.crl(&url);
        let result = match download(sources.http(), &url, held.as_deref(), fetch_timeout(cfg)).await
        {
            Ok(None) => Ok(FetchResult::NotModified),
            Ok(Some(body)) => {
                let (cas, url, cache) = (cas.clone(), url.clone(), cfg.crl_cache_dir.clone());
                tokio::task::spawn_blocking(move || {
                    let crl = accept(&url, body, &cas, held.as_deref(), false)?;
                    if let Some(dir) = cache {
                        write_cache(&dir, &crl);
                    }
                    Ok::<_, CrlFetchError>(crl)
                })
                .await
                .map_err(|e| CrlFetchError::Unparsable(e.to_string()))
                .and_then(|r| r)
                .map(|crl| {
                    sources.set_crl(crl);
                    FetchResult::Ok
                })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!(url, error = %e, "CRL fetch failed; the last good CRL stays in use");
        }
        outcomes.push(UrlOutcome { url, result });
    }
    outcomes
}

fn all_failed(urls: Vec<String>, reason: &str) -> Vec<UrlOutcome> {
    urls.into_iter()
        .map(|url| {
            tracing::warn!(
                url,
                error = reason,
                "CRL fetch skipped: the trusted CAs cannot be read"
            );
            UrlOutcome {
                url,
                result: Err(CrlFetchError::Untrusted(format!(
                    "the trusted CAs cannot be read: {reason}"
                ))),
            }
        })
        .collect()
}

/// The trusted CAs a fetched CRL is verified against.
fn trusted_cas(cfg: &ClientAuthConfig) -> Result<Vec<(PathBuf, CertificateDer<'static>)>, String> {
    load::load_ca_certs(&cfg.trusted_cas, cfg.trusted_cas_password_file.as_deref())
        .map_err(|e| e.to_string())
}

/// A CRL body as downloaded, with the validators for the next request.
pub struct Download {
    body: Bytes,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

/// The CRL at `url`: `None` when the server says the one held is current.
async fn download(
    http: &HttpFetcher,
    url: &str,
    held: Option<&FetchedCrl>,
    timeout: Duration,
) -> Result<Option<Download>, CrlFetchError> {
    let mut req = Request::get(url);
    if let Some(held) = held {
        if let Some(etag) = &held.etag {
            req = req.header(IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &held.last_modified {
            req = req.header(IF_MODIFIED_SINCE, modified);
        }
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| FetchError::Connect(e.to_string()))?;
    let answer = http.send(req, MAX_CRL_BYTES, timeout).await?;
    match answer.status {
        StatusCode::NOT_MODIFIED if held.is_some() => Ok(None),
        StatusCode::OK => Ok(Some(Download {
            etag: answer.headers.get(ETAG).cloned(),
            last_modified: answer.headers.get(LAST_MODIFIED).cloned(),
            body: answer.body,
        })),
        other => Err(FetchError::Status(other.as_u16()).into()),
    }
}

/// The checks a downloaded (or cached) CRL must pass before it replaces
/// `held`. Blocking: run it on the blocking pool.
///
/// # Errors
/// [`CrlFetchError`]: it does not parse, does not verify against its
/// issuer among `cas`, is stale, or is older than `held`.
pub fn accept(
    url: &str,
    download: Download,
    cas: &[(PathBuf, CertificateDer<'static>)],
    held: Option<&FetchedCrl>,
    from_cache: bool,
) -> Result<FetchedCrl, CrlFetchError> {
    let mut crls = load::crls_from_bytes(&download.body).map_err(CrlFetchError::Unparsable)?;
    if crls.len() != 1 {
        return Err(CrlFetchError::Unparsable(format!(
            "{} CRLs in one download; a distribution point serves one",
            crls.len()
        )));
    }
    let der = crls.remove(0);
    // rustls parses CRLs with webpki when the verifier is built: one it
    // refuses would fail every state build.
    webpki::BorrowedCertRevocationList::from_der(&der)
        .map_err(|e| CrlFetchError::Unparsable(format!("webpki cannot use it: {e}")))?;
    let coverage = crate::tls::crl::verify_crls(&[(PathBuf::from(url), der.clone())], cas)
        .map_err(|problems| {
            let reasons: Vec<String> = problems.iter().map(|p| p.reason.clone()).collect();
            CrlFetchError::Untrusted(reasons.join("; "))
        })?;
    // A CRL file of an intermediate is left to the handshake; a download
    // is not: whoever answers the URL could otherwise install a CRL that
    // refuses every client of that intermediate as `bad_crl`.
    if let Some(issuer) = coverage.intermediate_issuers.first() {
        return Err(CrlFetchError::Untrusted(format!(
            "its issuer {issuer} is not in client_auth.trusted_cas, so it cannot be verified before use"
        )));
    }
    let (_, parsed) = CertificateRevocationList::from_der(&der)
        .map_err(|e| CrlFetchError::Unparsable(e.to_string()))?;
    let this_update = parsed.last_update().timestamp();
    let next_update = parsed.next_update().map(|t| t.timestamp());
    let now = crate::clock::unix_now();
    if this_update > now + CLOCK_SKEW {
        return Err(CrlFetchError::NotYetValid(crate::identity::rfc3339(
            this_update,
        )));
    }
    // A cached copy past nextUpdate still lists every revocation it did;
    // `expired_crl` decides whether its clients get in.
    if let Some(next) = next_update.filter(|next| *next < now && !from_cache) {
        return Err(CrlFetchError::Stale(crate::identity::rfc3339(next)));
    }
    if let Some(held) = held.filter(|h| h.this_update_unix > this_update) {
        return Err(CrlFetchError::Older {
            fetched: crate::identity::rfc3339(this_update),
            held: crate::identity::rfc3339(held.this_update_unix),
        });
    }
    Ok(FetchedCrl {
        url: url.to_owned(),
        der,
        this_update_unix: this_update,
        next_update_unix: next_update,
        etag: download.etag,
        last_modified: download.last_modified,
    })
}

/// The file that caches `url`'s CRL in `dir`: named by a digest of the
/// URL, so any URL maps to a safe file name.
fn cache_file(dir: &Path, url: &str) -> PathBuf {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_bytes());
    dir.join(format!("{}.crl", hex::encode(&digest.as_ref()[..16])))
}

/// Writes the CRL to the cache directory (write to a temporary file, then
/// rename, so a crash never leaves half a CRL). A failure is logged: the
/// CRL in memory is still good.
fn write_cache(dir: &Path, crl: &FetchedCrl) {
    let file = cache_file(dir, &crl.url);
    let tmp = file.with_extension("crl.tmp");
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, &crl.der))
        .and_then(|()| std::fs::rename(&tmp, &file));
    if let Err(e) = written {
        tracing::warn!(url = crl.url, file = %file.display(), error = %e, "cannot write the CRL cache");
    }
}

/// Why certgate cannot start with the configured CRL URLs.
#[derive(Debug, thiserror::Error)]
#[error("client_auth.crl_urls: no usable CRL for {}", .0.iter().map(|(u, e)| format!("{u} ({e})")).collect::<Vec<_>>().join(", "))]
pub struct StartError(pub Vec<(String, String)>);

/// The fetch at start: every URL is fetched; one that fails falls back to
/// its copy in `crl_cache_dir` (verified like a download) and says so; a URL
/// with neither is an error, since starting without the CRL would let its
/// revoked clients in.
///
/// # Errors
/// [`StartError`] naming each URL with no usable CRL and why.
pub async fn start(
    sources: &Sources,
    cfg: &ClientAuthConfig,
) -> Result<Vec<UrlOutcome>, StartError> {
    let outcomes = refresh(sources, cfg).await;
    let mut missing = Vec::new();
    for outcome in &outcomes {
        let Err(error) = &outcome.result else {
            continue;
        };
        match load_cached(cfg, &outcome.url).await {
            Some(Ok(crl)) => {
                tracing::warn!(
                    url = outcome.url,
                    this_update = %crate::identity::rfc3339(crl.this_update_unix),
                    %error,
                    "CRL URL unreachable at start; starting with the cached copy"
                );
                sources.set_crl(crl);
            }
            Some(Err(cached)) => {
                missing.push((
                    outcome.url.clone(),
                    format!("{error}; cached copy: {cached}"),
                ));
            }
            None => missing.push((outcome.url.clone(), format!("{error}; no cached copy"))),
        }
    }
    if missing.is_empty() {
        Ok(outcomes)
    } else {
        Err(StartError(missing))
    }
}

/// The cached copy of `url`'s CRL, verified; `None` without a cache
/// directory or a cached file.
async fn load_cached(
    cfg: &ClientAuthConfig,
    url: &str,
) -> Option<Result<FetchedCrl, CrlFetchError>> {
    let (cfg, url) = (cfg.clone(), url.to_owned());
    tokio::task::spawn_blocking(move || read_cache(&cfg, &url))
        .await
        .ok()
        .flatten()
}

/// Reads and verifies the cached copy of `url`'s CRL (blocking).
pub fn read_cache(cfg: &ClientAuthConfig, url: &str) -> Option<Result<FetchedCrl, CrlFetchError>> {
    let file = cache_file(cfg.crl_cache_dir.as_deref()?, url);
    let body = std::fs::read(&file).ok()?;
    let cas = match trusted_cas(cfg) {
        Ok(cas) => cas,
        Err(reason) => return Some(Err(CrlFetchError::Untrusted(reason))),
    };
    let download = Download {
        body: body.into(),
        etag: None,
        last_modified: None,
    };
    Some(accept(url, download, &cas, None, true))
}
