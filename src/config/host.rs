//! Host, port and DNS-name syntax, and the config values written with it:
//! a route's `host`, a backend address, an `allowed_origins` pattern. Pure
//! string rules; no lookups, no IO.
//!
//! Not owned here: deciding whether a request's `Origin` is allowed
//! (`policy::origin`, which parses the header with these same rules).
//!
//! Invariants of the values built here: hosts are lower-cased; an IPv6
//! literal is canonical (`[::1]` in a route host or an origin, bare `::1` in
//! a backend); a port is 1..=65535; a wildcard is only a whole first label.

use std::net::Ipv6Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// From `"*.example.com"`: holds ".example.com".
    Suffix(String),
}

impl HostMatch {
    /// `"chat.example.com"`, `"*.example.com"`, `"127.0.0.1"`, `"[::1]"`. A
    /// wildcard is only the whole first label; a port is refused because the
    /// router compares hosts without ports.
    pub fn parse(s: &str) -> Result<HostMatch, String> {
        if s.is_empty() {
            return Err("empty host; leave `host` out to match any host".into());
        }
        let lower = s.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(WILDCARD_RULE.into());
            }
            check_dns_name(rest)?;
            return Ok(HostMatch::Suffix(format!(".{rest}")));
        }
        if lower.contains('*') {
            return Err(WILDCARD_RULE.into());
        }
        if let Some(inner) = lower.strip_prefix('[') {
            return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
                Some(Ok(_)) => Ok(HostMatch::Exact(lower)),
                _ => Err(format!(
                    "invalid IPv6 address {s:?}; write it as \"[::1]\" without a port"
                )),
            };
        }
        if lower.contains(':') {
            return Err("a route host has no port (and an IPv6 address needs brackets)".into());
        }
        check_dns_name(&lower)?;
        Ok(HostMatch::Exact(lower))
    }

    /// `host` is the request host without its port, in any case. A suffix
    /// never matches the bare apex: `*.example.com` does not cover
    /// `example.com`, as in TLS certificates.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

const WILDCARD_RULE: &str =
    "a wildcard is only allowed as the whole first label, as in \"*.example.com\"";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `https://` and `h2://` backends: TLS toward the backend, SNI = `host`.
    pub tls: bool,
    /// `h2://` (TLS, ALPN h2) and `h2c://` (cleartext, prior knowledge):
    /// plain HTTP requests go to this backend over HTTP/2. WebSocket
    /// upgrades still use HTTP/1.1.
    pub h2: bool,
    /// Lower-cased; an IPv6 literal without brackets.
    pub host: String,
    pub port: u16,
}

impl Backend {
    /// `"127.0.0.1:9001"`, `"[::1]:9001"`, `"name:9001"` (cleartext, port
    /// required), `"http://host[:port]"` (default 80) or
    /// `"https://host[:port]"` (default 443). A backend has no path: requests
    /// keep their own, so a path here would be silently ignored.
    pub fn parse(s: &str) -> Result<Backend, String> {
        let (tls, h2, rest, default_port) = if let Some(rest) = strip_prefix_ci(s, "https://") {
            (true, false, rest, Some(443))
        } else if let Some(rest) = strip_prefix_ci(s, "http://") {
            (false, false, rest, Some(80))
        } else if let Some(rest) = strip_prefix_ci(s, "h2://") {
            (true, true, rest, Some(443))
        } else if let Some(rest) = strip_prefix_ci(s, "h2c://") {
            (false, true, rest, Some(80))
        } else if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "unsupported scheme {scheme:?}; use host:port, http://, https://, h2:// or h2c://"
            ));
        } else {
            (false, false, s, None)
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let url_root = path == "/" && default_port.is_some();
        if !path.is_empty() && !url_root {
            return Err(format!(
                "a backend has no path or query (requests keep their own); found {path:?}"
            ));
        }
        if authority.contains('@') {
            return Err("a backend has no user info".into());
        }
        let (host, port) = split_host_port(authority)?;
        let port = match (port, default_port) {
            (Some(p), _) => parse_port(p)?,
            (None, Some(p)) => p,
            (None, None) => {
                return Err("missing port; write host:port (e.g. \"127.0.0.1:9001\") or an http:// or https:// URL".into())
            }
        };
        let host = if let Some(inner) = host.strip_prefix('[') {
            let addr: Ipv6Addr = inner
                .strip_suffix(']')
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("invalid IPv6 address {host:?}"))?;
            addr.to_string()
        } else {
            check_dns_name(host)?;
            host.to_ascii_lowercase()
        };
        Ok(Backend {
            tls,
            h2,
            host,
            port,
        })
    }

    /// `host:port`, with brackets around an IPv6 literal: what goes into a
    /// URI authority or a TCP connect.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

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

