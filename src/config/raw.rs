//! The config file exactly as written: one struct per TOML table, fields named
//! like the TOML keys, every table `deny_unknown_fields` (in a policy file a
//! typo would otherwise silently weaken security), and no `flatten` (it does
//! not combine with `deny_unknown_fields`).
//!
//! Not owned here: meaning. Strings that still need checking (addresses,
//! backends, hosts, origins) stay strings wrapped in `toml::Spanned`, so the
//! validator in `super` can name their line. Only rules that need no context
//! live in the types below and fail during deserialization, where toml supplies
//! the line itself:
//! * [`HumanDuration`]: a string with a unit (`"250ms"`, `"10s"`, `"5m"`, `"1h"`);
//! * [`ByteSize`]: a positive integer number of bytes;
//! * [`Count`]: a positive integer that fits a `u32` (rates, bursts, connections).
//!
//! Tables are not wrapped in `Spanned`: toml has no span for a table created
//! implicitly (`[server.x]` or a dotted key), and `Spanned` then fails with a
//! confusing message.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
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

/// A duration written with its unit. A bare number is refused because
/// "10" is seconds to one operator and milliseconds to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

const DURATION_HINT: &str =
    "use a whole number with ms, s, m or h, e.g. \"250ms\", \"10s\", \"5m\", \"1h\"";

/// Parses `"250ms" | "10s" | "5m" | "1h"`. Zero is accepted here; whether a
/// zero makes sense depends on the key.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.starts_with('-') {
        return Err(format!(
            "invalid duration {s:?}: a duration cannot be negative"
        ));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(format!("invalid duration {s:?}: {DURATION_HINT}"));
    }
    if unit.starts_with('.') {
        return Err(format!(
            "invalid duration {s:?}: fractions are not supported, use a smaller unit (\"1500ms\")"
        ));
    }
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "invalid duration {s:?}: missing unit; {DURATION_HINT}"
            ))
        }
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?}; {DURATION_HINT}"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(per_unit_ms))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string with a unit (\"250ms\", \"10s\", \"5m\", \"1h\")")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                parse_duration(s).map(HumanDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// A size in bytes. Only integers: the contract says sizes are integers, and
/// "1MB" vs "1MiB" is exactly the ambiguity that should not reach a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer (bytes)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                // A zero limit would refuse every frame, which nobody means.
                match u64::try_from(v) {
                    Ok(n) if n > 0 => Ok(ByteSize(n)),
                    _ => Err(E::custom(format!(
                        "expected a positive integer (bytes), found {v}"
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                match v {
                    0 => Err(E::custom("expected a positive integer (bytes), found 0")),
                    n => Ok(ByteSize(n)),
                }
            }
        }
        deserializer.deserialize_u64(V)
    }
}

/// A rate, burst or connection count. Zero would refuse everything; an
/// operator who wants that should remove the route instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                if v <= 0 {
                    return Err(E::custom(format!("expected a positive integer, found {v}")));
                }
                u32::try_from(v).map(Count).map_err(|_| {
                    E::custom(format!(
                        "expected an integer no larger than {}, found {v}",
                        u32::MAX
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                match i64::try_from(v) {
                    Ok(v) => self.visit_i64(v),
                    Err(_) => Err(E::custom(format!(
                        "expected an integer no larger than {}, found {v}",
                        u32::MAX
                    ))),
                }
            }
        }
        deserializer.deserialize_u32(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("0s", 0),
            ("250ms", 250),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("300s", 300_000),
            ("007s", 7_000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        let bad = [
            ("10 parsecs", "unknown unit \" parsecs\""),
            ("10", "missing unit"),
            ("-1s", "cannot be negative"),
            ("", "use a whole number"),
            ("s", "use a whole number"),
            ("1.5s", "fractions"),
            ("10S", "unknown unit"),
            ("10sec", "unknown unit"),
            (" 10s", "use a whole number"),
            ("10s ", "unknown unit"),
            ("1d", "unknown unit"),
            ("1m30s", "unknown unit"),
            ("99999999999999999999h", "too large"),
            ("9999999999999999h", "too large"),
        ];
        for (s, want) in bad {
            let err = parse_duration(s).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }

    #[derive(Debug, Deserialize)]
    struct Doc {
        d: Option<HumanDuration>,
        b: Option<ByteSize>,
        c: Option<Count>,
    }

    fn doc(text: &str) -> Result<Doc, String> {
        toml::from_str::<Doc>(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn durations_deserialize_from_strings_only() {
        assert_eq!(
            doc("d = \"5m\"").unwrap().d,
            Some(HumanDuration(Duration::from_secs(300)))
        );
        let err = doc("d = 10").unwrap_err();
        assert!(
            err.contains("found integer `10`") || err.contains("integer `10`"),
            "{err}"
        );
    }

    #[test]
    fn byte_sizes() {
        let ok = [
            ("1", 1),
            ("1048576", 1 << 20),
            ("9223372036854775807", i64::MAX as u64),
        ];
        for (s, n) in ok {
            assert_eq!(
                doc(&format!("b = {s}")).unwrap().b,
                Some(ByteSize(n)),
                "{s}"
            );
        }
        let bad = [
            ("0", "expected a positive integer (bytes), found 0"),
            ("-1", "expected a positive integer (bytes), found -1"),
            (
                "\"1MB\"",
                "invalid type: string \"1MB\", expected an integer (bytes)",
            ),
            ("1.5", "expected an integer (bytes)"),
            ("true", "expected an integer (bytes)"),
        ];
        for (s, want) in bad {
            let err = doc(&format!("b = {s}")).unwrap_err();
            assert!(err.contains(want), "{s}: {err}");
        }
    }

    #[test]
    fn counts() {
        let ok = [("1", 1), ("20", 20), ("4294967295", u32::MAX)];
        for (s, n) in ok {
            assert_eq!(doc(&format!("c = {s}")).unwrap().c, Some(Count(n)), "{s}");
        }
        let bad = [
            ("0", "expected a positive integer, found 0"),
            ("-5", "expected a positive integer, found -5"),
            ("4294967296", "no larger than 4294967295"),
            ("\"20\"", "expected an integer"),
        ];
        for (s, want) in bad {
            let err = doc(&format!("c = {s}")).unwrap_err();
            assert!(err.contains(want), "{s}: {err}");
        }
    }
}
