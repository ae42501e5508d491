//! Contract: the policy rows. Origin (403, backend never contacted), the
//! handshake rate (429 + Retry-After), `max_connections_per_ip` (429) and
//! the per-tunnel message rate (`on_message_rate` = "close": Close 1008;
//! "throttle": backpressure, nothing dropped). Rejections are checked on the
//! wire and by the backend's connection count; rates by elapsed time with
//! exact lower bounds from the contract and generous upper bounds.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// An upgrade request on the cleartext listener with `Host: host` and, if
/// given, `Origin: origin`. Returns (status, head); the connection is kept
/// so a 101 tunnel stays open as long as the caller holds it.
async fn upgrade_with(s: &Sluice, host: &str, origin: Option<&str>) -> (u16, String, TcpStream) {
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let (status, head) = raw_request(&mut tcp, &request(host, origin)).await;
    (status, head, tcp)
}

fn request(host: &str, origin: Option<&str>) -> Vec<u8> {
    let extra = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    upgrade_request(host, "/", &extra)
}

/// Status of an upgrade from `origin`, Host = the cleartext listener.
async fn status_from(s: &Sluice, origin: Option<&str>) -> u16 {
    upgrade_with(s, &s.plain_addr.to_string(), origin).await.0
}

/// A sluice with one route to a fresh raw backend that accepts upgrades.
async fn with_websocket(websocket: &str) -> (Sluice, RawBackend) {
    let backend = RawBackend::start(good_101).await;
    let s = Sluice::to(
        backend.addr,
        "",
        &format!("[route.websocket]\n{websocket}\n"),
    )
    .await;
    (s, backend)
}

/// Every origin in `denied` gets 403 without the backend being contacted,
/// then every origin in `allowed` gets 101 (one backend connection each).
async fn assert_origins(websocket: &str, allowed: &[&str], denied: &[&str]) {
    let (s, backend) = with_websocket(websocket).await;
    for origin in denied {
        assert_eq!(
            status_from(&s, Some(origin)).await,
            403,
            "Origin {origin:?} with {websocket:?}"
        );
    }
    assert_eq!(
        backend.connections(),
        0,
        "a refused origin reached the backend"
    );
    for (i, origin) in allowed.iter().enumerate() {
        assert_eq!(
            status_from(&s, Some(origin)).await,
            101,
            "Origin {origin:?} with {websocket:?}"
        );
        assert_eq!(backend.connections(), i + 1);
    }
}

// ---------------------------------------------------------------- Origin

#[tokio::test]
async fn listed_origin_is_allowed_and_lookalikes_are_403_without_backend() {
    assert_origins(
        r#"allowed_origins = ["https://chat.example.com"]"#,
        &["https://chat.example.com"],
        &[
            "https://chat.example.com.evil.com",
            "https://evilchat.example.com",
            "http://chat.example.com",
            "https://chat.example.com:8443",
            "null",
        ],
    )
    .await;
}

#[tokio::test]
async fn wildcard_origin_needs_a_label_before_the_suffix() {
    assert_origins(
        r#"allowed_origins = ["https://*.example.com"]"#,
        &["https://a.example.com", "https://a.b.example.com"],
        &[
            "https://example.com",
            "https://example.com.evil.com",
            "https://evilexample.com",
        ],
    )
    .await;
}

#[tokio::test]
async fn star_allows_any_origin() {
    assert_origins(
        r#"allowed_origins = ["*"]"#,
        &["https://evil.example", "http://other.test:1234", "null"],
        &[],
    )
    .await;
}