impl OriginPattern {
    /// `"*"`, `"null"`, `"https://a.example.com[:port]"` or
    /// `"https://*.example.com[:port]"`.
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
}

/// `scheme://host[:port]` with nothing after it. Returns the lower-case
/// scheme, the host as written and the port with the scheme's default filled in.
pub(crate) fn split_origin(s: &str) -> Result<(&'static str, &str, u16), String> {
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
pub(crate) fn normalise_host(host: &str) -> Result<String, String> {
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

    #[test]
    fn backends() {
        let b = |tls, host: &str, port| {
            Ok(Backend {
                tls,
                h2: false,
                host: host.into(),
                port,
            })
        };
        let cases = [
            ("127.0.0.1:9001", b(false, "127.0.0.1", 9001)),
            ("[::1]:9001", b(false, "::1", 9001)),
            ("Echo.Internal:9001", b(false, "echo.internal", 9001)),
            ("http://h", b(false, "h", 80)),
            ("http://h/", b(false, "h", 80)),
            ("HTTP://h:8080", b(false, "h", 8080)),
            ("https://h", b(true, "h", 443)),
            ("https://h:8443/", b(true, "h", 8443)),
            ("https://[::1]", b(true, "::1", 443)),
        ];
        for (s, want) in cases {
            assert_eq!(Backend::parse(s), want, "{s}");
        }
        let bad = [
            "",
            "h",
            "127.0.0.1",
            "h:",
            "h:0",
            "h:65536",
            "h:x",
            ":9001",
            "h:9001/",
            "h:9001/x",
            "http://h/x",
            "https://h?x",
            "http://",
            "ws://h:1",
            "http://u@h",
            "::1:9001",
            "[::1]",
            "[::1:9001",
            "[x]:1",
            "h h:1",
        ];
        for s in bad {
            assert!(Backend::parse(s).is_err(), "{s:?} should be rejected");
        }
        assert_eq!(
            Backend::parse("[::1]:9001").unwrap().authority(),
            "[::1]:9001"
        );
        assert_eq!(Backend::parse("https://h").unwrap().authority(), "h:443");
    }

    #[test]
    fn host_matching() {
        let cases = [
            ("chat.example.com", "chat.example.com", true),
            ("chat.example.com", "CHAT.Example.COM", true),
            ("Chat.Example.com", "chat.example.com", true),
            ("chat.example.com", "xchat.example.com", false),
            ("chat.example.com", "chat.example.com.evil", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "A.EXAMPLE.COM", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", ".example.com", false),
            ("*.example.com", "evilexample.com", false),
            ("*.example.com", "example.com.evil.com", false),
            ("*.example.com", "ä.example.com", true),
            ("*.example.com", "", false),
            ("[::1]", "[::1]", true),
            ("127.0.0.1", "127.0.0.1", true),
        ];
        for (pattern, host, want) in cases {
            assert_eq!(
                HostMatch::parse(pattern).unwrap().matches(host),
                want,
                "{pattern} vs {host}"
            );
        }
        for bad in [
            "", "*", "*.", "**.a.com", "a.*.com", "*a.com", "a.com:80", "::1", "[nope]", "a..com",
            "a b",
        ] {
            assert!(HostMatch::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn origin_patterns() {
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

    fn exact(scheme: &str, host: &str, port: u16) -> OriginPattern {
        OriginPattern::Exact {
            scheme: scheme.into(),
            host: host.into(),
            port,
        }
    }
}
