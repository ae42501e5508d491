//! Prometheus metrics: one registry per process; counters are named
//! `sluice_<noun>_total`, gauges and histograms `sluice_<noun>[_<unit>]`.
//! Counters are cheap atomics. A tunnel's frame and byte counts are added
//! from the relay at most once a second and when it closes, so the hot loop
//! never touches a shared cache line.
//!
//! Label values come from enums ([`HandshakeOutcome`], [`Rejection`],
//! [`CloseReason`]), so the values a family can carry are listed once, on
//! the enum, and a use site cannot spell a new one.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabel {
    pub route: String,
    pub outcome: HandshakeOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabel {
    pub route: String,
    /// `client_to_backend` or `backend_to_client`; for Pings, `to_client`
    /// or `to_backend`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    /// The close code sluice sent.
    pub code: String,
    /// `to_client` or `to_backend`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndingLabel {
    pub route: String,
    /// closed, violation, idle, write_stalled, drain, lifetime, vanished,
    /// peer_dead, backend_removed.
    pub ending: &'static str,
}

/// `sluice_ws_peers_dead_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLabel {
    pub route: String,
    /// `client` or `backend`: the side that did not answer.
    pub side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// `sluice_requests_rejected_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectedLabel {
    pub reason: Rejection,
}

/// `sluice_tls_certificate_expiry_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    pub file: String,
}

/// `sluice_client_connections_closed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabel {
    pub reason: CloseReason,
}

/// `sluice_cluster_checks_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterCheckLabel {
    pub outcome: ClusterOutcome,
}

/// What the cluster's Redis said about a handshake the local limits admitted
/// (`sluice_cluster_checks_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterOutcome {
    /// `admitted`: under the shared rate and tunnel cap.
    Admitted,
    /// `refused_rate`: over the shared handshake rate (429).
    RefusedRate,
    /// `refused_connections`: the shared tunnels-per-IP cap reached (429).
    RefusedConnections,
    /// `fallback_local`: Redis down, erroring or slower than
    /// `cluster.timeout`; the local limits alone decided.
    FallbackLocal,
}

impl ClusterOutcome {
    pub fn label(self) -> &'static str {
        match self {
            ClusterOutcome::Admitted => "admitted",
            ClusterOutcome::RefusedRate => "refused_rate",
            ClusterOutcome::RefusedConnections => "refused_connections",
            ClusterOutcome::FallbackLocal => "fallback_local",
        }
    }
}

impl EncodeLabelValue for ClusterOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.label().encode(encoder)
    }
}

/// What became of a WebSocket handshake on a route that matched
/// (`sluice_ws_handshakes_total{outcome}`). Counted by what happened, not
/// by the status the client sees: on h2 a tunnel is a 200, and a backend's
/// 200 refusal is not a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeOutcome {
    /// `accepted`: the backend's 101 was believed and the tunnel opens.
    Accepted,
    /// `refused_by_backend`: the backend answered something other than 101,
    /// passed to the client as plain HTTP.
    RefusedByBackend,
    /// Rejected by sluice, labelled with the [`Rejection`].
    Rejected(Rejection),
}

impl HandshakeOutcome {
    pub fn label(self) -> &'static str {
        match self {
            HandshakeOutcome::Accepted => "accepted",
            HandshakeOutcome::RefusedByBackend => "refused_by_backend",
            HandshakeOutcome::Rejected(r) => r.label(),
        }
    }
}

/// Why a request or an upgrade was answered with an error status
/// (`sluice_requests_rejected_total{reason}`, and the rejections among
/// `sluice_ws_handshakes_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// `bad_request`: a malformed request or upgrade (400, 405, 426).
    BadRequest,
    /// `no_route`: no route matched (404).
    NoRoute,
    /// `origin`: the route's origin policy refused the `Origin` (403).
    Origin,
    /// `rate`: the route's handshake rate was exceeded (429).
    Rate,
    /// `connections_per_ip`: the route's tunnels per IP were all open (429).
    ConnectionsPerIp,
    /// `tunnel_cap`: `server.max_tunnels` or `route.max_tunnels` reached (503).
    TunnelCap,
    /// `timeout`: the backend did not answer within `handshake_timeout` (504).
    Timeout,
    /// `backend_error`: the backend refused, failed or broke the protocol (502).
    BackendError,
    /// `no_healthy_backend`: active checks marked every backend unhealthy (503).
    NoHealthyBackend,
    /// `misdirected`: an h2 request for a host this connection's
    /// certificate was not chosen for (421).
    Misdirected,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::NoRoute => "no_route",
            Rejection::Origin => "origin",
            Rejection::Rate => "rate",
            Rejection::ConnectionsPerIp => "connections_per_ip",
            Rejection::TunnelCap => "tunnel_cap",
            Rejection::Timeout => "timeout",
            Rejection::BackendError => "backend_error",
            Rejection::NoHealthyBackend => "no_healthy_backend",
            Rejection::Misdirected => "misdirected",
        }
    }
}

