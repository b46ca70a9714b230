//! Configuration: TOML text (plus `CERTGATE_<SECTION>__<KEY>` environment
//! overrides) → raw serde structs → one validation pass that reports every
//! problem at once → typed [`Config`]. Files named by the config are resolved
//! against the config file's directory here but read by `state`, so that a
//! reload re-reads them all together.

mod raw;
mod unknown_keys;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::identity::CertField;
use crate::policy::{
    valid_role, AuthzDefault, Glob, PathParameters, RoleRule, Route, UpstreamRoute,
};
use raw::RawConfig;

/// Where the configuration is read from when `-c` is not given.
pub const DEFAULT_PATH: &str = "/etc/certgate/certgate.toml";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config file itself (absolute), watched for changes like every file it names.
    pub path: PathBuf,
    pub listener: ListenerConfig,
    pub server_tls: ServerTlsConfig,
    pub client_auth: ClientAuthConfig,
    /// `[upstream]`: the default upstream, named `default`.
    pub upstream: UpstreamConfig,
    /// `[upstreams.NAME]`, by name.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[route]]`, in file order.
    pub routes: Vec<UpstreamRoute>,
    pub identity: IdentityConfig,
    pub roles: RolesConfig,
    pub authorization: AuthorizationConfig,
    pub admin: AdminConfig,
    pub reload: ReloadConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub min_tls_version: TlsVersion,
    pub shutdown_timeout: Duration,
    pub path_parameters: PathParameters,
    pub underscore_headers: UnderscoreHeaders,
    /// An exchange in progress that moves no byte for this long is ended.
    pub stream_idle_timeout: Duration,
    /// Which PROXY protocol header precedes TLS, if any.
    pub proxy_protocol: ProxyProtocol,
    /// The only peers that may send a PROXY header; empty when `Off`.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// The key file shared by every replica; `None`: per-state random keys.
    pub session_ticket_keys: Option<PathBuf>,
}

/// `listener.proxy_protocol`: which PROXY protocol header an L4 balancer
/// sends before the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
    /// Either version, told apart by its signature.
    Any,
}

impl ListenerConfig {
    /// Whether `peer` may send a PROXY header. An IPv4 peer on a dual-stack
    /// socket appears as `::ffff:a.b.c.d`, which IPv4 CIDRs must match too.
    pub fn proxy_trusted(&self, peer: std::net::IpAddr) -> bool {
        let canonical = peer.to_canonical();
        self.proxy_protocol_from
            .iter()
            .any(|net| net.contains(&peer) || net.contains(&canonical))
    }
}

/// What happens to request headers whose name holds `_` (`listener.underscore_headers`).
/// CGI, WSGI, Rack and PHP read `X_Client_Roles` and `X-Client-Roles` as one
/// name, so a header the gateway would never forward could reach the
/// application under another spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnderscoreHeaders {
    /// Removed before forwarding (nginx's default).
    #[default]
    Drop,
    /// Forwarded, except the identity and forwarding families, which are
    /// removed in every spelling whatever this says.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// Where a server certificate and its key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    Pem {
        cert: PathBuf,
        key: PathBuf,
    },
    Pkcs12 {
        file: PathBuf,
        password_file: PathBuf,
    },
}

