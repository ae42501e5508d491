//! Origin policy for WebSocket handshakes (RFC 6455 §10.2: the server decides
//! from `Origin` whether a browser page may open the tunnel). Owns the
//! decision; does no IO and keeps no state. The `allowed_origins` pattern
//! syntax and the host/port rules are config's (`config::host`), used here
//! for the request's `Origin` and `Host` too, so both are read alike.
//!
//! Invariants:
//! * Comparison is on normalised origins (RFC 6454 §6.1 serialisation):
//!   lower-case scheme and host, the default port (80/443) made explicit,
//!   IPv6 literals in canonical bracketed form. Nothing else is normalised.
//! * Fail closed: an `Origin` that is not a well-formed `scheme://host[:port]`
//!   (a trailing slash, a path, user info, a scheme other than http/https) is
//!   never allowed, except by the pattern `*`, which allows everything.

use crate::config::{normalise_host, parse_port, split_host_port, split_origin};

/// The `allowed_origins` entry; its syntax is config's, the decision is here.
pub use crate::config::OriginPattern;

/// A request's origin after normalisation.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: &'static str,
    host: String,
    port: u16,
}

impl Origin {
    fn matched_by(&self, pattern: &OriginPattern) -> bool {
        match pattern {
            OriginPattern::Any => true,
            OriginPattern::Null => false,
            OriginPattern::Exact { scheme, host, port } => {
                *scheme == self.scheme && *host == self.host && *port == self.port
            }
            OriginPattern::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                *scheme == self.scheme
                    && *port == self.port
                    && self.host.len() > suffix.len()
                    && self.host.ends_with(suffix.as_str())
            }
        }
    }
}

/// Whether a handshake with this `Origin` may proceed.
///
/// * `patterns`: `None` means same-origin only: the Origin's host and port
///   must equal the request's `Host` (a Host without a port means 443 on TLS,
///   80 on cleartext) and its scheme must be https on TLS, http on cleartext.
/// * `origin`: the `Origin` header value; `None` when the client sent none
///   (non-browser clients), which `allow_missing_origin` decides.
/// * `host`: the request's `Host` (or h2 `:authority`), with its port if any.
pub fn allows(
    patterns: Option<&[OriginPattern]>,
    origin: Option<&str>,
    host: Option<&str>,
    tls: bool,
    allow_missing_origin: bool,
) -> bool {
    let Some(origin) = origin else {
        return allow_missing_origin;
    };
    match patterns {
        Some(patterns) => {
            if patterns.contains(&OriginPattern::Any) {
                return true;
            }
            // RFC 6454 §6.1: an opaque origin serialises as exactly "null".
            if origin == "null" {
                return patterns.contains(&OriginPattern::Null);
            }
            match parse_origin(origin) {
                Some(o) => patterns.iter().any(|p| o.matched_by(p)),
                None => false,
            }
        }
        None => same_origin(origin, host, tls),
    }
}

fn same_origin(origin: &str, host: Option<&str>, tls: bool) -> bool {
    let (Some(origin), Some(host)) = (parse_origin(origin), host) else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    let default_port = if tls { 443 } else { 80 };
    let Ok((host, port)) = split_host_port(host) else {
        return false;
    };
    let port = match port {
        Some(p) => match parse_port(p) {
            Ok(p) => p,
            Err(_) => return false,
        },
        None => default_port,
    };
    let Ok(host) = normalise_host(host) else {
        return false;
    };
    origin.scheme == scheme && origin.host == host && origin.port == port
}

