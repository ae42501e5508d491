//! How a tunnel ends, and the one table from an ending to the Close codes
//! sluice sends each side because of it.

use std::fmt;
use std::num::NonZeroU16;

use super::scan::Violation;
use super::side::{PerSide, Side};

/// A WebSocket close code (RFC 6455 §7.4) that sluice sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(NonZeroU16);

impl CloseCode {
    /// 1001: the peer, or sluice, is going away (idle, drain, the other
    /// side broke a rule or vanished).
    pub const GOING_AWAY: CloseCode = CloseCode::new(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode::new(1002);
    /// 1008: the peer broke a policy (the message rate).
    pub const POLICY_VIOLATION: CloseCode = CloseCode::new(1008);
    /// 1009: a frame or message too big.
    pub const TOO_BIG: CloseCode = CloseCode::new(1009);
    /// 1012: service restart; the client should reconnect (a reload took
    /// its backend away, `on_backend_removed = "close"`).
    pub const SERVICE_RESTART: CloseCode = CloseCode::new(1012);

    const fn new(code: u16) -> CloseCode {
        match NonZeroU16::new(code) {
            Some(c) => CloseCode(c),
            None => panic!("a close code is not 0"),
        }
    }

    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// For the atomics that hold "a code, or 0 for none".
    pub fn from_u16(code: u16) -> Option<CloseCode> {
        NonZeroU16::new(code).map(CloseCode)
    }

    /// The reason text sent with the code.
    pub fn reason(self) -> &'static str {
        match self.get() {
            1009 => "frame too large",
            1008 => "policy violation",
            1002 => "protocol error",
            1012 => "service restart",
            _ => "going away",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a tunnel ended; the first cause wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Both peers exchanged Close frames, or closed their streams cleanly.
    Closed,
    Violation {
        by: Side,
        violation: Violation,
    },
    Idle,
    WriteStalled {
        toward: Side,
    },
    Drain,
    /// `max_lifetime` (with its jitter) passed.
    Lifetime,
    /// A peer closed or reset its stream without sending a Close first.
    Vanished(Side),
    /// A side silent for `ping_interval` did not answer sluice's Ping
    /// within `ping_timeout` (or could not even be sent one).
    Dead(Side),
    /// A reload removed the tunnel's backend from a route with
    /// `on_backend_removed = "close"`.
    BackendRemoved,
}

impl Ending {
    /// The Close code sluice sends each side because of this ending (the
    /// contract's "Decided edge cases"): the violator gets its violation's
    /// code and the other side 1001; idleness and a drain send 1001 both
    /// ways; a side that vanished, or that stopped taking bytes, gets
    /// nothing (it cannot), the other side 1001. Exhaustive on purpose.
    pub fn close_codes(self) -> PerSide<Option<CloseCode>> {
        let away = Some(CloseCode::GOING_AWAY);
        let only = |side: Side, code| {
            let mut codes = PerSide::default();
            codes[side] = code;
            codes
        };
        match self {
            Ending::Closed => PerSide::default(),
            Ending::Violation { by, violation } => {
                let mut codes = only(by.other(), away);
                codes[by] = Some(violation.close_code());
                codes
            }
            Ending::Idle | Ending::Drain | Ending::Lifetime => PerSide::new(away, away),
            Ending::WriteStalled { toward } => only(toward.other(), away),
            Ending::Vanished(side) | Ending::Dead(side) => only(side.other(), away),
            Ending::BackendRemoved => PerSide::new(Some(CloseCode::SERVICE_RESTART), away),
        }
    }

    /// The `ending` label of `sluice_ws_tunnel_endings_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::Violation { .. } => "violation",
            Ending::Idle => "idle",
            Ending::WriteStalled { .. } => "write_stalled",
            Ending::Drain => "drain",
            Ending::Lifetime => "lifetime",
            Ending::Vanished(_) => "vanished",
            Ending::Dead(_) => "peer_dead",
            Ending::BackendRemoved => "backend_removed",
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Closed => f.write_str("closed"),
            Ending::Violation { by, violation } => write!(f, "violation by {by}: {violation}"),
            Ending::Idle => f.write_str("idle timeout"),
            Ending::WriteStalled { toward } => write!(f, "writes toward {toward} stalled"),
            Ending::Drain => f.write_str("server shutting down"),
            Ending::Lifetime => f.write_str("max_lifetime reached"),
            Ending::Vanished(side) => write!(f, "{side} went away without a close frame"),
            Ending::Dead(side) => write!(f, "{side} did not answer a ping"),
            Ending::BackendRemoved => f.write_str("backend removed by a reload"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_its_close_codes() {
        let away = Some(CloseCode::GOING_AWAY);
        let table = [
            (Ending::Closed, None, None),
            (
                Ending::Violation {
                    by: Side::Client,
                    violation: Violation::UnmaskedClientFrame,
                },
                Some(CloseCode::PROTOCOL_ERROR),
                away,
            ),
            (
                Ending::Violation {
                    by: Side::Backend,
                    violation: Violation::FrameTooLarge { len: 2, max: 1 },
                },
                away,
                Some(CloseCode::TOO_BIG),
            ),
            (
                Ending::Violation {
                    by: Side::Client,
                    violation: Violation::MessageRateExceeded,
                },
                Some(CloseCode::POLICY_VIOLATION),
                away,
            ),
            (Ending::Idle, away, away),
            (Ending::Drain, away, away),
            (Ending::Lifetime, away, away),
            (
                Ending::WriteStalled {
                    toward: Side::Client,
                },
                None,
                away,
            ),
            (Ending::Vanished(Side::Backend), away, None),
            (Ending::Dead(Side::Client), None, away),
            (Ending::Dead(Side::Backend), away, None),
            (
                Ending::BackendRemoved,
                Some(CloseCode::SERVICE_RESTART),
                away,
            ),
        ];
        for (ending, client, backend) in table {
            assert_eq!(
                ending.close_codes(),
                PerSide::new(client, backend),
                "{ending}"
            );
        }
    }
}
