//! RFC 6455 §5.2 frame-header scanner for pass-through relaying.
//!
//! This module owns the byte-level facts about WebSocket frames: parsing a
//! frame header from the front of a buffer, checking and encoding Close
//! frames (§5.5.1, §7.4), and applying the §5.3 masking transform.
//!
//! It does not own policy or IO. Whether a reserved opcode, an RSV bit, an
//! oversized or fragmented control frame, or an unmasked client frame is
//! acceptable is decided by the relay, which also reads and writes the
//! sockets. Everything here is pure, allocation-free and total: no input
//! makes these functions panic.

/// Longest possible header: 2 fixed bytes, 8 bytes of 64-bit length, 4 bytes of masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// Opcodes defined by RFC 6455 §5.2 (§11.8 registry).
pub mod opcode {
    pub const CONTINUATION: u8 = 0;
    pub const TEXT: u8 = 1;
    pub const BINARY: u8 = 2;
    pub const CLOSE: u8 = 8;
    pub const PING: u8 = 9;
    pub const PONG: u8 = 10;
}

/// One decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1..RSV3 as the 3 bits 0b100 (RSV1), 0b010 (RSV2), 0b001 (RSV3)
    pub rsv: u8,
    /// raw 4-bit opcode (reserved ones included; policy is the caller's)
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// 2..=14: bytes this header occupies on the wire
    pub header_len: u8,
}

impl Header {
    /// §5.5: control frames are those whose opcode has the high bit set.
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// §5.6: the data frames that start a message (continuations are neither).
    pub fn is_data(&self) -> bool {
        self.opcode == opcode::TEXT || self.opcode == opcode::BINARY
    }

    /// §5.2: %x3-7 are reserved non-control, %xB-F reserved control opcodes.
    pub fn is_reserved_opcode(&self) -> bool {
        matches!(self.opcode, 3..=7 | 11..=15)
    }
}

/// Header encodings that RFC 6455 forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// 16-bit length < 126, or 64-bit length <= 0xFFFF (RFC 6455 §5.2 "the minimal number of bytes MUST be used")
    NonMinimalLength,
    /// 64-bit length with the most significant bit set
    LengthTopBitSet,
}

/// Parse one header at the start of `buf`. `Ok(None)`: not enough bytes yet (caller keeps them and reads more).
///
/// A malformed length is reported as soon as the length field is complete,
/// even if the masking key has not arrived yet, so the relay can fail early.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;

    // §5.2 Payload length: 0-125 is the length itself, 126 means a 16-bit
    // length follows, 127 a 64-bit one (both in network byte order).
    let (payload_len, mut pos) = match len7 {
        126 => {
            let Some(bytes) = buf.get(2..4).and_then(|s| <[u8; 2]>::try_from(s).ok()) else {
                return Ok(None);
            };
            let len = u16::from_be_bytes(bytes);
            // §5.2: "the minimal number of bytes MUST be used to encode the length".
            if len < 126 {
                return Err(HeaderError::NonMinimalLength);
            }
            (u64::from(len), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(bytes);
            // §5.2: "the most significant bit MUST be 0" for the 64-bit form.
            if len >> 63 != 0 {
                return Err(HeaderError::LengthTopBitSet);
            }
            // §5.2: minimal encoding; anything that fits 16 bits must use the 16-bit form.
            if len <= 0xFFFF {
                return Err(HeaderError::NonMinimalLength);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };

    // §5.2 Masking-key: present iff the MASK bit is set, right after the length.
    let mask = if masked {
        let Some(key) = buf
            .get(pos..pos + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
        else {
            return Ok(None);
        };
        pos += 4;
        Some(key)
    } else {
        None
    };

    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        mask,
        payload_len,
        // pos <= MAX_HEADER_LEN (14), so this never truncates.
        header_len: pos as u8,
    }))
}

