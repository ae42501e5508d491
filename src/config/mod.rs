//! TEMPORARY STUB (replaced by the real config module).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError { pub file: PathBuf, pub line: Option<usize>, pub key: String, pub problem: String }
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}: {}", self.file.display(), self.line.unwrap_or(0), self.key, self.problem)
    }
}
impl std::error::Error for ConfigError {}

#[derive(Debug, Clone)] pub struct Config { pub path: PathBuf, pub server: Server, pub tls: Option<Tls>, pub routes: Vec<Route> }
#[derive(Debug, Clone)] pub struct Server {
    pub listen: Vec<SocketAddr>, pub listen_plain: Vec<SocketAddr>, pub admin: Option<SocketAddr>,
    pub handshake_timeout: Duration, pub idle_timeout: Duration, pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}
#[derive(Debug, Clone)] pub struct Tls { pub cert: Located<PathBuf>, pub key: Located<PathBuf> }
#[derive(Debug, Clone)] pub struct Located<T> { pub value: T, pub line: usize, pub key: &'static str }
impl<T> Located<T> { pub fn error(&self, file: &Path, problem: impl Into<String>) -> ConfigError { ConfigError { file: file.to_owned(), line: Some(self.line), key: self.key.to_owned(), problem: problem.into() } } }
#[derive(Debug, Clone)] pub struct Route { pub host: Option<HostMatch>, pub path: String, pub backends: Vec<Backend>, pub websocket: WebSocketPolicy, pub limits: Limits }
#[derive(Debug, Clone, PartialEq, Eq)] pub enum HostMatch { Exact(String), Suffix(String) }
impl HostMatch { pub fn matches(&self, host: &str) -> bool { let h = host.to_ascii_lowercase(); match self { HostMatch::Exact(e) => *e == h, HostMatch::Suffix(s) => h.ends_with(s.as_str()) && h.len() > s.len() } } }
#[derive(Debug, Clone, PartialEq, Eq)] pub struct Backend { pub tls: bool, pub host: String, pub port: u16 }
impl Backend { pub fn authority(&self) -> String { format!("{}:{}", self.host, self.port) } }
#[derive(Debug, Clone)] pub struct WebSocketPolicy { pub max_frame_bytes: u64, pub max_message_bytes: u64, pub allowed_origins: Option<Vec<crate::policy::origin::OriginPattern>>, pub allow_missing_origin: bool, pub strip_compression: bool }
#[derive(Debug, Clone)] pub struct Limits { pub handshakes_per_second: u32, pub handshake_burst: u32, pub max_connections_per_ip: u32, pub messages_per_second: u32, pub message_burst: u32, pub on_message_rate: OnMessageRate }
#[derive(Debug, Clone, Copy, PartialEq, Eq)] pub enum OnMessageRate { Throttle, Close }

#[derive(serde::Deserialize)] struct Raw { server: RawServer, tls: Option<RawTls>, route: Vec<RawRoute> }
#[derive(serde::Deserialize)] struct RawServer { #[serde(default)] listen: Vec<SocketAddr>, #[serde(default)] listen_plain: Vec<SocketAddr>, handshake_timeout: Option<String>, idle_timeout: Option<String>, shutdown_grace: Option<String>, #[serde(default)] trusted_proxies: Vec<String> }
#[derive(serde::Deserialize)] struct RawTls { cert: PathBuf, key: PathBuf }
#[derive(serde::Deserialize)] struct RawRoute { host: Option<String>, path: Option<String>, backends: Vec<String>, websocket: Option<RawWs> }
#[derive(serde::Deserialize)] struct RawWs { max_frame_bytes: Option<u64>, max_message_bytes: Option<u64> }
fn dur(s: &Option<String>, d: u64) -> Duration { match s { None => Duration::from_secs(d), Some(s) => if let Some(v) = s.strip_suffix("ms") { Duration::from_millis(v.parse().unwrap()) } else { Duration::from_secs(s.trim_end_matches('s').parse().unwrap()) } } }
impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> { let t = std::fs::read_to_string(path).map_err(|e| ConfigError { file: path.into(), line: None, key: String::new(), problem: e.to_string() })?; Config::parse(&t, path) }
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError { file: path.into(), line: None, key: String::new(), problem: e.message().to_owned() })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(Config { path: path.into(),
            server: Server { listen: raw.server.listen, listen_plain: raw.server.listen_plain, admin: None, handshake_timeout: dur(&raw.server.handshake_timeout, 10), idle_timeout: dur(&raw.server.idle_timeout, 300), shutdown_grace: dur(&raw.server.shutdown_grace, 30), trusted_proxies: raw.server.trusted_proxies.iter().map(|s| s.parse().unwrap()).collect() },
            tls: raw.tls.map(|t| Tls { cert: Located { value: dir.join(t.cert), line: 1, key: "tls.cert" }, key: Located { value: dir.join(t.key), line: 1, key: "tls.key" } }),
            routes: raw.route.into_iter().map(|r| Route { host: r.host.map(|h| if let Some(s) = h.strip_prefix('*') { HostMatch::Suffix(s.to_owned()) } else { HostMatch::Exact(h) }), path: r.path.unwrap_or("/".into()),
                backends: r.backends.iter().map(|b| { let (h, p) = b.rsplit_once(':').unwrap(); Backend { tls: false, host: h.into(), port: p.parse().unwrap() } }).collect(),
                websocket: WebSocketPolicy { max_frame_bytes: r.websocket.as_ref().and_then(|w| w.max_frame_bytes).unwrap_or(1 << 20), max_message_bytes: r.websocket.as_ref().and_then(|w| w.max_message_bytes).unwrap_or(16 << 20), allowed_origins: None, allow_missing_origin: true, strip_compression: false },
                limits: Limits { handshakes_per_second: 20, handshake_burst: 40, max_connections_per_ip: 1000, messages_per_second: 1000, message_burst: 2000, on_message_rate: OnMessageRate::Throttle } }).collect() })
    }
}
