//! Throughput of the relay's scan loop (parse header, skip payload) over
//! buffers of masked client frames.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::frame::parse_header;

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

/// Returns the number of frames so the loop cannot be optimised away.
fn scan(mut buf: &[u8]) -> usize {
    let mut frames = 0;
    while let Ok(Some(h)) = parse_header(buf) {
        let skip = usize::from(h.header_len).saturating_add(h.payload_len as usize);
        buf = buf.get(skip..).unwrap_or_default();
        frames += 1;
    }
    frames
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