fn parse_origin(s: &str) -> Option<Origin> {
    let (scheme, host, port) = split_origin(s).ok()?;
    if host.contains('*') {
        return None;
    }
    Some(Origin {
        scheme,
        host: normalise_host(host).ok()?,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<OriginPattern> {
        list.iter()
            .map(|s| OriginPattern::parse(s).unwrap())
            .collect()
    }

    #[test]
    fn listed_origins() {
        let list = patterns(&[
            "https://chat.example.com",
            "https://*.example.org",
            "http://localhost:8080",
            "https://[::1]:8443",
        ]);
        let cases = [
            ("https://chat.example.com", true),
            ("HTTPS://CHAT.EXAMPLE.COM", true),
            ("https://chat.example.com:443", true),
            ("https://chat.example.com:8443", false),
            ("http://chat.example.com", false),
            ("https://chat.example.com/", false),
            ("https://chat.example.com.evil.com", false),
            ("https://evilchat.example.com", false),
            ("https://x.chat.example.com", false),
            ("https://a.example.org", true),
            ("https://a.b.example.org", true),
            ("https://A.Example.Org", true),
            ("https://example.org", false),
            ("https://example.org.evil.com", false),
            ("https://evilexample.org", false),
            ("https://.example.org", false),
            ("http://a.example.org", false),
            ("https://a.example.org:8443", false),
            ("http://localhost:8080", true),
            ("http://localhost", false),
            ("https://localhost:8080", false),
            ("https://[::1]:8443", true),
            ("https://[0::1]:8443", true),
            ("https://[::2]:8443", false),
            ("null", false),
            ("", false),
            ("chat.example.com", false),
            ("https://user@chat.example.com", false),
            ("https://chat.example.com\u{fffd}", false),
        ];
        for (origin, want) in cases {
            assert_eq!(
                allows(Some(&list), Some(origin), Some("ignored"), true, false),
                want,
                "{origin:?}"
            );
        }
    }

    #[test]
    fn any_null_and_empty_lists() {
        let any = patterns(&["*"]);
        for origin in ["https://x.com", "null", "garbage", ""] {
            assert!(
                allows(Some(&any), Some(origin), None, true, false),
                "{origin:?}"
            );
        }
        let null = patterns(&["null"]);
        assert!(allows(Some(&null), Some("null"), None, true, false));
        assert!(!allows(Some(&null), Some("NULL"), None, true, false));
        assert!(!allows(
            Some(&null),
            Some("https://null"),
            None,
            true,
            false
        ));
        assert!(!allows(
            Some(&[]),
            Some("https://a.com"),
            Some("a.com"),
            true,
            false
        ));
    }

    #[test]
    fn missing_origin() {
        for list in [None, Some(&[][..]), Some(&[OriginPattern::Any][..])] {
            assert!(allows(list, None, Some("a.com"), true, true));
            assert!(!allows(list, None, Some("a.com"), true, false));
        }
    }

    #[test]
    fn same_origin_only() {
        // (origin, host, tls, allowed)
        let cases = [
            ("https://a.com", "a.com", true, true),
            ("https://a.com", "a.com:443", true, true),
            ("https://a.com:443", "a.com", true, true),
            ("https://A.COM", "a.Com", true, true),
            ("https://a.com:8443", "a.com:8443", true, true),
            ("https://a.com", "a.com:8443", true, false),
            ("https://a.com:8443", "a.com", true, false),
            ("http://a.com", "a.com", true, false),
            ("http://a.com", "a.com", false, true),
            ("http://a.com:80", "a.com", false, true),
            ("http://a.com", "a.com:80", false, true),
            ("https://a.com", "a.com", false, false),
            ("http://a.com:8080", "a.com:8080", false, true),
            ("https://b.com", "a.com", true, false),
            ("https://a.com.evil.com", "a.com", true, false),
            ("https://sub.a.com", "a.com", true, false),
            ("https://a.com/", "a.com", true, false),
            ("https://[::1]", "[::1]", true, true),
            ("https://[::1]:8443", "[0::1]:8443", true, true),
            ("https://[::1]", "[::2]", true, false),
            ("https://127.0.0.1:8443", "127.0.0.1:8443", true, true),
            ("https://a.com", "a.com:", true, false),
            ("https://a.com", "a.com:x", true, false),
            ("null", "a.com", true, false),
        ];
        for (origin, host, tls, want) in cases {
            assert_eq!(
                allows(None, Some(origin), Some(host), tls, false),
                want,
                "{origin:?} vs Host {host:?} tls={tls}"
            );
        }
        assert!(!allows(None, Some("https://a.com"), None, true, false));
    }
}
