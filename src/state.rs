//! One immutable generation of everything the data path consults: the TLS
//! server config (certificates, client verifier with CAs and CRLs, its own
//! session cache), role rules, authorization rules and the upstream client.
//! A state is built whole from a [`Config`] and the files it names, or not
//! at all; the gateway swaps whole states atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{CertSource, Config, ConfigError};
use crate::policy::{Authorizer, RoleMapper};
use crate::revocation::{self, Sources};
use crate::tls::{self, load, CertInfo, CertKind, CrlInfo, LoadError, ServerCerts};
use crate::upstream::Upstreams;

pub struct State {
    pub generation: u64,
    pub config: Arc<Config>,
    pub tls: Arc<ServerConfig>,
    /// The same verifier the handshake used; requests on connections from an
    /// older generation are re-checked against it (revocation, new CAs).
    pub verifier: Arc<dyn ClientCertVerifier>,
    pub roles: RoleMapper,
    pub authz: Authorizer,
    pub upstreams: Upstreams,
    pub certs: Vec<CertInfo>,
    pub crls: Vec<CrlInfo>,
    /// Subjects of the trusted CAs that no loaded CRL is issued by.
    /// What the CRLs cover, for `check`.
    pub crl_coverage: tls::crl::CrlCoverage,
    pub loaded_at_unix: i64,
    /// The trusted client CAs: issuers for OCSP requests about leaves that
    /// the client sent without their issuer.
    pub trusted_cas: Vec<CertificateDer<'static>>,
    /// The served certificates, for the stapling refresher.
    pub server_certs: Arc<ServerCerts>,
    /// The OCSP responses stapled in this generation.
    pub staples: Vec<StapleInfo>,
    /// Fetched CRLs, staples and OCSP answers: shared by every generation.
    pub sources: Arc<Sources>,
}

/// An OCSP response stapled to a served certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StapleInfo {
    pub subject: String,
    pub responder: String,
    /// Its nextUpdate (or, without one, when it is refreshed at the latest).
    pub valid_until_unix: i64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("generation", &self.generation)
            .field("certs", &self.certs.len())
            .field("crls", &self.crls.len())
            .finish()
    }
}

/// Why a configuration could not be loaded, whoever loads it: `run` at
/// start, a reload, `check` and `explain`, and `/status` after a failed
/// reload all report this one type.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    /// The config file itself: TOML syntax, unknown keys, invalid values.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Files the config names: missing, unparsable or inconsistent.
    #[error("invalid configuration {}:{}", .config.display(), problem_lines(.problems))]
    Files {
        config: PathBuf,
        problems: Vec<LoadError>,
    },
    /// Settings and files both: `check` reports every problem in one pass.
    #[error("{settings}{}", problem_lines(.files))]
    SettingsAndFiles {
        settings: ConfigError,
        files: Vec<LoadError>,
    },
}

/// What an operator must act on in a state that loads: `check` prints it
/// (and `check --strict` fails on it), `run` logs it at WARN at start and
/// after each reload.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateWarning {
    #[error("served certificate {subject} ({file}) expired at {not_after}")]
    CertificateExpired {
        subject: String,
        file: String,
        not_after: String,
    },
    #[error("served certificate {subject} ({file}) is not valid before {not_before}")]
    CertificateNotYetValid {
        subject: String,
        file: String,
        not_before: String,
    },
    #[error("served certificate {subject} ({file}) expires in {days:.2} days, at {not_after}")]
    CertificateExpiresSoon {
        subject: String,
        file: String,
        not_after: String,
        days: f64,
    },
    #[error("CRL of {issuer} ({file}) is past its nextUpdate {next_update}")]
    CrlPastNextUpdate {
        issuer: String,
        file: String,
        next_update: String,
    },
}

/// A served certificate expiring sooner than this is a [`StateWarning`].
pub const EXPIRES_SOON_DAYS: f64 = 7.0;

