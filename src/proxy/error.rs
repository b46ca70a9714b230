//! Errors the gateway answers itself, and the one place that maps each to a
//! status code and a JSON body `{"error": ..., "request_id": ...}`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use super::head::HeadError;
use super::ProxyBody;
use crate::policy::PathError;
use crate::upstream::UpstreamError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("bad request path: {0}")]
    BadPath(#[from] PathError),
    #[error("bad request head: {0}")]
    BadHead(#[from] HeadError),
    #[error("request head larger than listener.max_header_bytes")]
    HeadTooLarge,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The connection's certificate no longer passes the current state
    /// (revoked by a new CRL, CA removed, expired since the handshake).
    #[error("client certificate no longer accepted: {0}")]
    CertificateRejected(&'static str),
    #[error("no such gateway endpoint")]
    NotFound,
    /// The client's request body broke off or was malformed (a bad chunk):
    /// the client's fault, so never counted as an upstream error.
    #[error("request body from the client was malformed or cut off")]
    BadRequestBody,
    /// `upstream.timeout` passed while the client was still sending its body.
    #[error("client did not finish its request body within upstream.timeout")]
    RequestBodyTimeout,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("gateway is draining")]
    Draining,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadPath(_) => StatusCode::BAD_REQUEST,
            GatewayError::BadHead(HeadError::UnsupportedTransferEncoding) => {
                StatusCode::NOT_IMPLEMENTED
            }
            GatewayError::BadHead(_) => StatusCode::BAD_REQUEST,
            GatewayError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::Forbidden(_) | GatewayError::CertificateRejected(_) => {
                StatusCode::FORBIDDEN
            }
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::BadRequestBody => StatusCode::BAD_REQUEST,
            GatewayError::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Upstream(UpstreamError::Connect | UpstreamError::Protocol) => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Upstream(UpstreamError::NoHealthyEndpoint) | GatewayError::Draining => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The machine-readable `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadPath(_) => "bad_path",
            GatewayError::BadHead(
                HeadError::DuplicateHost
                | HeadError::MissingHost
                | HeadError::InvalidHost
                | HeadError::HostMismatch,
            ) => "bad_host",
            GatewayError::BadHead(HeadError::UnsupportedTransferEncoding) => {
                "unsupported_transfer_encoding"
            }
            GatewayError::HeadTooLarge => "request_header_fields_too_large",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::CertificateRejected(_) => "certificate_rejected",
            GatewayError::NotFound => "not_found",
            GatewayError::BadRequestBody => "bad_request_body",
            GatewayError::RequestBodyTimeout => "request_body_timeout",
            GatewayError::Upstream(UpstreamError::Connect | UpstreamError::Protocol) => {
                "bad_gateway"
            }
            GatewayError::Upstream(UpstreamError::Timeout) => "gateway_timeout",
            GatewayError::Upstream(UpstreamError::NoHealthyEndpoint) => "no_healthy_upstream",
            GatewayError::Draining => "draining",
        }
    }

    pub fn upstream_kind(&self) -> Option<UpstreamError> {
        match self {
            GatewayError::Upstream(e) => Some(*e),
            _ => None,
        }
    }

    /// Whether the client should not reuse the connection afterwards.
    fn closes_connection(&self) -> bool {
        // After a framing the gateway refused, or a body it could not read
        // to its end, where the body ends is exactly what is in doubt: the
        // next bytes cannot be trusted as a head.
        matches!(
            self,
            GatewayError::CertificateRejected(_)
                | GatewayError::Draining
                | GatewayError::BadHead(HeadError::UnsupportedTransferEncoding)
                | GatewayError::BadRequestBody
                | GatewayError::RequestBodyTimeout
        )
    }

    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        json_response(
            self.status(),
            &serde_json::json!({ "error": self.code(), "request_id": request_id }),
            self.closes_connection(),
        )
    }
}

impl GatewayError {
    /// The error as a gRPC client reads it: HTTP 200 and trailers-only
    /// (the status in the one HEADERS frame that ends the stream), with
    /// the status from gRPC's HTTP-to-gRPC mapping and a `grpc-message`
    /// that names the error and the request id a client team can quote.
    pub fn into_grpc_response(self, request_id: &str) -> Response<ProxyBody> {
        let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(&GRPC_STATUS, HeaderValue::from(grpc_status(self.status())));
        let message = format!("{} (request_id {request_id})", self.code());
        // gRPC's percent-encoding: what is not printable ASCII, and `%`.
        let message = percent_encoding::utf8_percent_encode(&message, GRPC_MESSAGE_ESCAPES);
        if let Ok(message) = HeaderValue::from_str(&message.to_string()) {
            headers.insert(&GRPC_MESSAGE, message);
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
const GRPC_MESSAGE_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// gRPC's mapping of HTTP statuses to its own (grpc/doc/http-grpc-status-mapping.md).
fn grpc_status(status: StatusCode) -> u16 {
    const INTERNAL: u16 = 13;
    const UNAUTHENTICATED: u16 = 16;
    const PERMISSION_DENIED: u16 = 7;
    const UNIMPLEMENTED: u16 = 12;
    const UNAVAILABLE: u16 = 14;
    const UNKNOWN: u16 = 2;
    match status.as_u16() {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

pub fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    close: bool,
) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn grpc_requests_get_trailers_only_grpc_statuses() {
        let cases = [
            (GatewayError::BadPath(PathError::EncodedSlash), "13"),
            (GatewayError::Forbidden("missing role"), "7"),
            (GatewayError::CertificateRejected("revoked"), "7"),
            (GatewayError::NotFound, "12"),
            (GatewayError::Upstream(UpstreamError::Connect), "14"),
            (GatewayError::Upstream(UpstreamError::Timeout), "14"),
            (GatewayError::Draining, "14"),
            (GatewayError::RequestBodyTimeout, "2"),
            (GatewayError::HeadTooLarge, "2"),
        ];
        for (err, grpc_status) in cases {
            let name = format!("{err:?}");
            let code = err.code();
            let resp = err.into_grpc_response("rid-1");
            assert_eq!(resp.status(), StatusCode::OK, "{name}");
            let h = resp.headers();
            assert_eq!(h["content-type"], "application/grpc", "{name}");
            assert_eq!(h["grpc-status"], grpc_status, "{name}");
            assert_eq!(
                h["grpc-message"],
                format!("{code} (request_id rid-1)").as_str(),
                "{name}"
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(body.is_empty(), "{name}: trailers-only has no body");
        }
    }

    #[tokio::test]
    async fn every_variant_maps_to_its_status_and_json() {
        let cases = [
            (
                GatewayError::BadPath(PathError::EncodedSlash),
                400,
                "bad_path",
            ),
            (
                GatewayError::BadPath(PathError::PathParameters),
                400,
                "bad_path",
            ),
            (
                GatewayError::BadHead(HeadError::DuplicateHost),
                400,
                "bad_host",
            ),
            (
                GatewayError::BadHead(HeadError::MissingHost),
                400,
                "bad_host",
            ),
            (
                GatewayError::BadHead(HeadError::InvalidHost),
                400,
                "bad_host",
            ),
            (
                GatewayError::BadHead(HeadError::HostMismatch),
                400,
                "bad_host",
            ),
            (
                GatewayError::BadHead(HeadError::UnsupportedTransferEncoding),
                501,
                "unsupported_transfer_encoding",
            ),
            (
                GatewayError::HeadTooLarge,
                431,
                "request_header_fields_too_large",
            ),
            (GatewayError::Forbidden("missing role"), 403, "forbidden"),
            (
                GatewayError::CertificateRejected("revoked"),
                403,
                "certificate_rejected",
            ),
            (GatewayError::NotFound, 404, "not_found"),
            (GatewayError::BadRequestBody, 400, "bad_request_body"),
            (
                GatewayError::RequestBodyTimeout,
                408,
                "request_body_timeout",
            ),
            (
                GatewayError::Upstream(UpstreamError::Connect),
                502,
                "bad_gateway",
            ),
            (
                GatewayError::Upstream(UpstreamError::Protocol),
                502,
                "bad_gateway",
            ),
            (
                GatewayError::Upstream(UpstreamError::Timeout),
                504,
                "gateway_timeout",
            ),
            (
                GatewayError::Upstream(UpstreamError::NoHealthyEndpoint),
                503,
                "no_healthy_upstream",
            ),
            (GatewayError::Draining, 503, "draining"),
        ];
        for (err, status, code) in cases {
            let name = format!("{err:?}");
            let resp = err.into_response("rid-1");
            assert_eq!(resp.status().as_u16(), status, "{name}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"], code, "{name}");
            assert_eq!(json["request_id"], "rid-1", "{name}");
        }
    }
}
