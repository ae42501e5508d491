//! Header rewriting for forwarded requests and responses: hop-by-hop removal
//! (RFC 9110 §7.6.1) and the `X-Forwarded-*` family. Pure functions.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Headers that describe one connection, not the message; never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including every header named in `Connection`.
///
/// A `Content-Length` that arrived beside `Transfer-Encoding` is dropped too:
/// the body was framed by the transfer coding, and forwarding both is the
/// classic request-smuggling desync (RFC 9112 §6.3).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// True when a comma-separated header (e.g. `Connection`, `Upgrade`) carries
/// `token`, compared case-insensitively.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Who the client is, once `X-Forwarded-For` from trusted proxies is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The address limits are keyed by.
    pub ip: IpAddr,
    /// The peer is in `trusted_proxies`: what it says about the client
    /// (X-Forwarded-*, Forwarded, X-Real-IP) may be passed on.
    pub peer_trusted: bool,
}

/// Resolves the client IP and the `X-Forwarded-For` value to send on.
///
/// From an untrusted peer the header is replaced by the peer address, so a
/// client cannot forge its way past per-IP limits. From a trusted peer the
/// peer is appended and the client is the last address not in
/// `trusted`, read right to left (contract, "Decided edge cases").
pub fn forwarded_for(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: &[IpNet],
) -> (ClientAddr, HeaderValue) {
    // IPv4-mapped IPv6 (a dual-stack listener's view of an IPv4 peer) is
    // compared and written as the IPv4 address it is.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        let client = ClientAddr {
            ip: peer,
            peer_trusted: false,
        };
        return (client, ip_value(peer));
    }
    let prior: Vec<&str> = headers
        .get_all(header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut client = peer;
    for hop in prior.iter().rev() {
        match hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => {
                client = ip;
                break;
            }
            // Garbage from beyond the trusted chain: stop believing the header.
            Err(_) => break,
        }
    }
    let mut joined = prior.join(", ");
    if !joined.is_empty() {
        joined.push_str(", ");
    }
    joined.push_str(&peer.to_string());
    let value = HeaderValue::from_str(&joined).unwrap_or_else(|_| ip_value(peer));
    let client = ClientAddr {
        ip: client,
        peer_trusted: true,
    };
    (client, value)
}

/// What a client says about where a request came from, believed only from
/// a trusted proxy (sluice sets the X-Forwarded-For/-Proto/-Host family
/// itself).
const CLIENT_ORIGIN_CLAIMS: [&str; 4] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
];

fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host` on a request about to be
/// forwarded, and removes the other forwarding claims (`Forwarded`,
/// `X-Real-IP`, `X-Forwarded-Port`, `-Prefix`) unless the peer is trusted.
/// `host` is the client's Host (or `:authority`).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &ClientAddr,
    xff: HeaderValue,
    tls: bool,
    host: Option<&str>,
) {
    if !client.peer_trusted {
        for name in CLIENT_ORIGIN_CLAIMS {
            headers.remove(name);
        }
    }
    headers.insert("x-forwarded-for", xff);
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(v) => {
            headers.insert("x-forwarded-host", v);
        }
        None => {
            headers.remove("x-forwarded-host");
        }
    }
}

/// What a forwarded request says about its client, resolved once from the
/// client's headers as received: the address limits are keyed by, and the
/// `X-Forwarded-*` values sent on. Both request paths (plain HTTP and the
/// WebSocket upgrade) use it, so a backend sees the same client either way.
#[derive(Debug, Clone)]
pub struct Forwarding {
    pub client: ClientAddr,
    /// The `X-Forwarded-For` value to send (see [`forwarded_for`]).
    pub xff: HeaderValue,
    /// The client connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl Forwarding {
    pub fn resolve(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet], tls: bool) -> Forwarding {
        let (client, xff) = forwarded_for(headers, peer, trusted);
        Forwarding { client, xff, tls }
    }

    /// Turns the client's headers into the ones sent to the backend:
    /// hop-by-hop headers removed, the `X-Forwarded-*` family set, and
    /// `Host` set to `host`, the host the request was routed on.
    pub fn apply(self, headers: &mut HeaderMap, host: Option<&str>) {
        strip_hop_by_hop(headers);
        set_forwarded(headers, &self.client, self.xff, self.tls, host);
        if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(header::HOST, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn content_length_beside_transfer_encoding_is_dropped() {
        let mut h = map(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("content-length").is_none());
        let mut h = map(&[("content-length", "5")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["content-length"], "5");
    }

    #[test]
    fn xff_replaced_for_untrusted_peer() {
        let h = map(&[("x-forwarded-for", "6.6.6.6")]);
        let (c, v) = forwarded_for(&h, "10.0.0.9".parse().unwrap(), &[]);
        assert_eq!(c.ip, "10.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(v, "10.0.0.9");
    }

    #[test]
    fn xff_appended_for_trusted_peer_and_client_is_last_untrusted() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = map(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.1.1.1")]);
        let (c, v) = forwarded_for(&h, "10.0.0.9".parse().unwrap(), &trusted);
        assert_eq!(c.ip, "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(v, "6.6.6.6, 1.2.3.4, 10.1.1.1, 10.0.0.9");
        // No header from a trusted peer: the peer itself is the client.
        let (c, v) = forwarded_for(&HeaderMap::new(), "10.0.0.9".parse().unwrap(), &trusted);
        assert_eq!(c.ip, "10.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(v, "10.0.0.9");
    }

    #[test]
    fn ipv4_mapped_peers_are_ipv4() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let h = map(&[("x-forwarded-for", "203.0.113.7")]);
        let (c, v) = forwarded_for(&h, "::ffff:127.0.0.1".parse().unwrap(), &trusted);
        assert!(c.peer_trusted);
        assert_eq!(c.ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(v, "203.0.113.7, 127.0.0.1");
        let (c, v) = forwarded_for(&h, "::ffff:10.0.0.1".parse().unwrap(), &trusted);
        assert_eq!(c.ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(v, "10.0.0.1");
    }

    #[test]
    fn forwarding_claims_of_untrusted_peers_are_removed() {
        let claims = [
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-prefix", "/evil"),
        ];
        for trusted in [false, true] {
            let mut h = map(&claims);
            let client = ClientAddr {
                ip: "10.0.0.9".parse().unwrap(),
                peer_trusted: trusted,
            };
            set_forwarded(&mut h, &client, ip_value(client.ip), true, None);
            for (name, _) in claims {
                assert_eq!(h.contains_key(name), trusted, "{name}");
            }
        }
    }

    #[test]
    fn applied_forwarding_strips_hops_and_sets_host_and_claims() {
        let mut h = map(&[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("host", "Example.COM"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-kept", "yes"),
        ]);
        let f = Forwarding::resolve(&h, "10.0.0.9".parse().unwrap(), &[], true);
        assert_eq!(f.client.ip, "10.0.0.9".parse::<IpAddr>().unwrap());
        f.apply(&mut h, Some("example.com"));
        assert!(!h.contains_key("connection") && !h.contains_key("x-secret"));
        assert_eq!(h["host"], "example.com");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn tokens_are_case_insensitive() {
        let h = map(&[("connection", "keep-alive, Upgrade")]);
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "close"));
    }
}
