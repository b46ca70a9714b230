//! Every upstream of a state and the routes between them: `[upstream]`
//! (named `default`), `[upstreams.NAME]`, and `[[route]]`.

use std::sync::Arc;

use super::Upstream;
use crate::config::Config;
use crate::policy::{host_without_port, route_for, UpstreamRoute};
use crate::tls::load::LoadError;

pub struct Upstreams {
    default: Arc<Upstream>,
    /// By name, as in the config.
    named: Vec<Arc<Upstream>>,
    routes: Vec<UpstreamRoute>,
}

impl Upstreams {
    /// The upstreams `config` names. Each one whose settings and files are
    /// unchanged from `previous` is kept, with its connections.
    ///
    /// # Errors
    /// Every upstream whose CA or client certificate cannot be used.
    pub fn build(
        config: &Config,
        previous: Option<&Upstreams>,
    ) -> Result<Upstreams, Vec<LoadError>> {
        let mut problems = Vec::new();
        let old = |name: &str| previous.and_then(|p| p.all().find(|u| u.name() == name));
        let mut rebuilt = std::iter::once(&config.upstream)
            .chain(&config.upstreams)
            .filter_map(|cfg| {
                Upstream::rebuild(old(&cfg.name), cfg)
                    .map_err(|e| problems.push(e))
                    .ok()
            })
            .collect::<Vec<_>>();
        if !problems.is_empty() {
            return Err(problems);
        }
        let default = rebuilt.remove(0);
        Ok(Upstreams {
            default,
            named: rebuilt,
            routes: config.routes.clone(),
        })
    }

    /// The default upstream first, then the named ones.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        std::iter::once(&self.default).chain(&self.named)
    }

    /// The upstream for a normalized path and the request's `Host` /
    /// `:authority`, and the route that chose it (`None`: the default).
    pub fn for_request(
        &self,
        path: &str,
        authority: Option<&str>,
    ) -> (&Upstream, Option<&UpstreamRoute>) {
        let host = authority.map(host_without_port);
        match route_for(&self.routes, path, host) {
            Some(route) => {
                let upstream = self
                    .named
                    .iter()
                    .find(|u| u.name() == route.upstream)
                    .expect("config validation makes every route's upstream exist");
                (upstream, Some(route))
            }
            None => (&self.default, None),
        }
    }

    /// Starts the active health checks of the upstreams that have one
    /// (kept upstreams keep theirs running).
    pub fn start_health_checks(&self) {
        for upstream in self.all() {
            upstream.start_health_checks();
        }
    }
}
