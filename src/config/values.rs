//! The syntax of one scalar value, shared by every key that takes it:
//! durations (`"250ms" | "10s" | "5m" | "1h"`), sizes in bytes, counts
//! (rates, bursts, connections) and IP networks (`trusted_proxies`).
//!
//! The newtypes fail inside deserialization, where toml supplies the line
//! and the key itself; [`parse_proxy`] is called by the validator, which
//! names them. Host, port and DNS-name syntax is in `super::host`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

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

/// An address or a CIDR. A CIDR with host bits set ("10.0.0.1/8") is refused:
/// it is ambiguous between one host and a whole network, and guessing the
/// wider one would let that network forge X-Forwarded-For.
pub(super) fn parse_proxy(s: &str) -> Result<IpNet, String> {
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = s.parse().map_err(|_| {
        format!("expected an IP address or CIDR such as \"10.0.0.0/8\", found {s:?}")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set; write {} for the network or {}/{} for one host",
            net.trunc(),
            net.addr(),
            net.max_prefix_len()
        ));
    }
    Ok(net)
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
