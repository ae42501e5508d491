//! Picking a route for a request: the first `[[route]]` whose host and path
//! prefix match wins (contract), on the normalized host and path that the
//! backend will be sent. Matching is pure; each route's backends, balancing
//! and health are its [`Pool`].

use std::borrow::Cow;
use std::sync::Arc;

use crate::config::{Config, Route};
use crate::pool::Pool;

/// The routes of one config snapshot, in file order.
#[derive(Debug)]
pub struct Router {
    routes: Vec<RouteEntry>,
}

#[derive(Debug)]
struct RouteEntry {
    route: Arc<Route>,
    index: usize,
    label: String,
    pool: Arc<Pool>,
}

/// A matched route: its position in the file (for logs and metrics) and its
/// resolved settings.
#[derive(Debug, Clone)]
pub struct Picked<'a> {
    pub index: usize,
    /// `host/path` as written in the config (`*` for any host): the metrics label.
    pub label: &'a str,
    pub route: &'a Arc<Route>,
    /// The route's backends, balanced and health-checked.
    pub pool: &'a Arc<Pool>,
}

impl Router {
    /// Every route's pool, for starting health checks.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.routes.iter().map(|e| &e.pool)
    }

    /// Every route with its metrics label, in file order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &Route)> {
        self.routes.iter().map(|e| (e.label.as_str(), &*e.route))
    }

    /// `tls[i]` is the backend TLS config of route `i`.
    pub fn build(config: &Config, tls: Vec<Arc<rustls::ClientConfig>>) -> Router {
        let routes = config
            .routes
            .iter()
            .zip(tls)
            .enumerate()
            .map(|(index, (route, tls))| RouteEntry {
                label: label(route),
                pool: Arc::new(Pool::new(route, tls, config.server.tcp_congestion.clone())),
                route: Arc::new(route.clone()),
                index,
            })
            .collect();
        Router { routes }
    }

    /// `host` is the request's host without port (any case); `path` the URI path.
    pub fn pick(&self, host: Option<&str>, path: &str) -> Option<Picked<'_>> {
        self.routes
            .iter()
            .find(|e| {
                let host_ok = match (&e.route.host, host) {
                    (None, _) => true,
                    (Some(m), Some(h)) => m.matches(h),
                    (Some(_), None) => false,
                };
                host_ok && path_matches(&e.route.path, path)
            })
            .map(|e| Picked {
                index: e.index,
                label: &e.label,
                route: &e.route,
                pool: &e.pool,
            })
    }
}

fn label(route: &Route) -> String {
    let host = match &route.host {
        None => "*".to_owned(),
        Some(crate::config::HostMatch::Exact(h)) => h.clone(),
        Some(crate::config::HostMatch::Suffix(s)) => format!("*{s}"),
    };
    format!("{host}{}", route.path)
}

/// Prefix match on whole segments would surprise operators used to nginx's
/// `location /ws`, which is a plain string prefix; sluice does the same.
fn path_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
}

/// Why a request path cannot be routed (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path climbs above /")]
    AboveRoot,
    #[error("%2F in a path")]
    EncodedSlash,
    #[error("%00 in a path")]
    EncodedNul,
    #[error("invalid percent-encoding in the path")]
    BadPercent,
}

