//! Certificate identity → roles: `roles.default` plus the roles of every
//! `[[roles.map]]` rule whose matchers all match (union across rules).
//! A rule on a single-valued field ([`CertField::is_single_valued`]: `cn`,
//! `o`, `issuer_cn`, `serial`, `fingerprint_sha256`) is ambiguous for a
//! certificate that carries that field more than once, and grants nothing
//! to it.

use std::sync::Arc;

use super::Glob;
use crate::identity::{CertField, Identity};

/// One `[[roles.map]]` rule. Each matcher that is present must match (AND);
/// a matcher with several patterns, or a field with several values, matches
/// when any pattern matches any value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoleRule {
    pub roles: Vec<String>,
    /// At most one per field, in [`CertField::ALL`] order.
    matchers: Vec<Matcher>,
}

/// The patterns a rule has for one field.
#[derive(Debug, Clone, PartialEq)]
struct Matcher {
    field: CertField,
    patterns: Vec<Glob>,
}

impl Matcher {
    fn matches(&self, id: &Identity) -> bool {
        id.values(self.field)
            .iter()
            .any(|value| self.patterns.iter().any(|p| p.matches(value)))
    }
}

impl RoleRule {
    /// A rule granting `roles`, with no matcher yet.
    pub fn new(roles: Vec<String>) -> RoleRule {
        RoleRule {
            roles,
            matchers: Vec::new(),
        }
    }

    /// This rule with `patterns` as its matcher on `field`, replacing any
    /// it had. Patterns are used as given: [`Glob::for_field`] compiles
    /// them the way the field compares.
    #[must_use]
    pub fn with(mut self, field: CertField, patterns: Vec<Glob>) -> RoleRule {
        let matcher = Matcher { field, patterns };
        match self.matchers.binary_search_by_key(&field, |m| m.field) {
            Ok(i) => self.matchers[i] = matcher,
            Err(i) => self.matchers.insert(i, matcher),
        }
        self
    }

    pub fn has_matchers(&self) -> bool {
        !self.matchers.is_empty()
    }

    /// The patterns this rule has for `field`, if it matches on it.
    pub fn patterns(&self, field: CertField) -> Option<&[Glob]> {
        self.matchers
            .iter()
            .find(|m| m.field == field)
            .map(|m| m.patterns.as_slice())
    }

    /// (field, patterns) pairs in [`CertField::ALL`] order, for matching
    /// and explaining.
    pub fn matchers(&self) -> impl Iterator<Item = (CertField, &[Glob])> {
        self.matchers
            .iter()
            .map(|m| (m.field, m.patterns.as_slice()))
    }

    pub fn matches(&self, id: &Identity) -> bool {
        self.ambiguity(id).is_none() && self.matchers.iter().all(|m| m.matches(id))
    }

    /// The first single-valued field this rule matches on that `id` carries
    /// more than once: which of the values the rule meant is unknowable, so
    /// the rule does not grant.
    pub fn ambiguity(&self, id: &Identity) -> Option<Ambiguity> {
        self.matchers
            .iter()
            .filter(|m| m.field.is_single_valued())
            .find_map(|m| {
                let values = id.values(m.field).len();
                (values > 1).then_some(Ambiguity {
                    field: m.field,
                    values,
                })
            })
    }

    /// The rule as the operator wrote it, for `explain` and logs.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .matchers
            .iter()
            .map(|m| {
                let pats: Vec<&str> = m.patterns.iter().map(Glob::as_str).collect();
                format!("{}={}", m.field.name(), pats.join("|"))
            })
            .collect();
        parts.push(format!("=> {}", self.roles.join(",")));
        parts.join(" ")
    }
}

/// A rule that does not grant because the certificate carries one of its
/// single-valued fields several times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguity {
    pub field: CertField,
    pub values: usize,
}

impl std::fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ambiguous: certificate has {} {} values",
            self.values,
            self.field.display_name()
        )
    }
}

/// The roles a client holds under one state generation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roles {
    /// Sorted, deduplicated.
    pub names: Vec<Arc<str>>,
    /// Indexes into `roles.map` of the rules that matched.
    pub matched_rules: Vec<usize>,
}

impl Roles {
    pub fn contains(&self, role: &str) -> bool {
        self.names.binary_search_by(|r| (**r).cmp(role)).is_ok()
    }

