//! `certgate check` and `certgate explain`: what the gateway would load,
//! and what it would decide for one client certificate, using exactly the
//! daemon's code paths (config validation, state building, verifier,
//! role mapping, authorization).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::UnixTime;

use crate::config::Config;
use crate::identity::Identity;
use crate::policy::{normalize_path, Decision};
use crate::state::State;
use crate::tls::{load, verify::classify_rustls};

/// Server certificates expiring sooner than this are flagged by `check`.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// Loads the config and every file it names.
///
/// # Errors
/// A printable description of every problem (config keys or files).
pub fn load(path: &Path) -> Result<State, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    crate::tls::install_provider();
    State::build(Arc::new(config), 1).map_err(|e| {
        let mut msg = format!("invalid configuration {}:", path.display());
        for p in &e.problems {
            let _ = write!(msg, "\n  - {p}");
        }
        msg
    })
}

/// The summary `check` prints for a valid configuration.
pub fn summary(state: &State) -> String {
    let cfg = &state.config;
    let now = crate::clock::unix_now();
    let mut out = String::new();
    let _ = writeln!(out, "configuration {} is valid", cfg.path.display());
    let _ = writeln!(out, "listener: {} (TLS >= {:?}), admin: {}", cfg.listener.address, cfg.listener.min_tls_version,
        cfg.admin.address.map(|a| a.to_string()).unwrap_or_else(|| "disabled".into()));
    let _ = writeln!(out, "upstream: {}", cfg.upstream.url);
    let _ = writeln!(out, "certificates:");
    for c in &state.certs {
        let days = (c.not_after_unix - now) / 86_400;
        let warn = if c.not_after_unix < now {
            "  EXPIRED".to_owned()
        } else if days < EXPIRY_WARNING_DAYS {
            format!("  WARNING: expires in {days} days")
        } else {
            String::new()
        };
        let name = c.server_name.as_deref().map(|n| format!(" [{n}]")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}{}: {}  key={}  sans=[{}]  not_after={}{}  ({})",
            c.kind, name, c.subject, c.key_type, c.dns_names.join(","), c.not_after, warn, c.file.display()
        );
    }
    let _ = writeln!(out, "crls:");
    for crl in &state.crls {
        let _ = writeln!(out, "  {}: {} revoked, next_update={}  ({})", crl.issuer, crl.revoked,
            crl.next_update.as_deref().unwrap_or("none"), crl.file.display());
    }
    if state.crls.is_empty() {
        let _ = writeln!(out, "  none (revocation is not checked)");
    }
    let _ = writeln!(out, "roles: default=[{}] audit=[{}]", cfg.roles.default.join(","), cfg.roles.audit.join(","));
    for (i, r) in state.roles.rules().iter().enumerate() {
        let _ = writeln!(out, "  map[{i}]: {}", r.describe());
    }
    let _ = writeln!(out, "authorization: default={:?}", cfg.authorization.default);
    for (i, r) in state.authz.routes().iter().enumerate() {
        let _ = writeln!(out, "  rule[{i}]: {}", describe_route(r));
    }
    out
}

fn describe_route(r: &crate::policy::Route) -> String {
    let methods = r.methods.as_ref().map(|m| m.join(",")).unwrap_or_else(|| "*".into());
    let roles = if r.roles.is_empty() { "any verified client".to_owned() } else { r.roles.join("|") };
    format!("{} {} => {}", methods, r.path, roles)
}

/// Outcome of `explain`: the report to print and whether access is allowed.
pub struct Explanation {
    pub report: String,
    pub allowed: bool,
}

/// Verifies `cert_file` (a PEM chain, leaf first) as the gateway would and
/// decides `method path` for it.
///
/// # Errors
/// The certificate file cannot be read.
pub fn explain(state: &State, cert_file: &Path, path: &str, method: &str) -> Result<Explanation, String> {
    let chain = load::load_cert_chain(cert_file).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let identity = Identity::from_der(&chain[0]).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let _ = writeln!(out, "subject:     {}", identity.subject);
    let _ = writeln!(out, "issuer:      {}", identity.issuer);
    let _ = writeln!(out, "serial:      {}", identity.serial);
    let _ = writeln!(out, "fingerprint: {}", identity.fingerprint_sha256);
    let _ = writeln!(out, "san dns:     [{}]", identity.dns.join(", "));
    let _ = writeln!(out, "san uri:     [{}]", identity.uri.join(", "));
    let _ = writeln!(out, "san email:   [{}]", identity.email.join(", "));
    let _ = writeln!(out, "spiffe id:   {}", identity.spiffe_id.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "validity:    {} .. {}", identity.not_before, identity.not_after);

    if let Err(e) = state.verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()) {
        let _ = writeln!(out, "chain:       REFUSED ({}): {e}", classify_rustls(&e).label());
        let _ = writeln!(out, "decision:    DENY (the handshake would fail)");
        return Ok(Explanation { report: out, allowed: false });
    }
    let _ = writeln!(out, "chain:       verified against {} trusted CA certificate(s), {} CRL(s)",
        state.certs.iter().filter(|c| c.kind == "client_ca").count(), state.crls.len());

    let roles = state.roles.roles_for(&identity);
    let _ = writeln!(out, "default roles: [{}]", state.config.roles.default.join(", "));
    for i in &roles.matched_rules {
        let _ = writeln!(out, "matched map[{i}]: {}", state.roles.rules()[*i].describe());
    }
    if roles.matched_rules.is_empty() {
        let _ = writeln!(out, "matched rules: none");
    }
    let _ = writeln!(out, "roles:       [{}]", roles.joined());

    let normalized = match normalize_path(path) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            let _ = writeln!(out, "request:     {method} {path}");
            let _ = writeln!(out, "decision:    DENY (400: {e})");
            return Ok(Explanation { report: out, allowed: false });
        }
    };
    let method = method.to_ascii_uppercase();
    let _ = writeln!(out, "request:     {method} {normalized}");
    let decision = state.authz.authorize(&normalized, &method, &roles);
    let allowed = decision.is_allowed();
    let line = match decision {
        Decision::Allow { rule: Some(i) } => format!("ALLOW by rule[{i}]: {}", describe_route(&state.authz.routes()[i])),
        Decision::Allow { rule: None } => "ALLOW (authorization.default = \"authenticated\")".to_owned(),
        Decision::Deny { rule: Some(i), reason } => format!("DENY by rule[{i}] ({reason}): {}", describe_route(&state.authz.routes()[i])),
        Decision::Deny { rule: None, reason } => format!("DENY ({reason})"),
    };
    let _ = writeln!(out, "decision:    {line}");
    Ok(Explanation { report: out, allowed })
}
