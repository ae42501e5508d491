//! Contract: ordinary HTTP is proxied with streaming bodies, hop-by-hop
//! headers removed and X-Forwarded-* set; routing by host and path; 404,
//! 502, 504; slow clients are cut off.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn routes_by_host_and_path_first_match_wins() {
    let chat = HttpEcho::start().await;
    let wild = HttpEcho::start().await;
    let rest = HttpEcho::start().await;
    let s = Sluice::start(
        "",
        &format!(
            "[[route]]\nhost = \"chat.example.com\"\npath = \"/api\"\nbackends = [\"{}\"]\n\
             [[route]]\nhost = \"*.example.com\"\nbackends = [\"{}\"]\n\
             [[route]]\npath = \"/\"\nbackends = [\"{}\"]\n",
            chat.addr, wild.addr, rest.addr
        ),
    )
    .await;
    assert_eq!(
        get(s.plain_addr, "chat.example.com", "/api/x", "").await.0,
        200
    );
    assert_eq!(chat.requests(), 1);
    assert_eq!(
        get(s.plain_addr, "chat.example.com:443", "/other", "")
            .await
            .0,
        200
    );
    assert_eq!(get(s.plain_addr, "a.example.com", "/api", "").await.0, 200);
    assert_eq!(wild.requests(), 2);
    assert_eq!(get(s.plain_addr, "example.com", "/", "").await.0, 200);
    assert_eq!(rest.requests(), 1);
    assert_eq!(chat.requests(), 1);
}

#[tokio::test]
async fn no_route_is_404() {
    let b = HttpEcho::start().await;
    let s = Sluice::start(
        "",
        &format!(
            "[[route]]\nhost = \"a.test\"\nbackends = [\"{}\"]\n",
            b.addr
        ),
    )
    .await;
    assert_eq!(get(s.plain_addr, "b.test", "/", "").await.0, 404);
    assert_eq!(b.connections(), 0);
}

#[tokio::test]
async fn round_robin_over_backends() {
    let a = HttpEcho::start().await;
    let b = HttpEcho::start().await;
    let s = Sluice::start(
        "",
        &format!("[[route]]\nbackends = [\"{}\", \"{}\"]\n", a.addr, b.addr),
    )
    .await;
    for _ in 0..4 {
        assert_eq!(get(s.plain_addr, "x", "/", "").await.0, 200);
    }
    assert_eq!((a.requests(), b.requests()), (2, 2));
}

#[tokio::test]
async fn hop_by_hop_removed_and_forwarded_headers_set() {
    let b = HttpEcho::start().await;
    let s = Sluice::to(b.addr, "", "").await;
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let req = "GET /h?q=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close, X-Private\r\nX-Private: secret\r\n\
               Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n\
               X-Forwarded-For: 6.6.6.6\r\nX-Kept: yes\r\n\r\n";
    let (status, _) = raw_request(&mut tcp, req.as_bytes()).await;
    assert_eq!(status, 200);
    let mut body = String::new();
    within("body", tcp.read_to_string(&mut body)).await.unwrap();
    let body = body.to_lowercase();
    assert!(body.starts_with("get /h?q=1"), "{body}");
    for gone in [
        "x-private",
        "keep-alive",
        "te:",
        "proxy-authorization",
        "6.6.6.6",
    ] {
        assert!(!body.contains(gone), "{gone} was forwarded: {body}");
    }
    assert!(body.contains("x-kept: yes"));
    assert!(body.contains("host: app.test"));
    assert!(body.contains("x-forwarded-for: 127.0.0.1"));
    assert!(body.contains("x-forwarded-proto: http"));
    assert!(body.contains("x-forwarded-host: app.test"));
}

#[tokio::test]
async fn trusted_proxy_xff_is_appended() {
    let b = HttpEcho::start().await;
    let s = Sluice::to(b.addr, "trusted_proxies = [\"127.0.0.0/8\"]", "").await;
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let req = "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n";
    raw_request(&mut tcp, req.as_bytes()).await;
    let mut body = String::new();
    within("body", tcp.read_to_string(&mut body)).await.unwrap();
    assert!(
        body.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1"),
        "{body}"
    );
}

#[tokio::test]
async fn streamed_100_mb_upload_arrives_intact() {
    let b = HttpEcho::start().await;
    let s = Sluice::to(b.addr, "", "").await;
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 100;
    let chunk: Bytes = (0..CHUNK)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut expect = FNV_OFFSET;
    for _ in 0..CHUNKS {
        expect = fnv(expect, &chunk);
    }
    let stream = futures_util::stream::iter(
        (0..CHUNKS).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
    );
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::post(format!("http://{}/upload", s.plain_addr))
        .body(StreamBody::new(stream))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains(&format!("body-len: {}", CHUNK * CHUNKS)),
        "{body}"
    );
    assert!(
        body.contains(&format!("body-hash: {expect:016x}")),
        "{body}"
    );
}

#[tokio::test]
async fn keep_alive_reuses_backend_connections() {
    let b = HttpEcho::start().await;
    let s = Sluice::to(b.addr, "", "").await;
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    for _ in 0..5 {
        let resp = client
            .get(format!("http://{}/k", s.plain_addr).parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(b.connections(), 1);
}

#[tokio::test]
async fn backend_refused_is_502_and_silent_is_504() {
    let s = Sluice::to(refused_addr().await, "", "").await;
    assert_eq!(get(s.plain_addr, "x", "/", "").await.0, 502);
    let (silent, _) = silent_backend().await;
    let s = Sluice::to(silent, "handshake_timeout = \"300ms\"", "").await;
    let t = Instant::now();
    assert_eq!(get(s.plain_addr, "x", "/", "").await.0, 504);
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn https_listener_proxies_http() {
    let b = HttpEcho::start().await;
    let s = Sluice::to(b.addr, "", "").await;
    let mut tls = s.tls_connect().await;
    let (status, _) = raw_request(
        &mut tls,
        b"GET /secure HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let mut body = String::new();
    let _ = within("body", tls.read_to_string(&mut body)).await;
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
}

#[tokio::test]
async fn slowloris_request_head_is_cut_off() {
    let b = HttpEcho::start().await;
    let s = Sluice::to(b.addr, "handshake_timeout = \"500ms\"", "").await;
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut sink = Vec::new();
    // Keep trickling header bytes; sluice must close the connection anyway.
    let closed = within("slowloris cut-off", async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tcp.write_all(b"X-a: b\r\n").await.is_err() {
                return;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => sink.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    });
    closed.await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        t.elapsed()
    );
    assert_eq!(b.connections(), 0);
}

#[tokio::test]
async fn slow_tls_handshake_is_cut_off() {
    let b = HttpEcho::start().await;
    let s = Sluice::to(b.addr, "handshake_timeout = \"300ms\"", "").await;
    let mut tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 16];
    let n = within("TLS cut-off", tcp.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t.elapsed() >= Duration::from_millis(250));
}