#[tokio::test]
async fn default_is_same_origin_on_the_cleartext_listener() {
    let (s, backend) = with_websocket("").await;
    let same = format!("http://{}", s.plain_addr);
    let wrong_scheme = format!("https://{}", s.plain_addr);
    for origin in ["http://other.test", wrong_scheme.as_str()] {
        assert_eq!(status_from(&s, Some(origin)).await, 403, "{origin}");
    }
    assert_eq!(backend.connections(), 0);
    assert_eq!(status_from(&s, Some(&same)).await, 101, "{same}");
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn default_is_same_origin_on_the_tls_listener() {
    let (s, backend) = with_websocket("").await;
    let host = format!("localhost:{}", s.tls_addr.port());
    let over_tls = |origin: String| {
        let s = &s;
        let host = host.clone();
        async move {
            let mut tls = s.tls_connect().await;
            raw_request(&mut tls, &request(&host, Some(&origin))).await
        }
    };
    for origin in [
        format!("http://{host}"),
        "https://other.test".to_owned(),
        format!("https://localhost:{}", s.tls_addr.port() ^ 1),
    ] {
        let (status, head) = over_tls(origin.clone()).await;
        assert_eq!(status, 403, "{origin}: {head}");
    }
    assert_eq!(backend.connections(), 0);
    let (status, head) = over_tls(format!("https://{host}")).await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn missing_origin_is_allowed_by_default() {
    let (s, backend) = with_websocket("").await;
    assert_eq!(status_from(&s, None).await, 101);
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn missing_origin_is_403_with_allow_missing_origin_false() {
    let (s, backend) = with_websocket("allow_missing_origin = false").await;
    assert_eq!(status_from(&s, None).await, 403);
    assert_eq!(backend.connections(), 0);
    // A browser-like client with the right Origin still gets through.
    let same = format!("http://{}", s.plain_addr);
    assert_eq!(status_from(&s, Some(&same)).await, 101);
    assert_eq!(backend.connections(), 1);
}

// --------------------------------------------------------- handshake rate

#[tokio::test]
async fn handshake_rate_over_burst_is_429_with_retry_after_then_recovers() {
    let backend = RawBackend::start(good_101).await;
    let s = Sluice::to(
        backend.addr,
        "",
        "[route.limits]\nhandshakes_per_second = 2\nhandshake_burst = 3\n",
    )
    .await;
    // The four requests go out back to back: at 2/s a token returns only
    // 500 ms after the burst is spent.
    let mut tunnels = Vec::new();
    for i in 0..3 {
        let (status, head, tcp) = upgrade_with(&s, &s.plain_addr.to_string(), None).await;
        assert_eq!(status, 101, "upgrade {} of the burst: {head}", i + 1);
        tunnels.push(tcp);
    }
    let (status, head, _) = upgrade_with(&s, &s.plain_addr.to_string(), None).await;
    assert_eq!(status, 429, "{head}");
    let retry: u64 = head_value(&head, "retry-after")
        .expect("429 without Retry-After")
        .parse()
        .expect("Retry-After is not whole seconds");
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    assert_eq!(backend.connections(), 3, "the 429 reached the backend");

    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, head, _) = upgrade_with(&s, &s.plain_addr.to_string(), None).await;
    assert_eq!(status, 101, "no recovery after Retry-After: {head}");
    assert_eq!(backend.connections(), 4);
}

// ------------------------------------------------- max_connections_per_ip

#[tokio::test]
async fn max_connections_per_ip_is_429_until_a_tunnel_closes() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(
        backend.addr,
        "",
        "[route.limits]\nmax_connections_per_ip = 2\n",
    )
    .await;
    let mut first = raw_ws(s.plain_addr, "/").await;
    let _second = raw_ws(s.plain_addr, "/").await;
    assert_eq!(backend.connections(), 2);
    let (status, head, _) = upgrade_with(&s, &s.plain_addr.to_string(), None).await;
    assert_eq!(status, 429, "{head}");
    assert_eq!(backend.connections(), 2, "the 429 reached the backend");

    // Close one tunnel properly, then go away.
    first
        .write_all(&frame_bytes(true, 0, 8, Some(KEY), &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let reply = read_frame(&mut first).await.expect("close reply");
    assert_eq!(reply.close_code(), Some(1000));
    drop(first);

    // The slot is released when the tunnel task ends; poll for it slowly
    // enough (10/s) that the default handshake rate (20/s) never bites.
    let mut attempts = 0;
    let _third = within("a slot to free up", async {
        loop {
            attempts += 1;
            let (status, head, tcp) = upgrade_with(&s, &s.plain_addr.to_string(), None).await;
            match status {
                101 => return tcp,
                429 => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => panic!("unexpected {head}"),
            }
        }
    })
    .await;
    assert_eq!(backend.connections(), 3);
    println!("slot free after {attempts} attempt(s)");
}

// ----------------------------------------------------------- message rate

/// Parses every frame in `bytes` (all of them complete).
async fn frames_in(mut bytes: &[u8]) -> Vec<RawFrame> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        out.push(read_frame(&mut bytes).await.expect("a truncated frame"));
    }
    out
}

#[tokio::test]
async fn message_rate_close_mode_is_1008_to_client_and_1001_to_backend() {
    let backend = RawBackend::start(good_101).await;
    let s = Sluice::to(
        backend.addr,
        "",
        "[route.limits]\nmessages_per_second = 5\nmessage_burst = 5\non_message_rate = \"close\"\n",
    )
    .await;
    let mut client = raw_ws(s.plain_addr, "/").await;
    let mut wire = Vec::new();
    for i in 0..20u8 {
        wire.extend(frame_bytes(true, 0, 1, Some(KEY), &[b'a' + i]));
    }
    // The client may see its writes fail once sluice has closed; that is fine.
    let _ = client.write_all(&wire).await;

    let close = read_frame(&mut client)
        .await
        .expect("a Close to the client");
    assert_eq!(close.opcode, 8, "{close:?}");
    assert_eq!(close.close_code(), Some(1008));
    assert!(!close.masked);

    // The backend gets the frames within the burst, then a masked Close 1001.
    let frames = within("a Close at the backend", async {
        loop {
            let got = backend.received(0);
            if let Some(i) = find_close(&got) {
                return frames_in(&got[..i]).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (data, close): (Vec<_>, Vec<_>) = frames.into_iter().partition(|f| f.opcode == 1);
    assert_eq!(close.len(), 1, "{close:?}");
    assert!(close[0].masked, "sluice's Close to the backend is masked");
    assert_eq!(close[0].close_code(), Some(1001));
    assert!(
        data.len() >= 5 && data.len() < 20,
        "{} data frames reached the backend",
        data.len()
    );
    for (i, f) in data.iter().enumerate() {
        assert_eq!(f.payload, [b'a' + i as u8], "frames arrive in order");
    }
    println!("{} of 20 data frames passed before the 1008", data.len());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        frames_in(&backend.received(0)).await.len(),
        data.len() + 1,
        "bytes after sluice's Close reached the backend"
    );
}

/// The end (exclusive) of the first Close frame in `bytes`, if all of it is there.
fn find_close(bytes: &[u8]) -> Option<usize> {
    let mut rest = bytes;
    while rest.len() >= 2 {
        let len = usize::from(rest[1] & 0x7f);
        assert!(len < 126, "only small frames in this test");
        let total = 2 + if rest[1] & 0x80 != 0 { 4 } else { 0 } + len;
        if rest.len() < total {
            return None;
        }
        let is_close = rest[0] & 0x0f == 8;
        rest = &rest[total..];
        if is_close {
            return Some(bytes.len() - rest.len());
        }
    }
    None
}

#[tokio::test]
async fn message_rate_throttle_delivers_everything_in_order_at_the_rate() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(
        backend.addr,
        "",
        "[route.limits]\nmessages_per_second = 20\nmessage_burst = 5\n",
    )
    .await;
    let mut ws = ws_plain(s.plain_addr, "/").await;
    const N: usize = 45;
    let started = Instant::now();
    // 45 small messages fit the socket buffers, so sending them all before
    // reading cannot deadlock even while sluice is not reading.
    for i in 0..N {
        within("send", ws.send(Message::Text(format!("m{i}"))))
            .await
            .unwrap();
    }
    for i in 0..N {
        let got = within("an echo", ws.next())
            .await
            .expect("stream ended")
            .expect("ws error");
        assert_eq!(got, Message::Text(format!("m{i}")), "echo {i}");
    }
    let elapsed = started.elapsed();
    // Burst 5, then 40 more at 20/s: 2.0 s, less a little timer slack.
    assert!(
        elapsed >= Duration::from_millis(1700),
        "not throttled: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(6),
        "throttled too hard: {elapsed:?}"
    );
    println!("45 messages at 20/s burst 5 took {elapsed:?}");
    ws.close(None).await.unwrap();
}

/// Reads one text frame (unmasked, from sluice) from a raw client.
async fn text_frame<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Vec<u8> {
    let f = read_frame(s).await.expect("an echo");
    assert_eq!((f.opcode, f.fin, f.masked), (1, true, false), "{f:?}");
    f.payload
}

/// Contract v2, "Routing sees what the backend sees": one token per client
/// frame of any opcode, so fragmenting a message cannot dodge the rate.
#[tokio::test]
async fn every_fragment_takes_a_token() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(
        backend.addr,
        "",
        "[route.limits]\nmessages_per_second = 10\nmessage_burst = 2\n",
    )
    .await;
    let mut client = raw_ws(s.plain_addr, "/").await;
    let started = Instant::now();
    // One message in 10 fragments: 10 tokens, of which the burst holds 2;
    // the other 8 come at 10 per second.
    let mut wire = frame_bytes(false, 0, 1, Some(KEY), b"f0");
    for i in 1..9 {
        wire.extend(frame_bytes(
            false,
            0,
            0,
            Some(KEY),
            format!("f{i}").as_bytes(),
        ));
    }
    wire.extend(frame_bytes(true, 0, 0, Some(KEY), b"f9"));
    client.write_all(&wire).await.unwrap();
    assert_eq!(text_frame(&mut client).await, b"f0f1f2f3f4f5f6f7f8f9");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(700),
        "fragments were not charged to the rate: {elapsed:?}"
    );
    println!("one message in 10 fragments at 10/s, burst 2: {elapsed:?}");
}