/// XOR `buf` with the masking key, where `offset` is the position of buf[0] within the frame payload (so a payload may be unmasked in pieces).
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: u64) {
    // Misaligned vector stores that straddle cache lines cost several times
    // as much as aligned ones, so the head up to a 32-byte boundary goes
    // bytewise and the rest in aligned blocks. (If align_offset ever gives
    // up it returns usize::MAX, which only makes the whole buffer bytewise.)
    let head = buf.as_ptr().align_offset(32).min(buf.len());
    let (head_bytes, rest) = buf.split_at_mut(head);
    let phase = (offset % 4) as usize;
    for (i, b) in head_bytes.iter_mut().enumerate() {
        *b ^= mask[(phase + i) % 4];
    }
    mask_blocks(rest, rotate_key(mask, phase + head));
}

/// §5.3: payload octet i is XORed with mask[i mod 4]; starting at octet
/// `start`, that is the key rotated left by `start mod 4`.
fn rotate_key(mask: [u8; 4], start: usize) -> [u8; 4] {
    let k = start % 4;
    [
        mask[k],
        mask[(k + 1) % 4],
        mask[(k + 2) % 4],
        mask[(k + 3) % 4],
    ]
}

/// XOR with `key` repeating from its first byte, 32 bytes at a time.
fn mask_blocks(buf: &mut [u8], key: [u8; 4]) {
    // 32 is a multiple of 4, so every block sees the key at the same phase
    // and the compiler can keep one vector of key bytes in a register.
    let mut wide = [0u8; 32];
    for (i, w) in wide.iter_mut().enumerate() {
        *w = key[i % 4];
    }
    let mut blocks = buf.chunks_exact_mut(32);
    for block in &mut blocks {
        for (b, k) in block.iter_mut().zip(wide) {
            *b ^= k;
        }
    }
    for (b, k) in blocks.into_remainder().iter_mut().zip(wide) {
        *b ^= k;
    }
}

/// Why a Close payload may not be relayed as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseError {
    OneBytePayload,
    ForbiddenCode(u16),
    InvalidUtf8,
}

/// Check an *unmasked* Close payload (RFC 6455 §5.5.1, §7.4). Returns the code if any (empty payload = Ok(None)).
/// Codes that may not be sent: 0-999, 1004, 1005, 1006, 1015, 1016-2999 (none registered there beyond 1000-1003,1007-1014), >= 5000. 1000-1003, 1007-1014 and 3000-4999 are fine.
///
/// The 125-byte control payload limit (§5.5) is a header matter and is left
/// to the caller, who sees `payload_len` before the payload.
pub fn check_close_payload(payload: &[u8]) -> Result<Option<u16>, CloseError> {
    let (code, reason) = match payload {
        // §5.5.1: the body is optional.
        [] => return Ok(None),
        // §5.5.1: if there is a body, its first two bytes are the status code.
        [_] => return Err(CloseError::OneBytePayload),
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
    };
    // §7.4.1/§7.4.2: 0-999 unused, 1004 reserved, 1005/1006/1015 must never be
    // on the wire, 1016-2999 are for the protocol itself (IANA has registered
    // 1012-1014 there), 3000-4999 are for libraries and applications.
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(CloseError::ForbiddenCode(code));
    }
    // §5.5.1: the reason "is not guaranteed to be human readable" but MUST be UTF-8.
    if core::str::from_utf8(reason).is_err() {
        return Err(CloseError::InvalidUtf8);
    }
    Ok(Some(code))
}

/// Room for the largest close frame sluice writes: 2 header + 4 mask + 2 code + up to 123 reason bytes.
pub const CLOSE_FRAME_MAX: usize = 131;

/// §5.5: control payloads are at most 125 bytes, two of which are the code.
const CLOSE_REASON_MAX: usize = 123;

/// Encode a FIN Close frame with `code` and `reason` (truncated to 123 bytes at a char boundary) into `out`; masked with `mask` when Some (sluice is the client toward the backend). Returns the number of bytes written.
///
/// `code` is written as given: choosing a sendable one is the caller's job.
pub fn encode_close(
    code: u16,
    reason: &str,
    mask: Option<[u8; 4]>,
    out: &mut [u8; CLOSE_FRAME_MAX],
) -> usize {
    // Cutting inside a code point would make the reason invalid UTF-8, which
    // §5.5.1 forbids and a peer must reject.
    let mut cut = reason.len().min(CLOSE_REASON_MAX);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    encode_control(opcode::CLOSE, &[&code.to_be_bytes(), reason], mask, out)
}

