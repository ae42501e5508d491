//! The relay's rules as a sans-IO scanner: bytes in, a verdict out. It walks
//! one direction's byte stream frame by frame, checks every header against
//! RFC 6455 §5 and the route's size limits before any byte of it may be
//! forwarded, and says how many bytes may go on and why it stopped. It owns
//! no buffer and does no IO: bytes it did not take (a partial header or
//! Close frame) are handed to it again with more behind them.
//!
//! What the relay adds around it (the message rate, close requests, shared
//! flags) enters through a [`Gate`], so the relay, the fuzz target, the
//! property tests and the criterion bench all run this same walk.

use std::fmt;

use crate::frame::{self, Header, HeaderError};

use super::ending::CloseCode;
use super::side::Direction;

/// RSV1, which permessage-deflate (RFC 7692) uses to mark compressed messages.
pub const RSV1: u8 = 0b100;

/// The frame rules of one tunnel, resolved from its route and handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub max_frame_bytes: u64,
    pub max_message_bytes: u64,
    /// RSV bits the negotiated extensions allow on a message's first frame
    /// (`RSV1` with permessage-deflate).
    pub allowed_rsv: u8,
    /// RSV bits allowed on continuation frames: permessage-deflate's RSV1
    /// marks only a message's first frame (RFC 7692 §6), while an extension
    /// sluice does not know may use any bit on any frame.
    pub allowed_rsv_continuation: u8,
}

/// A rule a peer broke. Small and `Copy`: it is made on the hot path and
/// formatted only when logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    FrameTooLarge { len: u64, max: u64 },
    MessageTooLarge { len: u64, max: u64 },
    UnmaskedClientFrame,
    MaskedBackendFrame,
    ControlFrameTooLong { len: u64 },
    FragmentedControlFrame,
    ReservedOpcode(u8),
    ReservedBits(u8),
    UnexpectedContinuation,
    UnfinishedMessage,
    NonMinimalLength,
    LengthTopBitSet,
    BadClose(frame::CloseError),
    MessageRateExceeded,
}

