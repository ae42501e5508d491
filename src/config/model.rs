//! The validated, resolved config: plain values the rest of sluice reads.
//! Route overrides are already merged over `[websocket]` and `[limits]`, so
//! no later stage looks at those tables again.
//!
//! Not owned here: the file format (`raw`), turning it into these types
//! (`resolve`), or the syntax of one value (`values`, `host`: durations,
//! sizes, CIDRs, hosts, backends, origin patterns).
//!
//! Invariants of a `Config`: at least one listener and one route; TLS
//! listeners only with `[tls]`; every route has a backend; no size, rate,
//! burst, connection count or timeout is zero.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::host::{Backend, HostMatch, OriginPattern};
use super::ConfigError;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file as given on the command line; errors are reported against it.
    pub path: PathBuf,
    pub server: Server,
    pub tls: Option<Tls>,
    pub routes: Vec<Route>,
    /// `[cluster]`: per-IP limits shared through Redis; `None` = local only.
    pub cluster: Option<Cluster>,
}

/// `[cluster]`: the Redis that every sluice of one site shares its per-IP
/// limits through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// As written (`redis://`, `rediss://` or `unix://`); checked to parse.
    pub redis: String,
    /// A Redis call slower than this counts as an outage: local limits alone.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Server {
    /// TLS listeners; non-empty only when `Config::tls` is set.
    pub listen: Vec<SocketAddr>,
    pub listen_plain: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// May be zero: stop at once without waiting for in-flight work.
    pub shutdown_grace: Duration,
    /// A bare address is stored as /32 or /128.
    pub trusted_proxies: Vec<IpNet>,
    /// TCP congestion control for sluice's own sockets (client and backend
    /// side); `None` keeps the system default. Whether this process may use
    /// it is checked when a snapshot is built (it takes a socket), not here.
    pub tcp_congestion: Option<Arc<str>>,
    /// Where `tcp_congestion` was written: `Some` exactly when it is set, so
    /// the check at snapshot build names `FILE:LINE: server.tcp_congestion`.
    pub tcp_congestion_at: Option<Located<()>>,
    /// Listeners are bound with `SO_REUSEPORT`, so several sluice processes
    /// on one host can share a port and the kernel spreads connections.
    pub reuse_port: bool,
    /// An HTTP/1.1 connection between requests, or an h2 connection with no
    /// open stream, is closed after this long.
    pub keepalive_timeout: Duration,
    /// Client connections the process keeps open at once; when reached,
    /// accept pauses. 0 = half the open-file limit (see `socket::client_ceiling`).
    pub max_client_connections: u32,
    /// Client connections per client IP (IPv6: per /64); 0 = no cap.
    pub max_client_connections_per_ip: u32,
    /// Open tunnels in the process; 0 = no cap. Above it: 503.
    pub max_tunnels: u32,
    /// Peers whose connections must begin with a PROXY header (v1 or v2);
    /// its source address is then the client for every rule.
    pub proxy_protocol: Vec<IpNet>,
    /// The drain's Close frames (and those of `on_backend_removed =
    /// "close"`) go out spread over this window, at most 90 % of
    /// `shutdown_grace` (see [`Server::spread_window`]); zero = all at once.
    pub drain_spread: Duration,
}

impl Server {
    /// The window closes are spread over: `drain_spread`, bounded by 90 %
    /// of `shutdown_grace` so the last tunnels still have time for their
    /// close handshake before the grace ends.
    pub fn spread_window(&self) -> Duration {
        self.drain_spread.min(self.shutdown_grace.mul_f64(0.9))
    }
}

#[derive(Debug, Clone)]
pub struct Tls {
    /// Certificates from files, the default first: `[tls]`'s pair, then the
    /// `[[tls.certificate]]` entries in file order (resolved against the
    /// config file's directory when relative); each serves the DNS names in
    /// its SAN, chosen by SNI. Empty only when `acme` is set.
    pub files: Vec<CertificateFiles>,
    /// `[tls.acme]`: one certificate for `domains`, obtained and renewed
    /// over ACME.
    pub acme: Option<Acme>,
}

/// `[tls.acme]`, validated.
#[derive(Debug, Clone)]
pub struct Acme {
    /// Lower-case DNS names, no wildcard (that needs DNS-01); the order's
    /// identifiers and the certificate's SAN.
    pub domains: Vec<String>,
    pub email: Option<String>,
    /// The ACME directory URL (https).
    pub directory: String,
    /// PEM roots the directory's TLS is checked against besides the
    /// system's (a private ACME server).
    pub directory_ca: Option<Located<PathBuf>>,
    pub challenge: AcmeChallenge,
    /// HTTP-01 on its own listener rather than on `listen_plain`.
    pub http01_listen: Option<SocketAddr>,
    /// Account key and certificates.
    pub storage: PathBuf,
    /// `tls.acme.domains`, for errors about the names.
    pub domains_at: Located<()>,
}

impl Acme {
    /// Whether `other` asks for the same account, order and challenge, so a
    /// reload keeps the certificate and the task that renews it.
    pub fn same_as(&self, other: &Acme) -> bool {
        self.domains == other.domains
            && self.email == other.email
            && self.directory == other.directory
            && self.directory_ca.as_ref().map(|c| &c.value)
                == other.directory_ca.as_ref().map(|c| &c.value)
            && self.challenge == other.challenge
            && self.http01_listen == other.http01_listen
            && self.storage == other.storage
    }
}

