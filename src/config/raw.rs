//! The TOML schema exactly as operators write it. Every struct denies unknown
//! fields so that a typo is an error instead of a silently weaker gateway.
//! Values stay as written (strings for durations and addresses); `validate`
//! turns them into typed configuration.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::identity::CertField;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listener: RawListener,
    pub server_tls: RawServerTls,
    pub client_auth: RawClientAuth,
    pub upstream: RawUpstream,
    #[serde(default)]
    pub upstreams: std::collections::BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub route: Vec<RawUpstreamRoute>,
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
    #[serde(default = "d_off")]
    pub proxy_protocol: String,
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    #[serde(default)]
    pub session_ticket_keys: String,
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
    #[serde(default)]
    pub ocsp_stapling: bool,
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
    #[serde(default)]
    pub crl_urls: Vec<String>,
    #[serde(default = "d_crl_refresh")]
    pub crl_refresh: String,
    #[serde(default)]
    pub crl_cache_dir: String,
    #[serde(default = "d_ocsp")]
    pub ocsp: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "d_upstream_timeout")]
    pub timeout: String,
    #[serde(default = "d_upstream_protocol")]
    pub protocol: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub health_check_path: String,
    #[serde(default = "d_health_interval")]
    pub health_interval: String,
    pub ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamRoute {
    pub path: String,
    pub host: Option<String>,
    pub upstream: String,
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

/// One `[[roles.map]]` table: `roles` and a matcher per [`CertField`] key.
/// Deserialized by hand so that the keys come from [`CertField::name`]
/// rather than a second list of fields; unknown keys are still errors,
/// with serde's own wording.
#[derive(Debug)]
pub struct RawRoleRule {
    pub roles: Vec<String>,
    /// In the order written.
    pub matchers: Vec<(CertField, OneOrMany)>,
}

/// Every key a `[[roles.map]]` table may have, for "expected one of".
const ROLE_RULE_KEYS: [&str; CertField::ALL.len() + 1] = {
    let mut keys = ["roles"; CertField::ALL.len() + 1];
    let mut i = 0;
    while i < CertField::ALL.len() {
        keys[i + 1] = CertField::ALL[i].name();
        i += 1;
    }
    keys
};

/// A key of a `[[roles.map]]` table. Read as an identifier, the way derived
/// structs read theirs, so that TOML points an unknown key's error at the key.
enum RuleKey {
    Roles,
    Matcher(CertField),
}

impl<'de> Deserialize<'de> for RuleKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = RuleKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("field identifier")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<RuleKey, E> {
                match CertField::from_name(key) {
                    Some(field) => Ok(RuleKey::Matcher(field)),
                    None if key == "roles" => Ok(RuleKey::Roles),
                    None => Err(E::unknown_field(key, &ROLE_RULE_KEYS)),
                }
            }
        }

        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for RawRoleRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RuleVisitor;

        impl<'de> Visitor<'de> for RuleVisitor {
            type Value = RawRoleRule;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("struct RawRoleRule")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRoleRule, A::Error> {
                let mut roles = None;
                let mut matchers: Vec<(CertField, OneOrMany)> = Vec::new();
                while let Some(key) = map.next_key()? {
                    match key {
                        RuleKey::Roles if roles.is_some() => {
                            return Err(de::Error::duplicate_field("roles"));
                        }
                        RuleKey::Roles => roles = Some(map.next_value()?),
                        RuleKey::Matcher(field) if matchers.iter().any(|(f, _)| *f == field) => {
                            return Err(de::Error::duplicate_field(field.name()));
                        }
                        RuleKey::Matcher(field) => matchers.push((field, map.next_value()?)),
                    }
                }
                Ok(RawRoleRule {
                    roles: roles.ok_or_else(|| de::Error::missing_field("roles"))?,
                    matchers,
                })
            }
        }

        deserializer.deserialize_struct("RawRoleRule", &ROLE_RULE_KEYS, RuleVisitor)
    }
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
fn d_crl_refresh() -> String {
    s("1h")
}
fn d_ocsp() -> String {
    s("off")
}
fn d_connect_timeout() -> String {
    s("2s")
}
fn d_upstream_timeout() -> String {
    s("30s")
}
fn d_health_interval() -> String {
    s("5s")
}
fn d_upstream_protocol() -> String {
    s("http1")
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

fn d_off() -> String {
    s("off")
}

fn d_stream_idle_timeout() -> String {
    s("60s")
}
