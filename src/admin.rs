//! The plain-HTTP admin listener: `/metrics`, `/healthz`, `/readyz`,
//! `/status`. Loopback by default; it exposes no secrets.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::gateway::Gateway;

/// Serves admin requests until the process exits (it stays up while
/// draining so that `/readyz` can say 503).
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(route(&gw, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn route(gw: &Gateway, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => {
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
        "/status" => status(gw),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn status(gw: &Gateway) -> Response<Full<Bytes>> {
    let state = gw.state();
    let reload = gw.reload_status();
    let body = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generation": state.generation,
        "draining": gw.is_draining(),
        "upstream": state.config.upstream.url.to_string(),
        "connections_active": gw.metrics.connections_active.get(),
        // Distinct client certificate chains behind those connections.
        "client_certificates_active": gw.credentials.active(),
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
