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
            GatewayError::Draining => StatusCode::SERVICE_UNAVAILABLE,
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
