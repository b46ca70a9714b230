//! `certgate check` and `certgate explain`: what the gateway would load,
//! and what it would decide for one client certificate, using exactly the
//! daemon's code paths (config validation, state building, verifier,
//! role mapping, authorization).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use http::Method;
use rustls::pki_types::UnixTime;

use crate::config::{Config, RevocationFallback, TlsVersion};
use crate::identity::Identity;
use crate::policy::{normalize_path, AuthzDefault, Decision, Roles, Route};
use crate::proxy::{self, Verdict};
use crate::revocation::{crl, ocsp, Sources};
use crate::state::{LoadFailure, State, StateWarning};
use crate::tls::{load, verify::classify_rustls, CertKind};

/// Server certificates expiring sooner than this are flagged by `check`.
const EXPIRY_WARNING_DAYS: f64 = 30.0;

/// Loads the config and every file it names, as `run` does.
///
/// # Errors
/// Every problem with the config keys or the files.
pub fn load(path: &Path) -> Result<State, LoadFailure> {
    crate::tls::install_provider();
    State::load(path, 1)
}

/// What `check` found: the state that would serve, with what needs
/// attention in it.
pub struct Checked {
    pub state: State,
    pub warnings: Vec<StateWarning>,
}

impl Checked {
    /// `state` with what needs attention in it now.
    pub fn new(state: State) -> Checked {
        let warnings = state.warnings(crate::clock::unix_now());
        Checked { state, warnings }
    }
}

/// Loads as [`load`] does, but reports every problem in one pass: the files
/// are read even when settings are invalid (with the settings' safe
/// stand-ins), so that a wrong key does not hide a missing file.
///
/// # Errors
/// Every problem with the settings and the files, every unknown key among
/// them. What stops the config from being read at all (unreadable, TOML
/// syntax, a value of the wrong type) is reported with the unknown keys
/// found before it.
pub fn check(path: &Path) -> Result<Checked, LoadFailure> {
    crate::tls::install_provider();
    let (config, settings) = Config::load_with_problems(path)?;
    let config_dir = config.path.parent().map(Path::to_path_buf);
    let built = State::build_cached(Arc::new(config), 1);
    let settings = crate::config::ConfigError {
        file: path.to_path_buf(),
        problems: settings,
    };
    let files = match built {
        Ok(state) if settings.problems.is_empty() => return Ok(Checked::new(state)),
        Ok(_) => Vec::new(),
        Err(LoadFailure::Files { problems, .. }) => problems,
        Err(other) => return Err(other),
    };
    if settings.problems.is_empty() {
        return Err(LoadFailure::Files {
            config: settings.file,
            problems: files,
        });
    }
    // A setting that is a problem stands in as an empty path (a certificate
    // source given both ways) or the config's directory (an empty path):
    // what reading it reports is that same problem again.
    let files = files
        .into_iter()
        .filter(|f| !f.file.as_os_str().is_empty() && Some(&f.file) != config_dir.as_ref())
        .collect();
    Err(LoadFailure::SettingsAndFiles { settings, files })
}

/// As [`load`], with the CRLs of `client_auth.crl_urls` fetched now (as
/// `run` does at start: a URL that fails falls back to its cached copy);
/// also returns a line per URL saying how its fetch went.
///
/// # Errors
/// Every problem with the config keys or the files; a URL with neither a
/// fetched nor a cached CRL is reported as a problem of the config file.
pub fn load_online(path: &Path) -> Result<(State, String), LoadFailure> {
    crate::tls::install_provider();
    let config = Arc::new(Config::load(path)?);
    let sources = Arc::new(Sources::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| files_problem(&config.path, e.to_string()))?;
    let outcomes = runtime
        .block_on(crl::start(&sources, &config.client_auth))
        .map_err(|e| files_problem(&config.path, e.to_string()))?;
    let mut report = String::new();
    for outcome in outcomes {
        let result = match &outcome.result {
            Ok(r) => r.label().to_owned(),
            Err(e) => format!("error ({e}); using the cached copy"),
        };
        let _ = writeln!(report, "crl fetch {}: {result}", outcome.url);
    }
    drop(runtime);
    Ok((State::build_with(config, 1, sources, None)?, report))
}

fn files_problem(config: &Path, reason: String) -> LoadFailure {
    LoadFailure::Files {
        config: config.to_path_buf(),
        problems: vec![load::LoadError::new(config, reason)],
    }
}

