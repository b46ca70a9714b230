//! One request through the gateway: limits, path normalization,
//! authentication under the current state, authorization, header rewriting,
//! forwarding, and the access log line.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;

use super::client::ClientConnection;
use super::head;
use super::headers::{self, Forwarding, X_REQUEST_ID};
use super::tunnel::{Handoff, PendingTunnel};
use super::upgrade::WebSocket;
use super::verified::Grant;
use super::{json_response, GatewayError, ProxyBody};
use crate::exchange::{Progress, RequestBody};
use crate::gateway::Gateway;
use crate::policy::{normalize_path, Decision, PathError, Roles};
use crate::state::State;
use crate::upstream::UpstreamError;

/// Gateway-internal endpoints live under this prefix and never reach the upstream.
pub(crate) const INTERNAL_PREFIX: &str = "/.certgate/";
pub(crate) const WHOAMI: &str = "/.certgate/whoami";

/// What the access log line reports about one request.
#[derive(Default)]
struct Outcome<'s> {
    /// The upstream the request went to, once routed.
    upstream_name: Option<&'s str>,
    /// Only filled when the access log is on.
    path: Option<String>,
    roles: Option<HeaderValue>,
    /// Only measured when the access log is on.
    upstream: Option<Duration>,
    error: Option<GatewayError>,
}

pub async fn handle(
    gw: Arc<Gateway>,
    client: Arc<ClientConnection>,
    req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if headers::sane_request_id(v) => {
            let mut id = v.clone();
            crate::gateway::mark_unique(&mut id);
            id
        }
        _ => gw.next_request_id(),
    };
    let method = req.method().clone();
    let grpc = is_grpc(req.headers());
    let state = gw.state();
    let mut outcome = Outcome::default();

    let result = process(&gw, &state, &client, req, &request_id, &mut outcome).await;
    // A gateway-made gRPC error is an HTTP 200; it counts as the status it
    // stands for.
    let (mut resp, status) = match result {
        Ok(resp) => {
            let status = resp.status();
            (resp, status)
        }
        Err(e) => {
            if let (Some(kind), Some(upstream)) = (e.upstream_kind(), outcome.upstream_name) {
                gw.metrics.requests.upstream_error(upstream, kind);
            }
            if matches!(e, GatewayError::Forbidden(_)) {
                gw.metrics.requests.authz_denied.inc();
            }
            let id = request_id.to_str().unwrap_or("");
            let status = e.status();
            let resp = match grpc {
                true => e.clone().into_grpc_response(id),
                false => e.clone().into_response(id),
            };
            outcome.error = Some(e);
            (resp, status)
        }
    };
    resp.headers_mut().insert(&X_REQUEST_ID, request_id.clone());
    let elapsed = started.elapsed();
    gw.metrics.requests.done(status, elapsed.as_secs_f64());
    if state.config.log.access_log {
        access_log(&client, &method, status, &request_id, &outcome, elapsed);
    }
    Ok(resp)
}

/// gRPC (`application/grpc`, `application/grpc+proto`, ...): its errors
/// must be gRPC statuses, or clients report only "bad HTTP status".
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

async fn process<'s>(
    gw: &Gateway,
    state: &'s State,
    client: &ClientConnection,
    req: Request<RequestBody>,
    request_id: &HeaderValue,
    outcome: &mut Outcome<'s>,
) -> Result<Response<ProxyBody>, GatewayError> {
    if gw.is_draining() {
        return Err(GatewayError::Draining);
    }
    // As sent until it is normalized: a refused path is what the operator
    // needs to see (`bad_path`).
    if state.config.log.access_log {
        outcome.path = Some(req.uri().path().to_owned());
    }
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let head_bytes = headers::head_size(req.headers()) + target_len;
    if head_bytes > state.config.listener.max_header_bytes {
        return Err(GatewayError::HeadTooLarge);
    }
    // HTTP/1 absolute-form (`GET http://x/`) and CONNECT authority-form are
    // proxy requests, not requests to this gateway. HTTP/2 always carries a
    // scheme and authority, so only its path counts.
    let is_http1 = req.version() < Version::HTTP_2;
    let websocket = WebSocket::requested(&req);
    let plain_connect = req.method() == Method::CONNECT && websocket.is_none();
    if plain_connect || (is_http1 && req.uri().scheme().is_some()) {
        return Err(GatewayError::BadPath(PathError::NotOriginForm));
    }
    head::check(req.version(), req.uri(), req.headers())?;
    let listener = &state.config.listener;
    let path = normalize_path(req.uri().path(), listener.path_parameters)?.into_owned();
    if state.config.log.access_log {
        outcome.path = Some(path.path.to_string());
    }

    let grant = client.authenticate(state, &gw.metrics)?;
    client.check_ocsp(state, &gw.metrics).await?;
    outcome.roles = Some(grant.roles_header.clone());

    // A WebSocket is authorized as the `GET` that opens it on HTTP/1.1,
    // whichever protocol carries it.
    let method = match websocket {
        Some(_) => &Method::GET,
        None => req.method(),
    };
    match decide(state, &path.path, method, &grant.roles) {
        Verdict::Whoami => return Ok(whoami(client, &grant)),
        Verdict::NoSuchEndpoint => return Err(GatewayError::NotFound),
        Verdict::Rules(Decision::Allow { .. }) => {}
        Verdict::Rules(Decision::Deny { reason, .. }) => {
            return Err(GatewayError::Forbidden(reason))
        }
    }

    // Routing comes after authorization and does not change it.
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let (upstream, _) = state.upstreams.for_request(&path.path, authority);
    outcome.upstream_name = Some(upstream.name());
    let mut req = req;
    let client_upgrade = websocket.map(|_| hyper::upgrade::on(&mut req));
    let mut req = upstream_request(
        state,
        client,
        &grant,
        req,
        path.into_forwarded(),
        request_id,
    )?;
    if let Some(ws) = websocket {
        ws.upstream_request(&mut req);
    }
    let progress = req.body().progress().clone();
    progress.set_awaiting_head(true);
    // Timed only for the access log: each clock read is a vDSO call, and a
    // request already makes a dozen.
    let upstream_started = state.config.log.access_log.then(Instant::now);
    let result = match websocket {
        Some(_) => upstream.send_upgrade(req).await,
        None => upstream.send(req).await,
    };
    outcome.upstream = upstream_started.map(|at| at.elapsed());
    progress.set_awaiting_head(false);
    let mut resp = result.map_err(|e| blame(e.into(), &progress))?;
    gw.metrics
        .requests
        .upstream_answered(upstream.name(), resp.status());
    let tunnel = match (websocket, client_upgrade) {
        (Some(ws), Some(client_side)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            Some((
                ws,
                PendingTunnel::new(client_side, hyper::upgrade::on(&mut resp)),
            ))
        }
        _ => None,
    };
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if !is_http1 {
        headers::detach_values(&mut parts.headers);
    }
    if let Some((ws, tunnel)) = tunnel {
        ws.client_response(&mut parts);
        parts.extensions.insert(Handoff::new(tunnel));
    }
    Ok(Response::from_parts(parts, Either::Left(body)))
}