impl CertSource {
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            CertSource::Pem { cert, key } => vec![cert.clone(), key.clone()],
            CertSource::Pkcs12 {
                file,
                password_file,
            } => vec![file.clone(), password_file.clone()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// Lowercase DNS name, or `*.suffix` for a one-label wildcard.
    pub server_name: String,
    pub source: CertSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsConfig {
    pub default: CertSource,
    pub sni: Vec<SniCert>,
    /// Staple OCSP responses for the served certificates (from their AIA).
    pub ocsp_stapling: bool,
}

/// What to do with a chain whose revocation status a CRL cannot settle
/// (`client_auth.unknown_revocation`: no CRL for its issuer;
/// `client_auth.expired_crl`: only an expired CRL covers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationFallback {
    Allow,
    Deny,
}

/// What an OCSP answer the gateway cannot get (responder unreachable, no
/// responder, an answer that does not verify, `unknown`) means for a client
/// (`client_auth.ocsp`). `revoked` refuses in every mode but `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspMode {
    Off,
    /// Lets the client in.
    Soft,
    /// Refuses the client.
    Hard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlScope {
    Chain,
    EndEntity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthConfig {
    /// PEM files, directories of PEM files, or PKCS#12 trust stores.
    pub trusted_cas: Vec<PathBuf>,
    /// Password for PKCS#12 trust stores in `trusted_cas` (many have none).
    pub trusted_cas_password_file: Option<PathBuf>,
    pub crls: Vec<PathBuf>,
    pub unknown_revocation: RevocationFallback,
    pub crl_scope: CrlScope,
    pub expired_crl: RevocationFallback,
    /// http(s) URLs of CRLs, fetched and refreshed by the gateway.
    pub crl_urls: Vec<http::Uri>,
    /// How often fetched CRLs are re-fetched; also how long an OCSP answer
    /// without nextUpdate is kept.
    pub crl_refresh: Duration,
    /// Where fetched CRLs are kept across restarts; `None` keeps them in memory only.
    pub crl_cache_dir: Option<PathBuf>,
    pub ocsp: OcspMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// `default` for `[upstream]`, else the `[upstreams.NAME]` name.
    pub name: String,
    pub url: http::Uri,
    /// `host:port` addresses to balance over; empty: the url's own.
    pub endpoints: Vec<String>,
    pub health_check_path: Option<String>,
    pub health_interval: Duration,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// How certgate speaks to the upstream (`upstream.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: h2c with prior knowledge on `http://`, h2 by ALPN on `https://`.
    Http2,
    /// ALPN on `https://` (h2 preferred); HTTP/1.1 on `http://`, where
    /// nothing negotiates.
    Auto,
}

impl UpstreamProtocol {
    /// What the setting means for an `http://` or `https://` url, as
    /// `certgate check` says it.
    pub fn describe(self, https: bool) -> &'static str {
        match (self, https) {
            (UpstreamProtocol::Http1, _) => "HTTP/1.1",
            (UpstreamProtocol::Http2, false) => "HTTP/2 with prior knowledge (h2c)",
            (UpstreamProtocol::Http2, true) => "HTTP/2 (ALPN h2)",
            (UpstreamProtocol::Auto, false) => "HTTP/1.1 (auto: nothing negotiates on http://)",
            (UpstreamProtocol::Auto, true) => "HTTP/2 or HTTP/1.1 by ALPN, h2 preferred",
        }
    }
}

impl UpstreamConfig {
    pub fn is_https(&self) -> bool {
        self.url.scheme() == Some(&http::uri::Scheme::HTTPS)
    }

    /// The files this upstream reads: its CA and client certificate.
    pub fn files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        [&self.ca, &self.client_cert, &self.client_key]
            .into_iter()
            .flatten()
            .cloned()
    }

    /// The addresses to connect to: `endpoints`, or the url's host and port.
    pub fn addresses(&self) -> Vec<String> {
        if !self.endpoints.is_empty() {
            return self.endpoints.clone();
        }
        let port = self
            .url
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 });
        let host = self.url.host().unwrap_or("127.0.0.1");
        vec![format!("{host}:{port}")]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentityConfig {
    pub forward_cert: bool,
    pub xfcc: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolesConfig {
    pub default: Vec<String>,
    pub audit: Vec<String>,
    pub map: Vec<RoleRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationConfig {
    pub default: AuthzDefault,
    pub rules: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `None` when the operator disabled the admin listener with `address = ""`.
    pub address: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadConfig {
    pub watch: bool,
    pub debounce: Duration,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
}

/// One thing wrong with the configuration: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A config key (`listener.address`) or a file path.
    pub at: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.reason)
    }
}

/// Every problem found in one pass, so an operator fixes them all in one go.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.file.display())?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn single(file: &Path, at: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            problems: vec![Problem {
                at: at.into(),
                reason: reason.into(),
            }],
        }
    }
}