/// The summary `check` prints for a valid configuration.
pub fn summary(state: &State) -> String {
    let cfg = &state.config;
    let mut out = String::new();
    let _ = writeln!(out, "configuration {} is valid", cfg.path.display());
    let tls = match cfg.listener.min_tls_version {
        TlsVersion::V1_2 => "1.2",
        TlsVersion::V1_3 => "1.3",
    };
    let admin = cfg
        .admin
        .address
        .map_or_else(|| "disabled".into(), |a| a.to_string());
    let _ = writeln!(
        out,
        "listener: {} (TLS >= {tls}), admin: {admin}",
        cfg.listener.address
    );
    upstreams_report(cfg, &mut out);
    certificates_report(state, &mut out);
    crls_report(state, &mut out);
    let _ = writeln!(
        out,
        "roles: default=[{}] audit=[{}]",
        cfg.roles.default.join(","),
        cfg.roles.audit.join(",")
    );
    for (i, r) in state.roles.rules().iter().enumerate() {
        let _ = writeln!(out, "  map[{i}]: {}", r.describe());
    }
    let default = match cfg.authorization.default {
        AuthzDefault::Deny => "deny",
        AuthzDefault::Authenticated => "authenticated",
    };
    let _ = writeln!(out, "authorization: default={default}");
    for (i, r) in state.authz.routes().iter().enumerate() {
        let _ = writeln!(out, "  rule[{i}]: {}", describe_route(r));
    }
    out
}

/// Each upstream with its protocol and endpoints, then the routes.
fn upstreams_report(cfg: &Config, out: &mut String) {
    for u in std::iter::once(&cfg.upstream).chain(&cfg.upstreams) {
        let health = match &u.health_check_path {
            Some(path) => format!("health check GET {path} every {:?}", u.health_interval),
            None => "passive health".to_owned(),
        };
        let _ = writeln!(
            *out,
            "upstream {}: {} ({}), endpoints {}, {health}",
            u.name,
            u.url,
            u.protocol.describe(u.is_https()),
            u.addresses().join(", ")
        );
    }
    for (i, r) in cfg.routes.iter().enumerate() {
        let host = r
            .host
            .as_deref()
            .map(|h| format!(" host {h}"))
            .unwrap_or_default();
        let _ = writeln!(*out, "  route[{i}]: {}{host} -> {}", r.path, r.upstream);
    }
}

fn certificates_report(state: &State, out: &mut String) {
    let _ = writeln!(*out, "certificates:");
    let now = crate::clock::unix_now();
    for c in &state.certs {
        let name = c
            .server_name
            .as_deref()
            .map(|n| format!(" [{n}]"))
            .unwrap_or_default();
        let sans: Vec<&str> = c
            .dns_names
            .iter()
            .chain(&c.ip_addresses)
            .map(String::as_str)
            .collect();
        let _ = writeln!(
            *out,
            "  {}{name}: {}  key={}  sans=[{}]  serial={}  not_after={}{}  ({})",
            c.kind,
            c.subject,
            c.key_type,
            sans.join(","),
            c.serial,
            c.not_after,
            expiry_warning(c.not_after_unix, now),
            c.file.display()
        );
    }
}

fn crls_report(state: &State, out: &mut String) {
    let cfg = &state.config;
    let _ = writeln!(*out, "crls:");
    for crl in &state.crls {
        let _ = writeln!(
            *out,
            "  {}: {} revoked, this_update={} next_update={}  ({})",
            crl.issuer,
            crl.revoked,
            crl.this_update,
            crl.next_update.as_deref().unwrap_or("none"),
            crl.source()
        );
    }
    for url in &cfg.client_auth.crl_urls {
        let url = url.to_string();
        if !state
            .crls
            .iter()
            .any(|c| c.url.as_deref() == Some(url.as_str()))
        {
            let _ = writeln!(
                *out,
                "  {url}: no cached copy (`check --online` fetches it; `run` fails to start without it)"
            );
        }
    }
    if state.crls.is_empty() {
        let _ = writeln!(*out, "  none (revocation is not checked)");
    } else if cfg.client_auth.unknown_revocation == RevocationFallback::Allow
        && !state.crl_coverage.cas_without_crl.is_empty()
    {
        let _ = writeln!(
            *out,
            "warning: no CRL is loaded for trusted CA(s) [{}]: with unknown_revocation = \"allow\" their clients are never revocation-checked",
            state.crl_coverage.cas_without_crl.join("; ")
        );
    }
    if !state.crl_coverage.intermediate_issuers.is_empty() {
        let _ = writeln!(
            *out,
            "  CRLs of [{}], which are not trusted CAs, are verified at each handshake against the intermediate certificate the client presents",
            state.crl_coverage.intermediate_issuers.join("; ")
        );
    }
}

