//! The mTLS data path: accept loop and TLS handshake (`listener`), the
//! PROXY protocol header a balancer sends before it (`proxy_header`), HTTP
//! serving under the connection's timers (`connection`, `activity`), the
//! client connection (`client`) and the verified client it shares with the
//! client's other connections (`verified`), a refused handshake's log line
//! and graceful close (`refusal`), the per-request pipeline
//! (`service`), HTTP/2 streams under their stall clocks (`streams`), header
//! rewriting (`headers`) and gateway-made error responses (`error`).

mod activity;
mod client;
mod connection;
mod error;
mod head;
pub mod headers;
mod listener;
mod proxy_header;
mod refusal;
mod service;
mod signal;
mod streams;
mod tunnel;
mod upgrade;
mod verified;

pub use client::ClientConnection;
pub use error::{json_response, GatewayError};
pub use listener::serve;
pub(crate) use service::{decide, Verdict};
pub use verified::VerifiedClients;

/// Response bodies are either streamed from the upstream or made here.
pub type ProxyBody =
    http_body_util::Either<hyper::body::Incoming, http_body_util::Full<bytes::Bytes>>;
