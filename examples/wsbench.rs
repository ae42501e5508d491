//! A small WebSocket load tool for benchmarking sluice against baselines and
//! peer proxies in the same run (see bench/relay.sh and bench/compare.sh).
//!
//! * `wsbench echo LISTEN [--cert PEM --key PEM]`: a fast WebSocket echo
//!   backend (one thread); with a certificate it serves wss (TLS) instead.
//! * `wsbench copy LISTEN TARGET`: a plain TCP byte-copy proxy (one thread),
//!   the "relay with frame policy off" baseline.
//! * `wsbench load TARGET CONNS SIZE SECS [PIDS] [RATE]`: CONNS tunnels each
//!   doing SIZE-byte round trips for SECS seconds (closed loop, or paced to
//!   RATE messages/s in total); prints one line of `key=value` figures. With
//!   PIDS, also the CPU those processes used per round trip (and per MiB).
//! * `wsbench handshakes TARGET CONCURRENCY SECS [PIDS]`: CONCURRENCY
//!   workers each opening a connection, upgrading it, closing it (Close frame,
//!   then TCP/TLS close) and starting again; prints handshakes per second and
//!   the CPU of PIDS per handshake.
//! * `wsbench idle TARGET N PIDS [HOLD_SECS]`: opens N idle tunnels, prints the
//!   RSS growth of PIDS per tunnel, then checks that every tunnel still
//!   echoes. With HOLD_SECS, it first holds them idle that long answering
//!   the proxy's keep-alive Pings, and prints the Pings answered and the CPU
//!   PIDS used meanwhile (the cost of idle tunnels, pings included).
//!
//! TARGET is `HOST:PORT` or `ws://HOST:PORT` (cleartext) or `wss://HOST:PORT`
//! (TLS; needs `--ca PEM`, the certificate the server presents, which is put
//! in the root store, so a self-signed certificate is accepted and still
//! verified). HOST must be an IP address; it is also the name verified.
//! `--resume` lets the TLS client resume sessions (rustls's default in-memory
//! cache); without it every TLS connection is a full handshake.
//! PIDS is `PID[,PID...]` (0 = none): figures are summed over the processes,
//! e.g. an nginx master and its worker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::crypto::ring;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sluice::frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

/// Where to connect: an address, and the TLS client config for wss.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

struct Opts {
    pos: Vec<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    resume: bool,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        pos: Vec::new(),
        ca: None,
        cert: None,
        key: None,
        resume: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ca" => o.ca = it.next(),
            "--cert" => o.cert = it.next(),
            "--key" => o.key = it.next(),
            "--resume" => o.resume = true,
            _ => o.pos.push(a),
        }
    }
    o
}

fn target(s: &str, o: &Opts) -> Target {
    let (tls, hostport) = if let Some(r) = s.strip_prefix("wss://") {
        (true, r)
    } else {
        (false, s.strip_prefix("ws://").unwrap_or(s))
    };
    let addr: SocketAddr = hostport
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("target {s:?}: {e} (use IP:PORT)"));
    let tls = tls.then(|| {
        let ca = o.ca.as_ref().expect("wss:// needs --ca PEM");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("read --ca") {
            roots
                .add(c.expect("parse --ca"))
                .expect("add --ca to roots");
        }
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !o.resume {
            cfg.resumption = Resumption::disabled();
        }
        (
            TlsConnector::from(Arc::new(cfg)),
            ServerName::IpAddress(addr.ip().into()),
        )
    });
    Target { addr, tls }
}

fn pids(s: Option<&String>) -> Vec<u32> {
    s.map(|s| {
        s.split(',')
            .filter_map(|p| p.trim().parse().ok())
            .filter(|p| *p != 0)
            .collect()
    })
    .unwrap_or_default()
}

fn main() {
    let o = parse_opts();
    let a = &o.pos;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match a.first().map(String::as_str) {
        Some("echo") => rt.block_on(echo(a[1].parse().unwrap(), &o)),
        Some("copy") => rt.block_on(copy(a[1].parse().unwrap(), a[2].parse().unwrap())),
        Some("load") => rt.block_on(load(
            target(&a[1], &o),
            a[2].parse().unwrap(),
            a[3].parse().unwrap(),
            a[4].parse().unwrap(),
            pids(a.get(5)),
            a.get(6).and_then(|r| r.parse().ok()).filter(|r| *r != 0),
        )),
        Some("handshakes") => rt.block_on(handshakes(
            target(&a[1], &o),
            a[2].parse().unwrap(),
            a[3].parse().unwrap(),
            pids(a.get(4)),
        )),
        Some("idle") => rt.block_on(idle(
            target(&a[1], &o),
            a[2].parse().unwrap(),
            pids(a.get(3)),
            a.get(4).map(|h| Duration::from_secs(h.parse().unwrap())),
        )),
        _ => {
            eprintln!(
                "usage: wsbench echo LISTEN [--cert PEM --key PEM] | copy LISTEN TARGET\n\
                 \x20      | load TARGET CONNS SIZE SECS [PIDS] [RATE]\n\
                 \x20      | handshakes TARGET CONCURRENCY SECS [PIDS]\n\
                 \x20      | idle TARGET N PIDS [HOLD_SECS]\n\
                 TARGET: IP:PORT | ws://IP:PORT | wss://IP:PORT (with --ca PEM [--resume]); PIDS: PID[,PID...]"
            );
            std::process::exit(2);
        }
    }
}