/// Why sluice closed a client connection that had no tunnel
/// (`sluice_client_connections_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// No complete first request head (or TLS handshake) within
    /// `handshake_timeout` of accept.
    HandshakeTimeout,
    /// Idle between requests (h2: no open stream) for `keepalive_timeout`.
    KeepaliveTimeout,
    /// `server.max_client_connections_per_ip` reached.
    PerIpCap,
    /// The TLS handshake failed.
    TlsFailed,
    /// A `server.proxy_protocol` peer sent no complete PROXY header within
    /// `handshake_timeout`.
    ProxyHeaderTimeout,
    /// A `server.proxy_protocol` peer sent a malformed PROXY header.
    ProxyHeaderInvalid,
    /// A `server.proxy_protocol` peer closed (or reset) the connection
    /// before a complete PROXY header (a balancer's TCP health check).
    ProxyHeaderMissing,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::KeepaliveTimeout => "keepalive_timeout",
            CloseReason::PerIpCap => "per_ip_cap",
            CloseReason::TlsFailed => "tls_failed",
            CloseReason::ProxyHeaderTimeout => "proxy_header_timeout",
            CloseReason::ProxyHeaderInvalid => "proxy_header_invalid",
            CloseReason::ProxyHeaderMissing => "proxy_header_missing",
        }
    }
}

impl EncodeLabelValue for HandshakeOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.label().encode(encoder)
    }
}

impl EncodeLabelValue for Rejection {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.label().encode(encoder)
    }
}

impl EncodeLabelValue for CloseReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.label().encode(encoder)
    }
}

