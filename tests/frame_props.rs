//! Property tests for the relay's scanner (`sluice::relay::scan`) and
//! `sluice::frame`: the scanner, fed randomly chunked streams of valid
//! frames, must take exactly the frames that were written (the same ones
//! tungstenite's independent header parser finds), and on any stream its
//! verdict must not depend on how the bytes were split.

use std::io::Cursor;

use proptest::prelude::*;
use sluice::frame::{apply_mask, opcode, parse_header, Header, MAX_HEADER_LEN};
use sluice::relay::scan::{Gate, Rules, Scanner, Violation, Walk};
use sluice::relay::Direction;
use tungstenite::protocol::frame::FrameHeader;

#[derive(Clone, Debug)]
struct FrameSpec {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload_len: u64,
    fill: u8,
}

fn payload_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(125),
        Just(126),
        Just(65535),
        Just(65536),
        0u64..=200,
        0u64..=70_000,
    ]
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        any::<bool>(),
        0u8..8,
        prop::sample::select(vec![
            opcode::CONTINUATION,
            opcode::TEXT,
            opcode::BINARY,
            opcode::CLOSE,
            opcode::PING,
            opcode::PONG,
        ]),
        prop::option::of(any::<[u8; 4]>()),
        payload_len(),
        any::<u8>(),
    )
        .prop_map(|(fin, rsv, opcode, mask, payload_len, fill)| {
            // §5.5: control frames are unfragmented with payloads of at most 125 bytes.
            let control = opcode & 0x8 != 0;
            FrameSpec {
                fin: fin || control,
                rsv,
                opcode,
                mask,
                payload_len: if control {
                    payload_len % 126
                } else {
                    payload_len
                },
                fill,
            }
        })
}

/// Frames whose payloads add up to at most ~256 KiB.
fn frame_specs() -> impl Strategy<Value = Vec<FrameSpec>> {
    prop::collection::vec(frame_spec(), 0..12).prop_map(|mut v| {
        let mut total = 0u64;
        v.retain(|f| {
            total += f.payload_len;
            total <= 256 << 10
        });
        v
    })
}

/// Minimal-length encoding, as every conforming endpoint writes it.
fn serialize(specs: &[FrameSpec]) -> (Vec<u8>, Vec<(u64, Header)>) {
    let mut out = Vec::new();
    let mut expected = Vec::new();
    for f in specs {
        let start = out.len();
        out.push(u8::from(f.fin) << 7 | f.rsv << 4 | f.opcode);
        let m = if f.mask.is_some() { 0x80 } else { 0 };
        match f.payload_len {
            n @ 0..=125 => out.push(m | n as u8),
            n @ 126..=0xFFFF => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        if let Some(key) = f.mask {
            out.extend_from_slice(&key);
        }
        let header_len = (out.len() - start) as u8;
        // Payload bytes that often look like headers, so a scanner that
        // miscounts would resynchronise on garbage rather than fail quietly.
        let body = out.len();
        out.extend((0..f.payload_len).map(|i| f.fill.wrapping_add((i as u8).wrapping_mul(31))));
        if let Some(key) = f.mask {
            apply_mask(&mut out[body..], key, 0);
        }
        expected.push((
            start as u64,
            Header {
                fin: f.fin,
                rsv: f.rsv,
                opcode: f.opcode,
                mask: f.mask,
                payload_len: f.payload_len,
                header_len,
            },
        ));
    }
    (out, expected)
}

/// Feeds `stream` to the relay's scanner in chunks of `sizes` (cycled), the
/// way the relay does: bytes the scanner did not take (a partial header or
/// Close frame) are handed to it again with the next chunk behind them.
/// Returns the bytes it let through, the violation that stopped it (if any)
/// and the headers it took, in order.
fn walk_chunked(
    stream: &[u8],
    sizes: &[usize],
    dir: Direction,
    rules: &Rules,
) -> (usize, Option<Violation>, Vec<Header>) {
    let mut scanner = Scanner::new(dir);
    let mut gate = Taken(Vec::new());
    let mut held: Vec<u8> = Vec::new();
    let mut passed = 0;
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        held.extend_from_slice(chunk);
        let (n, walk) = scanner.walk(rules, &held, &mut gate);
        passed += n;
        held.drain(..n);
        match walk {
            Walk::NeedMore => {}
            Walk::Violation(v) => return (passed, Some(v), gate.0),
            Walk::Gate(never) => match never {},
        }
    }
    (passed, None, gate.0)
}

