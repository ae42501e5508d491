//! Picking a route for a request: the first `[[route]]` whose host and path
//! prefix match wins (contract). Pure apart from the round-robin cursor.

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
            .map(|_| p.pool.pick(&[]).unwrap().backend().port)
            .collect();
        assert_eq!(ports, [9001, 9002, 9001, 9002]);
    }

    #[test]
    fn strips_ports() {
        assert_eq!(host_without_port("a.com:8443"), "a.com");
        assert_eq!(host_without_port("a.com"), "a.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