/// Reads an HTTP head (through the blank line) in chunks; returns it and any
/// bytes that followed it in the same reads.
async fn read_head<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("head too large"));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn echo(listen: SocketAddr, o: &Opts) {
    let acceptor = o.cert.as_ref().map(|cert| {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("read --cert")
            .collect::<Result<_, _>>()
            .expect("parse --cert");
        let key = PrivateKeyDer::from_pem_file(o.key.as_ref().expect("--cert needs --key"))
            .expect("read --key");
        let mut cfg =
            rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("certificate and key");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(cfg))
    });
    let listener = TcpListener::bind(listen).await.unwrap();
    loop {
        let Ok((s, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning or dying.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(a) => {
                    if let Ok(t) = a.accept(s).await {
                        echo_conn(t).await
                    }
                }
                None => echo_conn(s).await,
            }
        });
    }
}

async fn echo_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let Ok((head, rest)) = read_head(&mut s).await else {
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
    if s.write_all(resp.as_bytes()).await.is_err() || s.flush().await.is_err() {
        return;
    }
    // Start small (an idle tunnel should cost the backend little: it is the
    // "direct" baseline of the memory figures) and grow for big frames.
    let mut buf = vec![0u8; (4 * 1024).max(rest.len() * 2)];
    let mut out = Vec::new();
    buf[..rest.len()].copy_from_slice(&rest);
    let mut len = rest.len();
    let mut first = len > 0;
    loop {
        if !first {
            if len == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = match s.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            len += n;
        }
        first = false;
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
            if h.opcode == frame::opcode::PING {
                // A Pong answers a Ping (RFC 6455 §5.5.2), with its payload.
                push_header(&mut out, 0x80 | frame::opcode::PONG, None, payload.len());
                out.extend_from_slice(payload);
                pos += total;
                continue;
            }
            if h.opcode == frame::opcode::CLOSE {
                let _ = s.write_all(&out).await;
                let _ = s.write_all(&[0x88, 0]).await;
                let _ = s.shutdown().await;
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
        if !out.is_empty() && (s.write_all(&out).await.is_err() || s.flush().await.is_err()) {
            return;
        }
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

/// Resident set size of some processes, in KiB, summed.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// utime + stime of some processes (all their threads), in microseconds,
/// summed.
fn cpu_us(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            // USER_HZ is 100 on Linux.
            ticks * 10_000
        })
        .sum()
}

/// TLS handshakes that resumed a session.
static RESUMED: AtomicU64 = AtomicU64::new(0);

/// Connects (TCP, then TLS for wss) and upgrades to WebSocket.
async fn upgrade(t: &Target) -> std::io::Result<Conn> {
    let s = TcpStream::connect(t.addr).await?;
    s.set_nodelay(true)?;
    let mut s: Conn = match &t.tls {
        Some((connector, name)) => {
            let t = connector.connect(name.clone(), s).await?;
            if t.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                RESUMED.fetch_add(1, Ordering::Relaxed);
            }
            Box::new(t)
        }
        None => Box::new(s),
    };
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        t.addr
    );
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let (head, rest) = read_head(&mut s).await?;
    if !head.starts_with("HTTP/1.1 101") {
        let status = head.lines().next().unwrap_or("").to_owned();
        return Err(std::io::Error::other(format!("no upgrade: {status}")));
    }
    if !rest.is_empty() {
        return Err(std::io::Error::other("unexpected bytes after the 101"));
    }
    Ok(s)
}

/// One tiny masked binary frame (payload `[x]`) and its echo.
async fn ping(s: &mut Conn, x: u8) -> std::io::Result<bool> {
    s.write_all(&[0x82, 0x81, 1, 2, 3, 4, x ^ 1]).await?;
    s.flush().await?;
    loop {
        let mut echo = [0u8; 2];
        s.read_exact(&mut echo).await?;
        if echo[0] == 0x80 | frame::opcode::PING {
            // The proxy's keep-alive Ping: answered, then on to the echo.
            answer_ping(s, echo[1]).await?;
            continue;
        }
        let mut x_got = [0u8; 1];
        s.read_exact(&mut x_got).await?;
        return Ok(echo == [0x82, 1] && x_got[0] == x);
    }
}

