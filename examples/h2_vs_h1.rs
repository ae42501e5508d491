//! WebSocket echo through sluice over HTTP/2 (RFC 8441, all tunnels as
//! streams of one TLS connection) and over HTTP/1.1 (one TLS connection per
//! tunnel), in one run, against the same in-process echo backend.
//!
//!   cargo run --release --example h2_vs_h1 -- [TUNNELS] [SECS]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request};
use rustls::pki_types::{CertificateDer, ServerName};
use sluice::config::Config;
use sluice::daemon::Running;
use sluice::shared::{Shared, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MSG: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn masked_frame() -> Vec<u8> {
    let key = [1u8, 2, 3, 4];
    let mut f = vec![0x82, 0x80 | MSG.len() as u8];
    f.extend_from_slice(&key);
    f.extend(MSG.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tunnels: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20);
    let secs: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);

    let echo = spawn_echo().await;
    let dir = std::env::temp_dir().join(format!("sluice-h2bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [limits]\nhandshakes_per_second = 100000\nhandshake_burst = 100000\nmessages_per_second = 10000000\nmessage_burst = 10000000\n\
         [[route]]\nbackends = [\"{echo}\"]\n"
    );
    let config = Config::parse(&toml, &dir.join("sluice.toml")).unwrap();
    let running = Running::start(Shared::new(Snapshot::build(config).unwrap()))
        .await
        .unwrap();
    let addr = running.tls_addrs()[0];
    let der = CertificateDer::from(ck.cert.der().to_vec());

    for round in 1..=3 {
        let h1 = run_h1(addr, &der, tunnels, secs).await;
        let h2 = run_h2(addr, &der, tunnels, secs).await;
        println!(
            "round {round}: {tunnels} tunnels x 64 B, {secs}s: http/1.1 {h1:.0} msgs/s, h2 {h2:.0} msgs/s, h2/http1.1 = {:.3}",
            h2 / h1
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn client_config(der: &CertificateDer<'static>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

async fn tls(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

async fn run_h1(addr: SocketAddr, der: &CertificateDer<'static>, tunnels: usize, secs: u64) -> f64 {
    let cfg = client_config(der, b"http/1.1");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..tunnels {
        let mut s = tls(addr, cfg.clone()).await;
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        let (stop, count) = (stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let frame = masked_frame();
            let mut buf = [0u8; 66];
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&frame).await.unwrap();
                s.read_exact(&mut buf).await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    measure(stop, count, tasks, secs).await
}

async fn run_h2(addr: SocketAddr, der: &CertificateDer<'static>, tunnels: usize, secs: u64) -> f64 {
    let (send, conn) = h2::client::handshake(tls(addr, client_config(der, b"h2")).await)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let send = send.ready().await.unwrap();
    while !send.is_extended_connect_protocol_enabled() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..tunnels {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri("https://localhost/")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        let mut sender = send.clone().ready().await.unwrap();
        let (resp, mut stream) = sender.send_request(req, false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let (stop, count) = (stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let frame = Bytes::from(masked_frame());
            while !stop.load(Ordering::Relaxed) {
                stream.send_data(frame.clone(), false).unwrap();
                let mut got = 0;
                while got < 66 {
                    let chunk = body.data().await.unwrap().unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                    got += chunk.len();
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    measure(stop, count, tasks, secs).await
}

async fn measure(
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    secs: u64,
) -> f64 {
    let start = Instant::now();
    let before = count.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let n = count.load(Ordering::Relaxed) - before;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    n as f64 / elapsed
}

/// A minimal echo backend: answers the upgrade, then echoes each 64-byte
/// masked binary frame as an unmasked one.
async fn spawn_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_binary() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}
