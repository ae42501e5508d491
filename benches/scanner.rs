//! Throughput of the relay's scanner (`sluice::relay::scan`: every RFC 6455
//! rule and the size limits, as the relay runs them) over buffers of masked
//! client frames.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::relay::scan::{Open, Rules, Scanner, Walk};
use sluice::relay::Direction;

/// About 4 MiB of masked binary frames of `payload` bytes each.
fn stream_of(payload: usize) -> Vec<u8> {
    const TARGET: usize = 4 << 20;
    let mut out = Vec::with_capacity(TARGET + payload + 14);
    let mut seq = 0u8;
    while out.len() < TARGET {
        out.push(0x82);
        match payload {
            0..=125 => out.push(0x80 | payload as u8),
            126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[seq, seq ^ 0x5a, 0x13, 0x37]);
        seq = seq.wrapping_add(1);
        out.resize(out.len() + payload, 0xa5);
    }
    out
}

/// The default limits of `[websocket]`.
const RULES: Rules = Rules {
    max_frame_bytes: 1 << 20,
    max_message_bytes: 16 << 20,
    allowed_rsv: 0,
    allowed_rsv_continuation: 0,
};

/// Walks the whole buffer in 16 KiB reads (the relay's read size); returns
/// the bytes let through so the loop cannot be optimised away.
fn scan(data: &[u8]) -> usize {
    let mut scanner = Scanner::new(Direction::ClientToBackend);
    let mut passed = 0;
    let mut held = 0;
    for read in data.chunks(16 * 1024) {
        // A partial header at the end of a read comes again with the next;
        // the bench keeps it in place rather than copying it.
        let start = passed;
        let end = start + held + read.len();
        let (n, walk) = scanner.walk(&RULES, &data[start..end], &mut Open);
        assert_eq!(walk, Walk::NeedMore);
        passed += n;
        held = end - passed;
    }
    passed
}

fn bench_scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan");
    for (name, payload) in [("64B", 64usize), ("64KiB", 64 << 10)] {
        let data = stream_of(payload);
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &data, |b, data| {
            b.iter(|| scan(black_box(data)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_scan);
criterion_main!(benches);