/// A FIN control frame of `opcode` whose payload is `parts` one after the
/// other (at most 125 bytes, so the 7-bit length fits, §5.2, §5.5), masked
/// with `mask` when Some, written to the start of `out`. Returns the number
/// of bytes written.
fn encode_control(opcode: u8, parts: &[&[u8]], mask: Option<[u8; 4]>, out: &mut [u8]) -> usize {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert!(payload_len <= 125);
    // §5.5: control frames are never fragmented, so FIN is set. §5.2: RSV bits
    // only carry meaning for a negotiated extension, and sluice originates
    // this frame itself, under none.
    out[0] = 0x80 | opcode;
    out[1] = payload_len as u8 | if mask.is_some() { 0x80 } else { 0 };
    let mut pos = 2;
    if let Some(key) = mask {
        out[2..6].copy_from_slice(&key);
        pos = 6;
    }
    let payload = &mut out[pos..pos + payload_len];
    let mut at = 0;
    for part in parts {
        payload[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    // §5.3: a client MUST mask every frame it sends to the server.
    if let Some(key) = mask {
        apply_mask(payload, key, 0);
    }
    pos + payload_len
}

/// The payload of sluice's own keep-alive Pings.
pub const PING_TOKEN_LEN: usize = 8;
/// Room for sluice's Ping: 2 header + 4 mask + the token.
pub const PING_FRAME_MAX: usize = 2 + 4 + PING_TOKEN_LEN;

/// Encode a FIN Ping frame carrying `token` into `out`, masked with `mask`
/// when Some (toward the backend). Returns the number of bytes written.
pub fn encode_ping(
    token: [u8; PING_TOKEN_LEN],
    mask: Option<[u8; 4]>,
    out: &mut [u8; PING_FRAME_MAX],
) -> usize {
    encode_control(opcode::PING, &[&token], mask, out)
}

/// Unpredictable bytes for masking keys and `Sec-WebSocket-Key`s that
/// sluice makes itself (RFC 6455 §5.3, §4.1), from the operating system's
/// CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // Masking keys and Sec-WebSocket-Keys need strong entropy (RFC 6455
    // §5.3, §10.3); sluice makes them only for its own Close frames and h2
    // handshakes, so one system call each costs nothing that matters.
    getrandom::fill(&mut out).expect("the operating system's random source failed");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn hdr(
        fin: bool,
        rsv: u8,
        opcode: u8,
        mask: Option<[u8; 4]>,
        payload_len: u64,
        header_len: u8,
    ) -> Header {
        Header {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
            header_len,
        }
    }

    /// (input, expected) for complete, valid headers (trailing payload bytes included where useful).
    fn valid_table() -> Vec<(Vec<u8>, Header)> {
        vec![
            // RFC 6455 §5.7 examples.
            (
                vec![0x81, 0x05, b'H', b'e', b'l', b'l', b'o'],
                hdr(true, 0, opcode::TEXT, None, 5, 2),
            ),
            (
                vec![
                    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
                ],
                hdr(true, 0, opcode::TEXT, Some(KEY), 5, 6),
            ),
            (vec![0x01, 0x03], hdr(false, 0, opcode::TEXT, None, 3, 2)),
            (
                vec![0x80, 0x02],
                hdr(true, 0, opcode::CONTINUATION, None, 2, 2),
            ),
            (vec![0x89, 0x00], hdr(true, 0, opcode::PING, None, 0, 2)),
            (
                vec![0x8a, 0x80, 1, 2, 3, 4],
                hdr(true, 0, opcode::PONG, Some([1, 2, 3, 4]), 0, 6),
            ),
            (
                vec![0x82, 0x7e, 0x01, 0x00],
                hdr(true, 0, opcode::BINARY, None, 256, 4),
            ),
            (
                vec![0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0],
                hdr(true, 0, opcode::BINARY, None, 65536, 10),
            ),
            // Length boundaries of each encoding.
            (vec![0x82, 0x7d], hdr(true, 0, 2, None, 125, 2)),
            (vec![0x82, 0x7e, 0x00, 0x7e], hdr(true, 0, 2, None, 126, 4)),
            (
                vec![0x82, 0x7e, 0xff, 0xff],
                hdr(true, 0, 2, None, 65535, 4),
            ),
            (
                vec![0x82, 0xfe, 0x00, 0x7e, 9, 8, 7, 6],
                hdr(true, 0, 2, Some([9, 8, 7, 6]), 126, 8),
            ),
            (
                vec![0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                hdr(true, 0, 2, None, i64::MAX as u64, 10),
            ),
            (
                vec![0x02, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0xa, 0xb, 0xc, 0xd],
                hdr(false, 0, 2, Some([0xa, 0xb, 0xc, 0xd]), 1 << 32, 14),
            ),
            // RSV bits map to 0b100 / 0b010 / 0b001.
            (vec![0xc1, 0x00], hdr(true, 0b100, 1, None, 0, 2)),
            (vec![0xa1, 0x00], hdr(true, 0b010, 1, None, 0, 2)),
            (vec![0x91, 0x00], hdr(true, 0b001, 1, None, 0, 2)),
            (vec![0x71, 0x00], hdr(false, 0b111, 1, None, 0, 2)),
            // Reserved opcodes are reported raw.
            (vec![0x83, 0x00], hdr(true, 0, 3, None, 0, 2)),
            (vec![0x87, 0x01], hdr(true, 0, 7, None, 1, 2)),
            (vec![0x8b, 0x00], hdr(true, 0, 11, None, 0, 2)),
            (vec![0xff, 0x00], hdr(true, 0b111, 15, None, 0, 2)),
        ]
    }

    #[test]
    fn parses_valid_headers() {
        for (input, want) in valid_table() {
            assert_eq!(parse_header(&input), Ok(Some(want)), "input {input:02x?}");
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for (input, want) in valid_table() {
            let hl = usize::from(want.header_len);
            for cut in 0..hl {
                assert_eq!(
                    parse_header(&input[..cut]),
                    Ok(None),
                    "{input:02x?} cut at {cut}"
                );
            }
            for cut in hl..=input.len() {
                assert_eq!(
                    parse_header(&input[..cut]),
                    Ok(Some(want)),
                    "{input:02x?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let table: &[(&[u8], HeaderError)] = &[
            (&[0x82, 0x7e, 0x00, 0x00], HeaderError::NonMinimalLength),
            (&[0x82, 0x7e, 0x00, 0x7d], HeaderError::NonMinimalLength),
            (
                &[0x82, 0xfe, 0x00, 0x05, 1, 2, 3, 4],
                HeaderError::NonMinimalLength,
            ),
            (
                &[0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0],
                HeaderError::NonMinimalLength,
            ),
            (
                &[0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 5],
                HeaderError::NonMinimalLength,
            ),
            (
                &[0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
                HeaderError::NonMinimalLength,
            ),
            (
                &[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0],
                HeaderError::LengthTopBitSet,
            ),
            (
                &[
                    0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
                ],
                HeaderError::LengthTopBitSet,
            ),
        ];
        for &(input, want) in table {
            assert_eq!(parse_header(input), Err(want), "input {input:02x?}");
            // Detected as soon as the length field is complete, before any mask key.
            let len_end = if input[1] & 0x7f == 126 { 4 } else { 10 };
            for cut in 0..len_end {
                assert_eq!(
                    parse_header(&input[..cut]),
                    Ok(None),
                    "{input:02x?} cut at {cut}"
                );
            }
            for cut in len_end..=input.len() {
                assert_eq!(
                    parse_header(&input[..cut]),
                    Err(want),
                    "{input:02x?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn opcode_classes() {
        let class = |op: u8| {
            let h = hdr(true, 0, op, None, 0, 2);
            (h.is_control(), h.is_data(), h.is_reserved_opcode())
        };
        let want = [
            (false, false, false), // 0 continuation
            (false, true, false),  // 1 text
            (false, true, false),  // 2 binary
            (false, false, true),
            (false, false, true),
            (false, false, true),
            (false, false, true),
            (false, false, true), // 7
            (true, false, false), // 8 close
            (true, false, false), // 9 ping
            (true, false, false), // 10 pong
            (true, false, true),
            (true, false, true),
            (true, false, true),
            (true, false, true),
            (true, false, true), // 15
        ];
        for (op, w) in want.iter().enumerate() {
            assert_eq!(class(op as u8), *w, "opcode {op}");
        }
    }

    #[test]
    fn never_panics_on_short_or_odd_input() {
        // Every 2-byte prefix combined with a few tails.
        for b0 in 0..=255u8 {
            for b1 in 0..=255u8 {
                for tail in [&[][..], &[0xff; 12][..], &[0; 12][..]] {
                    let mut buf = vec![b0, b1];
                    buf.extend_from_slice(tail);
                    if let Ok(Some(h)) = parse_header(&buf) {
                        assert!((2..=14).contains(&h.header_len));
                        assert!(usize::from(h.header_len) <= buf.len());
                    }
                }
            }
        }
    }

    #[test]
    fn close_payloads() {
        let mut ok_codes: Vec<u16> = (1000..=1003)
            .chain(1007..=1014)
            .chain(3000..=4999)
            .collect();
        ok_codes.sort_unstable();
        type Case<'a> = (&'a [u8], Result<Option<u16>, CloseError>);
        let table: &[Case] = &[
            (b"", Ok(None)),
            (&[0x03], Err(CloseError::OneBytePayload)),
            (&[0x03, 0xe8], Ok(Some(1000))),
            (b"\x03\xe8bye", Ok(Some(1000))),
            (b"\x03\xe9\xc3\xa9t\xc3\xa9", Ok(Some(1001))),
            (&[0x03, 0xf3], Ok(Some(1011))),
            (&[0x03, 0xf6], Ok(Some(1014))),
            (&[0x0b, 0xb8], Ok(Some(3000))),
            (&[0x13, 0x87], Ok(Some(4999))),
            (&[0x00, 0x00], Err(CloseError::ForbiddenCode(0))),
            (&[0x03, 0xe7], Err(CloseError::ForbiddenCode(999))),
            (&[0x03, 0xec], Err(CloseError::ForbiddenCode(1004))),
            (&[0x03, 0xed], Err(CloseError::ForbiddenCode(1005))),
            (&[0x03, 0xee], Err(CloseError::ForbiddenCode(1006))),
            (&[0x03, 0xf7], Err(CloseError::ForbiddenCode(1015))),
            (&[0x03, 0xf8], Err(CloseError::ForbiddenCode(1016))),
            (&[0x0b, 0xb7], Err(CloseError::ForbiddenCode(2999))),
            (&[0x13, 0x88], Err(CloseError::ForbiddenCode(5000))),
            (&[0xff, 0xff], Err(CloseError::ForbiddenCode(65535))),
            (b"\x03\xe8\xff", Err(CloseError::InvalidUtf8)),
            (b"\x03\xe8ab\xc3", Err(CloseError::InvalidUtf8)),
            (b"\x03\xe8\xed\xa0\x80", Err(CloseError::InvalidUtf8)), // surrogate
            // A forbidden code is reported before a bad reason.
            (b"\x03\xed\xff", Err(CloseError::ForbiddenCode(1005))),
        ];
        for &(input, want) in table {
            assert_eq!(check_close_payload(input), want, "input {input:02x?}");
        }
        for code in 0..=u16::MAX {
            let got = check_close_payload(&code.to_be_bytes());
            if ok_codes.binary_search(&code).is_ok() {
                assert_eq!(got, Ok(Some(code)));
            } else {
                assert_eq!(got, Err(CloseError::ForbiddenCode(code)));
            }
        }
    }

    /// Decode `frame` the way the relay would and return (code, reason).
    fn decode_close(frame: &[u8]) -> (Header, Option<u16>, Vec<u8>) {
        let h = parse_header(frame).unwrap().unwrap();
        let start = usize::from(h.header_len);
        assert_eq!(frame.len(), start + h.payload_len as usize);
        let mut payload = frame[start..].to_vec();
        if let Some(key) = h.mask {
            apply_mask(&mut payload, key, 0);
        }
        let code = check_close_payload(&payload).unwrap();
        (h, code, payload.get(2..).unwrap_or_default().to_vec())
    }

    #[test]
    fn encode_close_round_trip() {
        let long_ascii = "x".repeat(200);
        // 'é' is 2 bytes: 61 of them = 122 bytes, the 62nd would straddle 123.
        let long_multi = "é".repeat(70);
        let cases: &[(u16, &str, &str)] = &[
            (1000, "", ""),
            (1001, "going away", "going away"),
            (1011, &long_ascii, &long_ascii[..123]),
            (4000, &long_multi, &long_multi[..122]),
            (1008, "a€", "a€"),
        ];
        for &(code, reason, want_reason) in cases {
            for mask in [
                None,
                Some(KEY),
                Some([0, 0, 0, 0]),
                Some([0xff, 1, 0x80, 7]),
            ] {
                let mut out = [0u8; CLOSE_FRAME_MAX];
                let n = encode_close(code, reason, mask, &mut out);
                let want_len = 2 + mask.map_or(0, |_| 4) + 2 + want_reason.len();
                assert_eq!(n, want_len);
                let (h, got_code, got_reason) = decode_close(&out[..n]);
                assert_eq!(
                    h,
                    hdr(
                        true,
                        0,
                        opcode::CLOSE,
                        mask,
                        2 + want_reason.len() as u64,
                        h.header_len
                    )
                );
                assert_eq!(
                    usize::from(h.header_len),
                    if mask.is_some() { 6 } else { 2 }
                );
                assert_eq!(got_code, Some(code));
                assert_eq!(got_reason, want_reason.as_bytes());
            }
        }
        // Worst case fills the buffer exactly.
        let mut out = [0u8; CLOSE_FRAME_MAX];
        assert_eq!(
            encode_close(1000, &long_ascii, Some(KEY), &mut out),
            CLOSE_FRAME_MAX
        );
    }

    #[test]
    fn encode_close_matches_rfc_layout() {
        let mut out = [0u8; CLOSE_FRAME_MAX];
        let n = encode_close(1000, "ok", None, &mut out);
        assert_eq!(&out[..n], &[0x88, 0x04, 0x03, 0xe8, b'o', b'k']);
    }

    #[test]
    fn rfc_masked_example() {
        // §5.7: masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, KEY, 0);
        assert_eq!(&payload, b"Hello");
    }

    fn mask_bytewise(buf: &mut [u8], mask: [u8; 4], offset: u64) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= mask[((offset + i as u64) % 4) as usize];
        }
    }

    #[test]
    fn apply_mask_pieces_equal_one_go() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let original: Vec<u8> = (0..103u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, key, 0);
        let mut reference = original.clone();
        mask_bytewise(&mut reference, key, 0);
        assert_eq!(whole, reference);

        // Every split into two pieces, and several into many pieces.
        for cut in 0..=original.len() {
            let mut v = original.clone();
            let (a, b) = v.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut as u64);
            assert_eq!(v, whole, "cut {cut}");
        }
        for step in 1..=17 {
            let mut v = original.clone();
            for (i, chunk) in v.chunks_mut(step).enumerate() {
                apply_mask(chunk, key, (i * step) as u64);
            }
            assert_eq!(v, whole, "step {step}");
        }
        // Offsets beyond u32 and near u64::MAX keep the phase.
        for base in [1u64 << 40, u64::MAX - 200] {
            let mut a = original.clone();
            apply_mask(&mut a, key, base);
            let mut b = original.clone();
            mask_bytewise(&mut b, key, base);
            assert_eq!(a, b, "base {base}");
        }
        // Masking twice is the identity.
        let mut twice = whole.clone();
        apply_mask(&mut twice, key, 0);
        assert_eq!(twice, original);
        apply_mask(&mut [], key, 5);
    }
}