impl From<crate::conn::Refused> for CloseReason {
    fn from(r: crate::conn::Refused) -> CloseReason {
        match r {
            crate::conn::Refused::PerIpCap => CloseReason::PerIpCap,
        }
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// One route's WebSocket frame and byte counters, indexed by direction
/// (client to backend, then backend to client). Made once per route and
/// shared by its tunnels, which add to them while they live.
#[derive(Debug, Default)]
pub struct RouteTraffic {
    pub frames: [Counter; 2],
    pub bytes: [Counter; 2],
    /// sluice's keep-alive Pings, indexed by the side sent to (client, then
    /// backend).
    pub pings: [Counter; 2],
}

/// Every metric sluice exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub tunnels_open: Family<RouteLabel, Gauge>,
    pub http_requests_in_flight: Family<RouteLabel, Gauge>,
    pub http_connections_open: Gauge,
    pub handshakes: Family<HandshakeLabel, Counter>,
    pub http_responses: Family<StatusLabel, Counter>,
    pub frames: Family<TrafficLabel, Counter>,
    pub bytes: Family<TrafficLabel, Counter>,
    pub closes: Family<CloseLabel, Counter>,
    pub tunnel_endings: Family<EndingLabel, Counter>,
    pub pings_sent: Family<TrafficLabel, Counter>,
    pub peers_dead: Family<DeadLabel, Counter>,
    pub backend_connect_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub handshake_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub reloads: Family<ResultLabel, Counter>,
    pub client_connections_closed: Family<ClosedLabel, Counter>,
    pub requests_rejected: Family<RejectedLabel, Counter>,
    /// notAfter of each certificate of the current snapshot, Unix seconds.
    pub tls_certificate_expiry: Family<FileLabel, Gauge>,
    /// 1 while the `[cluster]` Redis answers within its timeout.
    pub cluster_redis_up: Gauge,
    pub cluster_checks: Family<ClusterCheckLabel, Counter>,
    /// `frames` and `bytes` by route, looked up once per route, not per tunnel.
    traffic: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<RouteTraffic>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            tunnels_open: Family::default(),
            http_requests_in_flight: Family::default(),
            http_connections_open: Gauge::default(),
            handshakes: Family::default(),
            http_responses: Family::default(),
            frames: Family::default(),
            bytes: Family::default(),
            closes: Family::default(),
            tunnel_endings: Family::default(),
            pings_sent: Family::default(),
            peers_dead: Family::default(),
            backend_connect_seconds: Family::new_with_constructor(latency_histogram),
            handshake_seconds: Family::new_with_constructor(latency_histogram),
            reloads: Family::default(),
            client_connections_closed: Family::default(),
            requests_rejected: Family::default(),
            tls_certificate_expiry: Family::default(),
            cluster_redis_up: Gauge::default(),
            cluster_checks: Family::default(),
            traffic: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ws_tunnels_open",
            "Open WebSocket tunnels",
            m.tunnels_open.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being proxied",
            m.http_requests_in_flight.clone(),
        );
        registry.register(
            "http_connections_open",
            "Open client connections (HTTP/1.1 and h2)",
            m.http_connections_open.clone(),
        );
        registry.register(
            "ws_handshakes",
            "WebSocket handshakes on a matched route by outcome: accepted, refused_by_backend, or the rejection reason",
            m.handshakes.clone(),
        );
        registry.register(
            "http_responses",
            "Plain HTTP responses on a matched route, by status (WebSocket handshakes are counted in ws_handshakes)",
            m.http_responses.clone(),
        );
        registry.register("ws_frames", "WebSocket frames relayed", m.frames.clone());
        registry.register("ws_bytes", "WebSocket bytes relayed", m.bytes.clone());
        registry.register(
            "ws_closes",
            "Close frames sent by sluice, by code and the side they were sent to",
            m.closes.clone(),
        );
        registry.register(
            "ws_tunnel_endings",
            "Why tunnels ended",
            m.tunnel_endings.clone(),
        );
        registry.register(
            "ws_pings_sent",
            "Keep-alive Pings sluice sent to a silent side, by route and the side sent to",
            m.pings_sent.clone(),
        );
        registry.register(
            "ws_peers_dead",
            "Sides that did not answer sluice's Ping within ping_timeout (their tunnel was closed), by route and side",
            m.peers_dead.clone(),
        );
        registry.register(
            "backend_connect_seconds",
            "Time to connect to a backend for a WebSocket tunnel (plain HTTP uses pooled connections)",
            m.backend_connect_seconds.clone(),
        );
        registry.register(
            "ws_handshake_seconds",
            "Time from a matched upgrade request to its answer (tunnel, backend refusal or rejection)",
            m.handshake_seconds.clone(),
        );
        registry.register("reloads", "Config reloads by result", m.reloads.clone());
        registry.register(
            "client_connections_closed",
            "Client connections sluice closed or refused before any tunnel, by reason",
            m.client_connections_closed.clone(),
        );
        registry.register(
            "requests_rejected",
            "Requests and upgrades answered with an error status, by reason (also those matching no route)",
            m.requests_rejected.clone(),
        );
        registry.register(
            "tls_certificate_expiry_seconds",
            "When each served certificate expires (notAfter, Unix time), by certificate file",
            m.tls_certificate_expiry.clone(),
        );
        registry.register(
            "cluster_redis_up",
            "1 while the [cluster] Redis answers within cluster.timeout; 0 during an outage or without [cluster]",
            m.cluster_redis_up.clone(),
        );
        registry.register(
            "cluster_checks",
            "Handshakes the local limits admitted, by what the [cluster] Redis said: admitted, refused_rate, refused_connections, fallback_local",
            m.cluster_checks.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Shows the expiry of exactly the certificates of `sites` (a reload
    /// drops the files no longer configured).
    pub fn set_certificates(&self, sites: Option<&crate::tls::Sites>) {
        self.tls_certificate_expiry.clear();
        for site in sites.map_or(&[][..], |s| s.sites()) {
            self.tls_certificate_expiry
                .get_or_create(&FileLabel {
                    file: site.file.display().to_string(),
                })
                .set(site.not_after);
        }
        if let Some(issued) = sites.and_then(|s| s.acme()?.current()) {
            self.tls_certificate_expiry
                .get_or_create(&FileLabel {
                    file: issued.file.display().to_string(),
                })
                .set(issued.not_after);
        }
    }

    pub fn connection_closed(&self, reason: CloseReason) {
        self.client_connections_closed
            .get_or_create(&ClosedLabel { reason })
            .inc();
    }

    /// The frame and byte counters of `route`'s tunnels.
    pub fn route_traffic(&self, route: &str) -> std::sync::Arc<RouteTraffic> {
        let mut traffic = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = traffic.get(route) {
            return t.clone();
        }
        let counters = |family: &Family<TrafficLabel, Counter>| {
            ["client_to_backend", "backend_to_client"].map(|direction| {
                family
                    .get_or_create(&TrafficLabel {
                        route: route.to_owned(),
                        direction,
                    })
                    .clone()
            })
        };
        let pings = ["to_client", "to_backend"].map(|direction| {
            self.pings_sent
                .get_or_create(&TrafficLabel {
                    route: route.to_owned(),
                    direction,
                })
                .clone()
        });
        let t = std::sync::Arc::new(RouteTraffic {
            frames: counters(&self.frames),
            bytes: counters(&self.bytes),
            pings,
        });
        traffic.insert(route.to_owned(), t.clone());
        t
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