/// The request as the upstream receives it: the normalized path (with
/// the query as sent), the upstream's address, and the rewritten headers.
fn upstream_request(
    state: &State,
    client: &ClientConnection,
    grant: &Grant,
    req: Request<RequestBody>,
    forwarded: String,
    request_id: &HeaderValue,
) -> Result<Request<RequestBody>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{forwarded}?{q}"),
        None => forwarded,
    };
    let path_and_query = PathAndQuery::try_from(path_and_query)
        .map_err(|_| GatewayError::BadPath(PathError::NotOriginForm))?;
    // The upstream gets the host the client asked for (HTTP/2's
    // `:authority` as `Host`); the upstream url only says where to connect.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, host);
            }
        }
    }
    parts.uri = Uri::from(path_and_query);
    headers::prepare_request_headers(
        &mut parts.headers,
        &Forwarding {
            identity: &client.verified.headers,
            id: &client.verified.identity,
            leaf_der: client.verified.leaf_der(),
            roles: &grant.roles_header,
            options: state.config.identity,
            underscore_headers: state.config.listener.underscore_headers,
            forwarded_for: &client.forwarded_for,
            request_id,
        },
    );

    Ok(Request::from_parts(parts, body))
}

/// An upstream exchange that failed because of the client's request body
/// is the client's error: a client must not be able to fire upstream alerts.
fn blame(err: GatewayError, progress: &Progress) -> GatewayError {
    if progress.request_body_failed() {
        GatewayError::BadRequestBody
    } else if err == GatewayError::Upstream(UpstreamError::Timeout) && !progress.request_body_done()
    {
        GatewayError::RequestBodyTimeout
    } else {
        err
    }
}

/// What the gateway does with a request for a normalized path, before any
/// upstream is involved. `certgate explain` reports the same verdict.
pub(crate) enum Verdict {
    /// `GET`/`HEAD /.certgate/whoami`: answered by the gateway to any
    /// verified client.
    Whoami,
    /// Any other path under `/.certgate/`: 404, never forwarded.
    NoSuchEndpoint,
    /// Every other path: the authorization rules decide.
    Rules(Decision),
}

pub(crate) fn decide(state: &State, path: &str, method: &Method, roles: &Roles) -> Verdict {
    if path.starts_with(INTERNAL_PREFIX) {
        return if path == WHOAMI && (method == Method::GET || method == Method::HEAD) {
            Verdict::Whoami
        } else {
            Verdict::NoSuchEndpoint
        };
    }
    Verdict::Rules(state.authz.authorize(path, method.as_str(), roles))
}

fn whoami(client: &ClientConnection, grant: &Grant) -> Response<ProxyBody> {
    let id = &client.verified.identity;
    let body = serde_json::json!({
        "subject": id.subject,
        "issuer": id.issuer,
        "serial": id.serial,
        "fingerprint_sha256": id.fingerprint_sha256,
        "san": { "dns": id.dns, "uri": id.uri, "email": id.email },
        "spiffe_id": id.spiffe_id,
        "not_before": id.not_before,
        "not_after": id.not_after,
        "roles": grant.roles.names,
    });
    json_response(StatusCode::OK, &body, false)
}

fn access_log(
    client: &ClientConnection,
    method: &Method,
    status: StatusCode,
    request_id: &HeaderValue,
    outcome: &Outcome,
    elapsed: Duration,
) {
    // Whole microseconds over 1000: at most 3 decimals (SPEC §15), where
    // `as_secs_f64() * 1000.0` prints float noise like 0.12118999999999999.
    let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
    tracing::info!(
        target: "certgate::access",
        request_id = request_id.to_str().unwrap_or(""),
        peer = %client.peer,
        subject = %client.verified.identity.subject,
        fingerprint = %client.verified.identity.fingerprint_sha256,
        roles = outcome.roles.as_ref().and_then(|r| r.to_str().ok()).unwrap_or(""),
        method = %method,
        path = outcome.path.as_deref().unwrap_or(""),
        status = status.as_u16(),
        upstream_ms = outcome.upstream.map(ms),
        total_ms = ms(elapsed),
        error = outcome.error.as_ref().map(tracing::field::display),
        "request"
    );
}