/// A gate that takes every frame and remembers its header.
struct Taken(Vec<Header>);

impl Gate for Taken {
    type Stop = std::convert::Infallible;
    fn boundary(&mut self) -> Option<Self::Stop> {
        None
    }
    fn take(&mut self, frame: &Header) -> Result<(), Self::Stop> {
        self.0.push(*frame);
        Ok(())
    }
}

/// Rules that every generated valid stream obeys: any size, no extension.
const OPEN_RULES: Rules = Rules {
    max_frame_bytes: u64::MAX >> 1,
    max_message_bytes: u64::MAX >> 1,
    allowed_rsv: 0,
    allowed_rsv_continuation: 0,
};

/// Client frames as a conforming client sends them (RFC 6455 §5): masked,
/// RSV 0, messages either whole or a first frame then continuations, control
/// frames anywhere (also between fragments), Close payloads valid.
fn valid_client_frames() -> impl Strategy<Value = Vec<FrameSpec>> {
    prop::collection::vec(
        (
            0u8..4,
            any::<bool>(),
            any::<[u8; 4]>(),
            payload_len(),
            any::<u8>(),
        ),
        0..12,
    )
    .prop_map(|raw| {
        let mut out = Vec::new();
        let mut open = false;
        let mut total = 0u64;
        for (kind, last, key, len, fill) in raw {
            total += len;
            if total > 256 << 10 {
                break;
            }
            let spec = |fin, opcode, payload_len| FrameSpec {
                fin,
                rsv: 0,
                opcode,
                mask: Some(key),
                payload_len,
                fill,
            };
            match kind {
                // A ping (or pong) may come anywhere.
                0 => out.push(spec(true, opcode::PING, len % 126)),
                1 => out.push(spec(true, opcode::PONG, len % 126)),
                // A data frame: starts a message, or continues the open one.
                _ => {
                    let op = if open {
                        opcode::CONTINUATION
                    } else {
                        opcode::BINARY
                    };
                    out.push(spec(last, op, len));
                    open = !last;
                }
            }
        }
        if open {
            out.push(FrameSpec {
                fin: true,
                rsv: 0,
                opcode: opcode::CONTINUATION,
                mask: Some([1, 2, 3, 4]),
                payload_len: 0,
                fill: 0,
            });
        }
        out
    })
}

