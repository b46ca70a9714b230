//! certgate: an mTLS-terminating HTTP gateway. It requires and verifies a
//! client certificate on every connection, maps the certificate to roles,
//! authorizes each request by path and method, and forwards allowed
//! requests upstream with the verified identity in headers. Certificates,
//! CAs, CRLs and rules reload without a restart.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
#[cfg(feature = "dev-tools")]
pub mod devtools;
pub mod exchange;
pub mod gateway;
pub mod identity;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod refresh;
pub mod reload;
pub mod revocation;
pub mod state;
pub mod systemd;
pub mod tls;
pub mod upstream;
