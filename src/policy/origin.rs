//! Origin policy for WebSocket handshakes (RFC 6455 §10.2: the server decides
//! from `Origin` whether a browser page may open the tunnel). Owns the
//! `allowed_origins` pattern syntax and the decision; does no IO and keeps no
//! state.
//!
//! Invariants:
//! * Comparison is on normalised origins (RFC 6454 §6.1 serialisation):
//!   lower-case scheme and host, the default port (80/443) made explicit,
//!   IPv6 literals in canonical bracketed form. Nothing else is normalised.
//! * Fail closed: an `Origin` that is not a well-formed `scheme://host[:port]`
//!   (a trailing slash, a path, user info, a scheme other than http/https) is
//!   never allowed, except by the pattern `*`, which allows everything.

use std::net::Ipv6Addr;

/// One `allowed_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `"*"`: any origin, including `null` and malformed ones.
    Any,
    /// `"null"`: the opaque origin browsers send from sandboxed frames, `file:`
    /// pages and some redirects. Matches only the literal `null`.
    Null,
    Exact {
        scheme: String,
        host: String,
        port: u16,
    },
    /// `"https://*.example.com"`: any host with at least one label before
    /// `suffix`, never the bare `example.com`.
    Wildcard {
        scheme: String,
        /// Starts with '.', e.g. ".example.com".
        suffix: String,
        port: u16,
    },
}

/// A request's origin after normalisation.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: &'static str,
    host: String,
    port: u16,
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        if s == "*" {
            return Ok(OriginPattern::Any);
        }
        if s.eq_ignore_ascii_case("null") {
            return Ok(OriginPattern::Null);
        }
        let (scheme, host, port) = split_origin(s)?;
        if let Some(rest) = host.strip_prefix("*.") {
            if rest.contains('*') {
                return Err("a wildcard is only allowed as the whole first label, as in \"https://*.example.com\"".into());
            }
            check_dns_name(rest)?;
            return Ok(OriginPattern::Wildcard {
                scheme: scheme.to_owned(),
                suffix: format!(".{}", rest.to_ascii_lowercase()),
                port,
            });
        }
        if host.contains('*') {
            return Err("a wildcard is only allowed as the whole first label, as in \"https://*.example.com\"".into());
        }
        Ok(OriginPattern::Exact {
            scheme: scheme.to_owned(),
            host: normalise_host(host)?,
            port,
        })
    }

    fn matches(&self, origin: &Origin) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Null => false,
            OriginPattern::Exact { scheme, host, port } => {
                *scheme == origin.scheme && *host == origin.host && *port == origin.port
            }
            OriginPattern::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin.host.len() > suffix.len()
                    && origin.host.ends_with(suffix.as_str())
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
                Some(o) => patterns.iter().any(|p| p.matches(&o)),
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

/// `scheme://host[:port]` with nothing after it. Returns the lower-case
/// scheme, the host as written and the port with the scheme's default filled in.
fn split_origin(s: &str) -> Result<(&'static str, &str, u16), String> {
    let (scheme, rest) = s.split_once("://").ok_or_else(|| {
        "expected \"*\", \"null\" or scheme://host[:port], e.g. \"https://chat.example.com\""
            .to_owned()
    })?;
    let (scheme, default_port) = if scheme.eq_ignore_ascii_case("https") {
        ("https", 443)
    } else if scheme.eq_ignore_ascii_case("http") {
        ("http", 80)
    } else {
        return Err(format!(
            "unsupported scheme {scheme:?}; only http and https"
        ));
    };
    if let Some(i) = rest.find(['/', '?', '#']) {
        // Browsers never send a path, not even "/": "https://a.com/" is a
        // misconfiguration, not a spelling of "https://a.com".
        return Err(format!(
            "an origin has no path, query or trailing slash; found {:?}",
            &rest[i..]
        ));
    }
    if rest.contains('@') {
        return Err("an origin has no user info".into());
    }
    let (host, port) = split_host_port(rest)?;
    if host.is_empty() {
        return Err("empty host".into());
    }
    let port = match port {
        Some(p) => parse_port(p)?,
        None => default_port,
    };
    Ok((scheme, host, port))
}