/// Days with two decimals: rounding 4.98 days down to "4 days" hides that
/// the deadline is nearly a day later than it reads.
fn expiry_warning(not_after_unix: i64, now: i64) -> String {
    let days = (not_after_unix - now) as f64 / 86_400.0;
    if not_after_unix < now {
        "  EXPIRED".to_owned()
    } else if days < EXPIRY_WARNING_DAYS {
        format!("  WARNING: expires in {days:.2} days")
    } else {
        String::new()
    }
}

/// The lines `check` prints after the summary for what needs attention.
pub fn warnings_report(warnings: &[StateWarning]) -> String {
    warnings.iter().map(|w| format!("warning: {w}\n")).collect()
}

fn describe_route(r: &Route) -> String {
    let methods = r
        .methods
        .as_ref()
        .map_or_else(|| "*".into(), |m| m.join(","));
    let roles = if r.roles.is_empty() {
        "any verified client".to_owned()
    } else {
        r.roles.join("|")
    };
    format!("{} {} => {}", methods, r.path, roles)
}

/// Outcome of `explain`: the report to print and whether access is allowed.
#[derive(Debug)]
pub struct Explanation {
    pub report: String,
    pub allowed: bool,
}

/// Why `explain` could not judge its input (refusals are part of the
/// report, not errors).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("--method {0:?} is not an HTTP method")]
    BadMethod(String),
    #[error(transparent)]
    Certificate(#[from] load::LoadError),
    #[error("{}: {error}", .file.display())]
    Identity {
        file: std::path::PathBuf,
        error: crate::identity::IdentityError,
    },
}

/// Verifies `cert_file` (a PEM chain, leaf first) as the gateway would and
/// decides `method path` for it.
///
/// # Errors
/// Bad input: the certificate file cannot be read or parsed, or `method`
/// is not an HTTP method token.
pub fn explain(
    state: &State,
    cert_file: &Path,
    path: &str,
    method: &str,
) -> Result<Explanation, ExplainError> {
    // Uppercased for convenience (`--method post`); the gateway itself
    // compares methods exactly as the client sent them.
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| ExplainError::BadMethod(method.to_owned()))?;
    let chain = load::load_cert_chain(cert_file)?;
    let identity = Identity::from_der(&chain[0]).map_err(|error| ExplainError::Identity {
        file: cert_file.to_path_buf(),
        error,
    })?;
    let mut out = identity_report(&identity);

    if let Err(e) = state
        .verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
    {
        let _ = writeln!(
            out,
            "chain:       REFUSED ({}): {e}",
            classify_rustls(&e).label()
        );
        revocation_report(state, &identity, &chain[0], &mut out);
        let _ = writeln!(out, "decision:    DENY (the handshake would fail)");
        return Ok(Explanation {
            report: out,
            allowed: false,
        });
    }
    let _ = writeln!(
        out,
        "chain:       verified against {} trusted CA certificate(s), {} CRL(s)",
        state
            .certs
            .iter()
            .filter(|c| c.kind == CertKind::ClientCa)
            .count(),
        state.crls.len()
    );
    revocation_report(state, &identity, &chain[0], &mut out);

    let roles = roles_report(state, &identity, &mut out);

    // The gateway authorizes the path alone; a query string never matters.
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let (allowed, line) = match normalize_path(path, state.config.listener.path_parameters) {
        Ok(normalized) => {
            let _ = writeln!(out, "request:     {method} {}", normalized.path);
            let upstream = match state.upstreams.for_request(&normalized.path, None) {
                (u, Some(route)) => format!("{} (route {})", u.name(), route.path),
                (u, None) => format!("{} (no route covers the path)", u.name()),
            };
            let _ = writeln!(out, "upstream:    {upstream}");
            decide(state, &normalized.path, &method, &roles)
        }
        Err(e) => {
            let _ = writeln!(out, "request:     {method} {path}");
            (false, format!("DENY (400: {e})"))
        }
    };
    let _ = writeln!(out, "decision:    {line}");
    Ok(Explanation {
        report: out,
        allowed,
    })
}

