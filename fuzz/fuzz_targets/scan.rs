//! The relay's scanner (`sluice::relay::scan`) over arbitrary bytes
//! delivered in two reads, both directions, two rule sets: it must never
//! panic, never let through more than it was given, and reach the same
//! verdict at the same byte whatever the split. Plus the Close-payload
//! checker, masking and Close encoding on the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::frame::{
    apply_mask, check_close_payload, encode_close, parse_header, CloseError, CLOSE_FRAME_MAX,
};
use sluice::relay::scan::{Open, Rules, Scanner, Violation, Walk};
use sluice::relay::Direction;

/// Feeds `reads` to a scanner the way the relay does (bytes it did not take
/// come again with the next read). Returns the bytes let through and the
/// violation that stopped it, if any.
fn scan(reads: &[&[u8]], dir: Direction, rules: &Rules) -> (usize, Option<Violation>) {
    let mut scanner = Scanner::new(dir);
    let mut held = Vec::new();
    let mut passed = 0;
    for read in reads {
        held.extend_from_slice(read);
        let (n, walk) = scanner.walk(rules, &held, &mut Open);
        assert!(n <= held.len());
        passed += n;
        held.drain(..n);
        match walk {
            Walk::NeedMore => {
                // Payload is never held back; at a boundary, only a partial
                // header or Close frame (2 + 4 + 125 bytes at most) is.
                if scanner.at_boundary() {
                    assert!(held.len() <= 2 + 4 + 125, "{} held", held.len());
                } else {
                    assert!(held.is_empty());
                }
            }
            Walk::Violation(v) => return (passed, Some(v)),
            Walk::Gate(never) => match never {},
        }
    }
    (passed, None)
}

const RULE_SETS: [Rules; 2] = [
    Rules {
        max_frame_bytes: 1 << 20,
        max_message_bytes: 1 << 24,
        allowed_rsv: 0,
        allowed_rsv_continuation: 0,
    },
    Rules {
        max_frame_bytes: 100,
        max_message_bytes: 150,
        allowed_rsv: 0b100,
        allowed_rsv_continuation: 0,
    },
];

fuzz_target!(|input: &[u8]| {
    let (split, data) = match input.split_first() {
        Some((s, rest)) => (usize::from(*s), rest),
        None => (0, input),
    };
    let split = if data.is_empty() {
        0
    } else {
        split % (data.len() + 1)
    };
    let (a, b) = data.split_at(split);
    for dir in [Direction::ClientToBackend, Direction::BackendToClient] {
        for rules in &RULE_SETS {
            let whole = scan(&[data], dir, rules);
            assert!(whole.0 <= data.len());
            // Splitting must not change what the scanner lets through or why
            // it stops.
            assert_eq!(scan(&[a, b], dir, rules), whole);
        }
    }

    match check_close_payload(data) {
        Ok(None) => assert!(data.is_empty()),
        Ok(Some(code)) => {
            assert_eq!(code.to_be_bytes(), [data[0], data[1]]);
            assert!(std::str::from_utf8(&data[2..]).is_ok());
        }
        Err(CloseError::OneBytePayload) => assert_eq!(data.len(), 1),
        Err(CloseError::ForbiddenCode(c)) => assert_eq!(c.to_be_bytes(), [data[0], data[1]]),
        Err(CloseError::InvalidUtf8) => assert!(std::str::from_utf8(&data[2..]).is_err()),
    }

    // Masking in two pieces at an arbitrary split equals the byte-by-byte rule.
    let key = [split as u8, 0x5a, split as u8 ^ 0xff, 0x01];
    let base = split as u64 * 7;
    let mut masked = data.to_vec();
    let (x, y) = masked.split_at_mut(split);
    apply_mask(x, key, base);
    apply_mask(y, key, base + split as u64);
    for (i, (m, d)) in masked.iter().zip(data).enumerate() {
        assert_eq!(*m, d ^ key[((base + i as u64) % 4) as usize]);
    }

    // encode_close output decodes back to the code and a prefix of the reason.
    let reason = String::from_utf8_lossy(data);
    let code = 3000 + (split as u16 % 2000);
    let mut out = [0u8; CLOSE_FRAME_MAX];
    let mask = (split % 2 == 0).then_some(key);
    let n = encode_close(code, &reason, mask, &mut out);
    let h = parse_header(&out[..n]).unwrap().unwrap();
    assert!(h.fin && h.opcode == 8 && h.mask == mask);
    let hl = usize::from(h.header_len);
    assert_eq!(hl as u64 + h.payload_len, n as u64);
    let payload = &mut out[hl..n];
    if let Some(k) = h.mask {
        apply_mask(payload, k, 0);
    }
    assert_eq!(check_close_payload(payload), Ok(Some(code)));
    assert!(reason.as_bytes().starts_with(&payload[2..]));
    // Truncation stops at the last char boundary at or below 123 bytes.
    let kept = payload.len() - 2;
    if reason.len() <= 123 {
        assert_eq!(kept, reason.len());
    } else {
        assert!((120..=123).contains(&kept) && reason.is_char_boundary(kept));
    }
});