/// How sluice proves control of its names to the ACME server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737, on the TLS listeners (port 443).
    TlsAlpn01,
    /// RFC 8555 §8.3, on the plain listeners or `http01_listen` (port 80).
    Http01,
}

/// One certificate chain and its key, as files.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: Located<PathBuf>,
    pub key: Located<PathBuf>,
}

/// A value plus where it was written, so later stages (certificate loading,
/// the congestion-control check) can report `FILE:LINE: KEY` like the parser does.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
    pub key: String,
}

impl<T> Located<T> {
    pub fn error(&self, file: &Path, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(file, Some(self.line), self.key.clone(), problem)
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Lower-cased; `None` matches any host, including a request without one.
    pub host: Option<HostMatch>,
    /// Plain string prefix of the request path; starts with '/'.
    pub path: String,
    /// Never empty.
    pub backends: Vec<Backend>,
    pub balance: Balance,
    /// Active health checks; `None` = only passive ejection on connect failures.
    pub health_check: Option<HealthCheck>,
    /// TLS toward `https://` backends.
    pub backend_tls: BackendTls,
    pub websocket: WebSocketPolicy,
    pub limits: Limits,
    /// Open tunnels on this route; 0 = no cap. Above it: 503.
    pub max_tunnels: u32,
    /// A PROXY header sent to the backend before anything else.
    pub send_proxy_protocol: Option<ProxyVersion>,
    /// What `balance = "hash"` hashes; `Some` exactly when balance is `Hash`.
    pub hash_key: Option<HashKey>,
    /// What a reload that removes one of this route's backends does to the
    /// tunnels open to it.
    pub on_backend_removed: OnBackendRemoved,
}

/// A PROXY protocol version (HAProxy's proxy-protocol.txt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text form: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary form.
    V2,
}

/// What a request's backend is chosen by under `balance = "hash"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client IP (as the limits see it).
    ClientIp,
    /// The first value of this request header (lower-cased name).
    Header(http::HeaderName),
    /// The value of this cookie.
    Cookie(String),
    /// The (decoded) value of this query parameter.
    Query(String),
}

/// `route.on_backend_removed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendRemoved {
    /// Open tunnels stay until they end by themselves.
    Keep,
    /// Close 1012 to the client and 1001 to the backend, spread over
    /// `server.drain_spread`.
    Close,
}

/// TLS settings toward a route's `https://` backends.
#[derive(Debug, Clone, Default)]
pub struct BackendTls {
    /// PEM CA bundle that replaces the system roots for verification.
    pub ca: Option<Located<PathBuf>>,
    /// Client certificate chain and key, both or neither (mTLS).
    pub cert: Option<Located<PathBuf>>,
    pub key: Option<Located<PathBuf>>,
}

/// How a route spreads new connections over its healthy backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// Fewest open tunnels plus in-flight requests.
    LeastConnections,
    /// Rendezvous hashing of `Route::hash_key` (see `crate::affinity`).
    Hash,
}

/// Active health checking of a route's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `GET path` must answer 2xx/3xx; `None` = a TCP connect is enough.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that mark a backend unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive successes that mark it healthy again.
    pub healthy_after: u32,
}

#[derive(Debug, Clone)]
pub struct WebSocketPolicy {
    /// One frame's payload. With permessage-deflate negotiated (and
    /// `strip_compression` off) this is the compressed size on the wire.
    pub max_frame_bytes: u64,
    pub max_message_bytes: u64,
    /// `None`: same-origin only.
    pub allowed_origins: Option<Vec<OriginPattern>>,
    pub allow_missing_origin: bool,
    /// Remove permessage-deflate from the client's offer so the size limits
    /// apply to the real payload.
    pub strip_compression: bool,
    /// A tunnel older than this (±10 % jitter) gets Close 1001 both ways;
    /// zero = no limit.
    pub max_lifetime: std::time::Duration,
    /// A side silent this long gets a Ping from sluice; zero = no pings.
    pub ping_interval: std::time::Duration,
    /// No frame back within this after sluice's Ping: that side is dead.
    pub ping_timeout: std::time::Duration,
}

impl Default for WebSocketPolicy {
    fn default() -> Self {
        WebSocketPolicy {
            max_frame_bytes: 1_048_576,
            max_message_bytes: 16_777_216,
            allowed_origins: None,
            allow_missing_origin: true,
            strip_compression: false,
            max_lifetime: std::time::Duration::ZERO,
            ping_interval: std::time::Duration::from_secs(30),
            ping_timeout: std::time::Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub handshakes_per_second: u32,
    pub handshake_burst: u32,
    pub max_connections_per_ip: u32,
    pub messages_per_second: u32,
    pub message_burst: u32,
    pub on_message_rate: OnMessageRate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshakes_per_second: 20,
            handshake_burst: 40,
            max_connections_per_ip: 1000,
            messages_per_second: 1000,
            message_burst: 2000,
            on_message_rate: OnMessageRate::Throttle,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMessageRate {
    /// Stop reading from the client until tokens return; nothing is dropped.
    Throttle,
    /// Close 1008 to the client.
    Close,
}
