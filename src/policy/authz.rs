//! Route authorization: `[[authorization.rule]]` entries matched by
//! segment prefix of the normalized path. The longest matching path wins;
//! among rules for that same path, the first (in file order) whose methods
//! include the request's method decides.

use super::{normalize_path, PathError, PathParameters, Roles};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzDefault {
    /// Paths that no rule covers are refused.
    Deny,
    /// Paths that no rule covers are open to any verified client.
    Authenticated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Normalized, without a trailing slash (except `/` itself).
    pub path: String,
    /// Uppercase method names; `None` means every method.
    pub methods: Option<Vec<String>>,
    /// Any of these roles is enough; empty means any verified client.
    pub roles: Vec<String>,
}

/// Why an authorization rule is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("path `{path}` is not normalized (write `{normalized}`)")]
    NotNormalized { path: String, normalized: String },
    #[error("path `{path}`: {error}")]
    BadPath { path: String, error: PathError },
    #[error("path `{0}` is a plain path prefix: no query, fragment or `*`")]
    NotAPrefix(String),
    #[error("methods = [] would match nothing; leave it out to allow every method")]
    NoMethods,
    #[error("`{0}` is not an HTTP method")]
    BadMethod(String),
    #[error("role `{0}` must be 1-128 visible ASCII characters without commas")]
    BadRole(String),
}

/// A rule's path as rules store it: already normalized, a plain prefix
/// (no query, fragment or `*`), without a trailing slash (except `/`).
///
/// # Errors
/// Why `path` cannot be a segment prefix.
pub fn prefix_path(path: &str) -> Result<String, RouteError> {
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    // A rule names plain segments: requests are matched without their
    // `;` parameters, so a rule with one could never match.
    match normalize_path(trimmed, PathParameters::Reject) {
        Ok(n) if n.path == trimmed => {}
        Ok(n) => {
            return Err(RouteError::NotNormalized {
                path: path.to_owned(),
                normalized: n.path.into_owned(),
            })
        }
        Err(error) => {
            return Err(RouteError::BadPath {
                path: path.to_owned(),
                error,
            })
        }
    }
    if trimmed.contains(['?', '#', '*']) {
        return Err(RouteError::NotAPrefix(path.to_owned()));
    }
    Ok(trimmed.to_owned())
}

/// Whether `prefix` (a [`prefix_path`]) is a segment prefix of the
/// normalized `path`: `/api` covers `/api` and `/api/x`, not `/apix`.
pub fn covers(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl Route {
    /// # Errors
    /// A path that is not already normalized, or a method that is not an HTTP token.
    pub fn new(
        path: &str,
        methods: Option<Vec<String>>,
        roles: Vec<String>,
    ) -> Result<Route, RouteError> {
        let path = prefix_path(path)?;
        let methods = match methods {
            None => None,
            Some(m) if m.is_empty() => return Err(RouteError::NoMethods),
            Some(m) => {
                let mut upper = Vec::with_capacity(m.len());
                for method in m {
                    if http::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
                        return Err(RouteError::BadMethod(method));
                    }
                    upper.push(method.to_ascii_uppercase());
                }
                Some(upper)
            }
        };
        if let Some(bad) = roles.iter().find(|r| !super::valid_role(r)) {
            return Err(RouteError::BadRole(bad.clone()));
        }
        Ok(Route {
            path,
            methods,
            roles,
        })
    }

    fn covers(&self, path: &str) -> bool {
        covers(&self.path, path)
    }

    fn allows_method(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == method))
    }
}

/// Why a request was allowed or refused; `rule` indexes `authorization.rule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow {
        rule: Option<usize>,
    },
    Deny {
        rule: Option<usize>,
        reason: &'static str,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Authorizer {
    default: AuthzDefault,
    routes: Vec<Route>,
}