impl Violation {
    /// The Close code the sender gets. Exhaustive on purpose: a new rule must
    /// decide its code here.
    pub fn close_code(self) -> CloseCode {
        match self {
            Violation::FrameTooLarge { .. } | Violation::MessageTooLarge { .. } => {
                CloseCode::TOO_BIG
            }
            Violation::MessageRateExceeded => CloseCode::POLICY_VIOLATION,
            Violation::UnmaskedClientFrame
            | Violation::MaskedBackendFrame
            | Violation::ControlFrameTooLong { .. }
            | Violation::FragmentedControlFrame
            | Violation::ReservedOpcode(_)
            | Violation::ReservedBits(_)
            | Violation::UnexpectedContinuation
            | Violation::UnfinishedMessage
            | Violation::NonMinimalLength
            | Violation::LengthTopBitSet
            | Violation::BadClose(_) => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl From<HeaderError> for Violation {
    fn from(e: HeaderError) -> Violation {
        match e {
            HeaderError::NonMinimalLength => Violation::NonMinimalLength,
            HeaderError::LengthTopBitSet => Violation::LengthTopBitSet,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::FrameTooLarge { len, max } => {
                write!(f, "frame payload {len} > max_frame_bytes {max}")
            }
            Violation::MessageTooLarge { len, max } => {
                write!(f, "message size {len} > max_message_bytes {max}")
            }
            Violation::UnmaskedClientFrame => f.write_str("client frame not masked"),
            Violation::MaskedBackendFrame => f.write_str("backend frame masked"),
            Violation::ControlFrameTooLong { len } => {
                write!(f, "control frame payload {len} > 125")
            }
            Violation::FragmentedControlFrame => f.write_str("fragmented control frame"),
            Violation::ReservedOpcode(op) => write!(f, "reserved opcode {op}"),
            Violation::ReservedBits(rsv) => {
                write!(f, "RSV bits {rsv:03b} without a negotiated extension")
            }
            Violation::UnexpectedContinuation => {
                f.write_str("continuation frame with no message open")
            }
            Violation::UnfinishedMessage => {
                f.write_str("new data frame while a fragmented message is open")
            }
            Violation::NonMinimalLength => f.write_str("payload length not minimally encoded"),
            Violation::LengthTopBitSet => f.write_str("64-bit payload length with the top bit set"),
            Violation::BadClose(e) => write!(f, "invalid close frame: {e:?}"),
            Violation::MessageRateExceeded => f.write_str("message rate exceeded"),
        }
    }
}

/// What the walk asks of the code around it: whether to stop at a frame
/// boundary, and whether a frame that passed every rule may be taken.
pub trait Gate {
    type Stop;

    /// Called at every frame boundary before the next header is looked at
    /// (and where the bytes end on one). `Some` stops the walk there: it is
    /// where sluice may insert a frame of its own.
    fn boundary(&mut self) -> Option<Self::Stop>;

    /// A frame whose header passed every rule (a Close frame: whole, and its
    /// payload checked). `Ok` takes it; `Err` stops the walk before it, and
    /// the same frame comes again on the next walk.
    fn take(&mut self, frame: &Header) -> Result<(), Self::Stop>;

    /// A Pong frame that passed every rule, whole (`wire`: its header and
    /// payload as sent), before [`Gate::take`]. `Some` stops the walk before
    /// it: the relay drops the Pong answering its own Ping there and walks
    /// on after it (a control frame leaves the scanner's state as it was).
    fn pong(&mut self, _frame: &Header, _wire: &[u8]) -> Option<Self::Stop> {
        None
    }
}

/// A gate that never stops the walk.
#[derive(Debug, Default, Clone, Copy)]
pub struct Open;

impl Gate for Open {
    type Stop = std::convert::Infallible;
    fn boundary(&mut self) -> Option<Self::Stop> {
        None
    }
    fn take(&mut self, _: &Header) -> Result<(), Self::Stop> {
        Ok(())
    }
}

/// Why a walk stopped where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk<S> {
    /// Everything given was taken, or what is left is the start of a header
    /// (or of a Close frame) that needs more bytes.
    NeedMore,
    /// The frame at the stop breaks a rule; none of its bytes may go on.
    Violation(Violation),
    /// The gate stopped it.
    Gate(S),
}

/// One direction's position in its stream: where the frame boundaries are
/// and what message is open. A few words; no buffer.
#[derive(Debug, Clone)]
pub struct Scanner {
    dir: Direction,
    /// A fragmented data message is open (its last frame had FIN = 0).
    in_message: bool,
    /// Payload bytes of the current frame not yet seen.
    remaining: u64,
    /// Payload bytes of the open message so far.
    message_len: u64,
}

impl Scanner {
    pub fn new(dir: Direction) -> Scanner {
        Scanner {
            dir,
            in_message: false,
            remaining: 0,
            message_len: 0,
        }
    }

    /// Between frames: sluice may write a frame of its own here.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Walks `bytes`, which continue the stream where the last walk stopped.
    /// Returns how many of them may be forwarded (whole checked headers and
    /// payload) and why the walk stopped there.
    pub fn walk<G: Gate>(
        &mut self,
        rules: &Rules,
        bytes: &[u8],
        gate: &mut G,
    ) -> (usize, Walk<G::Stop>) {
        let len = bytes.len();
        let mut pos = 0;
        loop {
            if self.remaining > 0 {
                let take = self.remaining.min((len - pos) as u64);
                pos += take as usize;
                self.remaining -= take;
                if self.remaining > 0 {
                    return (pos, Walk::NeedMore);
                }
            }
            if let Some(stop) = gate.boundary() {
                return (pos, Walk::Gate(stop));
            }
            if pos == len {
                return (pos, Walk::NeedMore);
            }
            let header = match frame::parse_header(&bytes[pos..]) {
                Err(e) => return (pos, Walk::Violation(e.into())),
                Ok(None) => return (pos, Walk::NeedMore),
                Ok(Some(h)) => h,
            };
            if let Err(v) = self.check(&header, rules) {
                return (pos, Walk::Violation(v));
            }
            if matches!(header.opcode, frame::opcode::CLOSE | frame::opcode::PONG) {
                // Held back whole (at most 131 bytes): a Close so its code
                // can be checked before it goes, a Pong so the relay can
                // tell the answer to its own Ping by the payload.
                let total = usize::from(header.header_len) + header.payload_len as usize;
                if len - pos < total {
                    return (pos, Walk::NeedMore);
                }
                let wire = &bytes[pos..pos + total];
                if header.opcode == frame::opcode::CLOSE {
                    if let Err(e) = check_close(&header, wire) {
                        return (pos, Walk::Violation(Violation::BadClose(e)));
                    }
                } else if let Some(stop) = gate.pong(&header, wire) {
                    return (pos, Walk::Gate(stop));
                }
            }
            if let Err(stop) = gate.take(&header) {
                return (pos, Walk::Gate(stop));
            }
            self.account(&header);
            pos += usize::from(header.header_len);
            self.remaining = header.payload_len;
        }
    }

    /// RFC 6455 §5 rules for one header, checked before any byte of it moves.
    fn check(&self, h: &Header, rules: &Rules) -> Result<(), Violation> {
        // §5.1: a client MUST mask every frame; a server MUST NOT mask any.
        match (self.dir, h.mask.is_some()) {
            (Direction::ClientToBackend, false) => return Err(Violation::UnmaskedClientFrame),
            (Direction::BackendToClient, true) => return Err(Violation::MaskedBackendFrame),
            _ => {}
        }
        // §5.2: reserved opcodes MUST fail the connection.
        if h.is_reserved_opcode() {
            return Err(Violation::ReservedOpcode(h.opcode));
        }
        if h.is_control() {
            // §5.5: control frames MUST have a payload <= 125 and MUST NOT be fragmented.
            if !h.fin {
                return Err(Violation::FragmentedControlFrame);
            }
            if h.payload_len > 125 {
                return Err(Violation::ControlFrameTooLong { len: h.payload_len });
            }
            // RFC 7692 §6: RSV1 is only meaningful on the first frame of a data message.
            if h.rsv != 0 {
                return Err(Violation::ReservedBits(h.rsv));
            }
            return Ok(());
        }
        let continuation = h.opcode == frame::opcode::CONTINUATION;
        let allowed = if continuation {
            rules.allowed_rsv_continuation
        } else {
            rules.allowed_rsv
        };
        // §5.2: RSV bits MUST be 0 unless an extension defines them.
        if h.rsv & !allowed != 0 {
            return Err(Violation::ReservedBits(h.rsv));
        }
        // §5.4: fragments of one message are a data frame with FIN = 0 then
        // continuations; messages may not interleave.
        match (continuation, self.in_message) {
            (true, false) => return Err(Violation::UnexpectedContinuation),
            (false, true) => return Err(Violation::UnfinishedMessage),
            _ => {}
        }
        if h.payload_len > rules.max_frame_bytes {
            return Err(Violation::FrameTooLarge {
                len: h.payload_len,
                max: rules.max_frame_bytes,
            });
        }
        let message = if continuation { self.message_len } else { 0 }.saturating_add(h.payload_len);
        if message > rules.max_message_bytes {
            return Err(Violation::MessageTooLarge {
                len: message,
                max: rules.max_message_bytes,
            });
        }
        Ok(())
    }

    fn account(&mut self, h: &Header) {
        if h.is_control() {
            return;
        }
        if h.opcode == frame::opcode::CONTINUATION {
            self.message_len += h.payload_len;
        } else {
            self.message_len = h.payload_len;
        }
        self.in_message = !h.fin;
    }
}

/// Checks a whole Close frame (header included) from the wire.
fn check_close(h: &Header, wire: &[u8]) -> Result<(), frame::CloseError> {
    let mut payload = [0u8; 125];
    let body = &wire[usize::from(h.header_len)..];
    let payload = &mut payload[..body.len()];
    payload.copy_from_slice(body);
    if let Some(mask) = h.mask {
        frame::apply_mask(payload, mask, 0);
    }
    frame::check_close_payload(payload).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::CloseError;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const RULES: Rules = Rules {
        max_frame_bytes: 100,
        max_message_bytes: 150,
        allowed_rsv: 0,
        allowed_rsv_continuation: 0,
    };
    const DEFLATE: Rules = Rules {
        allowed_rsv: RSV1,
        ..RULES
    };
    const UNKNOWN_EXTENSION: Rules = Rules {
        allowed_rsv: 0b111,
        allowed_rsv_continuation: 0b111,
        ..RULES
    };

    /// One frame: FIN/RSV/opcode byte, payload, masked with KEY or not.
    fn frame(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => out.push(m | n as u8),
            n => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        let body = if masked {
            out.extend_from_slice(&KEY);
            let mut p = payload.to_vec();
            frame::apply_mask(&mut p, KEY, 0);
            p
        } else {
            payload.to_vec()
        };
        out.extend_from_slice(&body);
        out
    }

    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        frame(first, true, payload)
    }

    fn close(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        client(0x88, &p)
    }

    /// Walks `bytes` in one go with an open gate.
    fn walk(
        dir: Direction,
        rules: &Rules,
        bytes: &[u8],
    ) -> (usize, Walk<std::convert::Infallible>) {
        Scanner::new(dir).walk(rules, bytes, &mut Open)
    }

    /// Every rule: the bytes before the bad frame go on, none of it does,
    /// and the sender gets the code the contract names.
    #[test]
    fn every_violation_stops_before_the_bad_frame_with_its_code() {
        use Direction::{BackendToClient as B2C, ClientToBackend as C2B};
        let ok = client(0x81, b"hi");
        // What, which way, under which rules, the bad frame, the verdict, its code.
        type Row = (&'static str, Direction, Rules, Vec<u8>, Violation, u16);
        let table: Vec<Row> = vec![
            (
                "unmasked client frame",
                C2B,
                RULES,
                frame(0x81, false, b"x"),
                Violation::UnmaskedClientFrame,
                1002,
            ),
            (
                "masked backend frame",
                B2C,
                RULES,
                frame(0x81, true, b"x"),
                Violation::MaskedBackendFrame,
                1002,
            ),
            (
                "reserved opcode",
                C2B,
                RULES,
                client(0x83, b""),
                Violation::ReservedOpcode(3),
                1002,
            ),
            (
                "reserved control opcode",
                C2B,
                RULES,
                client(0x8b, b""),
                Violation::ReservedOpcode(11),
                1002,
            ),
            (
                "fragmented ping",
                C2B,
                RULES,
                client(0x09, b""),
                Violation::FragmentedControlFrame,
                1002,
            ),
            (
                "ping over 125",
                C2B,
                UNKNOWN_EXTENSION,
                client(0x89, &[0; 126]),
                Violation::ControlFrameTooLong { len: 126 },
                1002,
            ),
            (
                "RSV1 on a ping, even with deflate",
                C2B,
                DEFLATE,
                client(0xc9, b""),
                Violation::ReservedBits(0b100),
                1002,
            ),
            (
                "RSV1 without an extension",
                C2B,
                RULES,
                client(0xc1, b""),
                Violation::ReservedBits(0b100),
                1002,
            ),
            (
                "RSV2 with deflate",
                C2B,
                DEFLATE,
                client(0xa1, b""),
                Violation::ReservedBits(0b010),
                1002,
            ),
            (
                "continuation with no message",
                C2B,
                RULES,
                client(0x80, b""),
                Violation::UnexpectedContinuation,
                1002,
            ),
            (
                "frame over max_frame_bytes",
                C2B,
                RULES,
                client(0x82, &[0; 101]),
                Violation::FrameTooLarge { len: 101, max: 100 },
                1009,
            ),
            (
                "non-minimal length",
                C2B,
                RULES,
                vec![0x81, 0xfe, 0x00, 0x05, 0, 0, 0, 0, 1, 2, 3, 4, 5],
                Violation::NonMinimalLength,
                1002,
            ),
            (
                "64-bit length with the top bit",
                C2B,
                RULES,
                vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                Violation::LengthTopBitSet,
                1002,
            ),
            (
                "close with one byte",
                C2B,
                RULES,
                client(0x88, &[3]),
                Violation::BadClose(CloseError::OneBytePayload),
                1002,
            ),
            (
                "close with code 1005",
                C2B,
                RULES,
                close(1005, b""),
                Violation::BadClose(CloseError::ForbiddenCode(1005)),
                1002,
            ),
            (
                "close with code 999",
                C2B,
                RULES,
                close(999, b""),
                Violation::BadClose(CloseError::ForbiddenCode(999)),
                1002,
            ),
            (
                "close with a reason not UTF-8",
                C2B,
                RULES,
                close(1000, &[0xff]),
                Violation::BadClose(CloseError::InvalidUtf8),
                1002,
            ),
        ];
        for (what, dir, rules, bad, violation, code) in table {
            let mut bytes = if dir == C2B {
                ok.clone()
            } else {
                frame(0x81, false, b"hi")
            };
            let good = bytes.len();
            bytes.extend_from_slice(&bad);
            bytes.extend_from_slice(&ok);
            let (pos, stop) = walk(dir, &rules, &bytes);
            assert_eq!((pos, stop), (good, Walk::Violation(violation)), "{what}");
            assert_eq!(violation.close_code().get(), code, "{what}");
        }
    }

    #[test]
    fn messages_are_checked_across_fragments() {
        use Direction::ClientToBackend as C2B;
        // 80 + 80 > max_message_bytes 150: the second fragment is refused.
        let first = client(0x01, &[0; 80]);
        let mut bytes = first.clone();
        bytes.extend(client(0x00, &[0; 80]));
        let (pos, stop) = walk(C2B, &RULES, &bytes);
        assert_eq!(pos, first.len());
        assert_eq!(
            stop,
            Walk::Violation(Violation::MessageTooLarge { len: 160, max: 150 })
        );
        assert_eq!(
            Violation::MessageTooLarge { len: 0, max: 0 }
                .close_code()
                .get(),
            1009
        );
        // A new data frame inside an open message.
        let mut bytes = client(0x01, b"a");
        let open = bytes.len();
        bytes.extend(client(0x81, b"b"));
        assert_eq!(
            walk(C2B, &RULES, &bytes),
            (open, Walk::Violation(Violation::UnfinishedMessage))
        );
        // Control frames may come between fragments; the message then ends.
        let mut bytes = client(0x01, b"a");
        bytes.extend(client(0x89, b"ping"));
        bytes.extend(client(0x80, b"b"));
        bytes.extend(client(0x81, b"c"));
        assert_eq!(walk(C2B, &RULES, &bytes), (bytes.len(), Walk::NeedMore));
    }

    #[test]
    fn rsv_bits_follow_the_negotiated_extensions() {
        use Direction::ClientToBackend as C2B;
        // permessage-deflate: RSV1 on a message's first frame only.
        let mut bytes = client(0x41, b"a");
        let first = bytes.len();
        bytes.extend(client(0xc0, b"b"));
        assert_eq!(
            walk(C2B, &DEFLATE, &bytes),
            (first, Walk::Violation(Violation::ReservedBits(0b100)))
        );
        // An extension sluice does not know: any bit, any data frame.
        let mut bytes = client(0x71, b"a");
        bytes.extend(client(0xf0, b"b"));
        assert_eq!(
            walk(C2B, &UNKNOWN_EXTENSION, &bytes),
            (bytes.len(), Walk::NeedMore)
        );
    }

    #[test]
    fn a_partial_header_or_close_frame_is_not_taken() {
        use Direction::ClientToBackend as C2B;
        let whole = close(1000, b"bye");
        for cut in 0..whole.len() {
            assert_eq!(
                walk(C2B, &RULES, &whole[..cut]),
                (0, Walk::NeedMore),
                "{cut}"
            );
        }
        assert_eq!(walk(C2B, &RULES, &whole), (whole.len(), Walk::NeedMore));
        // A data frame's header goes as soon as it is whole; its payload as
        // it comes.
        let data = client(0x82, &[7; 50]);
        assert_eq!(walk(C2B, &RULES, &data[..5]), (0, Walk::NeedMore));
        let mut s = Scanner::new(C2B);
        assert_eq!(s.walk(&RULES, &data[..6], &mut Open), (6, Walk::NeedMore));
        assert!(!s.at_boundary());
        assert_eq!(
            s.walk(&RULES, &data[6..20], &mut Open),
            (14, Walk::NeedMore)
        );
        assert_eq!(s.walk(&RULES, &data[20..], &mut Open), (36, Walk::NeedMore));
        assert!(s.at_boundary());
    }

    /// A gate that stops at the second boundary and refuses pings.
    struct Picky {
        boundaries: usize,
        taken: Vec<u8>,
    }

    impl Gate for Picky {
        type Stop = &'static str;
        fn boundary(&mut self) -> Option<&'static str> {
            self.boundaries += 1;
            (self.boundaries == 3).then_some("close requested")
        }
        fn take(&mut self, frame: &Header) -> Result<(), &'static str> {
            if frame.opcode == frame::opcode::PING {
                return Err("rate");
            }
            self.taken.push(frame.opcode);
            Ok(())
        }
    }

