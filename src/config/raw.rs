//! The config file exactly as written: one struct per TOML table, fields named
//! like the TOML keys, every table `deny_unknown_fields` (in a policy file a
//! typo would otherwise silently weaken security), and no `flatten` (it does
//! not combine with `deny_unknown_fields`).
//!
//! Not owned here: meaning. Strings that still need checking (addresses,
//! backends, hosts, origins) stay strings wrapped in `toml::Spanned`, so the
//! validator (`super::resolve`) can name their line. Only rules that need no context
//! live in the types below and fail during deserialization, where toml supplies
//! the line itself, in `super::values`:
//! * [`HumanDuration`]: a string with a unit (`"250ms"`, `"10s"`, `"5m"`, `"1h"`);
//! * [`ByteSize`]: a positive integer number of bytes;
//! * [`Count`]: a positive integer that fits a `u32` (rates, bursts, connections).
//!
//! Tables are not wrapped in `Spanned`: toml has no span for a table created
//! implicitly (`[server.x]` or a dotted key), and `Spanned` then fails with a
//! confusing message.

use serde::Deserialize;
use toml::Spanned;

use super::values::{ByteSize, Count, HumanDuration};

/// A list of strings that each need checking, plus where the list itself is
/// (for "must not be empty" and cross-key errors).
pub type SpannedList = Spanned<Vec<Spanned<String>>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub websocket: RawWebSocket,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`: limits shared through one Redis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis: Spanned<String>,
    pub timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<SpannedList>,
    pub listen_plain: Option<SpannedList>,
    pub admin: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<HumanDuration>>,
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    pub shutdown_grace: Option<Spanned<HumanDuration>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub tcp_congestion: Option<Spanned<String>>,
    pub reuse_port: Option<bool>,
    pub keepalive_timeout: Option<Spanned<HumanDuration>>,
    /// 0 means "half the open-file limit", so plain integers, not `Count`.
    pub max_client_connections: Option<u32>,
    pub max_client_connections_per_ip: Option<u32>,
    /// Open tunnels process-wide; 0 = no cap.
    pub max_tunnels: Option<u32>,
    /// Peers (addresses or CIDRs) whose connections begin with a PROXY header.
    pub proxy_protocol: Option<Vec<Spanned<String>>>,
    /// Drains and backend removals close tunnels spread over this window.
    pub drain_spread: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The default pair; optional once `[[tls.certificate]]` exists.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// `[[tls.certificate]]`: more certificates, chosen by SNI.
    #[serde(default)]
    pub certificate: Vec<RawCertificate>,
    /// `[tls.acme]`: certificates obtained and renewed over ACME.
    pub acme: Option<RawAcme>,
}

/// `[tls.acme]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub domains: SpannedList,
    pub email: Option<Spanned<String>>,
    pub directory: Option<Spanned<String>>,
    pub directory_ca: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub http01_listen: Option<Spanned<String>>,
    pub storage: Option<Spanned<String>>,
}

/// One `[[tls.certificate]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// Both `[websocket]` and `[route.websocket]`: every key optional, so a route
/// can override one key and inherit the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocket {
    pub max_frame_bytes: Option<ByteSize>,
    pub max_message_bytes: Option<ByteSize>,
    pub allowed_origins: Option<Vec<Spanned<String>>>,
    pub allow_missing_origin: Option<bool>,
    pub strip_compression: Option<bool>,
    pub max_lifetime: Option<Spanned<HumanDuration>>,
    pub ping_interval: Option<Spanned<HumanDuration>>,
    pub ping_timeout: Option<Spanned<HumanDuration>>,
}

/// Both `[limits]` and `[route.limits]`, like [`RawWebSocket`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub handshakes_per_second: Option<Count>,
    pub handshake_burst: Option<Count>,
    pub max_connections_per_ip: Option<Count>,
    pub messages_per_second: Option<Count>,
    pub message_burst: Option<Count>,
    pub on_message_rate: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub backends: SpannedList,
    pub balance: Option<Spanned<String>>,
    pub health_check: Option<RawHealthCheck>,
    pub backend_ca: Option<Spanned<String>>,
    pub backend_cert: Option<Spanned<String>>,
    pub backend_key: Option<Spanned<String>>,
    pub websocket: Option<RawWebSocket>,
    pub limits: Option<RawLimits>,
    /// Open tunnels on this route; 0 = no cap.
    pub max_tunnels: Option<u32>,
    /// `"v1" | "v2"`: a PROXY header toward the backend.
    pub send_proxy_protocol: Option<Spanned<String>>,
    /// `"client_ip" | "header:NAME" | "cookie:NAME" | "query:NAME"`, with `balance = "hash"`.
    pub hash_key: Option<Spanned<String>>,
    /// `"keep"` or `"close"`: what a reload that removes a backend does to
    /// its tunnels.
    pub on_backend_removed: Option<Spanned<String>>,
}

/// `health_check = { path = "/healthz", interval = "5s", ... }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<Spanned<String>>,
    pub interval: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub unhealthy_after: Option<Count>,
    pub healthy_after: Option<Count>,
}