/// Reads the payload of a Ping whose second header byte was `len_byte`
/// (unmasked, under 126 bytes) and answers it with a masked Pong.
async fn answer_ping<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    len_byte: u8,
) -> std::io::Result<()> {
    let mut payload = vec![0u8; usize::from(len_byte & 0x7f)];
    s.read_exact(&mut payload).await?;
    let mut pong = vec![
        0x80 | frame::opcode::PONG,
        0x80 | payload.len() as u8,
        0,
        0,
        0,
        0,
    ];
    pong.extend_from_slice(&payload);
    s.write_all(&pong).await?;
    s.flush().await
}

/// Holds one idle tunnel until `until`, answering Pings; then checks it
/// still echoes. Returns the Pings answered and whether it echoed.
async fn hold(s: Conn, until: Instant) -> (u64, bool) {
    let (mut rd, mut wr) = tokio::io::split(s);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    // One writer (Pongs and the final echo request), one reader, one timer;
    // no read is ever cancelled half way through a frame.
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    });
    let echo_tx = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(until.into()).await;
        let _ = echo_tx.send(vec![0x82, 0x81, 1, 2, 3, 4, 9 ^ 1]);
    });
    let mut pings = 0;
    let echoed = loop {
        let mut h = [0u8; 2];
        if rd.read_exact(&mut h).await.is_err() {
            break false;
        }
        if h[0] == 0x80 | frame::opcode::PING {
            let mut payload = vec![0u8; usize::from(h[1] & 0x7f)];
            if rd.read_exact(&mut payload).await.is_err() {
                break false;
            }
            let mut pong = vec![
                0x80 | frame::opcode::PONG,
                0x80 | payload.len() as u8,
                0,
                0,
                0,
                0,
            ];
            pong.extend_from_slice(&payload);
            let _ = tx.send(pong);
            pings += 1;
            continue;
        }
        let mut x = [0u8; 1];
        break rd.read_exact(&mut x).await.is_ok() && h == [0x82, 1] && x[0] == 9;
    };
    drop(tx);
    let _ = writer.await;
    (pings, echoed)
}

/// Holds N idle tunnels open; prints the RSS growth of PIDS per tunnel, then
/// checks that every tunnel still echoes.
async fn idle(target: Target, n: usize, pids: Vec<u32>, hold_for: Option<Duration>) {
    const PARALLEL: usize = 64;
    let before = rss_kib(&pids);
    let started = Instant::now();
    let mut tunnels: Vec<Conn> = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut first_err = None;
    while tunnels.len() + failed < n {
        let batch = PARALLEL.min(n - tunnels.len() - failed);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let t = target.clone();
            set.spawn(async move {
                let mut s = upgrade(&t).await?;
                // One round trip each, so both directions have been used once.
                if !ping(&mut s, 7).await? {
                    return Err(std::io::Error::other("bad echo"));
                }
                Ok::<_, std::io::Error>(s)
            });
        }
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(s) => tunnels.push(s),
                Err(e) => {
                    failed += 1;
                    first_err.get_or_insert(e.to_string());
                }
            }
        }
        if failed > n / 10 + 10 {
            break; // the target is refusing; no point in hammering it
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(&pids);
    let opened = tunnels.len();
    let mut ok = 0;
    let mut held = String::new();
    if let Some(hold_for) = hold_for {
        let cpu_before = cpu_us(&pids);
        let until = Instant::now() + hold_for;
        let tasks: Vec<_> = tunnels
            .drain(..)
            .map(|s| tokio::spawn(hold(s, until)))
            .collect();
        tokio::time::sleep_until(until.into()).await;
        let cpu = cpu_us(&pids) - cpu_before;
        let rss_held = rss_kib(&pids);
        let mut pings = 0;
        for t in tasks {
            if let Ok(Ok((p, echoed))) = tokio::time::timeout(Duration::from_secs(10), t).await {
                pings += p;
                ok += usize::from(echoed);
            }
        }
        held = format!(
            " hold_secs={} pings_answered={pings} cpu_ms_hold={:.0} rss_after_hold_kib={rss_held} kib_per_tunnel_after_hold={:.2}",
            hold_for.as_secs(),
            cpu as f64 / 1000.0,
            (rss_held.saturating_sub(before)) as f64 / opened.max(1) as f64,
        );
    } else {
        for s in &mut tunnels {
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(5), ping(s, 9)).await {
                ok += 1;
            }
        }
    }
    println!(
        "tunnels={n} opened={opened} open_secs={open_secs:.1} rss_before_kib={before} rss_after_kib={after} kib_per_tunnel={:.2} still_echoing={ok}{held}{}",
        (after.saturating_sub(before)) as f64 / opened.max(1) as f64,
        first_err.map(|e| format!(" first_error=\"{e}\"")).unwrap_or_default()
    );
}