/// The path routes match and backends receive (contract, "Routing sees what
/// the backend sees"): percent-encoded unreserved characters decoded, other
/// escapes upper-cased (RFC 3986 §6.2.2), dot-segments removed (§5.2.4).
/// Matching the raw path would let `/%61dmin` or `/x/../admin` reach
/// another route's policy while the backend serves `/admin`.
///
/// `%2F` is refused rather than decoded: a backend that decodes it would see
/// a different path than sluice matched, whichever way sluice chose. Paths
/// that are not absolute (`*` of `OPTIONS *`) are left alone.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let dotted = |p: &str| p.split('/').any(|seg| seg == "." || seg == "..");
    if !path.contains('%') && !dotted(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.into_iter().enumerate() {
        match seg {
            "." => {}
            ".." => {
                out.pop().ok_or(PathError::AboveRoot)?;
            }
            s => {
                out.push(s);
                continue;
            }
        }
        // `/a/.` and `/a/b/..` name a directory: keep the trailing slash.
        if i == last {
            out.push("");
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    normal.push('/');
    normal.push_str(&out.join("/"));
    Ok(Cow::Owned(normal))
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let hex = |b: u8| char::from(b).to_digit(16);
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadPercent);
        };
        let byte = (hi * 16 + lo) as u8;
        match byte {
            b'/' => return Err(PathError::EncodedSlash),
            0 => return Err(PathError::EncodedNul),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte))
            }
            _ => {
                out.push('%');
                out.push_str(&format!("{byte:02X}"));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// The host routes match and backends receive: lower case, without a
/// trailing dot (`chat.example.com.` is the same name), port kept.
pub fn normalize_host(authority: &str) -> Cow<'_, str> {
    let host = host_without_port(authority);
    let port = &authority[host.len()..];
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.len() == host.len() && !authority.bytes().any(|b| b.is_ascii_uppercase()) {
        return Cow::Borrowed(authority);
    }
    let mut out = trimmed.to_ascii_lowercase();
    out.push_str(port);
    Cow::Owned(out)
}

/// Splits the port off a Host / :authority value, handling `[v6]:port`.
pub fn host_without_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &authority[..end + 2],
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(i) => &authority[..i],
        None => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(toml: &str) -> Router {
        let config = Config::parse(toml, Path::new("test.toml")).unwrap();
        let tls = config
            .routes
            .iter()
            .map(|r| crate::tls::backend_client_config(&r.backend_tls, &config.path).unwrap())
            .collect();
        Router::build(&config, tls)
    }

    const TWO_ROUTES: &str = r#"
[server]
listen_plain = ["127.0.0.1:0"]
[[route]]
host = "chat.example.com"
path = "/ws"
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
[[route]]
host = "*.example.com"
backends = ["127.0.0.1:9003"]
[[route]]
path = "/api"
backends = ["127.0.0.1:9004"]
"#;

    #[test]
    fn first_match_wins_by_host_and_prefix() {
        let r = router(TWO_ROUTES);
        assert_eq!(
            r.pick(Some("chat.example.com"), "/ws/room").unwrap().index,
            0
        );
        assert_eq!(r.pick(Some("CHAT.example.com"), "/ws").unwrap().index, 0);
        assert_eq!(r.pick(Some("chat.example.com"), "/other").unwrap().index, 1);
        assert_eq!(r.pick(Some("a.b.example.com"), "/").unwrap().index, 1);
        assert_eq!(r.pick(Some("example.com"), "/api/x").unwrap().index, 2);
        assert!(r.pick(Some("example.com"), "/").is_none());
        assert!(r.pick(None, "/ws").is_none());
    }

    #[test]
    fn round_robin_over_backends() {
        let r = router(TWO_ROUTES);
        let p = r.pick(Some("chat.example.com"), "/ws").unwrap();
        let ports: Vec<u16> = (0..4)
            .map(|_| p.pool.pick(&[], None).unwrap().backend().port)
            .collect();
        assert_eq!(ports, [9001, 9002, 9001, 9002]);
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        let ok = [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/x/%2e%2E/y", "/y"),
            ("/a/%2e", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/a%7eb%3f", "/a~b%3F"),
            ("/a%20b", "/a%20b"),
            ("/a//b/../c", "/a//c"),
            ("*", "*"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_path(raw).unwrap(), want, "{raw}");
        }
        let bad = [
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2e%2e/admin", PathError::AboveRoot),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%00b", PathError::EncodedNul),
            ("/a%zz", PathError::BadPercent),
            ("/a%4", PathError::BadPercent),
        ];
        for (raw, want) in bad {
            assert_eq!(normalize_path(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn hosts_are_normalized_before_matching() {
        assert_eq!(normalize_host("Chat.Example.com."), "chat.example.com");
        assert_eq!(
            normalize_host("chat.example.com.:8443"),
            "chat.example.com:8443"
        );
        assert_eq!(normalize_host("chat.example.com"), "chat.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn strips_ports() {
        assert_eq!(host_without_port("a.com:8443"), "a.com");
        assert_eq!(host_without_port("a.com"), "a.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