    pub fn joined(&self) -> String {
        self.names.join(",")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoleMapper {
    default: Vec<Arc<str>>,
    rules: Vec<RoleRule>,
    /// Interned role names, so that each request shares them instead of copying.
    interned: Vec<Arc<str>>,
}

impl RoleMapper {
    pub fn new(default: &[String], rules: Vec<RoleRule>) -> RoleMapper {
        let mut interned: Vec<Arc<str>> = default
            .iter()
            .chain(rules.iter().flat_map(|r| r.roles.iter()))
            .map(|r| Arc::from(r.as_str()))
            .collect();
        interned.sort();
        interned.dedup();
        let mut mapper = RoleMapper {
            default: Vec::new(),
            rules,
            interned,
        };
        mapper.default = default.iter().map(|r| mapper.intern(r)).collect();
        mapper
    }

    pub fn rules(&self) -> &[RoleRule] {
        &self.rules
    }

    /// Every role name this mapper can grant (the label set of the grants metric).
    pub fn known_roles(&self) -> &[Arc<str>] {
        &self.interned
    }

    pub fn roles_for(&self, id: &Identity) -> Roles {
        let mut names = self.default.clone();
        let mut matched_rules = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.matches(id) {
                matched_rules.push(i);
                names.extend(rule.roles.iter().map(|r| self.intern(r)));
            }
        }
        names.sort();
        names.dedup();
        Roles {
            names,
            matched_rules,
        }
    }

    fn intern(&self, role: &str) -> Arc<str> {
        match self.interned.binary_search_by(|i| (**i).cmp(role)) {
            Ok(i) => self.interned[i].clone(),
            Err(_) => Arc::from(role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn id() -> Identity {
        Identity {
            subject: "CN=billing-api,OU=payments,O=Acme".into(),
            issuer: "CN=Acme Clients CA,O=Acme".into(),
            cn: vec!["billing-api".into()],
            ou: vec!["payments".into(), "eu".into()],
            o: vec!["Acme".into()],
            issuer_cn: vec!["Acme Clients CA".into()],
            serial: "1a2b".into(),
            fingerprint_sha256: "ab".repeat(32),
            dns: vec!["billing.internal".into()],
            uri: vec!["spiffe://acme.org/ns/pay/sa/billing".into()],
            email: vec!["Billing@Acme.org".into()],
            spiffe_id: Some("spiffe://acme.org/ns/pay/sa/billing".into()),
            ..Identity::default()
        }
    }

    fn rule(roles: &[&str]) -> RoleRule {
        RoleRule::new(roles.iter().map(|r| r.to_string()).collect())
    }

    fn g(p: &str) -> Vec<Glob> {
        vec![Glob::new(p, false)]
    }

    fn gi(p: &str) -> Vec<Glob> {
        vec![Glob::new(p, true)]
    }

    #[test]
    fn matcher_table() {
        let cases: Vec<(&str, RoleRule, bool)> = vec![
            (
                "cn glob",
                rule(&["R"]).with(CertField::Cn, g("billing-*")),
                true,
            ),
            (
                "cn miss",
                rule(&["R"]).with(CertField::Cn, g("orders-*")),
                false,
            ),
            (
                "cn is case sensitive",
                rule(&["R"]).with(CertField::Cn, g("BILLING-*")),
                false,
            ),
            (
                "ou any value",
                rule(&["R"]).with(CertField::Ou, g("eu")),
                true,
            ),
            ("o exact", rule(&["R"]).with(CertField::O, g("Acme")), true),
            (
                "subject whole dn",
                rule(&["R"]).with(CertField::Subject, vec![Glob::dn("CN=billing-api,*,*")]),
                true,
            ),
            (
                "subject star stays in one rdn",
                rule(&["R"]).with(CertField::Subject, vec![Glob::dn("CN=billing-api,*")]),
                false,
            ),
            (
                "issuer cn",
                rule(&["R"]).with(CertField::IssuerCn, g("Acme Clients CA")),
                true,
            ),
            (
                "dns case insensitive",
                rule(&["R"]).with(CertField::Dns, gi("*.INTERNAL")),
                true,
            ),
            (
                "uri",
                rule(&["R"]).with(CertField::Uri, g("spiffe://acme.org/*")),
                true,
            ),
            (
                "email case insensitive",
                rule(&["R"]).with(CertField::Email, gi("billing@acme.org")),
                true,
            ),
            (
                "spiffe id",
                rule(&["R"]).with(CertField::SpiffeId, g("spiffe://acme.org/ns/pay/*")),
                true,
            ),
            (
                "fingerprint",
                rule(&["R"]).with(CertField::FingerprintSha256, gi(&"AB".repeat(32))),
                true,
            ),
            (
                "serial",
                rule(&["R"]).with(CertField::Serial, gi("1a2b")),
                true,
            ),
            (
                "and: both match",
                rule(&["R"])
                    .with(CertField::Cn, g("billing-*"))
                    .with(CertField::Ou, g("payments")),
                true,
            ),
            (
                "and: one misses",
                rule(&["R"])
                    .with(CertField::Cn, g("billing-*"))
                    .with(CertField::Ou, g("hr")),
                false,
            ),
            (
                "several patterns: any",
                rule(&["R"]).with(
                    CertField::Cn,
                    vec![Glob::new("x", false), Glob::new("billing-api", false)],
                ),
                true,
            ),
        ];
        for (name, rule, expected) in cases {
            assert_eq!(
                rule.matches(&id()),
                expected,
                "case {name}: {}",
                rule.describe()
            );
        }
    }

    #[test]
    fn single_valued_field_carried_twice_is_ambiguous() {
        let mut twice = id();
        twice.cn = vec!["nobody".into(), "billing-api".into()];
        twice.o = vec!["Acme".into(), "Evil".into()];
        twice.issuer_cn = vec!["x".into(), "Acme Clients CA".into()];
        let cases: Vec<(&str, RoleRule, Option<&str>)> = vec![
            (
                "cn",
                rule(&["R"]).with(CertField::Cn, g("billing-api")),
                Some("ambiguous: certificate has 2 CN values"),
            ),
            (
                "cn with a pattern matching both",
                rule(&["R"]).with(CertField::Cn, g("*")),
                Some("ambiguous: certificate has 2 CN values"),
            ),
            (
                "o",
                rule(&["R"]).with(CertField::O, g("Acme")),
                Some("ambiguous: certificate has 2 O values"),
            ),
            (
                "issuer cn",
                rule(&["R"]).with(CertField::IssuerCn, g("Acme Clients CA")),
                Some("ambiguous: certificate has 2 issuer CN values"),
            ),
            (
                "ou is multi-valued",
                rule(&["R"]).with(CertField::Ou, g("payments")),
                None,
            ),
            (
                "a rule without the field does not care",
                rule(&["R"]).with(CertField::Dns, gi("billing.internal")),
                None,
            ),
        ];
        for (name, rule, ambiguity) in cases {
            let got = rule.ambiguity(&twice).map(|a| a.to_string());
            assert_eq!(got.as_deref(), ambiguity, "case {name}");
            assert_eq!(rule.matches(&twice), ambiguity.is_none(), "case {name}");
            assert!(rule.matches(&id()), "case {name}: single values match");
        }
    }

    #[test]
    fn absent_spiffe_id_never_matches() {
        let mut identity = id();
        identity.spiffe_id = None;
        let r = rule(&["R"]).with(CertField::SpiffeId, g("*"));
        assert!(!r.matches(&identity));
    }

    #[test]
    fn roles_are_default_plus_union_sorted_and_deduplicated() {
        let mapper = RoleMapper::new(
            &["ROLE_BASE".into()],
            vec![
                rule(&["ROLE_USER", "ROLE_BASE"]).with(CertField::Cn, g("billing-*")),
                rule(&["ROLE_HR"]).with(CertField::Ou, g("hr")),
                rule(&["ROLE_ADMIN"]).with(CertField::Ou, g("payments")),
            ],
        );
        let roles = mapper.roles_for(&id());
        assert_eq!(roles.joined(), "ROLE_ADMIN,ROLE_BASE,ROLE_USER");
        assert_eq!(roles.matched_rules, vec![0, 2]);
        assert!(roles.contains("ROLE_USER"));
        assert!(!roles.contains("ROLE_HR"));
        assert_eq!(mapper.known_roles().len(), 4);
    }

    #[test]
    fn no_rule_matches_gives_only_defaults() {
        let mapper = RoleMapper::new(&[], vec![rule(&["ROLE_X"]).with(CertField::Cn, g("nope"))]);
        assert_eq!(mapper.roles_for(&id()), Roles::default());
    }
}
