//! Streaming scan over arbitrary bytes delivered in two reads, plus the
//! Close-payload checker, masking and Close encoding on the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::frame::{
    apply_mask, check_close_payload, encode_close, parse_header, CloseError, CLOSE_FRAME_MAX,
    MAX_HEADER_LEN,
};

/// The relay's loop: keep an incomplete header in a fixed buffer, skip
/// payload bytes by count. Returns the bytes it accounted for.
fn scan(reads: &[&[u8]]) -> u64 {
    let mut pending = [0u8; MAX_HEADER_LEN];
    let mut pending_len = 0usize;
    let mut skip = 0u64;
    let mut consumed = 0u64;
    for &read in reads {
        let mut data = read;
        loop {
            let n = skip.min(data.len() as u64) as usize;
            skip -= n as u64;
            consumed += n as u64;
            data = &data[n..];
            if data.is_empty() {
                break;
            }
            let take = (MAX_HEADER_LEN - pending_len).min(data.len());
            pending[pending_len..pending_len + take].copy_from_slice(&data[..take]);
            let avail = &pending[..pending_len + take];
            match parse_header(avail) {
                Ok(Some(h)) => {
                    let hl = usize::from(h.header_len);
                    assert!((2..=MAX_HEADER_LEN).contains(&hl));
                    assert!(hl <= avail.len());
                    // A shorter prefix already returned Ok(None).
                    assert!(hl > pending_len);
                    // The same header must come out of any longer input.
                    assert_eq!(parse_header(&avail[..hl]), Ok(Some(h)));
                    assert!(h.payload_len >> 63 == 0);
                    let used = hl - pending_len;
                    consumed += used as u64;
                    data = &data[used..];
                    pending_len = 0;
                    skip = h.payload_len;
                }
                Ok(None) => {
                    assert_eq!(take, data.len(), "MAX_HEADER_LEN bytes always decide");
                    pending_len += take;
                    consumed += take as u64;
                    break;
                }
                Err(e) => {
                    // Every prefix up to the error was either incomplete or
                    // the same error: errors must not depend on read sizes.
                    for cut in 0..avail.len() {
                        let r = parse_header(&avail[..cut]);
                        assert!(r == Ok(None) || r == Err(e));
                    }
                    // Report where the bad frame starts, wherever the read split it.
                    return consumed - pending_len as u64;
                }
            }
        }
    }
    consumed
}

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
    let consumed = scan(&[a, b]);
    assert!(consumed <= data.len() as u64);
    // Splitting must not change what the scan sees.
    assert_eq!(consumed, scan(&[data]));

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