/// The config path to use: `-c`, else `$CERTGATE_CONFIG`, else [`DEFAULT_PATH`].
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("CERTGATE_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

impl Config {
    /// Reads and validates the config file, applying environment overrides
    /// from the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] listing every problem: unreadable file, TOML syntax,
    /// unknown keys, bad values.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config(path)?;
        Self::from_toml(path, &text, std::env::vars())
    }

    /// Parses `text` as if read from `path`, with `env` as the environment.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_toml(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (config, problems) = Self::from_toml_with_problems(path, text, env)?;
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: config.path,
                problems,
            })
        }
    }

    /// Reads the config file as `check` does: every invalid value is a
    /// [`Problem`] and has a safe stand-in in the returned config, so that
    /// the files it names can still be checked in the same pass.
    ///
    /// # Errors
    /// Only what stops the reading itself: an unreadable file, TOML syntax,
    /// a value of the wrong type. Unknown keys are problems, all of them.
    pub fn load_with_problems(path: &Path) -> Result<(Config, Vec<Problem>), ConfigError> {
        let text = read_config(path)?;
        Self::from_toml_with_problems(path, &text, std::env::vars())
    }

    fn from_toml_with_problems(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<Problem>), ConfigError> {
        let path = absolute(path);
        let (raw, mut problems) = parse_with_overrides(&path, text, env)?;
        let (config, invalid) = validate(&path, raw);
        problems.extend(invalid);
        Ok((config, problems))
    }

    /// Every file this configuration names, config file first: what reload watches.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.server_tls.default.files());
        for sni in &self.server_tls.sni {
            files.extend(sni.source.files());
        }
        files.extend(self.client_auth.trusted_cas.iter().cloned());
        files.extend(self.client_auth.trusted_cas_password_file.iter().cloned());
        // Not `crl_cache_dir`: the gateway writes it, and watching it would
        // turn every CRL fetch into a second reload.
        files.extend(self.client_auth.crls.iter().cloned());
        files.extend(self.listener.session_ticket_keys.iter().cloned());
        for u in std::iter::once(&self.upstream).chain(&self.upstreams) {
            files.extend(u.files());
        }
        files
    }
}

fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(
            path,
            path.display().to_string(),
            format!("cannot read: {e}"),
        )
    })
}

/// The name of `[upstream]` in metrics and logs.
pub const DEFAULT_UPSTREAM: &str = "default";

/// `host:port`: a DNS-style name, an IPv4 address or a bracketed IPv6
/// address, and a port.
fn valid_endpoint(value: &str) -> bool {
    let Some((host, port)) = value.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Applies `CERTGATE_<SECTION>__<KEY>=value` overrides onto the parsed
/// document. A value is read as a TOML value when it parses as one
/// (`true`, `10000`, `["a", "b"]`), else as a plain string.
///
/// Unknown keys are problems, all of them, and the rest is still read (see
/// `unknown_keys`); any other TOML error ends the reading.
fn parse_with_overrides(
    path: &Path,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(RawConfig, Vec<Problem>), ConfigError> {
    let overrides: Vec<(String, String, String)> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("CERTGATE_")?;
            let (section, key) = rest.split_once("__")?;
            Some((section.to_ascii_lowercase(), key.to_ascii_lowercase(), v))
        })
        .collect();
    let syntax = |e: toml::de::Error| ConfigError::single(path, "toml", e.to_string());
    if overrides.is_empty() {
        // Parse the original text so errors carry the operator's line numbers.
        return parse_raw(path, text, "toml");
    }
    let mut doc: toml::Table = toml::from_str(text).map_err(syntax)?;
    for (section, key, value) in overrides {
        let at = format!(
            "CERTGATE_{}__{}",
            section.to_uppercase(),
            key.to_uppercase()
        );
        let table = doc
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(table) = table.as_table_mut() else {
            return Err(ConfigError::single(
                path,
                at,
                format!("`{section}` is not a table"),
            ));
        };
        table.insert(key, env_value(&value));
    }
    let merged =
        toml::to_string(&doc).map_err(|e| ConfigError::single(path, "env", e.to_string()))?;
    parse_raw(path, &merged, "toml (after environment overrides)")
}

/// `text` as the raw config, every unknown key a problem at `at`.
fn parse_raw(path: &Path, text: &str, at: &str) -> Result<(RawConfig, Vec<Problem>), ConfigError> {
    let (raw, unknown) = unknown_keys::parse_skipping_unknown::<RawConfig>(text);
    let problem = |e: toml::de::Error| Problem {
        at: at.to_owned(),
        reason: e.to_string(),
    };
    let mut problems: Vec<Problem> = unknown.into_iter().map(problem).collect();
    match raw {
        Ok(raw) => Ok((raw, problems)),
        Err(e) => {
            problems.push(problem(e));
            Err(ConfigError {
                file: path.to_path_buf(),
                problems,
            })
        }
    }
}

