//! The TOML schema exactly as operators write it. Every struct denies unknown
//! fields so that a typo is an error instead of a silently weaker gateway.
//! Values stay as written (strings for durations and addresses); `validate`
//! turns them into typed configuration.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listener: RawListener,
    pub server_tls: RawServerTls,
    pub client_auth: RawClientAuth,
    pub upstream: RawUpstream,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub roles: RawRoles,
    #[serde(default)]
    pub authorization: RawAuthorization,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub reload: RawReload,
    #[serde(default)]
    pub log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    #[serde(default = "d_handshake_timeout")]
    pub handshake_timeout: String,
    #[serde(default = "d_idle_timeout")]
    pub idle_timeout: String,
    #[serde(default = "d_header_timeout")]
    pub header_timeout: String,
    #[serde(default = "d_max_connections")]
    pub max_connections: i64,
    #[serde(default = "d_max_header_bytes")]
    pub max_header_bytes: i64,
    #[serde(default = "d_min_tls_version")]
    pub min_tls_version: String,
    #[serde(default = "d_shutdown_timeout")]
    pub shutdown_timeout: String,
    #[serde(default = "d_path_parameters")]
    pub path_parameters: String,
    #[serde(default = "d_underscore_headers")]
    pub underscore_headers: String,
    #[serde(default = "d_stream_idle_timeout")]
    pub stream_idle_timeout: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub pkcs12: Option<String>,
    pub pkcs12_password_file: Option<String>,
    #[serde(default)]
    pub sni: Vec<RawSniCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniCert {
    pub server_name: String,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub pkcs12: Option<String>,
    pub pkcs12_password_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    pub trusted_cas: Vec<String>,
    #[serde(default)]
    pub trusted_cas_password_file: Option<String>,
    #[serde(default)]
    pub crls: Vec<String>,
    #[serde(default = "d_allow")]
    pub unknown_revocation: String,
    #[serde(default = "d_crl_scope")]
    pub crl_scope: String,
    #[serde(default = "d_allow")]
    pub expired_crl: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "d_upstream_timeout")]
    pub timeout: String,
    pub ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    #[serde(default)]
    pub forward_cert: bool,
    #[serde(default)]
    pub xfcc: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoles {
    #[serde(default)]
    pub default: Vec<String>,
    #[serde(default)]
    pub audit: Vec<String>,
    #[serde(default)]
    pub map: Vec<RawRoleRule>,
}

/// A matcher value: one pattern, or a list of which any may match.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoleRule {
    pub roles: Vec<String>,
    pub cn: Option<OneOrMany>,
    pub ou: Option<OneOrMany>,
    pub o: Option<OneOrMany>,
    pub subject: Option<OneOrMany>,
    pub issuer_cn: Option<OneOrMany>,
    pub dns: Option<OneOrMany>,
    pub uri: Option<OneOrMany>,
    pub email: Option<OneOrMany>,
    pub spiffe_id: Option<OneOrMany>,
    pub fingerprint_sha256: Option<OneOrMany>,
    pub serial: Option<OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthorization {
    #[serde(default = "d_deny")]
    pub default: String,
    #[serde(default)]
    pub rule: Vec<RawRoute>,
}

impl Default for RawAuthorization {
    fn default() -> Self {
        Self {
            default: d_deny(),
            rule: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    pub methods: Option<Vec<String>>,
    pub roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "d_admin_address")]
    pub address: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: d_admin_address(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    #[serde(default = "d_true")]
    pub watch: bool,
    #[serde(default = "d_debounce")]
    pub debounce: String,
    #[serde(default = "d_poll_interval")]
    pub poll_interval: String,
}

impl Default for RawReload {
    fn default() -> Self {
        Self {
            watch: true,
            debounce: d_debounce(),
            poll_interval: d_poll_interval(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default = "d_log_level")]
    pub level: String,
    #[serde(default = "d_log_format")]
    pub format: String,
    #[serde(default = "d_true")]
    pub access_log: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: d_log_level(),
            format: d_log_format(),
            access_log: true,
        }
    }
}

fn s(v: &str) -> String {
    v.to_owned()
}
fn d_handshake_timeout() -> String {
    s("10s")
}
fn d_idle_timeout() -> String {
    s("60s")
}
fn d_header_timeout() -> String {
    s("10s")
}
fn d_max_connections() -> i64 {
    10_000
}
fn d_max_header_bytes() -> i64 {
    16_384
}
fn d_min_tls_version() -> String {
    s("1.2")
}
fn d_shutdown_timeout() -> String {
    s("30s")
}
fn d_allow() -> String {
    s("allow")
}
fn d_deny() -> String {
    s("deny")
}
fn d_crl_scope() -> String {
    s("chain")
}
fn d_connect_timeout() -> String {
    s("2s")
}
fn d_upstream_timeout() -> String {
    s("30s")
}
fn d_admin_address() -> String {
    s("127.0.0.1:9464")
}
fn d_true() -> bool {
    true
}
fn d_debounce() -> String {
    s("250ms")
}
fn d_poll_interval() -> String {
    s("60s")
}
fn d_log_level() -> String {
    s("info")
}
fn d_log_format() -> String {
    s("json")
}

fn d_path_parameters() -> String {
    "reject".into()
}

fn d_underscore_headers() -> String {
    "drop".into()
}

fn d_stream_idle_timeout() -> String {
    s("60s")
}