fn problem_lines(problems: &[LoadError]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

impl State {
    /// Reads the config file and every file it names.
    ///
    /// # Errors
    /// The [`LoadFailure`] that says what is wrong with which file.
    /// CRLs of `client_auth.crl_urls` come from `crl_cache_dir`, as a
    /// start that cannot reach them would use.
    pub fn load(path: &Path, generation: u64) -> Result<State, LoadFailure> {
        State::build_cached(Arc::new(Config::load(path)?), generation)
    }

    /// As [`State::build`], with the cached copies of the fetched CRLs
    /// (what `check` and `explain` judge by, without fetching).
    ///
    /// # Errors
    /// As [`State::build`].
    pub fn build_cached(config: Arc<Config>, generation: u64) -> Result<State, LoadFailure> {
        let sources = Arc::new(Sources::default());
        for url in &config.client_auth.crl_urls {
            if let Some(Ok(crl)) =
                revocation::crl::read_cache(&config.client_auth, &url.to_string())
            {
                sources.set_crl(crl);
            }
        }
        State::build_with(config, generation, sources, None)
    }

    /// Reads every file the config names and builds a complete state.
    ///
    /// # Errors
    /// [`LoadFailure::Files`], listing each file that is missing, unparsable, or
    /// inconsistent (a key that does not match its certificate, an empty CA
    /// bundle, a CRL rustls refuses or that does not verify against a
    /// trusted CA).
    pub fn build(config: Arc<Config>, generation: u64) -> Result<State, LoadFailure> {
        State::build_with(config, generation, Arc::new(Sources::default()), None)
    }

    /// As [`State::build`], with the CRLs and staples fetched so far:
    /// fetched CRLs join the CRL files, staples the served certificates.
    /// Upstreams that `previous` has with the same settings and files are
    /// kept, with their pooled connections.
    ///
    /// # Errors
    /// As [`State::build`].
    pub fn build_with(
        config: Arc<Config>,
        generation: u64,
        sources: Arc<Sources>,
        previous: Option<&State>,
    ) -> Result<State, LoadFailure> {
        let mut problems = Vec::new();
        let mut certs = Vec::new();
        let mut staples = Vec::new();
        let server_certs =
            load_server_certs(&config, &sources, &mut certs, &mut staples, &mut problems);
        let client_auth = load_client_auth(&config, &sources, &mut certs, &mut problems);
        let upstreams = Upstreams::build(&config, previous.map(|p| &p.upstreams))
            .map_err(|e| problems.extend(e))
            .ok();
        let shared_tickets = load_ticket_keys(&config, &mut problems);

        let files_failed = |problems| LoadFailure::Files {
            config: config.path.clone(),
            problems,
        };
        let (Some(server_certs), Some(client_auth), Some(upstreams), true) =
            (server_certs, client_auth, upstreams, problems.is_empty())
        else {
            return Err(files_failed(problems));
        };
        let server_certs = Arc::new(server_certs);
        let tls = tls::build_server_config(
            server_certs.clone(),
            client_auth.verifier.clone(),
            config.listener.min_tls_version,
            shared_tickets,
        )
        .map_err(|e| files_failed(vec![LoadError::new(&config.path, e.to_string())]))?;

        Ok(State {
            generation,
            roles: RoleMapper::new(&config.roles.default, config.roles.map.clone()),
            authz: Authorizer::new(
                config.authorization.default,
                config.authorization.rules.clone(),
            ),
            tls,
            verifier: client_auth.verifier,
            upstreams,
            certs,
            crls: client_auth.crls,
            crl_coverage: client_auth.coverage,
            loaded_at_unix: crate::clock::unix_now(),
            trusted_cas: client_auth.cas,
            server_certs,
            staples,
            sources,
            config,
        })
    }

    /// What an operator must act on at `now` (Unix seconds): served
    /// certificates expired, not yet valid or expiring within
    /// [`EXPIRES_SOON_DAYS`], and CRLs past their nextUpdate.
    pub fn warnings(&self, now: i64) -> Vec<StateWarning> {
        let mut warnings = Vec::new();
        for c in self.certs.iter().filter(|c| c.kind.is_served()) {
            let (subject, file) = (c.subject.clone(), c.file.display().to_string());
            let days = (c.not_after_unix - now) as f64 / 86_400.0;
            if c.not_after_unix < now {
                warnings.push(StateWarning::CertificateExpired {
                    subject,
                    file,
                    not_after: c.not_after.clone(),
                });
            } else if c.not_before_unix > now {
                warnings.push(StateWarning::CertificateNotYetValid {
                    subject,
                    file,
                    not_before: c.not_before.clone(),
                });
            } else if days < EXPIRES_SOON_DAYS {
                warnings.push(StateWarning::CertificateExpiresSoon {
                    subject,
                    file,
                    not_after: c.not_after.clone(),
                    days,
                });
            }
        }
        for crl in &self.crls {
            if let (Some(next), Some(text)) = (crl.next_update_unix, &crl.next_update) {
                if next < now {
                    warnings.push(StateWarning::CrlPastNextUpdate {
                        issuer: crl.issuer.clone(),
                        file: crl.file.display().to_string(),
                        next_update: text.clone(),
                    });
                }
            }
        }
        warnings
    }

    /// Logs each of [`State::warnings`] at WARN.
    pub fn log_warnings(&self) {
        for warning in self.warnings(crate::clock::unix_now()) {
            tracing::warn!(generation = self.generation, problem = %warning, "served certificate or CRL needs attention");
        }
    }

    /// The soonest notAfter among server certificates, for status lines.
    pub fn next_server_expiry(&self) -> Option<&CertInfo> {
        self.certs
            .iter()
            .filter(|c| c.kind.is_served())
            .min_by_key(|c| c.not_after_unix)
    }
}

/// The default certificate and the SNI certificates; `None` when the
/// default cannot be loaded (every failure is in `problems`).
fn load_server_certs(
    config: &Config,
    sources: &Sources,
    certs: &mut Vec<CertInfo>,
    staples: &mut Vec<StapleInfo>,
    problems: &mut Vec<LoadError>,
) -> Option<ServerCerts> {
    let mut staple = |ck| staple_to(ck, config, sources, staples);
    let default = load_server_cert(&config.server_tls.default, CertKind::Server, None, certs)
        .map(&mut staple)
        .map_err(|e| problems.push(e))
        .ok();
    let mut by_name = HashMap::new();
    for sni in &config.server_tls.sni {
        match load_server_cert(&sni.source, CertKind::Sni, Some(&sni.server_name), certs) {
            Ok(ck) => {
                by_name.insert(sni.server_name.clone(), staple(ck));
            }
            Err(e) => problems.push(e),
        }
    }
    Some(ServerCerts {
        default: default?,
        by_name,
    })
}

/// The served certificate with the OCSP response fetched for it, while
/// that response is valid (`server_tls.ocsp_stapling`).
fn staple_to(
    ck: Arc<CertifiedKey>,
    config: &Config,
    sources: &Sources,
    staples: &mut Vec<StapleInfo>,
) -> Arc<CertifiedKey> {
    if !config.server_tls.ocsp_stapling {
        return ck;
    }
    let Some(answer) = ck
        .end_entity_cert()
        .ok()
        .and_then(|leaf| sources.staple(&revocation::cert_key(leaf), crate::clock::unix_now()))
    else {
        return ck;
    };
    if let Some(id) = ck
        .end_entity_cert()
        .ok()
        .and_then(|leaf| crate::identity::Identity::from_der(leaf).ok())
    {
        staples.push(StapleInfo {
            subject: id.subject,
            responder: answer.responder.clone(),
            valid_until_unix: answer.valid_until_unix,
        });
    }
    let mut stapled = CertifiedKey::clone(&ck);
    stapled.ocsp = Some(answer.der.clone());
    Arc::new(stapled)
}

/// What verifies client certificates: the trusted CAs and the CRLs.
struct ClientAuth {
    verifier: Arc<dyn ClientCertVerifier>,
    crls: Vec<CrlInfo>,
    coverage: tls::crl::CrlCoverage,
    cas: Vec<CertificateDer<'static>>,
}

/// The client verifier from the trusted CAs and CRLs; `None` when it cannot
/// be built (every failure is in `problems`).
fn load_client_auth(
    config: &Config,
    sources: &Sources,
    certs: &mut Vec<CertInfo>,
    problems: &mut Vec<LoadError>,
) -> Option<ClientAuth> {
    let ca = &config.client_auth;
    let cas = load::load_ca_certs(&ca.trusted_cas, ca.trusted_cas_password_file.as_deref())
        .map_err(|e| problems.push(e))
        .unwrap_or_default();
    // No `trusted_cas` at all is a settings problem, reported as such.
    if cas.is_empty() && problems.is_empty() && !ca.trusted_cas.is_empty() {
        problems.push(LoadError::new(
            first_or_config(&ca.trusted_cas, &config.path),
            "no CA certificates found: the client CA bundle is empty",
        ));
    }
    for (file, der) in &cas {
        certs.extend(load::cert_info(CertKind::ClientCa, None, file, der));
    }
    // Loaded even without CAs, so that their problems are reported too.
    let mut crls = load::load_crls(&ca.crls)
        .map_err(|e| problems.push(e))
        .unwrap_or_default();
    if cas.is_empty() {
        // Every CRL would look untrusted; the missing CAs are the problem.
        return None;
    }
    let mut crl_infos: Vec<CrlInfo> = crls
        .iter()
        .filter_map(|(file, der)| load::crl_info(file, der))
        .collect();
    // Fetched CRLs were verified when fetched; verified again below, with
    // the files, against the CAs of this generation. A URL not fetched yet
    // (added by this reload) joins when its first fetch installs it.
    for url in &ca.crl_urls {
        let url = url.to_string();
        if let Some(fetched) = sources.crl(&url) {
            let at = PathBuf::from(&url);
            crl_infos.extend(load::crl_info(&at, &fetched.der).map(|info| CrlInfo {
                url: Some(url.clone()),
                ..info
            }));
            crls.push((at, fetched.der.clone()));
        }
    }
    let coverage = tls::crl::verify_crls(&crls, &cas)
        .map_err(|e| problems.extend(e))
        .unwrap_or_default();
    let ca_ders: Vec<CertificateDer<'static>> = cas.into_iter().map(|(_, c)| c).collect();
    let verifier =
        tls::build_client_verifier(&ca_ders, crls.into_iter().map(|(_, c)| c).collect(), ca)
            .map_err(|reason| {
                let mut files = ca.trusted_cas.clone();
                files.extend(ca.crls.iter().cloned());
                problems.push(LoadError::new(
                    first_or_config(&files, &config.path),
                    reason.to_string(),
                ));
            })
            .ok()?;
    Some(ClientAuth {
        verifier,
        crls: crl_infos,
        coverage,
        cas: ca_ders,
    })
}

/// The fleet's ticketer from `listener.session_ticket_keys`; `None` when
/// the setting is off or the file is unusable (then in `problems`).
fn load_ticket_keys(
    config: &Config,
    problems: &mut Vec<LoadError>,
) -> Option<Arc<dyn rustls::server::ProducesTickets>> {
    let file = config.listener.session_ticket_keys.as_deref()?;
    match tls::tickets::SharedTicketer::load(file) {
        Ok(ticketer) => {
            tracing::debug!(file = %file.display(), key_names = ?ticketer.key_names(), "session ticket keys loaded");
            Some(Arc::new(ticketer))
        }
        Err(e) => {
            problems.push(e);
            None
        }
    }
}

fn first_or_config<'a>(files: &'a [PathBuf], config: &'a Path) -> &'a Path {
    files.first().map(PathBuf::as_path).unwrap_or(config)
}

fn load_server_cert(
    source: &CertSource,
    kind: CertKind,
    server_name: Option<&str>,
    infos: &mut Vec<CertInfo>,
) -> Result<Arc<CertifiedKey>, LoadError> {
    let (chain, key, cert_file, key_file) = match source {
        CertSource::Pem { cert, key } => {
            let chain = load::load_cert_chain(cert)?;
            let private = load::load_private_key(key)?;
            (chain, private, cert.clone(), key.clone())
        }
        CertSource::Pkcs12 {
            file,
            password_file,
        } => {
            let (chain, key) = tls::pkcs12::load_keystore(file, password_file)?;
            (chain, key, file.clone(), file.clone())
        }
    };
    infos.extend(load::cert_info(kind, server_name, &cert_file, &chain[0]));
    load::certified_key(chain, key, &cert_file, &key_file)
}
