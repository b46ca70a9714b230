//! Certificate identity → roles: `roles.default` plus the roles of every
//! `[[roles.map]]` rule whose matchers all match (union across rules).
//! A rule on a single-valued field (`cn`, `o`, `issuer_cn`, `serial`,
//! `fingerprint_sha256`) is ambiguous for a certificate that carries that
//! field more than once, and grants nothing to it.

use std::sync::Arc;

use super::Glob;
use crate::identity::Identity;

/// One `[[roles.map]]` rule. Each matcher that is present must match (AND);
/// a matcher with several patterns, or a field with several values, matches
/// when any pattern matches any value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoleRule {
    pub roles: Vec<String>,
    pub cn: Option<Vec<Glob>>,
    pub ou: Option<Vec<Glob>>,
    pub o: Option<Vec<Glob>>,
    pub subject: Option<Vec<Glob>>,
    pub issuer_cn: Option<Vec<Glob>>,
    pub dns: Option<Vec<Glob>>,
    pub uri: Option<Vec<Glob>>,
    pub email: Option<Vec<Glob>>,
    pub spiffe_id: Option<Vec<Glob>>,
    pub fingerprint_sha256: Option<Vec<Glob>>,
    pub serial: Option<Vec<Glob>>,
}

impl RoleRule {
    pub fn has_matchers(&self) -> bool {
        self.matchers().any(|(_, m)| m.is_some())
    }

    /// (field name, patterns) pairs, in a fixed order, for matching and explaining.
    fn matchers(&self) -> impl Iterator<Item = (&'static str, Option<&Vec<Glob>>)> {
        [
            ("cn", self.cn.as_ref()),
            ("ou", self.ou.as_ref()),
            ("o", self.o.as_ref()),
            ("subject", self.subject.as_ref()),
            ("issuer_cn", self.issuer_cn.as_ref()),
            ("dns", self.dns.as_ref()),
            ("uri", self.uri.as_ref()),
            ("email", self.email.as_ref()),
            ("spiffe_id", self.spiffe_id.as_ref()),
            ("fingerprint_sha256", self.fingerprint_sha256.as_ref()),
            ("serial", self.serial.as_ref()),
        ]
        .into_iter()
    }

    pub fn matches(&self, id: &Identity) -> bool {
        self.ambiguity(id).is_none()
            && self.matchers().all(|(field, patterns)| match patterns {
                None => true,
                Some(patterns) => id
                    .field_values(field)
                    .any(|value| patterns.iter().any(|p| p.matches(value))),
            })
    }

    /// The first single-valued field this rule matches on that `id` carries
    /// more than once: which of the values the rule meant is unknowable, so
    /// the rule does not grant.
    pub fn ambiguity(&self, id: &Identity) -> Option<Ambiguity> {
        self.matchers()
            .filter(|(field, patterns)| patterns.is_some() && SINGLE_VALUED.contains(field))
            .find_map(|(field, _)| {
                let values = id.field_values(field).count();
                (values > 1).then_some(Ambiguity { field, values })
            })
    }

    /// The rule as the operator wrote it, for `explain` and logs.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .matchers()
            .filter_map(|(field, p)| {
                let p = p?;
                let pats: Vec<&str> = p.iter().map(Glob::as_str).collect();
                Some(format!("{field}={}", pats.join("|")))
            })
            .collect();
        parts.push(format!("=> {}", self.roles.join(",")));
        parts.join(" ")
    }
}

/// Fields a certificate is expected to carry once.
const SINGLE_VALUED: [&str; 5] = ["cn", "o", "issuer_cn", "serial", "fingerprint_sha256"];

/// A rule that does not grant because the certificate carries one of its
/// single-valued fields several times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguity {
    pub field: &'static str,
    pub values: usize,
}

