//! Contract: the WebSocket handshake rows. Every rejection is checked on the
//! wire (status, headers) and, where the contract says so, by the backend
//! never having been contacted.

mod support;

use std::sync::atomic::Ordering;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn status_of(sluice: &Sluice, request: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(sluice.plain_addr).await.unwrap();
    raw_request(&mut tcp, request).await
}

fn host(s: &Sluice) -> String {
    s.plain_addr.to_string()
}

#[tokio::test]
async fn malformed_upgrades_get_400_and_never_reach_the_backend() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let h = host(&s);
    let cases: Vec<(&str, String)> = vec![
        (
            "not GET",
            format!("POST / HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "no key",
            format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        ),
        (
            "key not base64",
            format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: !!!notbase64!!!\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        ),
        (
            "key not 16 bytes",
            format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        ),
        (
            "upgrade with a body",
            format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nhello"),
        ),
        (
            "HTTP/1.0",
            format!("GET / HTTP/1.0\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        ),
        (
            "two Host headers",
            format!("GET / HTTP/1.1\r\nHost: {h}\r\nHost: evil.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        ),
        (
            "two Origin headers",
            format!("GET / HTTP/1.1\r\nHost: {h}\r\nOrigin: http://{h}\r\nOrigin: http://evil.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        ),
    ];
    for (what, req) in cases {
        let (status, head) = status_of(&s, req.as_bytes()).await;
        assert_eq!(status, 400, "{what}: {head}");
    }
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn wrong_version_gets_426_with_version_13() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        host(&s)
    );
    let (status, head) = status_of(&s, req.as_bytes()).await;
    assert_eq!(status, 426);
    assert_eq!(
        head_value(&head, "sec-websocket-version").as_deref(),
        Some("13")
    );
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn no_route_is_404() {
    let backend = EchoWs::start().await;
    let s = Sluice::start(
        "",
        &format!(
            "[[route]]\npath = \"/ws\"\nbackends = [\"{}\"]\n",
            backend.addr
        ),
    )
    .await;
    let (status, _) = status_of(&s, &upgrade_request(&host(&s), "/other", "")).await;
    assert_eq!(status, 404);
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn backend_refusing_tcp_is_502() {
    let s = Sluice::to(refused_addr().await, "", "").await;
    let (status, _) = status_of(&s, &upgrade_request(&host(&s), "/", "")).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn silent_backend_is_504_within_handshake_timeout() {
    let (addr, accepted) = silent_backend().await;
    let s = Sluice::to(addr, "handshake_timeout = \"300ms\"", "").await;
    let started = std::time::Instant::now();
    let (status, _) = status_of(&s, &upgrade_request(&host(&s), "/", "")).await;
    assert_eq!(status, 504);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wrong_accept_or_upgrade_from_backend_is_502_and_no_tunnel() {
    for reply in [
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    ] {
        let backend = RawBackend::start(move |_| reply.as_bytes().to_vec()).await;
        let s = Sluice::to(backend.addr, "", "").await;
        let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
        let (status, head) = raw_request(&mut tcp, &upgrade_request(&host(&s), "/", "")).await;
        assert_eq!(status, 502, "{reply} -> {head}");
        // No tunnel: bytes the client sends now are not relayed to the backend.
        let _ = tcp.write_all(&frame_bytes(true, 0, 1, Some([1, 2, 3, 4]), b"x")).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(backend.received(0).is_empty());
    }
}

#[tokio::test]
async fn refused_upgrade_is_plain_http_and_next_request_is_parsed_again() {
    // The smuggling guard: the backend answers the upgrade with 200; the
    // client then sends a second request on the same connection, which must
    // be routed as HTTP (to the other route), never piped to this backend.
    let refusing =
        RawBackend::start(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno".to_vec()).await;
    let http = HttpEcho::start().await;
    let s = Sluice::start(
        "",
        &format!(
            "[[route]]\npath = \"/ws\"\nbackends = [\"{}\"]\n[[route]]\npath = \"/\"\nbackends = [\"{}\"]\n",
            refusing.addr, http.addr
        ),
    )
    .await;
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let mut both = upgrade_request(&host(&s), "/ws", "");
    both.extend_from_slice(
        format!("GET /second HTTP/1.1\r\nHost: {}\r\n\r\n", host(&s)).as_bytes(),
    );
    let (status, head) = raw_request(&mut tcp, &both).await;
    assert_eq!(status, 200);
    assert_eq!(read_body(&mut tcp, &head).await, b"no");
    let (status, head) = read_head(&mut tcp).await;
    assert_eq!(status, 200);
    let body = String::from_utf8(read_body(&mut tcp, &head).await).unwrap();
    assert!(body.starts_with("GET /second"), "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        refusing.received(0).is_empty(),
        "pipelined bytes reached the refusing backend"
    );
}

#[tokio::test]
async fn connect_is_405() {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let (status, _) = status_of(
        &s,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn h2c_upgrade_token_is_stripped_and_request_proxied_as_http() {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let req = format!(
        "GET /plain HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        host(&s)
    );
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let (status, head) = raw_request(&mut tcp, req.as_bytes()).await;
    assert_eq!(status, 200);
    let body = String::from_utf8(read_body(&mut tcp, &head).await)
        .unwrap()
        .to_lowercase();
    assert!(body.starts_with("get /plain"));
    assert!(!body.contains("upgrade:"), "{body}");
    assert!(!body.contains("http2-settings"), "{body}");
}
