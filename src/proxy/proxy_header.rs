//! The PROXY protocol header (HAProxy's v1 text and v2 binary forms) that an
//! L4 balancer sends before the TLS handshake (`listener.proxy_protocol`):
//! the client's address, which becomes the connection's peer everywhere
//! (logs, `x-forwarded-for`, refusals).
//!
//! Only peers in `listener.proxy_protocol_from` may send one; a header from
//! elsewhere would let any client choose its address, so such a connection
//! is closed before a byte is read. The header is framed here (the v1 line
//! ends at its LF, the v2 block's length is in its fixed 16 bytes) and read
//! exactly, so that the first TLS byte stays in the socket for rustls; the
//! header itself is parsed by the `ppp` crate.

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{ListenerConfig, ProxyProtocol};
use crate::metrics::ProxyHeaderResult;

/// The v2 signature: 12 bytes that cannot begin a v1 header or TLS.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v2 fixed part: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
/// The most address and TLV bytes a v2 header may carry here. Balancers
/// send a few dozen (AWS NLB: the VPC endpoint ID); the format allows 64 KiB.
const V2_MAX_PAYLOAD: usize = 1024;
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, CRLF included (the protocol's own limit).
const V1_MAX: usize = 107;

/// Why a connection's PROXY header was refused; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("peer is not in listener.proxy_protocol_from")]
    Untrusted,
    #[error("connection did not begin with a PROXY protocol header")]
    Missing,
    #[error("no PROXY protocol header within listener.handshake_timeout")]
    NotSent,
    #[error("PROXY protocol header not finished within listener.handshake_timeout")]
    Unfinished,
    #[error("connection closed in the middle of the PROXY protocol header")]
    Truncated,
    #[error("PROXY protocol {got} header, but listener.proxy_protocol = \"{want}\"")]
    WrongVersion {
        got: &'static str,
        want: &'static str,
    },
    #[error("PROXY protocol v1 header longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("PROXY protocol v2 header carries {0} bytes, more than {V2_MAX_PAYLOAD}")]
    V2TooLong(usize),
    #[error("malformed PROXY protocol v1 header: {0}")]
    V1(#[from] ppp::v1::BinaryParseError),
    #[error("malformed PROXY protocol v2 header: {0}")]
    V2(#[from] ppp::v2::ParseError),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

impl ProxyHeaderError {
    /// The `result` label of `certgate_proxy_protocol_total`.
    pub fn result(&self) -> ProxyHeaderResult {
        match self {
            ProxyHeaderError::Untrusted => ProxyHeaderResult::Untrusted,
            ProxyHeaderError::Missing | ProxyHeaderError::NotSent => ProxyHeaderResult::Missing,
            ProxyHeaderError::Unfinished
            | ProxyHeaderError::Truncated
            | ProxyHeaderError::WrongVersion { .. }
            | ProxyHeaderError::V1TooLong
            | ProxyHeaderError::V2TooLong(_)
            | ProxyHeaderError::V1(_)
            | ProxyHeaderError::V2(_)
            | ProxyHeaderError::Io(_) => ProxyHeaderResult::Invalid,
        }
    }
}

/// The client's address from the PROXY header that `tcp_peer` must send
/// before `deadline` (the handshake's): its source address, or `tcp_peer`
/// itself for a v2 `LOCAL` header (a balancer's health check) and for
/// headers that name no IP address (v1 `UNKNOWN`, v2 unspecified or UNIX).
///
/// # Errors
/// Why the header was refused (see [`ProxyHeaderError::result`]).
pub async fn client_address(
    tcp: &mut TcpStream,
    tcp_peer: SocketAddr,
    limits: &ListenerConfig,
    deadline: Instant,
) -> Result<SocketAddr, ProxyHeaderError> {
    if !limits.proxy_trusted(tcp_peer.ip()) {
        return Err(ProxyHeaderError::Untrusted);
    }
    let mut header = Vec::with_capacity(V1_MAX);
    let read = read_header(tcp, limits.proxy_protocol, &mut header);
    let header_version = match tokio::time::timeout_at(deadline, read).await {
        Ok(read) => read?,
        Err(_) if header.is_empty() => return Err(ProxyHeaderError::NotSent),
        Err(_) => return Err(ProxyHeaderError::Unfinished),
    };
    let source = match header_version {
        Version::V1 => v1_source(&header)?,
        Version::V2 => v2_source(&header)?,
    };
    Ok(source.unwrap_or(tcp_peer))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Reads exactly one header's bytes into `header` (never a byte of what
/// follows), deciding the version by the first byte.
async fn read_header(
    tcp: &mut TcpStream,
    mode: ProxyProtocol,
    header: &mut Vec<u8>,
) -> Result<Version, ProxyHeaderError> {
    let first = read_byte(tcp, header)
        .await?
        .ok_or(ProxyHeaderError::Missing)?;
    let version = match first {
        b'P' => Version::V1,
        b'\r' => Version::V2,
        // TLS begins with 0x16; anything else is not a PROXY header either.
        _ => return Err(ProxyHeaderError::Missing),
    };
    let want = match (mode, version) {
        (ProxyProtocol::V1, Version::V2) => Some("v1"),
        (ProxyProtocol::V2, Version::V1) => Some("v2"),
        _ => None,
    };
    if let Some(want) = want {
        let got = if version == Version::V1 { "v1" } else { "v2" };
        return Err(ProxyHeaderError::WrongVersion { got, want });
    }
    match version {
        Version::V1 => read_v1(tcp, header).await?,
        Version::V2 => read_v2(tcp, header).await?,
    }
    Ok(version)
}

/// The v1 line, one byte at a time: its end is only known at the LF, and a
/// read past it would take the start of the TLS handshake. At most 107
/// reads, and only for v1, which balancers send as one segment.
async fn read_v1(tcp: &mut TcpStream, header: &mut Vec<u8>) -> Result<(), ProxyHeaderError> {
    while header.last() != Some(&b'\n') {
        if header.len() >= V1_MAX {
            return Err(ProxyHeaderError::V1TooLong);
        }
        read_byte(tcp, header)
            .await?
            .ok_or(ProxyHeaderError::Truncated)?;
        // Plain HTTP or other text fails here, not after 107 bytes.
        let n = header.len().min(V1_PREFIX.len());
        if header[..n] != V1_PREFIX[..n] {
            return Err(
                ppp::v1::BinaryParseError::Parse(ppp::v1::ParseError::InvalidPrefix).into(),
            );
        }
    }
    Ok(())
}

/// The v2 block: the fixed 16 bytes, then as many as their length says.
async fn read_v2(tcp: &mut TcpStream, header: &mut Vec<u8>) -> Result<(), ProxyHeaderError> {
    read_more(tcp, header, V2_FIXED - header.len()).await?;
    if header[..V2_SIGNATURE.len()] != V2_SIGNATURE[..] {
        return Err(ppp::v2::ParseError::Prefix.into());
    }
    let payload = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::V2TooLong(payload));
    }
    read_more(tcp, header, payload).await
}

async fn read_byte(tcp: &mut TcpStream, header: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut byte = [0; 1];
    match tcp.read(&mut byte).await? {
        0 => Ok(None),
        _ => {
            header.push(byte[0]);
            Ok(Some(byte[0]))
        }
    }
}

/// Appends exactly `n` more bytes, keeping what arrived if it times out.
async fn read_more(
    tcp: &mut TcpStream,
    header: &mut Vec<u8>,
    n: usize,
) -> Result<(), ProxyHeaderError> {
    let want = header.len() + n;
    let mut chunk = [0; 256];
    while header.len() < want {
        let take = (want - header.len()).min(chunk.len());
        match tcp.read(&mut chunk[..take]).await? {
            0 => return Err(ProxyHeaderError::Truncated),
            got => header.extend_from_slice(&chunk[..got]),
        }
    }
    Ok(())
}

fn v1_source(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use ppp::v1::Addresses;
    Ok(match ppp::v1::Header::try_from(header)?.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unknown => None,
    })
}

fn v2_source(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use ppp::v2::{Addresses, Command};
    let parsed = ppp::v2::Header::try_from(header)?;
    if parsed.command == Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend((addresses.len() as u16).to_be_bytes());
        h.extend(addresses);
        h
    }

    #[test]
    fn source_addresses_by_header_kind() {
        let tcp4 = [192, 0, 2, 1, 10, 0, 0, 1, 0x30, 0x39, 0x01, 0xbb];
        let mut tcp6 = Vec::new();
        tcp6.extend(
            "2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        tcp6.extend([0; 16]);
        tcp6.extend([0x30, 0x39, 0x01, 0xbb]);
        let cases: [(&str, Vec<u8>, Version, Option<&str>); 6] = [
            (
                "v1 TCP4",
                b"PROXY TCP4 192.0.2.1 10.0.0.1 12345 443\r\n".to_vec(),
                Version::V1,
                Some("192.0.2.1:12345"),
            ),
            (
                "v1 TCP6",
                b"PROXY TCP6 2001:db8::7 ::1 12345 443\r\n".to_vec(),
                Version::V1,
                Some("[2001:db8::7]:12345"),
            ),
            (
                "v1 UNKNOWN",
                b"PROXY UNKNOWN\r\n".to_vec(),
                Version::V1,
                None,
            ),
            (
                "v2 TCP4",
                v2(1, 0x11, &tcp4),
                Version::V2,
                Some("192.0.2.1:12345"),
            ),
            (
                "v2 TCP6",
                v2(1, 0x21, &tcp6),
                Version::V2,
                Some("[2001:db8::7]:12345"),
            ),
            ("v2 LOCAL", v2(0, 0x00, &[]), Version::V2, None),
        ];
        for (case, header, version, want) in cases {
            let got = match version {
                Version::V1 => v1_source(&header),
                Version::V2 => v2_source(&header),
            }
            .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(got.map(|a| a.to_string()).as_deref(), want, "{case}");
        }
    }

    #[test]
    fn malformed_headers_are_invalid() {
        let cases: [(&str, Vec<u8>, Version); 3] = [
            (
                "v1 bad address",
                b"PROXY TCP4 192.0.2.300 10.0.0.1 1 2\r\n".to_vec(),
                Version::V1,
            ),
            (
                "v1 bad protocol",
                b"PROXY UDP4 192.0.2.1 10.0.0.1 1 2\r\n".to_vec(),
                Version::V1,
            ),
            ("v2 TCP4 too short", v2(1, 0x11, &[1, 2, 3]), Version::V2),
        ];
        for (case, header, version) in cases {
            let err = match version {
                Version::V1 => v1_source(&header),
                Version::V2 => v2_source(&header),
            }
            .expect_err(case);
            assert_eq!(err.result(), ProxyHeaderResult::Invalid, "{case}: {err}");
        }
    }
}