fn pct(lat: &[u32], p: f64) -> u32 {
    lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

async fn load(
    target: Target,
    conns: usize,
    size: usize,
    secs: u64,
    pids: Vec<u32>,
    rate: Option<u64>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let broken = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut streams = Vec::new();
    for i in 0..conns {
        let s = upgrade(&target)
            .await
            .unwrap_or_else(|e| panic!("tunnel {i} of {conns} to {}: {e}", target.addr));
        streams.push(s);
    }
    let per_conn_interval = rate.map(|r| Duration::from_secs_f64(conns as f64 / r as f64));
    let cpu_before = cpu_us(&pids);
    let started = Instant::now();
    for (i, mut s) in streams.into_iter().enumerate() {
        let (stop, count, broken) = (stop.clone(), count.clone(), broken.clone());
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
            // Spread the paced tunnels over one interval instead of firing
            // them all together.
            let mut next = Instant::now()
                + per_conn_interval.map_or(Duration::ZERO, |iv| iv * i as u32 / conns as u32);
            while !stop.load(Ordering::Relaxed) {
                if let Some(iv) = per_conn_interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += iv;
                }
                let t = Instant::now();
                let ok = async {
                    s.write_all(&frame).await?;
                    s.flush().await?;
                    s.read_exact(&mut buf).await
                }
                .await;
                if ok.is_err() {
                    broken.fetch_add(1, Ordering::Relaxed);
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
    let cpu_after = cpu_us(&pids);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort_unstable();
    let n = count.load(Ordering::Relaxed);
    let mut line = format!(
        "msgs_per_s={:.0} mb_per_s={:.1} p50_us={} p99_us={} p999_us={} broken={}",
        n as f64 / elapsed,
        n as f64 * size as f64 / elapsed / 1e6,
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        broken.load(Ordering::Relaxed)
    );
    if !pids.is_empty() {
        let cpu = (cpu_after - cpu_before) as f64;
        line.push_str(&format!(
            " cpu_us_per_msg={:.2} cpu_ms_per_mib={:.3}",
            cpu / n.max(1) as f64,
            cpu / 1000.0 / (n.max(1) as f64 * size as f64 / 1048576.0)
        ));
    }
    println!("{line}");
}

/// Opens a connection, upgrades it, sends a Close frame, waits for the
/// reply (or EOF) and closes.
async fn one_handshake(t: &Target) -> std::io::Result<()> {
    let mut s = upgrade(t).await?;
    // Masked Close with status 1000.
    let code = [0x03 ^ 1, 0xE8 ^ 2];
    s.write_all(&[0x88, 0x82, 1, 2, 3, 4, code[0], code[1]])
        .await?;
    s.flush().await?;
    let mut b = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
    let _ = s.shutdown().await;
    Ok(())
}

async fn handshakes(target: Target, conc: usize, secs: u64, pids: Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_err = Arc::new(std::sync::Mutex::new(None::<String>));
    let cpu_before = cpu_us(&pids);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (stop, count, errors, first_err, t) = (
            stop.clone(),
            count.clone(),
            errors.clone(),
            first_err.clone(),
            target.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match one_handshake(&t).await {
                    Ok(()) => {
                        lat.push(t0.elapsed().as_micros() as u32);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_err.lock().unwrap().get_or_insert(e.to_string());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_us(&pids);
    let n = count.load(Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(Ok(l)) = tokio::time::timeout(Duration::from_secs(10), t).await {
            lat.extend(l);
        }
    }
    lat.sort_unstable();
    let mut line = format!(
        "handshakes_per_s={:.0} p50_us={} p99_us={} errors={} tls_resumed={}",
        n as f64 / elapsed,
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        errors.load(Ordering::Relaxed),
        RESUMED.load(Ordering::Relaxed)
    );
    if !pids.is_empty() {
        line.push_str(&format!(
            " cpu_us_per_handshake={:.1}",
            (cpu_after - cpu_before) as f64 / n.max(1) as f64
        ));
    }
    if let Some(e) = first_err.lock().unwrap().take() {
        line.push_str(&format!(" first_error=\"{e}\""));
    }
    println!("{line}");
}
