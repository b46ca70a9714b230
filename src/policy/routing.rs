//! Which upstream serves a request: `[[route]]` entries matched by segment
//! prefix of the normalized path, as authorization rules are, and
//! optionally by host. The longest covering path wins; between two routes
//! for the same path, the one with a matching host wins. Requests that no
//! route covers go to the default `[upstream]`. Routing never changes
//! what authorization decides.

use super::authz::{covers, prefix_path, RouteError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRoute {
    /// A segment prefix, as [`prefix_path`] makes it.
    pub path: String,
    /// Lowercase host without port; `None` matches every host.
    pub host: Option<String>,
    /// A name from `[upstreams.*]`.
    pub upstream: String,
}

impl UpstreamRoute {
    /// # Errors
    /// A path that cannot be a segment prefix.
    pub fn new(
        path: &str,
        host: Option<&str>,
        upstream: &str,
    ) -> Result<UpstreamRoute, RouteError> {
        Ok(UpstreamRoute {
            path: prefix_path(path)?,
            host: host.map(str::to_ascii_lowercase),
            upstream: upstream.to_owned(),
        })
    }

    fn serves(&self, path: &str, host: Option<&str>) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
            (Some(_), None) => false,
        };
        host_ok && covers(&self.path, path)
    }
}

/// The route for a normalized path and the request's host (port removed),
/// or `None` for the default upstream.
pub fn route_for<'r>(
    routes: &'r [UpstreamRoute],
    path: &str,
    host: Option<&str>,
) -> Option<&'r UpstreamRoute> {
    routes
        .iter()
        .filter(|r| r.serves(path, host))
        .max_by_key(|r| (r.path.len(), r.host.is_some()))
}

/// The host part of a `Host` / `:authority` value: without the port, and
/// an IPv6 address without its brackets.
pub fn host_without_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(path: &str, host: Option<&str>, upstream: &str) -> UpstreamRoute {
        UpstreamRoute::new(path, host, upstream).unwrap()
    }

    #[test]
    fn longest_path_wins_then_the_route_with_the_host() {
        let routes = [
            r("/billing", None, "billing"),
            r("/billing/reports", None, "reports"),
            r("/billing", Some("API.example.org"), "billing-api"),
            r("/", Some("admin.example.org"), "admin"),
        ];
        let pick = |path, host| route_for(&routes, path, host).map(|r| r.upstream.as_str());
        assert_eq!(pick("/billing/1", None), Some("billing"));
        assert_eq!(
            pick("/billing/reports/q", Some("api.example.org")),
            Some("reports")
        );
        assert_eq!(
            pick("/billing", Some("api.example.org")),
            Some("billing-api")
        );
        assert_eq!(pick("/billingx", None), None);
        assert_eq!(pick("/other", Some("admin.example.org")), Some("admin"));
        assert_eq!(pick("/other", Some("api.example.org")), None);
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_without_port("api.example.org:8443"), "api.example.org");
        assert_eq!(host_without_port("api.example.org"), "api.example.org");
        assert_eq!(host_without_port("[::1]:443"), "::1");
    }
}
