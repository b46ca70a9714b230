//! The in-process echo upstream.

use std::net::SocketAddr;

/// Starts the echo upstream on an ephemeral loopback port (on the current
/// tokio runtime) and returns its address.
pub async fn echo_upstream() -> SocketAddr {
    let (addr, server) = certgate::devtools::echo::bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind echo upstream");
    tokio::spawn(server);
    addr
}
