//! Validation and resolution: the file as written ([`RawConfig`]) becomes a
//! [`Config`], or the first [`ConfigError`], naming the line of the
//! offending value (its `toml::Spanned`) and the key the validator is
//! checking. Route overrides are merged over `[websocket]` and `[limits]`
//! key by key, and those over the built-in defaults.
//!
//! No IO: checks that need the host (may this process use that congestion
//! control?) run when a snapshot is built; what they need to name the line
//! is carried in the model as [`Located`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::error::{self, ConfigError};
use super::host::{Backend, HostMatch, OriginPattern};
use super::model::{
    Acme, AcmeChallenge, BackendTls, Balance, CertificateFiles, Cluster, Config, HashKey,
    HealthCheck, Limits, Located, OnBackendRemoved, OnMessageRate, ProxyVersion, Route, Server,
    Tls, WebSocketPolicy,
};
use super::raw::{
    RawAcme, RawCluster, RawConfig, RawLimits, RawRoute, RawServer, RawTls, RawWebSocket,
    SpannedList,
};
use super::values::{parse_proxy, HumanDuration};

/// Let's Encrypt's production directory: `[tls.acme]`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Where ACME accounts and certificates live unless `storage` says.
pub const ACME_STORAGE: &str = "/var/lib/sluice/acme";

/// `raw`, parsed from `text`, as a [`Config`]; `file` names it in errors and
/// anchors relative paths.
pub(super) fn resolve(file: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    Source { file, text }.resolve(raw)
}