impl std::fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.field {
            "cn" => "CN",
            "o" => "O",
            "issuer_cn" => "issuer CN",
            other => other,
        };
        write!(
            f,
            "ambiguous: certificate has {} {name} values",
            self.values
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
        RoleRule {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..RoleRule::default()
        }
    }

    fn g(p: &str) -> Option<Vec<Glob>> {
        Some(vec![Glob::new(p, false)])
    }

    fn gi(p: &str) -> Option<Vec<Glob>> {
        Some(vec![Glob::new(p, true)])
    }

    #[test]
    fn matcher_table() {
        let cases: Vec<(&str, RoleRule, bool)> = vec![
            (
                "cn glob",
                RoleRule {
                    cn: g("billing-*"),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "cn miss",
                RoleRule {
                    cn: g("orders-*"),
                    ..rule(&["R"])
                },
                false,
            ),
            (
                "cn is case sensitive",
                RoleRule {
                    cn: g("BILLING-*"),
                    ..rule(&["R"])
                },
                false,
            ),
            (
                "ou any value",
                RoleRule {
                    ou: g("eu"),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "o exact",
                RoleRule {
                    o: g("Acme"),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "subject whole dn",
                RoleRule {
                    subject: Some(vec![Glob::dn("CN=billing-api,*,*")]),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "subject star stays in one rdn",
                RoleRule {
                    subject: Some(vec![Glob::dn("CN=billing-api,*")]),
                    ..rule(&["R"])
                },
                false,
            ),
            (
                "issuer cn",
                RoleRule {
                    issuer_cn: g("Acme Clients CA"),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "dns case insensitive",
                RoleRule {
                    dns: gi("*.INTERNAL"),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "uri",
                RoleRule {
                    uri: g("spiffe://acme.org/*"),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "email case insensitive",
                RoleRule {
                    email: gi("billing@acme.org"),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "spiffe id",
                RoleRule {
                    spiffe_id: g("spiffe://acme.org/ns/pay/*"),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "fingerprint",
                RoleRule {
                    fingerprint_sha256: gi(&"AB".repeat(32)),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "serial",
                RoleRule {
                    serial: gi("1a2b"),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "and: both match",
                RoleRule {
                    cn: g("billing-*"),
                    ou: g("payments"),
                    ..rule(&["R"])
                },
                true,
            ),
            (
                "and: one misses",
                RoleRule {
                    cn: g("billing-*"),
                    ou: g("hr"),
                    ..rule(&["R"])
                },
                false,
            ),
            (
                "several patterns: any",
                RoleRule {
                    cn: Some(vec![Glob::new("x", false), Glob::new("billing-api", false)]),
                    ..rule(&["R"])
                },
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
                RoleRule {
                    cn: g("billing-api"),
                    ..rule(&["R"])
                },
                Some("ambiguous: certificate has 2 CN values"),
            ),
            (
                "cn with a pattern matching both",
                RoleRule {
                    cn: g("*"),
                    ..rule(&["R"])
                },
                Some("ambiguous: certificate has 2 CN values"),
            ),
            (
                "o",
                RoleRule {
                    o: g("Acme"),
                    ..rule(&["R"])
                },
                Some("ambiguous: certificate has 2 O values"),
            ),
            (
                "issuer cn",
                RoleRule {
                    issuer_cn: g("Acme Clients CA"),
                    ..rule(&["R"])
                },
                Some("ambiguous: certificate has 2 issuer CN values"),
            ),
            (
                "ou is multi-valued",
                RoleRule {
                    ou: g("payments"),
                    ..rule(&["R"])
                },
                None,
            ),
            (
                "a rule without the field does not care",
                RoleRule {
                    dns: gi("billing.internal"),
                    ..rule(&["R"])
                },
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
        let r = RoleRule {
            spiffe_id: g("*"),
            ..rule(&["R"])
        };
        assert!(!r.matches(&identity));
    }

    #[test]
    fn roles_are_default_plus_union_sorted_and_deduplicated() {
        let mapper = RoleMapper::new(
            &["ROLE_BASE".into()],
            vec![
                RoleRule {
                    cn: g("billing-*"),
                    ..rule(&["ROLE_USER", "ROLE_BASE"])
                },
                RoleRule {
                    ou: g("hr"),
                    ..rule(&["ROLE_HR"])
                },
                RoleRule {
                    ou: g("payments"),
                    ..rule(&["ROLE_ADMIN"])
                },
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
        let mapper = RoleMapper::new(
            &[],
            vec![RoleRule {
                cn: g("nope"),
                ..rule(&["ROLE_X"])
            }],
        );
        assert_eq!(mapper.roles_for(&id()), Roles::default());
    }
}