/// Splits `host[:port]` / `[v6][:port]`; the port is returned unparsed.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if s.starts_with('[') {
        let end = s.find(']').ok_or("unclosed '[' in IPv6 address")?;
        let (host, after) = s.split_at(end + 1);
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("unexpected {after:?} after IPv6 address")),
            },
        };
    }
    match s.split_once(':') {
        None => Ok((s, None)),
        Some((_, port)) if port.contains(':') => {
            Err("an IPv6 address needs brackets, e.g. [::1]".into())
        }
        Some((host, port)) => Ok((host, Some(port))),
    }
}

/// Digits only (no sign, no spaces), 1..=65535.
pub(crate) fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {s:?}"));
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {s:?}: expected 1 to 65535")),
        Ok(p) => Ok(p),
    }
}

/// Lower-case DNS name or IPv4 literal, or a canonical bracketed IPv6 literal.
fn normalise_host(host: &str) -> Result<String, String> {
    if let Some(inner) = host.strip_prefix('[') {
        let addr: Ipv6Addr = inner
            .strip_suffix(']')
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("invalid IPv6 address {host:?}"))?;
        return Ok(format!("[{addr}]"));
    }
    check_dns_name(host)?;
    Ok(host.to_ascii_lowercase())
}

/// Letters, digits, '-' and '_' in non-empty dot-separated labels. Browsers
/// send IDNs as punycode, so anything else is not a host they would send.
pub(crate) fn check_dns_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else if name.is_empty() {
        Err("empty host".into())
    } else {
        Err(format!("invalid host name {name:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(scheme: &str, host: &str, port: u16) -> OriginPattern {
        OriginPattern::Exact {
            scheme: scheme.into(),
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parse_patterns() {
        let wildcard = |scheme: &str, suffix: &str, port| OriginPattern::Wildcard {
            scheme: scheme.into(),
            suffix: suffix.into(),
            port,
        };
        let ok = [
            ("*", OriginPattern::Any),
            ("null", OriginPattern::Null),
            ("NULL", OriginPattern::Null),
            (
                "https://a.example.com",
                exact("https", "a.example.com", 443),
            ),
            (
                "HTTPS://A.Example.COM",
                exact("https", "a.example.com", 443),
            ),
            (
                "https://a.example.com:443",
                exact("https", "a.example.com", 443),
            ),
            ("http://localhost:8080", exact("http", "localhost", 8080)),
            ("http://localhost", exact("http", "localhost", 80)),
            ("http://127.0.0.1:3000", exact("http", "127.0.0.1", 3000)),
            ("https://[::1]:8443", exact("https", "[::1]", 8443)),
            ("https://[0:0::1]", exact("https", "[::1]", 443)),
            (
                "https://*.example.com",
                wildcard("https", ".example.com", 443),
            ),
            (
                "http://*.Example.com:8080",
                wildcard("http", ".example.com", 8080),
            ),
        ];
        for (s, want) in ok {
            assert_eq!(OriginPattern::parse(s), Ok(want), "{s}");
        }
        let bad = [
            "",
            "example.com",
            "https://",
            "https://:443",
            "https://a.com/",
            "https://a.com/app",
            "https://a.com?x",
            "https://a.com#x",
            "ftp://a.com",
            "ws://a.com",
            "https://user@a.com",
            "https://user:pw@a.com",
            "https://a.com:",
            "https://a.com:0",
            "https://a.com:65536",
            "https://a.com:+80",
            "https://a.com:8o",
            "https://*",
            "https://*.",
            "https://*example.com",
            "https://a*.example.com",
            "https://a.*.example.com",
            "https://*.*.example.com",
            "https://example.*",
            "https://a..com",
            "https://a com",
            "https://::1",
            "https://[::1",
            "https://[nope]",
            "https://[::1]x",
            "*.example.com",
        ];
        for s in bad {
            assert!(OriginPattern::parse(s).is_err(), "{s:?} should be rejected");
        }
    }

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
