//! The PROXY protocol (HAProxy's proxy-protocol.txt, v1 text and v2
//! binary), parsed and built with the `ppp` crate: reading the header a
//! balancer listed in `server.proxy_protocol` puts in front of a client
//! connection, and making the one a route's `send_proxy_protocol` puts in
//! front of a backend connection.
//!
//! Reading never takes a byte past the header off the socket: the header is
//! found by peeking, and only its own bytes are read. What the client sent
//! after it in the same segment (a TLS ClientHello, a request head) stays in
//! the kernel for the TLS acceptor or hyper, so no prefix buffer has to ride
//! along with every connection.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::v2::{self, Builder, Command, Protocol, Version};
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ProxyVersion;

/// What a header said about the connection it came in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// The client's address; `None` for a v2 LOCAL header (the balancer's
    /// own connection, e.g. a health check), v1 UNKNOWN, or an address
    /// family that is not IP: the peer itself is then the client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when the header gave it.
    pub destination: Option<SocketAddr>,
}

/// Why no header could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("reading the PROXY header failed")]
    Io(#[from] io::Error),
}

/// The largest header: v2's 16 fixed bytes and a 16-bit length.
const MAX_HEADER: usize = 16 + u16::MAX as usize;

/// Reads one PROXY header (v1 or v2) from the start of `tcp`, however it is
/// split across segments; bound it with the caller's deadline.
///
/// While the header is incomplete every byte that has arrived belongs to
/// it, so those are read; once it is complete, only the rest of the header
/// is read, and what follows it is left on the socket.
pub async fn read_header(tcp: &mut TcpStream) -> Result<Carried, ReadError> {
    let mut taken: Vec<u8> = Vec::new();
    let mut peeked = vec![0u8; 256];
    loop {
        let n = tcp.peek(&mut peeked).await?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        let before = taken.len();
        taken.extend_from_slice(&peeked[..n]);
        let parsed = parse(&taken);
        match parsed {
            Parsed::Incomplete => {
                // All of it is header: take it off the socket, and wait for
                // more (the next peek waits, as the socket is now empty).
                tcp.read_exact(&mut peeked[..n]).await?;
                if taken.len() >= MAX_HEADER {
                    return Err(ReadError::Malformed("header too long".into()));
                }
            }
            Parsed::Header(carried, len) => {
                let rest = len - before;
                tcp.read_exact(&mut peeked[..rest]).await?;
                return Ok(carried);
            }
            Parsed::Malformed(why) => return Err(ReadError::Malformed(why)),
        }
    }
}

enum Parsed {
    Incomplete,
    /// The header and its length in bytes.
    Header(Carried, usize),
    Malformed(String),
}

/// v1's longest line, CRLF included.
const V1_MAX: usize = 107;

fn parse(input: &[u8]) -> Parsed {
    // A v1 header is one line. ppp misjudges some cuts inside it (a line cut
    // just after a space reads as an empty, hence invalid, field), so it is
    // shown only whole lines.
    let v1 = input.starts_with(b"PROXY") || b"PROXY".starts_with(input);
    if v1 && input.len() < V1_MAX && !input.contains(&b'\n') {
        return Parsed::Incomplete;
    }
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let (source, destination) = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => (
                    Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                    Some(SocketAddr::new(
                        a.destination_address.into(),
                        a.destination_port,
                    )),
                ),
                ppp::v1::Addresses::Tcp6(a) => (
                    Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                    Some(SocketAddr::new(
                        a.destination_address.into(),
                        a.destination_port,
                    )),
                ),
                ppp::v1::Addresses::Unknown => (None, None),
            };
            Parsed::Header(
                Carried {
                    source: source.map(canonical),
                    destination: destination.map(canonical),
                },
                h.header.len(),
            )
        }
        HeaderResult::V2(Ok(h)) => {
            // TLVs are not looked at: the crate checked only that the
            // declared length is there, and nothing here reads them.
            let (source, destination) = match (h.command, h.addresses) {
                (Command::Proxy, v2::Addresses::IPv4(a)) => (
                    Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                    Some(SocketAddr::new(
                        a.destination_address.into(),
                        a.destination_port,
                    )),
                ),
                (Command::Proxy, v2::Addresses::IPv6(a)) => (
                    Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                    Some(SocketAddr::new(
                        a.destination_address.into(),
                        a.destination_port,
                    )),
                ),
                _ => (None, None),
            };
            Parsed::Header(
                Carried {
                    source: source.map(canonical),
                    destination: destination.map(canonical),
                },
                h.len(),
            )
        }
        HeaderResult::V1(Err(e)) => Parsed::Malformed(format!("v1: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Malformed(format!("v2: {e}")),
    }
}

/// `::ffff:a.b.c.d` is compared and written as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The header for a backend connection made for `client`, who connected to
/// `local`. A client and a local address of different families are both
/// written as IPv6 (IPv4-mapped), since one header has one family.
pub fn encode(version: ProxyVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    match version {
        ProxyVersion::V1 => ppp::v1::Addresses::from((client, local))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (client, local),
        )
        .build()
        .expect("an IP header is far below the v2 length limit"),
    }
}

/// The header for a connection sluice makes on its own behalf (a health
/// check): v2 LOCAL, or v1 UNKNOWN.
pub fn encode_local(version: ProxyVersion) -> Vec<u8> {
    match version {
        ProxyVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyVersion::V2 => Builder::new(
            Version::Two | Command::Local,
            v2::AddressFamily::Unspecified | Protocol::Unspecified,
        )
        .build()
        .expect("an empty header is far below the v2 length limit"),
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn what_encode_writes_parse_reads_back() {
        let cases = [
            ("10.1.2.3:40000", "192.0.2.1:443"),
            ("[2001:db8::7]:40000", "[2001:db8::1]:443"),
        ];
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            for (c, l) in cases {
                let mut bytes = encode(version, sa(c), sa(l));
                let len = bytes.len();
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
                let Parsed::Header(carried, n) = parse(&bytes) else {
                    panic!("{version:?} {c}")
                };
                assert_eq!(n, len);
                assert_eq!(
                    (carried.source, carried.destination),
                    (Some(sa(c)), Some(sa(l)))
                );
                for cut in 1..len {
                    assert!(
                        matches!(parse(&bytes[..cut]), Parsed::Incomplete),
                        "{version:?} cut at {cut}"
                    );
                }
            }
            let local = encode_local(version);
            let Parsed::Header(carried, n) = parse(&local) else {
                panic!("{version:?} local")
            };
            assert_eq!((carried.source, n), (None, local.len()));
        }
        // Mixed families become IPv6 on the wire and IPv4 again when read.
        let bytes = encode(ProxyVersion::V1, sa("10.0.0.1:1"), sa("[2001:db8::1]:443"));
        assert!(
            bytes.starts_with(b"PROXY TCP6 ::ffff:10.0.0.1 "),
            "{bytes:?}"
        );
        let Parsed::Header(carried, _) = parse(&bytes) else {
            panic!()
        };
        assert_eq!(carried.source, Some(sa("10.0.0.1:1")));
    }

    #[test]
    fn malformed_headers_are_refused_at_once() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"PROXY TCP4 10.0.0.300 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 10.0.0.3 10.0.0.1 65536 2\r\n",
            b"PROXY TCP4 10.0.0.3 10.0.0.1 01 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP5 10.0.0.3 10.0.0.1 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