fn env_value(value: &str) -> toml::Value {
    let probe = format!("v = {value}");
    match toml::from_str::<toml::Table>(&probe)
        .ok()
        .and_then(|mut t| t.remove("v"))
    {
        // No key takes a float: `1.3` (min_tls_version) is meant as text.
        Some(toml::Value::Float(_)) | None => toml::Value::String(value.to_owned()),
        Some(v) => v,
    }
}

/// The longest any duration setting may be. Every timer adds its duration
/// to the clock; a bound keeps that sum far from overflow, and no timeout
/// or interval of a gateway needs more than a day.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses `"250ms"`, `"10s"`, `"2m"`, `"1h"`; a bare number is rejected so
/// that units are never guessed.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::NotADuration(s.to_owned()))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(DurationError::NoUnit(s.to_owned())),
    };
    Ok(d)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration like \"250ms\", \"10s\" or \"2m\"")]
    NotADuration(String),
    #[error("`{0}` needs a unit: ms, s, m or h (like \"250ms\", \"10s\", \"2m\")")]
    NoUnit(String),
}

/// Collects problems while building the typed config.
struct Validator<'a> {
    dir: &'a Path,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, at: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            at: at.into(),
            reason: reason.into(),
        });
    }

    fn duration(&mut self, at: &str, value: &str) -> Duration {
        match parse_duration(value) {
            Ok(d) if d.is_zero() => {
                self.problem(at, "must be greater than zero");
                Duration::from_secs(1)
            }
            Ok(d) if d > MAX_DURATION => {
                self.problem(at, format!("`{value}` is longer than the maximum, \"24h\""));
                Duration::from_secs(1)
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(at, e.to_string());
                Duration::from_secs(1)
            }
        }
    }

    fn addr(&mut self, at: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            self.problem(
                at,
                format!("`{value}` is not an IP:port address like \"0.0.0.0:8443\""),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn positive(&mut self, at: &str, value: i64, max: i64) -> usize {
        if value <= 0 || value > max {
            self.problem(at, format!("must be between 1 and {max}, got {value}"));
            return 1;
        }
        value as usize
    }

    fn path(&mut self, at: &str, value: &str) -> PathBuf {
        if value.trim().is_empty() {
            self.problem(at, "must not be empty");
        }
        self.dir.join(value)
    }

    /// One of a fixed set of words; the first option stands in after a
    /// problem (list the strictest first).
    fn choice<T: Copy>(&mut self, at: &str, value: &str, options: &[(&str, T)]) -> T {
        if let Some((_, choice)) = options.iter().find(|(word, _)| *word == value) {
            return *choice;
        }
        let words: Vec<String> = options.iter().map(|(w, _)| format!("\"{w}\"")).collect();
        self.problem(
            at,
            format!("must be {}, got \"{value}\"", words.join(" or ")),
        );
        options[0].1
    }

    fn revocation_fallback(&mut self, at: &str, value: &str) -> RevocationFallback {
        self.choice(
            at,
            value,
            &[
                ("deny", RevocationFallback::Deny),
                ("allow", RevocationFallback::Allow),
            ],
        )
    }

    fn cert_source(
        &mut self,
        at: &str,
        cert: Option<String>,
        key: Option<String>,
        pkcs12: Option<String>,
        password_file: Option<String>,
    ) -> CertSource {
        match (cert, key, pkcs12, password_file) {
            (Some(c), Some(k), None, None) => CertSource::Pem {
                cert: self.path(&format!("{at}.cert"), &c),
                key: self.path(&format!("{at}.key"), &k),
            },
            (None, None, Some(p), Some(pw)) => CertSource::Pkcs12 {
                file: self.path(&format!("{at}.pkcs12"), &p),
                password_file: self.path(&format!("{at}.pkcs12_password_file"), &pw),
            },
            (None, None, Some(_), None) => {
                self.problem(
                    at,
                    "pkcs12 needs pkcs12_password_file (passwords are read from files, never from the config or command line)",
                );
                CertSource::Pem {
                    cert: PathBuf::new(),
                    key: PathBuf::new(),
                }
            }
            _ => {
                self.problem(
                    at,
                    "give either cert and key, or pkcs12 and pkcs12_password_file",
                );
                CertSource::Pem {
                    cert: PathBuf::new(),
                    key: PathBuf::new(),
                }
            }
        }
    }
}

/// One method per config section: each turns its raw section into the
/// typed one, recording problems and standing in a safe value for each.
impl Validator<'_> {
    fn listener(&mut self, l: &raw::RawListener) -> ListenerConfig {
        let (proxy_protocol, proxy_protocol_from) = self.proxy_protocol(l);
        ListenerConfig {
            address: self.addr("listener.address", &l.address),
            handshake_timeout: self.duration("listener.handshake_timeout", &l.handshake_timeout),
            idle_timeout: self.duration("listener.idle_timeout", &l.idle_timeout),
            header_timeout: self.duration("listener.header_timeout", &l.header_timeout),
            max_connections: self.positive(
                "listener.max_connections",
                l.max_connections,
                1_000_000,
            ),
            max_header_bytes: self.positive(
                "listener.max_header_bytes",
                l.max_header_bytes,
                1 << 20,
            ),
            min_tls_version: self.choice(
                "listener.min_tls_version",
                &l.min_tls_version,
                &[("1.3", TlsVersion::V1_3), ("1.2", TlsVersion::V1_2)],
            ),
            shutdown_timeout: self.duration("listener.shutdown_timeout", &l.shutdown_timeout),
            path_parameters: self.choice(
                "listener.path_parameters",
                &l.path_parameters,
                &[
                    ("reject", PathParameters::Reject),
                    ("allow", PathParameters::Allow),
                ],
            ),
            underscore_headers: self.choice(
                "listener.underscore_headers",
                &l.underscore_headers,
                &[
                    ("drop", UnderscoreHeaders::Drop),
                    ("keep", UnderscoreHeaders::Keep),
                ],
            ),
            stream_idle_timeout: self
                .duration("listener.stream_idle_timeout", &l.stream_idle_timeout),
            proxy_protocol,
            proxy_protocol_from,
            session_ticket_keys: (!l.session_ticket_keys.is_empty())
                .then(|| self.path("listener.session_ticket_keys", &l.session_ticket_keys)),
        }
    }

    /// `listener.proxy_protocol` and the CIDRs it is accepted from: a
    /// header trusted from anywhere would let any client choose its address.
    fn proxy_protocol(&mut self, l: &raw::RawListener) -> (ProxyProtocol, Vec<ipnet::IpNet>) {
        let mode = self.choice(
            "listener.proxy_protocol",
            &l.proxy_protocol,
            &[
                ("off", ProxyProtocol::Off),
                ("v1", ProxyProtocol::V1),
                ("v2", ProxyProtocol::V2),
                ("any", ProxyProtocol::Any),
            ],
        );
        let mut nets = Vec::new();
        for (i, cidr) in l.proxy_protocol_from.iter().enumerate() {
            // A bare address is a one-address network.
            let parsed = cidr
                .parse::<ipnet::IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => self.problem(
                    format!("listener.proxy_protocol_from[{i}]"),
                    format!("`{cidr}` is not a CIDR like \"10.0.0.0/8\" or an IP address"),
                ),
            }
        }
        if mode != ProxyProtocol::Off && l.proxy_protocol_from.is_empty() {
            self.problem(
                "listener.proxy_protocol_from",
                "must list the balancers' CIDRs when listener.proxy_protocol is not \"off\"",
            );
        }
        (mode, nets)
    }

    fn server_tls(&mut self, t: raw::RawServerTls) -> ServerTlsConfig {
        let default = self.cert_source(
            "server_tls",
            t.cert,
            t.key,
            t.pkcs12,
            t.pkcs12_password_file,
        );
        let mut sni = Vec::new();
        for (i, s) in t.sni.into_iter().enumerate() {
            let at = format!("server_tls.sni[{i}]");
            let name = s.server_name.trim().to_ascii_lowercase();
            if !valid_sni_pattern(&name) {
                self.problem(
                    format!("{at}.server_name"),
                    format!("`{}` is not a DNS name or `*.` wildcard", s.server_name),
                );
            }
            if sni.iter().any(|e: &SniCert| e.server_name == name) {
                self.problem(
                    format!("{at}.server_name"),
                    format!("`{name}` is listed twice"),
                );
            }
            let source = self.cert_source(&at, s.cert, s.key, s.pkcs12, s.pkcs12_password_file);
            sni.push(SniCert {
                server_name: name,
                source,
            });
        }

        ServerTlsConfig {
            default,
            sni,
            ocsp_stapling: t.ocsp_stapling,
        }
    }

    fn client_auth(&mut self, c: raw::RawClientAuth) -> ClientAuthConfig {
        let crl_refresh = self.duration("client_auth.crl_refresh", &c.crl_refresh);
        if crl_refresh < Duration::from_secs(1) {
            self.problem("client_auth.crl_refresh", "must be at least \"1s\"");
        }
        if c.trusted_cas.is_empty() {
            self.problem(
                "client_auth.trusted_cas",
                "at least one CA file or directory is required: client certificates are always verified",
            );
        }
        ClientAuthConfig {
            trusted_cas: c
                .trusted_cas
                .iter()
                .map(|p| self.path("client_auth.trusted_cas", p))
                .collect(),
            trusted_cas_password_file: c
                .trusted_cas_password_file
                .map(|p| self.path("client_auth.trusted_cas_password_file", &p)),
            crls: c
                .crls
                .iter()
                .map(|p| self.path("client_auth.crls", p))
                .collect(),
            unknown_revocation: self
                .revocation_fallback("client_auth.unknown_revocation", &c.unknown_revocation),
            crl_scope: self.choice(
                "client_auth.crl_scope",
                &c.crl_scope,
                &[
                    ("chain", CrlScope::Chain),
                    ("end_entity", CrlScope::EndEntity),
                ],
            ),
            expired_crl: self.revocation_fallback("client_auth.expired_crl", &c.expired_crl),
            crl_urls: c
                .crl_urls
                .iter()
                .map(|u| self.fetch_url("client_auth.crl_urls", u))
                .collect(),
            crl_refresh,
            crl_cache_dir: (!c.crl_cache_dir.trim().is_empty())
                .then(|| self.dir.join(&c.crl_cache_dir)),
            ocsp: self.choice(
                "client_auth.ocsp",
                &c.ocsp,
                &[
                    ("hard", OcspMode::Hard),
                    ("soft", OcspMode::Soft),
                    ("off", OcspMode::Off),
                ],
            ),
        }
    }

    /// An `http://` or `https://` URL with a host, as a CRL distribution
    /// point is published.
    fn fetch_url(&mut self, at: &str, value: &str) -> http::Uri {
        match value.parse::<http::Uri>() {
            Ok(url)
                if matches!(url.scheme_str(), Some("http") | Some("https"))
                    && url.host().is_some_and(|h| !h.is_empty()) =>
            {
                url
            }
            _ => {
                self.problem(
                    at,
                    format!("`{value}` is not an http:// or https:// URL with a host"),
                );
                http::Uri::from_static("http://127.0.0.1/")
            }
        }
    }

    /// `[upstream]` (`at = "upstream"`) or `[upstreams.NAME]`.
    fn upstream(&mut self, at: &str, name: &str, u: raw::RawUpstream) -> UpstreamConfig {
        let url = match u.url.parse::<http::Uri>() {
            Ok(url) => {
                let scheme_ok = matches!(url.scheme_str(), Some("http") | Some("https"));
                let path_ok = matches!(url.path(), "" | "/") && url.query().is_none();
                if !scheme_ok || url.authority().is_none() {
                    self.problem(
                        format!("{at}.url"),
                        format!(
                            "`{}` must be http://host[:port] or https://host[:port]",
                            u.url
                        ),
                    );
                } else if !path_ok {
                    self.problem(
                        format!("{at}.url"),
                        format!(
                            "`{}` must not have a path or query: requests keep their own path",
                            u.url
                        ),
                    );
                }
                url
            }
            Err(e) => {
                self.problem(format!("{at}.url"), format!("`{}`: {e}", u.url));
                http::Uri::from_static("http://127.0.0.1")
            }
        };
        let endpoints = u
            .endpoints
            .iter()
            .filter(|e| {
                let ok = valid_endpoint(e);
                if !ok {
                    self.problem(
                        format!("{at}.endpoints"),
                        format!("`{e}` is not a host:port address"),
                    );
                }
                ok
            })
            .cloned()
            .collect();
        let health_check_path = match u.health_check_path.as_str() {
            "" => None,
            p if p.starts_with('/') && http::uri::PathAndQuery::try_from(p).is_ok() => {
                Some(p.to_owned())
            }
            p => {
                self.problem(
                    format!("{at}.health_check_path"),
                    format!("`{p}` must be a path starting with /"),
                );
                None
            }
        };
        let upstream = UpstreamConfig {
            name: name.to_owned(),
            endpoints,
            health_check_path,
            health_interval: self.duration(&format!("{at}.health_interval"), &u.health_interval),
            connect_timeout: self.duration(&format!("{at}.connect_timeout"), &u.connect_timeout),
            timeout: self.duration(&format!("{at}.timeout"), &u.timeout),
            protocol: self.choice(
                &format!("{at}.protocol"),
                &u.protocol,
                &[
                    ("http1", UpstreamProtocol::Http1),
                    ("http2", UpstreamProtocol::Http2),
                    ("auto", UpstreamProtocol::Auto),
                ],
            ),
            ca: u.ca.map(|p| self.path(&format!("{at}.ca"), &p)),
            client_cert: u
                .client_cert
                .map(|p| self.path(&format!("{at}.client_cert"), &p)),
            client_key: u
                .client_key
                .map(|p| self.path(&format!("{at}.client_key"), &p)),
            url,
        };
        if upstream.client_cert.is_some() != upstream.client_key.is_some() {
            self.problem(at, "client_cert and client_key go together");
        }
        let tls_only = upstream.ca.is_some() || upstream.client_cert.is_some();
        if tls_only && !upstream.is_https() {
            self.problem(at, "ca, client_cert and client_key need an https:// url");
        }
        upstream
    }

    fn upstreams(
        &mut self,
        raw: std::collections::BTreeMap<String, raw::RawUpstream>,
    ) -> Vec<UpstreamConfig> {
        raw.into_iter()
            .map(|(name, u)| {
                let at = format!("upstreams.{name}");
                let valid = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid || name == DEFAULT_UPSTREAM {
                    self.problem(
                        &at,
                        format!("the name must be 1-64 letters, digits, `-` or `_`, and not `{DEFAULT_UPSTREAM}`"),
                    );
                }
                self.upstream(&at, &name, u)
            })
            .collect()
    }

    fn routes(
        &mut self,
        raw: Vec<raw::RawUpstreamRoute>,
        upstreams: &[UpstreamConfig],
    ) -> Vec<UpstreamRoute> {
        let mut routes = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let at = format!("route[{i}]");
            if !upstreams.iter().any(|u| u.name == r.upstream) {
                self.problem(
                    format!("{at}.upstream"),
                    format!("`{}` is not an [upstreams.NAME] section", r.upstream),
                );
            }
            if let Some(host) = &r.host {
                if !valid_endpoint(&format!("{host}:1")) || host.contains(':') {
                    self.problem(format!("{at}.host"), format!("`{host}` is not a host name"));
                }
            }
            match UpstreamRoute::new(&r.path, r.host.as_deref(), &r.upstream) {
                Ok(route) => routes.push(route),
                Err(e) => self.problem(format!("{at}.path"), e.to_string()),
            }
        }
        routes
    }

    fn roles(&mut self, r: raw::RawRoles) -> RolesConfig {
        for (i, role) in r.default.iter().chain(&r.audit).enumerate() {
            if !valid_role(role) {
                self.problem(
                    "roles",
                    format!(
                        "role #{i} `{role}` must be 1-128 visible ASCII characters without commas"
                    ),
                );
            }
        }
        let mut map = Vec::new();
        for (i, rule) in r.map.into_iter().enumerate() {
            match RoleRule::from_raw(rule) {
                Ok(rule) => map.push(rule),
                Err(e) => self.problem(format!("roles.map[{i}]"), e.to_string()),
            }
        }
        RolesConfig {
            default: r.default,
            audit: r.audit,
            map,
        }
    }

    fn authorization(&mut self, a: raw::RawAuthorization) -> AuthorizationConfig {
        let default_policy = self.choice(
            "authorization.default",
            &a.default,
            &[
                ("deny", AuthzDefault::Deny),
                ("authenticated", AuthzDefault::Authenticated),
            ],
        );
        let mut rules = Vec::new();
        for (i, route) in a.rule.into_iter().enumerate() {
            match Route::new(&route.path, route.methods, route.roles) {
                Ok(r) => rules.push(r),
                Err(e) => self.problem(format!("authorization.rule[{i}]"), e.to_string()),
            }
        }
        AuthorizationConfig {
            default: default_policy,
            rules,
        }
    }

    fn log(&mut self, l: &raw::RawLog) -> LogConfig {
        let log = LogConfig {
            level: l.level.clone(),
            format: self.choice(
                "log.format",
                &l.format,
                &[("json", LogFormat::Json), ("text", LogFormat::Text)],
            ),
            access_log: l.access_log,
        };
        if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
            self.problem(
                "log.level",
                format!("`{}` is not a log level or filter", log.level),
            );
        }
        log
    }
}

