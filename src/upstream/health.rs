//! Active health checks (`health_check_path`): every `health_interval`, a
//! `GET` of the path on a new connection to each endpoint, as the upstream
//! protocol says; 2xx and 3xx within `connect_timeout` + `timeout` are
//! healthy. One task per upstream, which ends when a reload has replaced
//! the upstream and its last request is done.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri, Version};
use http_body_util::Empty;

use super::connect::{Connected, Want};
use super::endpoint::Endpoint;
use super::Upstream;

impl Upstream {
    /// Starts the health checks, once, if the upstream has a check path.
    pub fn start_health_checks(self: &Arc<Self>) {
        if self.config.health_check_path.is_none() {
            return;
        }
        self.health_checks.get_or_init(|| {
            tokio::spawn(run(Arc::downgrade(self)));
        });
    }
}

async fn run(upstream: Weak<Upstream>) {
    let Some(interval) = upstream.upgrade().map(|u| u.config.health_interval) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        // All endpoints at once: one that does not answer must not delay
        // the others' verdicts.
        let mut checks = tokio::task::JoinSet::new();
        for i in 0..upstream.endpoints.len() {
            let upstream = upstream.clone();
            checks.spawn(async move {
                let endpoint = &upstream.endpoints[i];
                if check(&upstream, endpoint).await {
                    endpoint.check_passed();
                } else {
                    endpoint.check_failed();
                }
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

async fn check(upstream: &Upstream, endpoint: &Endpoint) -> bool {
    let cfg = &upstream.config;
    let path = cfg.health_check_path.as_deref().unwrap_or("/");
    let limit = cfg.connect_timeout + cfg.timeout;
    let exchange = async {
        let connected = endpoint
            .connector
            .connect::<Empty<Bytes>>(Want::Configured)
            .await
            .ok()?;
        let status = match connected {
            Connected::Http1(mut sender) => {
                let mut req = Request::new(Empty::new());
                *req.uri_mut() = Uri::try_from(path).ok()?;
                req.headers_mut().insert(
                    header::HOST,
                    HeaderValue::from_str(upstream.authority.as_str()).ok()?,
                );
                sender.send_request(req).await.ok()?.status()
            }
            Connected::Http2(mut sender) => {
                let mut req = Request::new(Empty::new());
                *req.version_mut() = Version::HTTP_2;
                *req.uri_mut() = Uri::builder()
                    .scheme(upstream.scheme.clone())
                    .authority(upstream.authority.clone())
                    .path_and_query(path)
                    .build()
                    .ok()?;
                sender.send_request(req).await.ok()?.status()
            }
        };
        Some(status)
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Some(status)) if status.is_success() || status.is_redirection() => true,
        outcome => {
            tracing::warn!(
                upstream = %cfg.name,
                endpoint = %endpoint.address,
                status = outcome.ok().flatten().map(|s| s.as_u16()),
                "upstream health check failed"
            );
            false
        }
    }
}
