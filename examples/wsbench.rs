//! A small WebSocket load tool for benchmarking sluice against a baseline in
//! the same run (see bench/relay.sh):
//!
//! * `wsbench echo LISTEN`: a fast WebSocket echo backend (one thread).
//! * `wsbench copy LISTEN TARGET`: a plain TCP byte-copy proxy (one thread),
//!   the "relay with frame policy off" baseline.
//! * `wsbench load TARGET CONNS SIZE SECS [PID] [RATE]`: CONNS tunnels each
//!   doing SIZE-byte round trips for SECS seconds (closed loop, or paced to
//!   RATE messages/s in total); prints one line of `key=value` figures. With
//!   PID, also the CPU microseconds that process used per round trip.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.first().map(String::as_str) {
        Some("echo") => rt.block_on(echo(args[1].parse().unwrap())),
        Some("copy") => rt.block_on(copy(args[1].parse().unwrap(), args[2].parse().unwrap())),
        Some("load") => {
            let pid = args.get(5).and_then(|p| p.parse().ok()).filter(|p| *p != 0);
            let rate = args.get(6).and_then(|r| r.parse().ok());
            rt.block_on(load(
                args[1].parse().unwrap(),
                args[2].parse().unwrap(),
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
                pid,
                rate,
            ))
        }
        Some("idle") => rt.block_on(idle(
            args[1].parse().unwrap(),
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
        )),
        _ => eprintln!(
            "usage: wsbench echo LISTEN | copy LISTEN TARGET | load TARGET CONNS SIZE SECS [PID] [RATE] | idle TARGET N PID"
        ),
    }
}

async fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn echo(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).await.unwrap();
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(head) = read_head(&mut s).await else {
                return;
            };
            let key = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("sec-websocket-key:")
                        .then(|| l[18..].trim().to_owned())
                })
                .unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                sluice::upgrade::accept_key(key.as_bytes())
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 256 * 1024];
            let mut out = Vec::with_capacity(256 * 1024);
            let mut len = 0;
            loop {
                let n = match s.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                len += n;
                let mut pos = 0;
                out.clear();
                while let Ok(Some(h)) = frame::parse_header(&buf[pos..len]) {
                    let total = usize::from(h.header_len) + h.payload_len as usize;
                    if total > buf.len() {
                        buf.resize(total * 2, 0);
                    }
                    if len - pos < total {
                        break;
                    }
                    let payload = &mut buf[pos + usize::from(h.header_len)..pos + total];
                    if let Some(m) = h.mask {
                        frame::apply_mask(payload, m, 0);
                    }
                    if h.opcode == frame::opcode::CLOSE {
                        let _ = s.write_all(&[0x88, 0]).await;
                        return;
                    }
                    push_header(
                        &mut out,
                        (u8::from(h.fin) << 7) | h.opcode,
                        None,
                        payload.len(),
                    );
                    out.extend_from_slice(payload);
                    pos += total;
                }
                buf.copy_within(pos..len, 0);
                len -= pos;
                if !out.is_empty() && s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn push_header(out: &mut Vec<u8>, b0: u8, mask: Option<[u8; 4]>, len: usize) {
    out.push(b0);
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
}

async fn copy(listen: SocketAddr, target: SocketAddr) {
    let listener = TcpListener::bind(listen).await.unwrap();
    loop {
        let (mut c, _) = listener.accept().await.unwrap();
        let _ = c.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut b) = TcpStream::connect(target).await else {
                return;
            };
            let _ = b.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
        });
    }
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn upgrade(target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(target).await.unwrap();
    let _ = s.set_nodelay(true);
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {target}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Holds N idle tunnels open; prints the proxy's RSS growth per tunnel, then
/// checks that every tunnel still echoes.
async fn idle(target: SocketAddr, n: usize, pid: u32) {
    let before = rss_kib(pid);
    let mut tunnels = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = upgrade(target).await;
        // One round trip each, so both directions have been used once.
        s.write_all(&[0x82, 0x81, 1, 2, 3, 4, 7 ^ 1]).await.unwrap();
        let mut echo = [0u8; 3];
        s.read_exact(&mut echo).await.unwrap();
        tunnels.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let mut ok = 0;
    for s in &mut tunnels {
        s.write_all(&[0x82, 0x81, 1, 2, 3, 4, 9 ^ 1]).await.unwrap();
        let mut echo = [0u8; 3];
        if s.read_exact(&mut echo).await.is_ok() && echo == [0x82, 1, 9] {
            ok += 1;
        }
    }
    println!(
        "tunnels={n} rss_before_kib={before} rss_after_kib={after} kib_per_tunnel={:.2} still_echoing={ok}",
        (after.saturating_sub(before)) as f64 / n as f64
    );
}

/// utime + stime of a process, in microseconds.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    ticks * 10_000
}

async fn load(
    target: SocketAddr,
    conns: usize,
    size: usize,
    secs: u64,
    pid: Option<u32>,
    rate: Option<u64>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..conns {
        let mut s = TcpStream::connect(target).await.unwrap();
        let _ = s.set_nodelay(true);
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {target}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        streams.push(s);
    }
    let per_conn_interval = rate.map(|r| Duration::from_secs_f64(conns as f64 / r as f64));
    let cpu_before = pid.map(cpu_us);
    let started = Instant::now();
    for mut s in streams {
        let (stop, count) = (stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut frame = Vec::new();
            push_header(&mut frame, 0x82, Some([1, 2, 3, 4]), size);
            frame.extend((0..size).map(|i| (i as u8) ^ [1, 2, 3, 4][i % 4]));
            let expect = size
                + if size < 126 {
                    2
                } else if size <= 0xFFFF {
                    4
                } else {
                    10
                };
            let mut buf = vec![0u8; expect];
            let mut lat = Vec::new();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(iv) = per_conn_interval {
                    next += iv;
                    tokio::time::sleep_until(next.into()).await;
                }
                let t = Instant::now();
                if s.write_all(&frame).await.is_err() || s.read_exact(&mut buf).await.is_err() {
                    break;
                }
                lat.push(t.elapsed().as_micros() as u32);
                count.fetch_add(1, Ordering::Relaxed);
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = pid.map(cpu_us);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort_unstable();
    let n = count.load(Ordering::Relaxed);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let mut line = format!(
        "msgs_per_s={:.0} mb_per_s={:.1} p50_us={} p99_us={} p999_us={}",
        n as f64 / elapsed,
        n as f64 * size as f64 / elapsed / 1e6,
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        line.push_str(&format!(
            " cpu_us_per_msg={:.2}",
            (b - a) as f64 / n.max(1) as f64
        ));
    }
    println!("{line}");
}