impl Authorizer {
    pub fn new(default: AuthzDefault, routes: Vec<Route>) -> Authorizer {
        Authorizer { default, routes }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Decides for a normalized `path`.
    pub fn authorize(&self, path: &str, method: &str, roles: &Roles) -> Decision {
        let longest = self
            .routes
            .iter()
            .filter(|r| r.covers(path))
            .map(|r| r.path.len())
            .max();
        let Some(longest) = longest else {
            return match self.default {
                AuthzDefault::Deny => Decision::Deny {
                    rule: None,
                    reason: "no rule covers the path",
                },
                AuthzDefault::Authenticated => Decision::Allow { rule: None },
            };
        };
        let chosen = self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.path.len() == longest && r.covers(path))
            .find(|(_, r)| r.allows_method(method));
        match chosen {
            None => Decision::Deny {
                rule: None,
                reason: "method not allowed on this path",
            },
            Some((i, r))
                if r.roles.is_empty() || r.roles.iter().any(|role| roles.contains(role)) =>
            {
                Decision::Allow { rule: Some(i) }
            }
            Some((i, _)) => Decision::Deny {
                rule: Some(i),
                reason: "missing role",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn route(path: &str, methods: Option<&[&str]>, roles: &[&str]) -> Route {
        Route::new(
            path,
            methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            roles.iter().map(|s| s.to_string()).collect(),
        )
        .unwrap()
    }

    fn roles(names: &[&str]) -> Roles {
        let mut names: Vec<Arc<str>> = names.iter().map(|n| Arc::from(*n)).collect();
        names.sort();
        Roles {
            names,
            matched_rules: vec![],
        }
    }

    #[test]
    fn authorization_table() {
        let authz = Authorizer::new(
            AuthzDefault::Deny,
            vec![
                route("/v2", Some(&["GET"]), &["ROLE_USER"]),
                route("/v2", Some(&["POST", "DELETE"]), &["ROLE_ADMIN"]),
                route("/v2/admin", None, &["ROLE_ADMIN"]),
                route("/public", None, &[]),
                route("/v2/admin/health", Some(&["GET"]), &[]),
            ],
        );
        let user = roles(&["ROLE_USER"]);
        let admin = roles(&["ROLE_ADMIN"]);
        let none = roles(&[]);
        let cases: &[(&str, &str, &str, &Roles, Decision)] = &[
            (
                "user reads v2",
                "/v2/items",
                "GET",
                &user,
                Decision::Allow { rule: Some(0) },
            ),
            (
                "exact prefix",
                "/v2",
                "GET",
                &user,
                Decision::Allow { rule: Some(0) },
            ),
            (
                "trailing slash",
                "/v2/",
                "GET",
                &user,
                Decision::Allow { rule: Some(0) },
            ),
            (
                "segment boundary",
                "/v20",
                "GET",
                &user,
                Decision::Deny {
                    rule: None,
                    reason: "no rule covers the path",
                },
            ),
            (
                "user cannot post",
                "/v2/items",
                "POST",
                &user,
                Decision::Deny {
                    rule: Some(1),
                    reason: "missing role",
                },
            ),
            (
                "admin posts",
                "/v2/items",
                "POST",
                &admin,
                Decision::Allow { rule: Some(1) },
            ),
            (
                "method nobody listed",
                "/v2/items",
                "PUT",
                &admin,
                Decision::Deny {
                    rule: None,
                    reason: "method not allowed on this path",
                },
            ),
            (
                "longest wins over shorter",
                "/v2/admin/x",
                "GET",
                &user,
                Decision::Deny {
                    rule: Some(2),
                    reason: "missing role",
                },
            ),
            (
                "admin in admin",
                "/v2/admin/x",
                "GET",
                &admin,
                Decision::Allow { rule: Some(2) },
            ),
            (
                "longer open rule",
                "/v2/admin/health",
                "GET",
                &none,
                Decision::Allow { rule: Some(4) },
            ),
            (
                "longer rule, other method",
                "/v2/admin/health",
                "POST",
                &admin,
                Decision::Deny {
                    rule: None,
                    reason: "method not allowed on this path",
                },
            ),
            (
                "any verified client",
                "/public/x",
                "DELETE",
                &none,
                Decision::Allow { rule: Some(3) },
            ),
            (
                "uncovered denied",
                "/other",
                "GET",
                &admin,
                Decision::Deny {
                    rule: None,
                    reason: "no rule covers the path",
                },
            ),
        ];
        for (name, path, method, roles, expected) in cases {
            assert_eq!(
                authz.authorize(path, method, roles),
                *expected,
                "case {name}: {method} {path}"
            );
        }
    }

    #[test]
    fn default_authenticated_opens_uncovered_paths_only() {
        let authz = Authorizer::new(
            AuthzDefault::Authenticated,
            vec![route("/admin", None, &["ROLE_ADMIN"])],
        );
        assert!(authz
            .authorize("/anything", "GET", &roles(&[]))
            .is_allowed());
        assert!(!authz.authorize("/admin/x", "GET", &roles(&[])).is_allowed());
    }

    #[test]
    fn root_rule_covers_everything() {
        let authz = Authorizer::new(AuthzDefault::Deny, vec![route("/", None, &["R"])]);
        assert!(authz
            .authorize("/deep/path", "GET", &roles(&["R"]))
            .is_allowed());
    }

    #[test]
    fn route_paths_are_validated() {
        let bad: &[(&str, Option<Vec<String>>)] = &[
            ("v2", None),
            ("/a/../b", None),
            ("/a//b", None),
            ("/a%2Fb", None),
            ("/a?x=1", None),
            ("/a", Some(vec![])),
            ("/a", Some(vec!["GE T".into()])),
        ];
        for (path, methods) in bad {
            assert!(
                Route::new(path, methods.clone(), vec![]).is_err(),
                "{path:?} {methods:?} should be rejected"
            );
        }
        assert_eq!(
            Route::new("/v2/", Some(vec!["get".into()]), vec![])
                .unwrap()
                .path,
            "/v2"
        );
    }
}