/// The typed config, with a safe stand-in for every value that is a problem.
fn validate(path: &Path, raw: RawConfig) -> (Config, Vec<Problem>) {
    let mut v = Validator {
        dir: path.parent().unwrap_or(Path::new("/")),
        problems: Vec::new(),
    };
    let listener = v.listener(&raw.listener);
    let server_tls = v.server_tls(raw.server_tls);
    let client_auth = v.client_auth(raw.client_auth);
    let upstream = v.upstream("upstream", DEFAULT_UPSTREAM, raw.upstream);
    let upstreams = v.upstreams(raw.upstreams);
    let routes = v.routes(raw.route, &upstreams);
    let identity = IdentityConfig {
        forward_cert: raw.identity.forward_cert,
        xfcc: raw.identity.xfcc,
    };
    let roles = v.roles(raw.roles);
    let authorization = v.authorization(raw.authorization);
    let admin = AdminConfig {
        address: if raw.admin.address.trim().is_empty() {
            None
        } else {
            Some(v.addr("admin.address", &raw.admin.address))
        },
    };
    let reload = ReloadConfig {
        watch: raw.reload.watch,
        debounce: v.duration("reload.debounce", &raw.reload.debounce),
        poll_interval: v.duration("reload.poll_interval", &raw.reload.poll_interval),
    };
    let log = v.log(&raw.log);

    let config = Config {
        path: path.to_path_buf(),
        listener,
        server_tls,
        client_auth,
        upstream,
        upstreams,
        routes,
        identity,
        roles,
        authorization,
        admin,
        reload,
        log,
    };
    (config, v.problems)
}