    #[test]
    fn the_gate_stops_at_boundaries_and_before_frames() {
        use Direction::ClientToBackend as C2B;
        let a = client(0x81, b"a");
        let mut bytes = a.clone();
        bytes.extend(client(0x89, b""));
        let mut gate = Picky {
            boundaries: 0,
            taken: vec![],
        };
        let mut s = Scanner::new(C2B);
        // Refused ping: the walk stops before it, and it comes again.
        assert_eq!(
            s.walk(&RULES, &bytes, &mut gate),
            (a.len(), Walk::Gate("rate"))
        );
        assert_eq!(gate.taken, [1]);
        // Third boundary: a stop before anything is looked at.
        assert_eq!(
            s.walk(&RULES, &bytes[a.len()..], &mut gate),
            (0, Walk::Gate("close requested"))
        );
    }

    /// Drops Pongs whose payload is "own".
    struct OwnPong;

    impl Gate for OwnPong {
        type Stop = usize;
        fn boundary(&mut self) -> Option<usize> {
            None
        }
        fn take(&mut self, _: &Header) -> Result<(), usize> {
            Ok(())
        }
        fn pong(&mut self, h: &Header, wire: &[u8]) -> Option<usize> {
            let mut payload = wire[usize::from(h.header_len)..].to_vec();
            if let Some(mask) = h.mask {
                frame::apply_mask(&mut payload, mask, 0);
            }
            (payload == b"own").then_some(wire.len())
        }
    }

    /// A Pong is held back until whole, then offered to the gate, which may
    /// stop before it (to drop it); other Pongs pass like any frame.
    #[test]
    fn pongs_are_whole_before_the_gate_sees_them() {
        use Direction::ClientToBackend as C2B;
        let own = client(0x8a, b"own");
        for cut in 0..own.len() {
            let mut s = Scanner::new(C2B);
            assert_eq!(
                s.walk(&RULES, &own[..cut], &mut OwnPong),
                (0, Walk::NeedMore)
            );
        }
        let text = client(0x81, b"hi");
        let other = client(0x8a, b"not");
        let mut bytes = text.clone();
        bytes.extend(&own);
        bytes.extend(&other);
        let mut s = Scanner::new(C2B);
        assert_eq!(
            s.walk(&RULES, &bytes, &mut OwnPong),
            (text.len(), Walk::Gate(own.len()))
        );
        assert!(s.at_boundary());
        let rest = &bytes[text.len() + own.len()..];
        assert_eq!(
            s.walk(&RULES, rest, &mut OwnPong),
            (other.len(), Walk::NeedMore)
        );
    }
}
