//! Config loading: the TOML file becomes a validated, resolved [`Config`] of
//! plain values, or exactly one [`ConfigError`] naming `FILE:LINE: KEY`.
//!
//! Pipeline: read → deserialize [`raw`] (syntax, types, unknown keys) →
//! [`resolve`] (validate with spans, merge defaults and route overrides) →
//! the [`model`]. `check`, `run` and a SIGHUP reload all go through
//! [`Config::load`] and then `shared::Snapshot::build`, so they cannot
//! disagree. What needs the host (certificates, the congestion-control
//! check) happens in that build, which reports through [`Located::error`] in
//! the same format.
//!
//! Layout, each file a concept, arrows pointing down:
//! * `model`: the resolved types the rest of sluice reads;
//! * `resolve`: raw → model, every semantic check;
//! * `raw`: the serde mirror of the file, the only file that knows its shape;
//! * `values`: durations, byte sizes, counts, CIDRs;
//! * `host`: host, port and DNS-name syntax; route hosts, backends, origin
//!   patterns (also used by `policy::origin` for request headers);
//! * `error`: [`ConfigError`] and turning toml's errors into it.
//!
//! Config depends on no other sluice module: `policy`, `route`, `tls` and
//! `shared` read it, never the reverse.

mod error;
mod host;
mod model;
mod raw;
mod resolve;
mod values;

use std::path::Path;

pub use error::ConfigError;
pub(crate) use host::{normalise_host, parse_port, split_host_port, split_origin};
pub use host::{Backend, HostMatch, OriginPattern};
pub use model::{
    Acme, AcmeChallenge, BackendTls, Balance, CertificateFiles, Cluster, Config, HashKey,
    HealthCheck, Limits, Located, OnBackendRemoved, OnMessageRate, ProxyVersion, Route, Server,
    Tls, WebSocketPolicy,
};
pub use values::parse_duration;

impl Config {
    /// Reads and parses the file. The one entry point for `check`, `run` and
    /// reload.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path, None, "", format!("cannot read config file: {e}"))
        })?;
        Config::parse(&text, path)
    }

    /// No IO: `path` names the file in errors and anchors relative
    /// certificate paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let raw: raw::RawConfig = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| error::from_toml(path, text, e))?;
        resolve::resolve(path, text, raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "[server]\nlisten_plain = [\"127.0.0.1:8080\"]\n";
    const ROUTE: &str = "[[route]]\nbackends = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn error_message_shape() {
        let text = format!("{SERVER}{ROUTE}[route.websocket]\nmax_frame_bytes = \"1MB\"\n");
        let err = Config::parse(&text, Path::new("config/sluice.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config/sluice.toml:6: route[0].websocket.max_frame_bytes: expected an integer (bytes), found string \"1MB\""
        );
        let err = Config::load(Path::new("/nonexistent/sluice.toml")).unwrap_err();
        assert_eq!((err.line, err.key.as_str()), (None, ""));
        assert!(
            err.to_string()
                .starts_with("/nonexistent/sluice.toml: cannot read config file:"),
            "{err}"
        );
    }
}