fn valid_sni_pattern(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Role rule matchers compile patterns here so `policy` stays free of serde.
impl RoleRule {
    fn from_raw(raw: raw::RawRoleRule) -> Result<RoleRule, RoleRuleError> {
        if raw.roles.is_empty() {
            return Err(RoleRuleError::NoRoles);
        }
        if let Some(bad) = raw.roles.iter().find(|r| !valid_role(r)) {
            return Err(RoleRuleError::BadRole(bad.clone()));
        }
        let mut rule = RoleRule::new(raw.roles);
        for (field, patterns) in raw.matchers {
            let globs = patterns
                .into_vec()
                .iter()
                .map(|p| Glob::for_field(field, p))
                .collect();
            rule = rule.with(field, globs);
        }
        if !rule.has_matchers() {
            return Err(RoleRuleError::NoMatchers);
        }
        Ok(rule)
    }
}

/// Why a `[[roles.map]]` rule is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleRuleError {
    #[error("roles must name at least one role")]
    NoRoles,
    #[error("role `{0}` must be 1-128 visible ASCII characters without commas")]
    BadRole(String),
    #[error(
        "a rule needs at least one matcher ({}); use roles.default for roles every client gets",
        matcher_names()
    )]
    NoMatchers,
}

fn matcher_names() -> String {
    let names: Vec<&str> = CertField::ALL.iter().map(|f| f.name()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests;