/// The text being parsed, for turning spans into lines.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn err(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError::new(
            self.file,
            Some(error::line_of(self.text, span.start)),
            key,
            problem,
        )
    }

    fn err_at<T>(
        &self,
        value: &Spanned<T>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> ConfigError {
        self.err(value.span(), key, problem)
    }

    fn resolve(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(&raw.server)?;
        let tls = raw.tls.as_ref().map(|t| self.tls(t, &server)).transpose()?;
        if let (Some(listen), None) = (&raw.server.listen, &tls) {
            if !listen.get_ref().is_empty() {
                return Err(self.err_at(
                    listen,
                    "server.listen",
                    "TLS listeners need a [tls] section with cert and key (use listen_plain for cleartext)",
                ));
            }
        }
        if server.listen.is_empty() && server.listen_plain.is_empty() {
            let line = [&raw.server.listen, &raw.server.listen_plain]
                .into_iter()
                .flatten()
                .map(|l| error::line_of(self.text, l.span().start))
                .next()
                .or_else(|| error::header_line(self.text, "server"));
            return Err(ConfigError::new(
                self.file,
                line,
                "server",
                "no listener: set listen (TLS, with [tls]) or listen_plain",
            ));
        }

        let websocket = self.websocket(&raw.websocket, &WebSocketPolicy::default(), "websocket")?;
        let limits = self.limits(&raw.limits, &Limits::default(), "limits")?;
        let routes = raw
            .route
            .iter()
            .enumerate()
            .map(|(i, r)| self.route(r, &format!("route[{i}]"), &websocket, &limits))
            .collect::<Result<Vec<_>, _>>()?;
        if routes.is_empty() {
            return Err(ConfigError::new(
                self.file,
                None,
                "route",
                "no [[route]]: at least one route with backends is required",
            ));
        }
        let cluster = raw.cluster.as_ref().map(|c| self.cluster(c)).transpose()?;
        Ok(Config {
            path: self.file.to_owned(),
            server,
            tls,
            routes,
            cluster,
        })
    }

    /// `[cluster]`: the URL must parse (scheme, host, port, database) so a
    /// typo is refused at load, not discovered as an outage at run time.
    fn cluster(&self, raw: &RawCluster) -> Result<Cluster, ConfigError> {
        let url = raw.redis.get_ref();
        redis::Client::open(url.as_str()).map_err(|e| {
            self.err_at(
                &raw.redis,
                "cluster.redis",
                format!(
                    "invalid Redis URL {url:?} ({e}); expected e.g. \"redis://127.0.0.1:6379/0\""
                ),
            )
        })?;
        let timeout = match &raw.timeout {
            None => Duration::from_millis(20),
            Some(t) if t.get_ref().0.is_zero() => {
                return Err(self.err_at(
                    t,
                    "cluster.timeout",
                    "must be longer than 0s: every Redis call would time out",
                ))
            }
            Some(t) => t.get_ref().0,
        };
        Ok(Cluster {
            redis: url.clone(),
            timeout,
        })
    }

    fn server(&self, raw: &RawServer) -> Result<Server, ConfigError> {
        // Binding the same address twice would only fail at bind time, far
        // from the line that caused it. Port 0 (tests) is never a clash.
        let mut seen: HashMap<SocketAddr, String> = HashMap::new();
        let mut addr = |value: &Spanned<String>, key: String| -> Result<SocketAddr, ConfigError> {
            let a: SocketAddr = value.get_ref().parse().map_err(|_| {
                self.err_at(
                    value,
                    key.clone(),
                    format!(
                        "expected IP:PORT such as \"127.0.0.1:8443\" or \"[::1]:8443\" (host names are not resolved), found {:?}",
                        value.get_ref()
                    ),
                )
            })?;
            if a.port() != 0 {
                if let Some(first) = seen.get(&a) {
                    return Err(self.err_at(value, key, format!("{a} is already used by {first}")));
                }
                seen.insert(a, key);
            }
            Ok(a)
        };
        let mut list =
            |raw: &Option<SpannedList>, name: &str| -> Result<Vec<SocketAddr>, ConfigError> {
                raw.iter()
                    .flat_map(|l| l.get_ref().iter())
                    .enumerate()
                    .map(|(i, v)| addr(v, format!("server.{name}[{i}]")))
                    .collect()
            };
        let listen = list(&raw.listen, "listen")?;
        let listen_plain = list(&raw.listen_plain, "listen_plain")?;
        let admin = raw
            .admin
            .as_ref()
            .map(|a| addr(a, "server.admin".into()))
            .transpose()?;

        let nonzero =
            |d: &Option<Spanned<HumanDuration>>, key: &str, default: Duration, why: &str| match d {
                None => Ok(default),
                Some(d) if d.get_ref().0.is_zero() => {
                    Err(self.err_at(d, key, format!("must be longer than 0s: {why}")))
                }
                Some(d) => Ok(d.get_ref().0),
            };
        let handshake_timeout = nonzero(
            &raw.handshake_timeout,
            "server.handshake_timeout",
            Duration::from_secs(10),
            "every handshake would time out",
        )?;
        let idle_timeout = nonzero(
            &raw.idle_timeout,
            "server.idle_timeout",
            Duration::from_secs(300),
            "every tunnel would be closed at once",
        )?;
        let keepalive_timeout = nonzero(
            &raw.keepalive_timeout,
            "server.keepalive_timeout",
            Duration::from_secs(60),
            "every connection would be closed after its first request",
        )?;
        let shutdown_grace = raw
            .shutdown_grace
            .as_ref()
            .map_or(Duration::from_secs(30), |d| d.get_ref().0);

        let trusted_proxies = self.peers(&raw.trusted_proxies, "server.trusted_proxies")?;
        let proxy_protocol = self.peers(&raw.proxy_protocol, "server.proxy_protocol")?;

        let tcp_congestion = raw
            .tcp_congestion
            .as_ref()
            .map(|cc| Arc::from(cc.get_ref().as_str()));
        let tcp_congestion_at = raw
            .tcp_congestion
            .as_ref()
            .map(|cc| self.place(cc, "server.tcp_congestion".to_owned()));

        Ok(Server {
            listen,
            listen_plain,
            admin,
            handshake_timeout,
            idle_timeout,
            shutdown_grace,
            trusted_proxies,
            tcp_congestion,
            tcp_congestion_at,
            reuse_port: raw.reuse_port.unwrap_or(false),
            keepalive_timeout,
            max_client_connections: raw.max_client_connections.unwrap_or(0),
            max_client_connections_per_ip: raw.max_client_connections_per_ip.unwrap_or(0),
            max_tunnels: raw.max_tunnels.unwrap_or(0),
            proxy_protocol,
            drain_spread: raw
                .drain_spread
                .as_ref()
                .map_or(Duration::from_secs(10), |d| d.get_ref().0),
        })
    }

    fn tls(&self, raw: &RawTls, server: &Server) -> Result<Tls, ConfigError> {
        let mut files = Vec::new();
        let missing = |key: &str| {
            ConfigError::new(
                self.file,
                error::header_line(self.text, "tls"),
                key,
                "missing required key (or give the certificates as [[tls.certificate]] or [tls.acme])",
            )
        };
        match (&raw.cert, &raw.key) {
            (Some(cert), Some(key)) => files.push(CertificateFiles {
                cert: self.locate(cert, "tls.cert".to_owned())?,
                key: self.locate(key, "tls.key".to_owned())?,
            }),
            (Some(_), None) => return Err(missing("tls.key")),
            (None, Some(_)) => return Err(missing("tls.cert")),
            (None, None) => {}
        }
        for (i, c) in raw.certificate.iter().enumerate() {
            files.push(CertificateFiles {
                cert: self.locate(&c.cert, format!("tls.certificate[{i}].cert"))?,
                key: self.locate(&c.key, format!("tls.certificate[{i}].key"))?,
            });
        }
        let acme = raw
            .acme
            .as_ref()
            .map(|a| self.acme(a, server))
            .transpose()?;
        if files.is_empty() && acme.is_none() {
            return Err(missing("tls.cert"));
        }
        Ok(Tls { files, acme })
    }

    fn acme(&self, raw: &RawAcme, server: &Server) -> Result<Acme, ConfigError> {
        let mut domains: Vec<String> = Vec::new();
        for (i, d) in raw.domains.get_ref().iter().enumerate() {
            let key = format!("tls.acme.domains[{i}]");
            let name = d.get_ref().trim_end_matches('.').to_ascii_lowercase();
            if name.starts_with("*.") {
                return Err(self.err_at(
                    d,
                    key,
                    "wildcard names need the DNS-01 challenge, which sluice does not do: list each name",
                ));
            }
            if name.parse::<std::net::IpAddr>().is_ok() {
                return Err(self.err_at(d, key, "an IP address, not a DNS name"));
            }
            super::host::check_dns_name(&name).map_err(|e| self.err_at(d, key.clone(), e))?;
            if domains.contains(&name) {
                return Err(self.err_at(d, key, format!("{name} is listed twice")));
            }
            domains.push(name);
        }
        if domains.is_empty() {
            return Err(self.err_at(&raw.domains, "tls.acme.domains", "must not be empty"));
        }
        let email = match &raw.email {
            None => None,
            Some(e) => {
                let v = e.get_ref().trim();
                let v = v.strip_prefix("mailto:").unwrap_or(v);
                if !v.contains('@') || v.contains(char::is_whitespace) {
                    return Err(self.err_at(
                        e,
                        "tls.acme.email",
                        format!("{v:?} is not an email address"),
                    ));
                }
                Some(v.to_owned())
            }
        };
        let directory = match &raw.directory {
            None => LETS_ENCRYPT.to_owned(),
            Some(d) => {
                let v = d.get_ref();
                let ok = v
                    .strip_prefix("https://")
                    .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
                if !ok {
                    return Err(self.err_at(
                        d,
                        "tls.acme.directory",
                        format!("{v:?}: the directory must be an https:// URL"),
                    ));
                }
                v.clone()
            }
        };
        let directory_ca = match &raw.directory_ca {
            Some(p) if !p.get_ref().is_empty() => {
                Some(self.locate(p, "tls.acme.directory_ca".to_owned())?)
            }
            _ => None,
        };
        let challenge = match raw.challenge.as_ref().map(|c| (c, c.get_ref().as_str())) {
            None | Some((_, "tls-alpn-01")) => AcmeChallenge::TlsAlpn01,
            Some((_, "http-01")) => AcmeChallenge::Http01,
            Some((c, other)) => {
                return Err(self.err_at(
                    c,
                    "tls.acme.challenge",
                    format!("unknown challenge {other:?}: expected \"tls-alpn-01\" or \"http-01\""),
                ))
            }
        };
        let http01_listen = match &raw.http01_listen {
            Some(l) if !l.get_ref().is_empty() => {
                let addr: SocketAddr = l.get_ref().parse().map_err(|_| {
                    self.err_at(
                        l,
                        "tls.acme.http01_listen",
                        format!("invalid address {:?}: expected IP:PORT", l.get_ref()),
                    )
                })?;
                if challenge != AcmeChallenge::Http01 {
                    return Err(self.err_at(
                        l,
                        "tls.acme.http01_listen",
                        "only used with challenge = \"http-01\"",
                    ));
                }
                if server.listen.contains(&addr) || server.listen_plain.contains(&addr) {
                    return Err(self.err_at(
                        l,
                        "tls.acme.http01_listen",
                        format!("{addr} is already a listener (leave http01_listen out to answer HTTP-01 on listen_plain)"),
                    ));
                }
                Some(addr)
            }
            _ => None,
        };
        let at = raw.challenge.as_ref().map_or_else(
            || ("tls.acme.domains", raw.domains.span()),
            |c| ("tls.acme.challenge", c.span()),
        );
        match challenge {
            AcmeChallenge::TlsAlpn01 if server.listen.is_empty() => {
                return Err(self.err(
                    at.1,
                    at.0,
                    "the tls-alpn-01 challenge is answered on the TLS listeners: set server.listen (port 443)",
                ))
            }
            AcmeChallenge::Http01 if server.listen_plain.is_empty() && http01_listen.is_none() => {
                return Err(self.err(
                    at.1,
                    at.0,
                    "the http-01 challenge needs a plain listener: set server.listen_plain (port 80) or tls.acme.http01_listen",
                ))
            }
            _ => {}
        }
        let storage = match &raw.storage {
            Some(s) => self.locate(s, "tls.acme.storage".to_owned())?.value,
            None => PathBuf::from(ACME_STORAGE),
        };
        Ok(Acme {
            domains,
            email,
            directory,
            directory_ca,
            challenge,
            http01_listen,
            storage,
            domains_at: self.place(&raw.domains, "tls.acme.domains".to_owned()),
        })
    }

    /// A list of peer addresses or CIDRs (`trusted_proxies`,
    /// `proxy_protocol`); a bare address is stored as /32 or /128.
    fn peers(
        &self,
        raw: &Option<Vec<Spanned<String>>>,
        key: &str,
    ) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        raw.iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| {
                parse_proxy(p.get_ref()).map_err(|why| self.err_at(p, format!("{key}[{i}]"), why))
            })
            .collect()
    }

    /// A file path from the config, resolved against the config's directory,
    /// with where it was written for later errors.
    fn locate(&self, v: &Spanned<String>, key: String) -> Result<Located<PathBuf>, ConfigError> {
        if v.get_ref().is_empty() {
            return Err(self.err_at(v, key, "empty path"));
        }
        let base = self.file.parent().unwrap_or(Path::new(""));
        let at = self.place(v, key);
        Ok(Located {
            value: base.join(v.get_ref()),
            line: at.line,
            key: at.key,
        })
    }

    /// Where `v` was written, for a check made after parsing.
    fn place<T>(&self, v: &Spanned<T>, key: String) -> Located<()> {
        Located {
            value: (),
            line: error::line_of(self.text, v.span().start),
            key,
        }
    }

    /// `base` is what an absent key inherits: built-in defaults for
    /// `[websocket]`, the resolved `[websocket]` for a route.
    fn websocket(
        &self,
        raw: &RawWebSocket,
        base: &WebSocketPolicy,
        prefix: &str,
    ) -> Result<WebSocketPolicy, ConfigError> {
        let allowed_origins = match &raw.allowed_origins {
            None => base.allowed_origins.clone(),
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, o)| {
                        OriginPattern::parse(o.get_ref()).map_err(|why| {
                            self.err_at(
                                o,
                                format!("{prefix}.allowed_origins[{i}]"),
                                format!("invalid origin {:?}: {why}", o.get_ref()),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(WebSocketPolicy {
            max_frame_bytes: raw.max_frame_bytes.map_or(base.max_frame_bytes, |b| b.0),
            max_message_bytes: raw
                .max_message_bytes
                .map_or(base.max_message_bytes, |b| b.0),
            allowed_origins,
            allow_missing_origin: raw
                .allow_missing_origin
                .unwrap_or(base.allow_missing_origin),
            strip_compression: raw.strip_compression.unwrap_or(base.strip_compression),
            max_lifetime: raw
                .max_lifetime
                .as_ref()
                .map_or(base.max_lifetime, |d| d.get_ref().0),
            ping_interval: raw
                .ping_interval
                .as_ref()
                .map_or(base.ping_interval, |d| d.get_ref().0),
            ping_timeout: match &raw.ping_timeout {
                None => base.ping_timeout,
                Some(d) if d.get_ref().0.is_zero() => {
                    return Err(self.err_at(
                        d,
                        format!("{prefix}.ping_timeout"),
                        "must be longer than 0s: every ping would find its peer dead (turn pings off with ping_interval = \"0s\")",
                    ))
                }
                Some(d) => d.get_ref().0,
            },
        })
    }

    fn limits(&self, raw: &RawLimits, base: &Limits, prefix: &str) -> Result<Limits, ConfigError> {
        let on_message_rate = match &raw.on_message_rate {
            None => base.on_message_rate,
            Some(v) => match v.get_ref().as_str() {
                "throttle" => OnMessageRate::Throttle,
                "close" => OnMessageRate::Close,
                other => {
                    return Err(self.err_at(
                        v,
                        format!("{prefix}.on_message_rate"),
                        format!("expected \"throttle\" or \"close\", found {other:?}"),
                    ))
                }
            },
        };
        Ok(Limits {
            handshakes_per_second: raw
                .handshakes_per_second
                .map_or(base.handshakes_per_second, |c| c.0),
            handshake_burst: raw.handshake_burst.map_or(base.handshake_burst, |c| c.0),
            max_connections_per_ip: raw
                .max_connections_per_ip
                .map_or(base.max_connections_per_ip, |c| c.0),
            messages_per_second: raw
                .messages_per_second
                .map_or(base.messages_per_second, |c| c.0),
            message_burst: raw.message_burst.map_or(base.message_burst, |c| c.0),
            on_message_rate,
        })
    }

    fn route(
        &self,
        raw: &RawRoute,
        prefix: &str,
        websocket: &WebSocketPolicy,
        limits: &Limits,
    ) -> Result<Route, ConfigError> {
        let host = raw
            .host
            .as_ref()
            .map(|h| {
                HostMatch::parse(h.get_ref()).map_err(|why| {
                    self.err_at(
                        h,
                        format!("{prefix}.host"),
                        format!("{why}; found {:?}", h.get_ref()),
                    )
                })
            })
            .transpose()?;
        let path = match &raw.path {
            None => "/".to_owned(),
            Some(p) => {
                let s = p.get_ref();
                if !s.starts_with('/') {
                    return Err(self.err_at(
                        p,
                        format!("{prefix}.path"),
                        format!("must start with '/', found {s:?}"),
                    ));
                }
                if s.contains(['?', '#']) || s.contains(char::is_whitespace) {
                    return Err(self.err_at(
                        p,
                        format!("{prefix}.path"),
                        format!("a path prefix has no query, fragment or whitespace; found {s:?}"),
                    ));
                }
                s.clone()
            }
        };
        if raw.backends.get_ref().is_empty() {
            return Err(self.err_at(
                &raw.backends,
                format!("{prefix}.backends"),
                "must list at least one backend",
            ));
        }
        let backends = raw
            .backends
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Backend::parse(b.get_ref()).map_err(|why| {
                    self.err_at(
                        b,
                        format!("{prefix}.backends[{i}]"),
                        format!("invalid backend {:?}: {why}", b.get_ref()),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let websocket = match &raw.websocket {
            Some(w) => self.websocket(w, websocket, &format!("{prefix}.websocket"))?,
            None => websocket.clone(),
        };
        let limits = match &raw.limits {
            Some(l) => self.limits(l, limits, &format!("{prefix}.limits"))?,
            None => limits.clone(),
        };
        let balance = match &raw.balance {
            None => Balance::RoundRobin,
            Some(b) => match b.get_ref().as_str() {
                "round_robin" => Balance::RoundRobin,
                "least_connections" => Balance::LeastConnections,
                "hash" => Balance::Hash,
                other => {
                    return Err(self.err_at(
                        b,
                        format!("{prefix}.balance"),
                        format!(
                            "expected \"round_robin\", \"least_connections\" or \"hash\", found {other:?}"
                        ),
                    ))
                }
            },
        };
        let hash_key = match (&raw.hash_key, &raw.balance) {
            (Some(k), _) if balance == Balance::Hash => Some(
                hash_key(k.get_ref())
                    .map_err(|why| self.err_at(k, format!("{prefix}.hash_key"), why))?,
            ),
            (Some(k), _) => {
                return Err(self.err_at(
                    k,
                    format!("{prefix}.hash_key"),
                    "hash_key needs balance = \"hash\" on the same route",
                ))
            }
            (None, Some(b)) if balance == Balance::Hash => {
                return Err(self.err_at(
                    b,
                    format!("{prefix}.balance"),
                    "balance = \"hash\" needs hash_key (\"client_ip\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\")",
                ))
            }
            (None, _) => None,
        };
        let send_proxy_protocol = match &raw.send_proxy_protocol {
            None => None,
            Some(v) => match v.get_ref().as_str() {
                "v1" => Some(ProxyVersion::V1),
                "v2" => Some(ProxyVersion::V2),
                other => {
                    return Err(self.err_at(
                        v,
                        format!("{prefix}.send_proxy_protocol"),
                        format!("expected \"v1\" or \"v2\", found {other:?}"),
                    ))
                }
            },
        };
        let health_check = match &raw.health_check {
            None => None,
            Some(h) => {
                let path = match &h.path {
                    None => None,
                    Some(p) if p.get_ref().starts_with('/') => Some(p.get_ref().clone()),
                    Some(p) => {
                        return Err(self.err_at(
                            p,
                            format!("{prefix}.health_check.path"),
                            format!("must start with '/', found {:?}", p.get_ref()),
                        ))
                    }
                };
                Some(HealthCheck {
                    path,
                    interval: h.interval.map_or(Duration::from_secs(5), |d| d.0),
                    timeout: h.timeout.map_or(Duration::from_secs(1), |d| d.0),
                    unhealthy_after: h.unhealthy_after.map_or(3, |c| c.0),
                    healthy_after: h.healthy_after.map_or(2, |c| c.0),
                })
            }
        };
        let locate_opt = |v: &Option<Spanned<String>>, key: &str| {
            v.as_ref()
                .map(|v| self.locate(v, format!("{prefix}.{key}")))
                .transpose()
        };
        let backend_tls = BackendTls {
            ca: locate_opt(&raw.backend_ca, "backend_ca")?,
            cert: locate_opt(&raw.backend_cert, "backend_cert")?,
            key: locate_opt(&raw.backend_key, "backend_key")?,
        };
        if let (Some(c), None) | (None, Some(c)) = (&raw.backend_cert, &raw.backend_key) {
            return Err(self.err_at(
                c,
                format!("{prefix}.backend_cert"),
                "backend_cert and backend_key go together (client certificate for mTLS)",
            ));
        }
        Ok(Route {
            host,
            path,
            backends,
            balance,
            health_check,
            backend_tls,
            websocket,
            limits,
            max_tunnels: raw.max_tunnels.unwrap_or(0),
            send_proxy_protocol,
            hash_key,
            on_backend_removed: match &raw.on_backend_removed {
                None => OnBackendRemoved::Keep,
                Some(v) => match v.get_ref().as_str() {
                    "keep" => OnBackendRemoved::Keep,
                    "close" => OnBackendRemoved::Close,
                    other => {
                        return Err(self.err_at(
                            v,
                            format!("{prefix}.on_backend_removed"),
                            format!("expected \"keep\" or \"close\", found {other:?}"),
                        ))
                    }
                },
            },
        })
    }
}

/// `hash_key`'s forms. Names are checked here so a typo cannot silently
/// hash nothing (every request would fall back to round robin).
fn hash_key(s: &str) -> Result<HashKey, String> {
    const FORMS: &str =
        "expected \"client_ip\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"";
    if s == "client_ip" {
        return Ok(HashKey::ClientIp);
    }
    let Some((kind, name)) = s.split_once(':') else {
        return Err(format!("{FORMS}, found {s:?}"));
    };
    if name.is_empty() {
        return Err(format!("{FORMS}: the name after {kind:?} is empty"));
    }
    let token = |what: &str| {
        if name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            Ok(())
        } else {
            Err(format!("{name:?} is not a valid {what} name"))
        }
    };
    match kind {
        "header" => http::HeaderName::from_bytes(name.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("{name:?} is not a valid header name")),
        "cookie" => token("cookie").map(|()| HashKey::Cookie(name.to_owned())),
        "query" if name.contains(['&', '#', ' ']) => {
            Err(format!("{name:?} is not a valid query parameter name"))
        }
        "query" => Ok(HashKey::Query(name.to_owned())),
        _ => Err(format!("{FORMS}, found {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "[server]\nlisten_plain = [\"127.0.0.1:8080\"]\n";
    const ROUTE: &str = "[[route]]\nbackends = [\"127.0.0.1:9001\"]\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    /// Each bad snippet → (line, key, a piece of the problem). SERVER and
    /// ROUTE are two lines each, which the line numbers below count on.
    #[test]
    fn bad_snippets_name_line_and_key() {
        let cases: Vec<(String, Option<usize>, &str, &str)> = vec![
            // Unknown keys, at every level.
            (format!("bogus = 1\n{SERVER}{ROUTE}"), Some(1), "bogus", "unknown key `bogus`"),
            (format!("{SERVER}listn = []\n{ROUTE}"), Some(3), "server.listn", "unknown key `listn`"),
            (format!("{SERVER}{ROUTE}[[route]]\nbackends = [\"a:1\"]\nbakends = []\n"), Some(7), "route[1].bakends", "unknown key"),
            (format!("{SERVER}{ROUTE}[route.limits]\nhandshake_per_second = 5\n"), Some(6), "route[0].limits.handshake_per_second", "unknown key"),
            (format!("{SERVER}{ROUTE}[route.websocket]\nstrip_compresion = true\n"), Some(6), "route[0].websocket.strip_compresion", "unknown key"),
            (format!("[websocket]\nmax_frame = 1\n{SERVER}{ROUTE}"), Some(2), "websocket.max_frame", "unknown key"),
            (format!("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nchain = \"x\"\n{SERVER}{ROUTE}"), Some(4), "tls.chain", "unknown key"),
            // Wrong types.
            (format!("{SERVER}{ROUTE}[route.websocket]\nmax_frame_bytes = \"1MB\"\n"), Some(6), "route[0].websocket.max_frame_bytes", "expected an integer (bytes), found string \"1MB\""),
            (format!("[server]\nlisten_plain = \"127.0.0.1:8080\"\n{ROUTE}"), Some(2), "server.listen_plain", "expected an array, found string"),
            (format!("{SERVER}[websocket]\nallow_missing_origin = \"yes\"\n{ROUTE}"), Some(4), "websocket.allow_missing_origin", "expected a boolean"),
            (format!("{SERVER}[[route]]\nbackends = [\"a:1\", 2]\n"), Some(4), "route[0].backends[1]", "expected a string, found integer `2`"),
            (format!("route = 3\n{SERVER}"), Some(1), "route", "expected an array"),
            (format!("{SERVER}{ROUTE}[limits]\nmessages_per_second = 1.5\n"), Some(6), "limits.messages_per_second", "expected an integer"),
            // Missing required keys.
            (format!("{SERVER}[[route]]\npath = \"/\"\n"), Some(3), "route[0].backends", "missing required key"),
            (format!("[tls]\ncert = \"c.pem\"\n{SERVER}{ROUTE}"), Some(1), "tls.key", "missing required key"),
            // TOML syntax.
            (format!("{SERVER}[[route]\nbackends = []\n"), Some(3), "route[0]", "invalid table header"),
            (format!("{SERVER}{ROUTE}path = /ws\n"), Some(5), "route[0].path", "invalid string"),
            (format!("{SERVER}listen_plain = []\n{ROUTE}"), Some(3), "server.listen_plain", "duplicate key"),
            ("[server]\nlisten_plain = [\"127.0.0.1:8080\",\n".to_owned(), Some(2), "server.listen_plain", "invalid array"),
            // Durations.
            (format!("{SERVER}idle_timeout = \"10 parsecs\"\n{ROUTE}"), Some(3), "server.idle_timeout", "unknown unit \" parsecs\""),
            (format!("{SERVER}idle_timeout = \"10\"\n{ROUTE}"), Some(3), "server.idle_timeout", "missing unit"),
            (format!("{SERVER}shutdown_grace = \"-1s\"\n{ROUTE}"), Some(3), "server.shutdown_grace", "negative"),
            (format!("{SERVER}handshake_timeout = \"0s\"\n{ROUTE}"), Some(3), "server.handshake_timeout", "longer than 0s"),
            (format!("{SERVER}idle_timeout = \"0ms\"\n{ROUTE}"), Some(3), "server.idle_timeout", "longer than 0s"),
            (format!("{SERVER}handshake_timeout = 10\n{ROUTE}"), Some(3), "server.handshake_timeout", "expected a duration string"),
            (format!("{SERVER}[websocket]\nping_timeout = \"0s\"\n{ROUTE}"), Some(4), "websocket.ping_timeout", "longer than 0s"),
            (format!("{SERVER}{ROUTE}[route.websocket]\nping_interval = \"often\"\n"), Some(6), "route[0].websocket.ping_interval", "duration"),
            (format!("{SERVER}drain_spread = \"-1s\"\n{ROUTE}"), Some(3), "server.drain_spread", "negative"),
            (format!("{SERVER}{ROUTE}on_backend_removed = \"drop\"\n"), Some(5), "route[0].on_backend_removed", "expected \"keep\" or \"close\", found \"drop\""),
            // Addresses.
            ("[server]\nlisten_plain = [\n  \"127.0.0.1:8080\",\n  \"localhost:8081\",\n]\n[[route]]\nbackends = [\"a:1\"]\n".to_owned(), Some(4), "server.listen_plain[1]", "expected IP:PORT"),
            (format!("{SERVER}admin = \"127.0.0.1\"\n{ROUTE}"), Some(3), "server.admin", "expected IP:PORT"),
            (format!("{SERVER}admin = \"127.0.0.1:8080\"\n{ROUTE}"), Some(3), "server.admin", "already used by server.listen_plain[0]"),
            (format!("{SERVER}trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n{ROUTE}"), Some(3), "server.trusted_proxies[1]", "host bits set"),
            (format!("{SERVER}trusted_proxies = [\"proxy.local\"]\n{ROUTE}"), Some(3), "server.trusted_proxies[0]", "expected an IP address or CIDR"),
            // Backends.
            (format!("{SERVER}[[route]]\nbackends = []\n"), Some(4), "route[0].backends", "at least one backend"),
            (format!("{SERVER}[[route]]\nbackends = [\"127.0.0.1\"]\n"), Some(4), "route[0].backends[0]", "missing port"),
            (format!("{SERVER}[[route]]\nbackends = [\"a:1\", \"http://b/app\"]\n"), Some(4), "route[0].backends[1]", "no path"),
            (format!("{SERVER}[[route]]\nbackends = [\"ws://b:1\"]\n"), Some(4), "route[0].backends[0]", "unsupported scheme"),
            (format!("{SERVER}[[route]]\nbackends = [\"::1:9001\"]\n"), Some(4), "route[0].backends[0]", "needs brackets"),
            // Routes.
            (format!("{SERVER}[[route]]\nhost = \"chat.*.example.com\"\nbackends = [\"a:1\"]\n"), Some(4), "route[0].host", "wildcard"),
            (format!("{SERVER}[[route]]\nhost = \"*example.com\"\nbackends = [\"a:1\"]\n"), Some(4), "route[0].host", "wildcard"),
            (format!("{SERVER}[[route]]\nhost = \"a.com:443\"\nbackends = [\"a:1\"]\n"), Some(4), "route[0].host", "no port"),
            (format!("{SERVER}{ROUTE}path = \"ws\"\n"), Some(5), "route[0].path", "must start with '/'"),
            // PROXY protocol and hash balancing.
            (format!("{SERVER}proxy_protocol = [\"10.0.0.0/8\", \"lb.local\"]\n{ROUTE}"), Some(3), "server.proxy_protocol[1]", "expected an IP address or CIDR"),
            (format!("{SERVER}proxy_protocol = [\"10.0.0.1/8\"]\n{ROUTE}"), Some(3), "server.proxy_protocol[0]", "host bits set"),
            (format!("{SERVER}{ROUTE}send_proxy_protocol = \"v3\"\n"), Some(5), "route[0].send_proxy_protocol", "expected \"v1\" or \"v2\""),
            (format!("{SERVER}{ROUTE}hash_key = \"client_ip\"\n"), Some(5), "route[0].hash_key", "needs balance = \"hash\""),
            (format!("{SERVER}{ROUTE}balance = \"least_connections\"\nhash_key = \"query:room\"\n"), Some(6), "route[0].hash_key", "needs balance = \"hash\""),
            (format!("{SERVER}{ROUTE}balance = \"hash\"\n"), Some(5), "route[0].balance", "needs hash_key"),
            (format!("{SERVER}{ROUTE}balance = \"consistent\"\n"), Some(5), "route[0].balance", "\"hash\""),
            (format!("{SERVER}{ROUTE}balance = \"hash\"\nhash_key = \"room\"\n"), Some(6), "route[0].hash_key", "expected \"client_ip\""),
            (format!("{SERVER}{ROUTE}balance = \"hash\"\nhash_key = \"query:\"\n"), Some(6), "route[0].hash_key", "is empty"),
            (format!("{SERVER}{ROUTE}balance = \"hash\"\nhash_key = \"header:X Room\"\n"), Some(6), "route[0].hash_key", "not a valid header name"),
            (format!("{SERVER}{ROUTE}balance = \"hash\"\nhash_key = \"cookie:a=b\"\n"), Some(6), "route[0].hash_key", "not a valid cookie name"),
            (format!("{SERVER}{ROUTE}balance = \"hash\"\nhash_key = \"path:x\"\n"), Some(6), "route[0].hash_key", "expected \"client_ip\""),
            (format!("{SERVER}{ROUTE}balance = \"hash\"\nhash_key = \"client_ip:x\"\n"), Some(6), "route[0].hash_key", "expected \"client_ip\""),
            // Zero where zero makes no sense.
            (format!("{SERVER}[websocket]\nmax_frame_bytes = 0\n{ROUTE}"), Some(4), "websocket.max_frame_bytes", "positive"),
            (format!("{SERVER}{ROUTE}[route.websocket]\nmax_message_bytes = -1\n"), Some(6), "route[0].websocket.max_message_bytes", "positive"),
            (format!("{SERVER}[limits]\nhandshakes_per_second = 0\n{ROUTE}"), Some(4), "limits.handshakes_per_second", "positive"),
            (format!("{SERVER}[limits]\nhandshake_burst = 0\n{ROUTE}"), Some(4), "limits.handshake_burst", "positive"),
            (format!("{SERVER}{ROUTE}[route.limits]\nmax_connections_per_ip = 0\n"), Some(6), "route[0].limits.max_connections_per_ip", "positive"),
            (format!("{SERVER}{ROUTE}[route.limits]\nmessage_burst = 4294967296\n"), Some(6), "route[0].limits.message_burst", "no larger than"),
            // Origins and rate policy.
            (format!("{SERVER}{ROUTE}[route.websocket]\nallowed_origins = [\"https://a.com/\"]\n"), Some(6), "route[0].websocket.allowed_origins[0]", "trailing slash"),
            (format!("{SERVER}[websocket]\nallowed_origins = [\"*\", \"https://a*.com\"]\n{ROUTE}"), Some(4), "websocket.allowed_origins[1]", "wildcard"),
            (format!("{SERVER}[limits]\non_message_rate = \"drop\"\n{ROUTE}"), Some(4), "limits.on_message_rate", "\"throttle\" or \"close\""),
            // Whole-file rules.
            (format!("[server]\nlisten = [\"127.0.0.1:8443\"]\n{ROUTE}"), Some(2), "server.listen", "need a [tls] section"),
            (format!("[server]\nadmin = \"127.0.0.1:9901\"\n{ROUTE}"), Some(1), "server", "no listener"),
            (format!("# nothing\n[server]\nlisten = []\nlisten_plain = []\n{ROUTE}"), Some(3), "server", "no listener"),
            (ROUTE.to_owned(), None, "server", "no listener"),
            (SERVER.to_owned(), None, "route", "no [[route]]"),
            (format!("[tls]\ncert = \"\"\nkey = \"k.pem\"\n{SERVER}{ROUTE}"), Some(2), "tls.cert", "empty path"),
        ];
        assert!(cases.len() >= 20);
        let mut wrong = Vec::new();
        for (text, line, key, problem) in &cases {
            match parse(text) {
                Ok(_) => wrong.push(format!("{text}\n=> accepted")),
                Err(err) => {
                    if (err.line, err.key.as_str()) != (*line, *key)
                        || !err.problem.contains(problem)
                        || err.to_string().contains('\n')
                    {
                        wrong.push(format!("{text}\n=> {err}\nwanted line {line:?}, key {key}, problem with {problem:?}"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    }

    /// `[tls.acme]`: each bad snippet names its line and key; a good one
    /// resolves with the documented defaults.
    #[test]
    fn acme_section() {
        // Two lines each, like SERVER and ROUTE.
        const TLS_SERVER: &str = "[server]\nlisten = [\"127.0.0.1:8443\"]\n";
        let acme = |body: &str| format!("{TLS_SERVER}{ROUTE}[tls.acme]\n{body}");
        let cases: Vec<(String, usize, &str, &str)> = vec![
            (acme("domains = []\n"), 6, "tls.acme.domains", "must not be empty"),
            (acme("domains = [\"*.example.com\"]\n"), 6, "tls.acme.domains[0]", "DNS-01"),
            (acme("domains = [\"a.example.com\", \"A.example.com\"]\n"), 6, "tls.acme.domains[1]", "listed twice"),
            (acme("domains = [\"10.0.0.1\"]\n"), 6, "tls.acme.domains[0]", "IP address"),
            (acme("domains = [\"a b\"]\n"), 6, "tls.acme.domains[0]", "invalid host name"),
            (acme("domains = [\"a.example.com\"]\nemail = \"ops\"\n"), 7, "tls.acme.email", "not an email address"),
            (acme("domains = [\"a.example.com\"]\ndirectory = \"http://acme.example/dir\"\n"), 7, "tls.acme.directory", "https://"),
            (acme("domains = [\"a.example.com\"]\nchallenge = \"dns-01\"\n"), 7, "tls.acme.challenge", "unknown challenge"),
            (acme("domains = [\"a.example.com\"]\nhttp01_listen = \"127.0.0.1:80\"\n"), 7, "tls.acme.http01_listen", "only used with challenge = \"http-01\""),
            (acme("domains = [\"a.example.com\"]\nchallenge = \"http-01\"\nhttp01_listen = \"nowhere\"\n"), 8, "tls.acme.http01_listen", "expected IP:PORT"),
            (acme("domains = [\"a.example.com\"]\nchallenge = \"http-01\"\n"), 7, "tls.acme.challenge", "needs a plain listener"),
            (acme("domains = [\"a.example.com\"]\nstorage = \"\"\n"), 7, "tls.acme.storage", "empty path"),
            (acme("domain = [\"a.example.com\"]\n"), 6, "tls.acme.domain", "unknown key"),
            (format!("{SERVER}{ROUTE}[tls.acme]\ndomains = [\"a.example.com\"]\n"), 6, "tls.acme.domains", "set server.listen"),
        ];
        let mut wrong = Vec::new();
        for (text, line, key, problem) in &cases {
            match parse(text) {
                Ok(_) => wrong.push(format!("{text}\n=> accepted")),
                Err(err) => {
                    if (err.line, err.key.as_str()) != (Some(*line), *key)
                        || !err.problem.contains(problem)
                    {
                        wrong.push(format!("{text}\n=> {err}\nwanted line {line}, key {key}, problem with {problem:?}"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));

        let c = parse(&acme("domains = [\"Chat.Example.com.\"]\n")).unwrap();
        let tls = c.tls.unwrap();
        assert!(
            tls.files.is_empty(),
            "no certificate file is needed with ACME"
        );
        let a = tls.acme.unwrap();
        assert_eq!(a.domains, ["chat.example.com"]);
        assert_eq!(a.directory, LETS_ENCRYPT);
        assert_eq!(a.challenge, AcmeChallenge::TlsAlpn01);
        assert_eq!(a.storage, Path::new(ACME_STORAGE));
        let c = Config::parse(
            &format!("{SERVER}{ROUTE}[tls.acme]\ndomains = [\"a.example.com\"]\nchallenge = \"http-01\"\nemail = \"mailto:ops@example.com\"\nstorage = \"acme\"\n"),
            Path::new("/etc/sluice/sluice.toml"),
        )
        .unwrap();
        let a = c.tls.unwrap().acme.unwrap();
        assert_eq!(a.email.as_deref(), Some("ops@example.com"));
        assert_eq!(a.storage, Path::new("/etc/sluice/acme"));
    }

    #[test]
    fn defaults() {
        let c = parse(&format!("{SERVER}{ROUTE}")).unwrap();
        assert_eq!(c.path, Path::new("t.toml"));
        let s = &c.server;
        assert!(s.listen.is_empty());
        assert_eq!(
            s.listen_plain,
            ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(s.admin, None);
        assert_eq!(s.handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.idle_timeout, Duration::from_secs(300));
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert!(s.trusted_proxies.is_empty());
        assert!(c.tls.is_none());
        let r = &c.routes[0];
        assert_eq!((r.host.as_ref(), r.path.as_str()), (None, "/"));
        assert_eq!(
            r.backends,
            [Backend {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9001,
                h2: false
            }]
        );
        let w = &r.websocket;
        assert_eq!(
            (w.max_frame_bytes, w.max_message_bytes),
            (1_048_576, 16_777_216)
        );
        assert_eq!(w.allowed_origins, None);
        assert!(w.allow_missing_origin && !w.strip_compression);
        let l = &r.limits;
        assert_eq!(
            (
                l.handshakes_per_second,
                l.handshake_burst,
                l.max_connections_per_ip,
                l.messages_per_second,
                l.message_burst
            ),
            (20, 40, 1000, 1000, 2000)
        );
        assert_eq!(l.on_message_rate, OnMessageRate::Throttle);
    }

    #[test]
    fn route_overrides_merge_key_by_key() {
        let text = r#"
[server]
listen = ["127.0.0.1:8443", "[::1]:8443"]
listen_plain = ["127.0.0.1:0", "127.0.0.1:0"]
admin = "127.0.0.1:9901"
handshake_timeout = "250ms"
idle_timeout = "5m"
shutdown_grace = "0s"
trusted_proxies = ["10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8"]

[tls]
cert = "certs/example.pem"
key = "/abs/example-key.pem"

[websocket]
max_frame_bytes = 1000
allowed_origins = ["*"]
allow_missing_origin = false

[limits]
handshakes_per_second = 7
on_message_rate = "close"

[[route]]
host = "Chat.Example.com"
path = "/ws"
backends = ["127.0.0.1:9001", "https://api.example.com", "http://[::1]:8080/"]
[route.websocket]
max_message_bytes = 5000
allowed_origins = ["https://chat.example.com", "null"]
strip_compression = true
[route.limits]
handshakes_per_second = 5
message_burst = 3

[[route]]
host = "*.example.com"
backends = ["name:1"]
"#;
        let c = Config::parse(text, Path::new("/etc/sluice/sluice.toml")).unwrap();
        let s = &c.server;
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.listen_plain.len(), 2, "port 0 may repeat");
        assert_eq!(s.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(s.handshake_timeout, Duration::from_millis(250));
        assert_eq!(s.idle_timeout, Duration::from_secs(300));
        assert_eq!(s.shutdown_grace, Duration::ZERO);
        let nets: Vec<String> = s.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(
            nets,
            ["10.0.0.0/8", "192.168.1.7/32", "::1/128", "fd00::/8"]
        );

        let tls = c.tls.as_ref().unwrap();
        assert_eq!(
            tls.files[0].cert.value,
            Path::new("/etc/sluice/certs/example.pem")
        );
        assert_eq!(
            (tls.files[0].cert.line, tls.files[0].cert.key.as_str()),
            (12, "tls.cert")
        );
        assert_eq!(tls.files[0].key.value, Path::new("/abs/example-key.pem"));
        assert_eq!(
            tls.files[0].key.error(&c.path, "no key found").to_string(),
            "/etc/sluice/sluice.toml:13: tls.key: no key found"
        );

        let [chat, wild] = &c.routes[..] else {
            panic!("two routes")
        };
        assert_eq!(chat.host, Some(HostMatch::Exact("chat.example.com".into())));
        assert_eq!(chat.path, "/ws");
        assert_eq!(
            chat.backends,
            [
                Backend {
                    tls: false,
                    host: "127.0.0.1".into(),
                    port: 9001,
                    h2: false
                },
                Backend {
                    tls: true,
                    host: "api.example.com".into(),
                    port: 443,
                    h2: false
                },
                Backend {
                    tls: false,
                    host: "::1".into(),
                    port: 8080,
                    h2: false
                },
            ]
        );
        // Overridden in the route, inherited from [websocket], built-in default.
        let w = &chat.websocket;
        assert_eq!((w.max_message_bytes, w.max_frame_bytes), (5000, 1000));
        assert_eq!(
            w.allowed_origins,
            Some(vec![
                OriginPattern::Exact {
                    scheme: "https".into(),
                    host: "chat.example.com".into(),
                    port: 443
                },
                OriginPattern::Null,
            ])
        );
        assert!(w.strip_compression && !w.allow_missing_origin);
        let l = &chat.limits;
        assert_eq!(
            (l.handshakes_per_second, l.message_burst, l.handshake_burst),
            (5, 3, 40)
        );
        assert_eq!(l.on_message_rate, OnMessageRate::Close);

        assert_eq!(wild.host, Some(HostMatch::Suffix(".example.com".into())));
        let w = &wild.websocket;
        assert_eq!((w.max_frame_bytes, w.max_message_bytes), (1000, 16_777_216));
        assert_eq!(w.allowed_origins, Some(vec![OriginPattern::Any]));
        assert!(!w.allow_missing_origin && !w.strip_compression);
        assert_eq!(
            (wild.limits.handshakes_per_second, wild.limits.message_burst),
            (7, 2000)
        );
        assert_eq!(wild.limits.on_message_rate, OnMessageRate::Close);
    }

    #[test]
    fn proxy_protocol_and_hash_keys() {
        let c = parse(&format!(
            "{SERVER}proxy_protocol = [\"10.0.0.0/8\", \"::1\"]\n{ROUTE}send_proxy_protocol = \"v2\"\n\
             balance = \"hash\"\nhash_key = \"header:X-Room\"\n\
             [[route]]\npath = \"/a\"\nbackends = [\"a:1\"]\nbalance = \"hash\"\nhash_key = \"cookie:sid\"\n\
             [[route]]\npath = \"/b\"\nbackends = [\"a:1\"]\nbalance = \"hash\"\nhash_key = \"query:room\"\n\
             [[route]]\npath = \"/c\"\nbackends = [\"a:1\"]\nbalance = \"hash\"\nhash_key = \"client_ip\"\nsend_proxy_protocol = \"v1\"\n"
        ))
        .unwrap();
        let nets: Vec<String> = c
            .server
            .proxy_protocol
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "::1/128"]);
        let keys: Vec<_> = c
            .routes
            .iter()
            .map(|r| (r.balance, r.hash_key.clone(), r.send_proxy_protocol))
            .collect();
        assert_eq!(
            keys,
            [
                (
                    Balance::Hash,
                    Some(HashKey::Header(http::HeaderName::from_static("x-room"))),
                    Some(ProxyVersion::V2)
                ),
                (Balance::Hash, Some(HashKey::Cookie("sid".into())), None),
                (Balance::Hash, Some(HashKey::Query("room".into())), None),
                (
                    Balance::Hash,
                    Some(HashKey::ClientIp),
                    Some(ProxyVersion::V1)
                ),
            ]
        );
        let d = parse(&format!("{SERVER}{ROUTE}")).unwrap();
        assert!(d.server.proxy_protocol.is_empty());
        assert_eq!(
            (
                d.routes[0].balance,
                d.routes[0].hash_key.clone(),
                d.routes[0].send_proxy_protocol
            ),
            (Balance::RoundRobin, None, None)
        );
    }

    #[test]
    fn relative_cert_paths_follow_the_config_file() {
        let text = format!("[tls]\ncert = \"c.pem\"\nkey = \"../k.pem\"\n{SERVER}{ROUTE}");
        let cases = [
            ("sluice.toml", "c.pem", "../k.pem"),
            ("config/sluice.toml", "config/c.pem", "config/../k.pem"),
            ("/etc/sluice.toml", "/etc/c.pem", "/etc/../k.pem"),
        ];
        for (file, cert, key) in cases {
            let tls = Config::parse(&text, Path::new(file)).unwrap().tls.unwrap();
            assert_eq!(
                (
                    tls.files[0].cert.value.as_path(),
                    tls.files[0].key.value.as_path()
                ),
                (Path::new(cert), Path::new(key)),
                "{file}"
            );
        }
    }

    /// The example tells operators to uncomment `listen` and `[tls]`; doing
    /// exactly that must give a valid file.
    #[test]
    fn example_config_with_tls_uncommented() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.toml"));
        let text = std::fs::read_to_string(path).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                for prefix in [
                    "# listen = ",
                    "# [tls]",
                    "# [[tls.certificate]]",
                    "# cert = ",
                    "# key = ",
                ] {
                    if l.starts_with(prefix) {
                        return format!("{}\n", &l[2..]);
                    }
                }
                // Indented, so the deploy recipe's `s|^# cert = ...|`
                // leaves the example certificate alone.
                for prefix in ["#   cert = ", "#   key = "] {
                    if l.starts_with(prefix) {
                        return format!("{}\n", &l[4..]);
                    }
                }
                format!("{l}\n")
            })
            .collect();
        let c = Config::parse(&text, path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.server.listen,
            ["127.0.0.1:8443".parse::<SocketAddr>().unwrap()]
        );
        let tls = c.tls.unwrap();
        assert!(
            tls.files[0].cert.value.ends_with("config/../certs/dev.pem"),
            "{:?}",
            tls.files[0].cert.value
        );
        assert!(
            tls.files[0]
                .key
                .value
                .ends_with("config/../certs/dev-key.pem"),
            "{:?}",
            tls.files[0].key.value
        );
        let more: Vec<_> = tls.files[1..].iter().map(|c| (&c.cert, &c.key)).collect();
        assert_eq!(more.len(), 1);
        assert!(more[0].0.value.ends_with("config/../certs/chat.pem"));
        assert_eq!(more[0].0.key, "tls.certificate[0].cert");
        assert!(more[0].1.value.ends_with("config/../certs/chat-key.pem"));
    }

    /// `[tls]` may hold no pair once `[[tls.certificate]]` exists: the first
    /// one becomes the default; with neither, `tls.cert` is missing.
    #[test]
    fn the_first_certificate_is_the_default_when_tls_has_no_pair() {
        let text = format!(
            "{SERVER}{ROUTE}[[tls.certificate]]\ncert = \"a.pem\"\nkey = \"a-key.pem\"\n\
             [[tls.certificate]]\ncert = \"b.pem\"\nkey = \"b-key.pem\"\n"
        );
        let tls = Config::parse(&text, Path::new("/e/s.toml"))
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls.files[0].cert.value, Path::new("/e/a.pem"));
        assert_eq!(tls.files[0].cert.key, "tls.certificate[0].cert");
        assert_eq!(tls.files.len(), 2);
        assert_eq!(tls.files[1].key.key, "tls.certificate[1].key");
        let err =
            Config::parse(&format!("[tls]\n{SERVER}{ROUTE}"), Path::new("s.toml")).unwrap_err();
        assert_eq!((err.line, err.key.as_str()), (Some(1), "tls.cert"));
    }

    /// Pings, the drain spread and `on_backend_removed`: defaults, `[websocket]`
    /// over them, a route over `[websocket]`, and the spread bounded by the grace.
    #[test]
    fn tunnel_ending_keys_resolve_like_the_other_websocket_keys() {
        let c = parse(&format!("{SERVER}{ROUTE}")).unwrap();
        let ws = &c.routes[0].websocket;
        assert_eq!(
            (ws.ping_interval, ws.ping_timeout),
            (Duration::from_secs(30), Duration::from_secs(15))
        );
        assert_eq!(c.server.drain_spread, Duration::from_secs(10));
        assert_eq!(c.server.spread_window(), Duration::from_secs(10));
        assert_eq!(c.routes[0].on_backend_removed, OnBackendRemoved::Keep);
        let c = parse(&format!(
            "{SERVER}drain_spread = \"1m\"\nshutdown_grace = \"20s\"\n\
             [websocket]\nping_interval = \"0s\"\nping_timeout = \"5s\"\n\
             {ROUTE}on_backend_removed = \"close\"\n{ROUTE}[route.websocket]\nping_interval = \"10s\"\n"
        ))
        .unwrap();
        assert_eq!(c.server.spread_window(), Duration::from_secs(18));
        let (a, b) = (&c.routes[0], &c.routes[1]);
        assert_eq!(
            (a.websocket.ping_interval, a.websocket.ping_timeout),
            (Duration::ZERO, Duration::from_secs(5))
        );
        assert_eq!(
            (b.websocket.ping_interval, b.websocket.ping_timeout),
            (Duration::from_secs(10), Duration::from_secs(5))
        );
        assert_eq!(a.on_backend_removed, OnBackendRemoved::Close);
        assert_eq!(b.on_backend_removed, OnBackendRemoved::Keep);
    }

    #[test]
    fn example_config_loads() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.toml"));
        let c = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.tls.is_none(),
            "the example must not need a committed private key"
        );
        assert_eq!(
            c.server.listen_plain,
            ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.server.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(c.routes.len(), 2);
        assert_eq!(
            c.routes[0].host,
            Some(HostMatch::Exact("chat.example.com".into()))
        );
        assert_eq!(c.routes[0].path, "/ws");
        assert_eq!(c.routes[1].path, "/");
    }

    /// `[cluster]`: a URL that cannot be a Redis address, an unknown key or
    /// a zero timeout is refused at its line; the timeout defaults to 20ms.
    #[test]
    fn cluster_is_checked_at_load() {
        let c = parse(&format!(
            "{SERVER}{ROUTE}[cluster]\nredis = \"redis://10.0.0.5:6379/2\"\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.redis, "redis://10.0.0.5:6379/2");
        assert_eq!(c.timeout, Duration::from_millis(20));
        assert!(parse(&format!("{SERVER}{ROUTE}"))
            .unwrap()
            .cluster
            .is_none());
        let t = parse(&format!(
            "{SERVER}{ROUTE}[cluster]\nredis = \"redis://r:6379\"\ntimeout = \"5ms\"\n"
        ))
        .unwrap();
        assert_eq!(t.cluster.unwrap().timeout, Duration::from_millis(5));
        let cases = [
            (
                "redis = \"http://10.0.0.5:6379\"\n",
                6,
                "cluster.redis",
                "invalid Redis URL",
            ),
            (
                "redis = \"redis://10.0.0.5:port\"\n",
                6,
                "cluster.redis",
                "invalid Redis URL",
            ),
            (
                "redis = \"10.0.0.5:6379\"\n",
                6,
                "cluster.redis",
                "invalid Redis URL",
            ),
            (
                "redis = \"redis://r\"\ntimeout = \"0ms\"\n",
                7,
                "cluster.timeout",
                "longer than 0s",
            ),
            (
                "redis = \"redis://r\"\ntimeout = 20\n",
                7,
                "cluster.timeout",
                "expected a duration",
            ),
            (
                "redis = \"redis://r\"\nttl = \"5s\"\n",
                7,
                "cluster.ttl",
                "unknown key",
            ),
            ("timeout = \"5ms\"\n", 5, "cluster.redis", "missing"),
        ];
        for (body, line, key, problem) in cases {
            let err = parse(&format!("{SERVER}{ROUTE}[cluster]\n{body}")).unwrap_err();
            assert_eq!(
                (err.line, err.key.as_str()),
                (Some(line), key),
                "{body}: {err}"
            );
            assert!(err.to_string().contains(problem), "{body}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("t.toml:{line}: {key}: ")),
                "{err}"
            );
        }
    }
}
