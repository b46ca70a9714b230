//! The plain-HTTP admin listener: `/metrics`, `/healthz`, `/readyz`,
//! `/status`. Loopback by default; it exposes no secrets.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::proxy::VerifiedClients;

/// Admin connections served at once; further ones wait in the accept
/// backlog. Probes and scrapers need a handful; the limit keeps a flood of
/// connections to the admin port from costing the gateway memory.
pub const MAX_CONNECTIONS: usize = 64;
/// Time to send a request head, and the most a keep-alive connection may
/// sit idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one admin connection lives, however it is used: a client
/// that stops reading a response cannot hold its place.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves admin requests until the process exits (it stays up while
/// draining so that `/readyz` can say 503).
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    verified_clients: Arc<VerifiedClients>,
) {
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let place = places
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (gw, verified_clients) = (gw.clone(), verified_clients.clone());
        tokio::spawn(async move {
            let _place = place;
            let service = service_fn(move |req| {
                let (gw, verified_clients) = (gw.clone(), verified_clients.clone());
                async move { Ok::<_, Infallible>(route(&gw, &verified_clients, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

fn route(
    gw: &Gateway,
    verified_clients: &VerifiedClients,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => {
            gw.metrics.requests.publish_endpoints(&gw.state().upstreams);
            let mut resp = text(StatusCode::OK, &gw.metrics.render());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if gw.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => text(StatusCode::OK, "ready\n"),
        "/status" => status(gw, verified_clients),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn status(gw: &Gateway, verified_clients: &VerifiedClients) -> Response<Full<Bytes>> {
    let state = gw.state();
    let reload = gw.reload_status();
    let body = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generation": state.generation,
        "draining": gw.is_draining(),
        "upstream": state.config.upstream.url.to_string(),
        "connections_active": gw.metrics.connections.active.get(),
        // Distinct client certificate chains behind those connections.
        "client_certificates_active": verified_clients.active(),
        "loaded_at": crate::identity::rfc3339(state.loaded_at_unix),
        "last_reload": {
            "attempt": reload.last_attempt_unix.map(crate::identity::rfc3339),
            "success": reload.last_success_unix.map(crate::identity::rfc3339),
            "error": reload.last_error,
        },
        "certificates": state.certs,
        "crls": state.crls,
    });
    let mut resp = text(StatusCode::OK, &format!("{body:#}\n"));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp
}