/// Where the revocation answer for the leaf comes from: each CRL of its
/// issuer (file or URL, with its thisUpdate), or none; and, with
/// `client_auth.ocsp`, the responder the gateway would ask.
fn revocation_report(state: &State, identity: &Identity, leaf: &[u8], out: &mut String) {
    let mut any = false;
    for crl in state.crls.iter().filter(|c| c.issuer == identity.issuer) {
        any = true;
        let _ = writeln!(
            *out,
            "revocation:  CRL {} (this_update={}, {} revoked)",
            crl.source(),
            crl.this_update,
            crl.revoked
        );
    }
    if !any {
        let _ = writeln!(*out, "revocation:  no CRL of the issuer is loaded");
    }
    if state.config.client_auth.ocsp != crate::config::OcspMode::Off {
        let responder = ocsp::responder_url(leaf);
        let _ = writeln!(
            *out,
            "ocsp:        {} (asked before the first request; explain does not ask)",
            responder.as_deref().map_or_else(
                || "the certificate names no responder".to_owned(),
                |r| format!("responder {r}")
            )
        );
    }
}

/// The roles `identity` holds under `state`, with the rules that granted
/// them and those that could not (ambiguous), written to `out`.
fn roles_report(state: &State, identity: &Identity, out: &mut String) -> Roles {
    let roles = state.roles.roles_for(identity);
    let _ = writeln!(
        *out,
        "default roles: [{}]",
        state.config.roles.default.join(", ")
    );
    for i in &roles.matched_rules {
        let _ = writeln!(
            *out,
            "matched map[{i}]: {}",
            state.roles.rules()[*i].describe()
        );
    }
    if roles.matched_rules.is_empty() {
        let _ = writeln!(*out, "matched rules: none");
    }
    for (i, rule) in state.roles.rules().iter().enumerate() {
        if let Some(ambiguity) = rule.ambiguity(identity) {
            let _ = writeln!(
                *out,
                "map[{i}]: {ambiguity}, the rule grants nothing: {}",
                rule.describe()
            );
        }
    }
    let _ = writeln!(*out, "roles:       [{}]", roles.joined());
    roles
}

fn identity_report(identity: &Identity) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "subject:     {}", identity.subject);
    let _ = writeln!(out, "issuer:      {}", identity.issuer);
    let _ = writeln!(out, "serial:      {}", identity.serial);
    let _ = writeln!(out, "fingerprint: {}", identity.fingerprint_sha256);
    let _ = writeln!(out, "san dns:     [{}]", identity.dns.join(", "));
    let _ = writeln!(out, "san uri:     [{}]", identity.uri.join(", "));
    let _ = writeln!(out, "san email:   [{}]", identity.email.join(", "));
    let _ = writeln!(
        out,
        "spiffe id:   {}",
        identity.spiffe_id.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "validity:    {} .. {}",
        identity.not_before, identity.not_after
    );
    out
}

/// The gateway's verdict for a normalized path, in words.
fn decide(state: &State, path: &str, method: &Method, roles: &Roles) -> (bool, String) {
    let routes = state.authz.routes();
    match proxy::decide(state, path, method, roles) {
        Verdict::Whoami => (
            true,
            "ALLOW (built-in endpoint, open to any verified client)".into(),
        ),
        Verdict::NoSuchEndpoint => (false, "DENY (404: no such gateway endpoint)".into()),
        Verdict::Rules(Decision::Allow { rule: Some(i) }) => (
            true,
            format!("ALLOW by rule[{i}]: {}", describe_route(&routes[i])),
        ),
        Verdict::Rules(Decision::Allow { rule: None }) => (
            true,
            "ALLOW (authorization.default = \"authenticated\")".into(),
        ),
        Verdict::Rules(Decision::Deny {
            rule: Some(i),
            reason,
        }) => (
            false,
            format!(
                "DENY by rule[{i}] ({reason}): {}",
                describe_route(&routes[i])
            ),
        ),
        Verdict::Rules(Decision::Deny { rule: None, reason }) => {
            (false, format!("DENY ({reason})"))
        }
    }
}
