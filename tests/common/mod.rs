//! Shared integration-test harness: a PKI made at test time with rcgen,
//! the real `certgate` binary started on loopback, an in-process echo
//! upstream, an mTLS HTTP client (HTTP/1.1 and HTTP/2), and helpers to read
//! the admin endpoints. Every test gets its own temporary directory and
//! ephemeral ports, so tests run in parallel.
//!
//! One submodule per concern, all re-exported here so that a test file
//! needs only `mod common; use common::*;`:
//! - `pki`: [`TestCa`], [`LeafSpec`], [`Leaf`], CRLs;
//! - `daemon`: [`Setup`], the [`Gateway`] process, admin and metrics readers;
//! - `client`: [`TestClient`], [`Conn`], [`Reply`], hand-written HTTP/1.1;
//! - `refusals`: handshake refusals as the client sees and the gateway counts them;
//! - `upstream`: the in-process echo upstream;
//! - `files` and `tools`: test files, installed tools, polling.
//!
//! `servlet.rs` is not part of this module: the tests that need it and the
//! fuzz crate include it on its own with `#[path]`.

// Each test binary uses a different part of the harness; the inner
// attribute covers the submodules too.
#![allow(dead_code)]

mod client;
mod daemon;
mod files;
mod pki;
mod publisher;
mod python;
mod refusals;
mod tools;
mod upstream;

// A test binary that uses nothing of a submodule would otherwise be told
// that its re-export is unused.
#[allow(unused_imports)]
pub use self::{
    client::*, daemon::*, files::*, pki::*, publisher::*, python::*, refusals::*, tools::*,
    upstream::*,
};