/// Independent decoder: tungstenite's header parser over the whole stream.
fn tungstenite_frames(stream: &[u8]) -> Vec<(u64, Header)> {
    let mut cur = Cursor::new(stream);
    let mut frames = Vec::new();
    while (cur.position() as usize) < stream.len() {
        let start = cur.position();
        let (h, len) = FrameHeader::parse(&mut cur)
            .expect("tungstenite accepts valid frames")
            .expect("stream ends on a frame boundary");
        let header_len = (cur.position() - start) as u8;
        frames.push((
            start,
            Header {
                fin: h.is_final,
                rsv: u8::from(h.rsv1) << 2 | u8::from(h.rsv2) << 1 | u8::from(h.rsv3),
                opcode: u8::from(h.opcode),
                mask: h.mask,
                payload_len: len,
                header_len,
            },
        ));
        cur.set_position(cur.position() + len);
    }
    frames
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![3 => 1usize..=16, 1 => 1usize..=4096, 1 => 1usize..=100_000],
        1..32,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A valid client stream, split anywhere: the relay's scanner takes
    /// every byte and exactly the frames that were written, the same ones
    /// tungstenite's independent parser finds.
    #[test]
    fn chunked_scan_matches_tungstenite(specs in valid_client_frames(), sizes in chunk_sizes()) {
        let (stream, expected) = serialize(&specs);

        let reference = tungstenite_frames(&stream);
        prop_assert_eq!(&reference, &expected);

        let (passed, violation, taken) =
            walk_chunked(&stream, &sizes, Direction::ClientToBackend, &OPEN_RULES);
        prop_assert_eq!(violation, None);
        prop_assert_eq!(passed, stream.len());
        let headers: Vec<Header> = expected.iter().map(|(_, h)| *h).collect();
        prop_assert_eq!(taken, headers);
    }

    /// Any frames at all (bad RSV bits, stray continuations, unmasked or
    /// oversized frames), split anywhere: where the scanner stops and why
    /// does not depend on how the bytes arrived.
    #[test]
    fn verdicts_do_not_depend_on_read_sizes(
        specs in frame_specs(),
        sizes in chunk_sizes(),
        backend in any::<bool>(),
        small in any::<bool>(),
    ) {
        let (stream, _) = serialize(&specs);
        let dir = if backend { Direction::BackendToClient } else { Direction::ClientToBackend };
        let rules = Rules {
            max_frame_bytes: if small { 1000 } else { 1 << 20 },
            max_message_bytes: if small { 1500 } else { 1 << 20 },
            allowed_rsv: if small { 0b100 } else { 0 },
            allowed_rsv_continuation: 0,
        };
        let whole = walk_chunked(&stream, &[usize::MAX], dir, &rules);
        let chunked = walk_chunked(&stream, &sizes, dir, &rules);
        prop_assert_eq!(chunked, whole);
    }

    #[test]
    fn parse_header_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
        let got = parse_header(&bytes);
        if let Ok(Some(h)) = got {
            prop_assert!((2..=MAX_HEADER_LEN).contains(&usize::from(h.header_len)));
            prop_assert!(usize::from(h.header_len) <= bytes.len());
            prop_assert!(h.payload_len >> 63 == 0);
            prop_assert!(h.rsv < 8 && h.opcode < 16);
        }
        // Agree with tungstenite wherever it has an opinion: it rejects
        // reserved opcodes and does not check length minimality.
        let reserved = bytes.first().is_some_and(|b| matches!(b & 0xF, 3..=7 | 11..=15));
        let mut cur = Cursor::new(&bytes[..]);
        match (got, FrameHeader::parse(&mut cur)) {
            (Ok(None), Ok(None)) => {}
            (Ok(None), Err(_)) => prop_assert!(false, "we wait, tungstenite fails"),
            (Ok(Some(h)), Ok(Some((t, len)))) => {
                prop_assert_eq!(u64::from(h.header_len), cur.position());
                prop_assert_eq!(h.payload_len, len);
                prop_assert_eq!(h.mask, t.mask);
                prop_assert_eq!(h.opcode, u8::from(t.opcode));
            }
            (Ok(Some(_)), Err(_)) => prop_assert!(reserved),
            (Err(_), _) => {}
            (Ok(_), Ok(_)) => prop_assert!(false, "completeness disagrees"),
        }
    }

    #[test]
    fn streaming_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        split in any::<prop::sample::Index>(),
    ) {
        let cut = split.index(bytes.len() + 1);
        let mut consumed = 0usize;
        let mut buf = &bytes[..];
        while let Ok(Some(h)) = parse_header(buf) {
            let skip = usize::from(h.header_len).saturating_add(usize::try_from(h.payload_len).unwrap_or(usize::MAX));
            let skip = skip.min(buf.len());
            consumed += skip;
            buf = &buf[skip..];
        }
        prop_assert!(consumed <= bytes.len());
        let _ = parse_header(&bytes[..cut]);
    }

    #[test]
    fn apply_mask_in_pieces(
        data in prop::collection::vec(any::<u8>(), 0..200),
        key in any::<[u8; 4]>(),
        base in any::<u32>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let base = u64::from(base);
        let mut whole = data.clone();
        apply_mask(&mut whole, key, base);
        for (i, b) in data.iter().enumerate() {
            prop_assert_eq!(whole[i], b ^ key[((base + i as u64) % 4) as usize]);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
        points.push(0);
        points.push(data.len());
        points.sort_unstable();
        let mut pieces = data.clone();
        for w in points.windows(2) {
            apply_mask(&mut pieces[w[0]..w[1]], key, base + w[0] as u64);
        }
        prop_assert_eq!(pieces, whole);
    }
}
