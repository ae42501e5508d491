//! Contract: the frame rows. A raw client writes hand-built frames; a raw
//! backend records the exact bytes it received, so "no byte of that frame
//! reached the other side" is asserted, not assumed.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A tunnel between a raw client and a recording raw backend.
async fn tunnel(websocket: &str) -> (Sluice, RawBackend, TcpStream) {
    let backend = RawBackend::start(good_101).await;
    let sluice = Sluice::to(backend.addr, "", &format!("[route.websocket]\n{websocket}")).await;
    let client = raw_ws(sluice.plain_addr, "/").await;
    (sluice, backend, client)
}

/// Waits until the backend has received `n` bytes (or fails the test).
async fn backend_bytes(backend: &RawBackend, n: usize) -> Vec<u8> {
    within("backend bytes", async {
        loop {
            let got = backend.received(0);
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The client gets Close `code`; the backend gets exactly `valid` followed by
/// a masked Close 1001 and nothing else.
async fn assert_violation(client: &mut TcpStream, backend: &RawBackend, valid: &[u8], code: u16) {
    let close = read_frame(client).await.expect("close to the client");
    assert_eq!(close.close_code(), Some(code));
    assert!(!close.masked);
    let got = backend_bytes(backend, valid.len() + 8).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got_all = backend.received(0);
    assert_eq!(
        got_all.len(),
        got.len().max(valid.len() + 8),
        "extra bytes reached the backend"
    );
    assert_eq!(&got_all[..valid.len()], valid);
    let mut rest = &got_all[valid.len()..];
    let f = read_frame(&mut rest).await.unwrap();
    assert!(f.masked, "sluice's close toward the backend is masked");
    assert_eq!(f.close_code(), Some(1001));
    assert!(rest.is_empty());
}

#[tokio::test]
async fn frame_over_max_frame_bytes_is_1009_and_not_one_byte_crosses() {
    let (_s, backend, mut client) = tunnel("max_frame_bytes = 1000").await;
    let ok = frame_bytes(true, 0, 2, Some(KEY), &[7u8; 1000]);
    let big = frame_bytes(true, 0, 2, Some(KEY), &[7u8; 1001]);
    let mut wire = ok.clone();
    wire.extend_from_slice(&big);
    client.write_all(&wire).await.unwrap();
    assert_violation(&mut client, &backend, &ok, 1009).await;
}

#[tokio::test]
async fn fragmented_message_over_max_message_bytes_is_1009() {
    let (_s, backend, mut client) = tunnel("max_frame_bytes = 100\nmax_message_bytes = 250").await;
    let a = frame_bytes(false, 0, 1, Some(KEY), &[b'a'; 100]);
    let b = frame_bytes(false, 0, 0, Some(KEY), &[b'b'; 100]);
    let c = frame_bytes(true, 0, 0, Some(KEY), &[b'c'; 51]);
    let mut wire = a.clone();
    wire.extend_from_slice(&b);
    wire.extend_from_slice(&c);
    client.write_all(&wire).await.unwrap();
    let mut valid = a;
    valid.extend_from_slice(&b);
    assert_violation(&mut client, &backend, &valid, 1009).await;
}

#[tokio::test]
async fn unmasked_client_frame_is_1002() {
    let (_s, backend, mut client) = tunnel("").await;
    client
        .write_all(&frame_bytes(true, 0, 1, None, b"hi"))
        .await
        .unwrap();
    assert_violation(&mut client, &backend, &[], 1002).await;
}

#[tokio::test]
async fn masked_backend_frame_is_1002_to_the_backend_and_1001_to_the_client() {
    let backend = RawBackend::start(|head| {
        let mut out = good_101(head);
        out.extend(frame_bytes(true, 0, 1, Some(KEY), b"masked by a server"));
        out
    })
    .await;
    let sluice = Sluice::to(backend.addr, "", "").await;
    let mut client = raw_ws(sluice.plain_addr, "/").await;
    let close = read_frame(&mut client).await.unwrap();
    assert_eq!(
        close.close_code(),
        Some(1001),
        "the client gets 1001 and none of the bad frame"
    );
    let got = backend_bytes(&backend, 8).await;
    let mut s = &got[..];
    let f = read_frame(&mut s).await.unwrap();
    assert!(f.masked);
    assert_eq!(f.close_code(), Some(1002));
}

#[tokio::test]
async fn control_frame_rules_are_1002() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "ping > 125",
            frame_bytes(true, 0, 9, Some(KEY), &[0u8; 126]),
        ),
        ("fragmented ping", frame_bytes(false, 0, 9, Some(KEY), b"x")),
        (
            "reserved opcode 3",
            frame_bytes(true, 0, 3, Some(KEY), b"x"),
        ),
        (
            "reserved opcode 11",
            frame_bytes(true, 0, 11, Some(KEY), b"x"),
        ),
        (
            "RSV1 without extension",
            frame_bytes(true, 4, 1, Some(KEY), b"x"),
        ),
        ("RSV3", frame_bytes(true, 1, 2, Some(KEY), b"x")),
        (
            "continuation with no message",
            frame_bytes(true, 0, 0, Some(KEY), b"x"),
        ),
        (
            "close with 1-byte payload",
            frame_bytes(true, 0, 8, Some(KEY), &[3]),
        ),
        (
            "close code 1005",
            frame_bytes(true, 0, 8, Some(KEY), &1005u16.to_be_bytes()),
        ),
        (
            "close code 999",
            frame_bytes(true, 0, 8, Some(KEY), &999u16.to_be_bytes()),
        ),
        (
            "close code 5000",
            frame_bytes(true, 0, 8, Some(KEY), &5000u16.to_be_bytes()),
        ),
        (
            "close reason not UTF-8",
            frame_bytes(true, 0, 8, Some(KEY), &[0x03, 0xe8, 0xff, 0xfe]),
        ),
        // 16-bit length field carrying 5: not the minimal encoding.
        (
            "non-minimal length",
            vec![0x81, 0x80 | 126, 0, 5, 1, 2, 3, 4, 1, 2, 3, 4, 5],
        ),
        // 64-bit length with the top bit set.
        (
            "length top bit",
            vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4],
        ),
    ];
    for (what, frame) in cases {
        let (_s, backend, mut client) = tunnel("").await;
        client.write_all(&frame).await.unwrap();
        let close = read_frame(&mut client)
            .await
            .unwrap_or_else(|| panic!("{what}: no close"));
        assert_eq!(close.close_code(), Some(1002), "{what}");
        let got = backend_bytes(&backend, 8).await;
        let mut s = &got[..];
        assert_eq!(
            read_frame(&mut s).await.unwrap().close_code(),
            Some(1001),
            "{what}"
        );
    }
}

#[tokio::test]
async fn new_data_frame_inside_a_fragmented_message_is_1002() {
    let (_s, backend, mut client) = tunnel("").await;
    let first = frame_bytes(false, 0, 1, Some(KEY), b"part");
    let mut wire = first.clone();
    wire.extend(frame_bytes(true, 0, 1, Some(KEY), b"new"));
    client.write_all(&wire).await.unwrap();
    assert_violation(&mut client, &backend, &first, 1002).await;
}

#[tokio::test]
async fn headers_split_at_every_byte_and_control_frames_between_fragments_pass() {
    let (_s, backend, mut client) = tunnel("").await;
    let mut wire = Vec::new();
    wire.extend(frame_bytes(false, 0, 1, Some(KEY), &[b'a'; 300]));
    wire.extend(frame_bytes(true, 0, 9, Some(KEY), b"ping"));
    wire.extend(frame_bytes(false, 0, 0, Some(KEY), &[b'b'; 70_000]));
    wire.extend(frame_bytes(true, 0, 10, Some(KEY), b""));
    wire.extend(frame_bytes(true, 0, 0, Some(KEY), b"end"));
    wire.extend(frame_bytes(true, 0, 8, Some(KEY), &1000u16.to_be_bytes()));
    // Dribble the first 40 bytes one at a time, then the rest in odd chunks.
    for b in &wire[..40] {
        client.write_all(&[*b]).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for chunk in wire[40..].chunks(997) {
        client.write_all(chunk).await.unwrap();
    }
    let got = backend_bytes(&backend, wire.len()).await;
    assert_eq!(
        got, wire,
        "the backend receives the exact bytes, masked as sent"
    );
}

#[tokio::test]
async fn client_that_vanishes_gets_the_backend_a_1001() {
    let backend = RawBackend::start(good_101).await;
    let sluice = Sluice::to(backend.addr, "", "").await;
    let mut client = raw_ws(sluice.plain_addr, "/").await;
    // The client goes away without a Close: the backend must get a Close 1001.
    client.shutdown().await.unwrap();
    let got = backend_bytes(&backend, 8).await;
    let mut s = &got[..];
    let f = read_frame(&mut s).await.unwrap();
    assert!(f.masked);
    assert_eq!(f.close_code(), Some(1001));
}

#[tokio::test]
async fn backend_that_vanishes_gets_the_client_a_1001() {
    // The backend accepts the upgrade and then closes its socket without a Close.
    let backend_addr = backend_after_101(|tcp| async move { drop(tcp) }).await;
    let sluice = Sluice::to(backend_addr, "", "").await;
    let mut client = raw_ws(sluice.plain_addr, "/").await;
    let close = read_frame(&mut client).await.expect("a close frame");
    assert!(!close.masked);
    assert_eq!(close.close_code(), Some(1001));
}

#[tokio::test]
async fn rsv1_passes_when_permessage_deflate_was_negotiated() {
    let backend = RawBackend::start(|head| {
        let mut out = good_101(head);
        // Accept the client's deflate offer.
        let at = out.len() - 2;
        out.splice(
            at..at,
            b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
                .iter()
                .copied(),
        );
        out
    })
    .await;
    let sluice = Sluice::to(backend.addr, "", "").await;
    let mut client = TcpStream::connect(sluice.plain_addr).await.unwrap();
    let req = upgrade_request(
        &sluice.plain_addr.to_string(),
        "/",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    let (status, head) = raw_request(&mut client, &req).await;
    assert_eq!(status, 101, "{head}");
    // RSV1 on the first frame is the "compressed" bit: legal now.
    let first = frame_bytes(false, 4, 2, Some(KEY), b"deflated?");
    let rest = frame_bytes(true, 0, 0, Some(KEY), b"more");
    let mut wire = first.clone();
    wire.extend_from_slice(&rest);
    client.write_all(&wire).await.unwrap();
    assert_eq!(backend_bytes(&backend, wire.len()).await, wire);
    // RSV1 on a continuation frame is still a protocol error (RFC 7692 §6).
    let bad = frame_bytes(false, 4, 2, Some(KEY), b"x");
    let mut wire2 = bad.clone();
    wire2.extend(frame_bytes(true, 4, 0, Some(KEY), b"y"));
    client.write_all(&wire2).await.unwrap();
    let close = read_frame(&mut client).await.unwrap();
    assert_eq!(close.close_code(), Some(1002));
}

#[tokio::test]
async fn strip_compression_removes_the_deflate_offer() {
    let backend = EchoWs::start().await;
    let sluice = Sluice::to(
        backend.addr,
        "",
        "[route.websocket]\nstrip_compression = true\n",
    )
    .await;
    let mut client = TcpStream::connect(sluice.plain_addr).await.unwrap();
    let req = upgrade_request(
        &sluice.plain_addr.to_string(),
        "/",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    let (status, head) = raw_request(&mut client, &req).await;
    assert_eq!(status, 101, "{head}");
    assert!(head_value(&head, "sec-websocket-extensions").is_none());
    let seen = backend.requests.lock().unwrap()[0].clone();
    assert!(seen.get("sec-websocket-extensions").is_none(), "{seen:?}");
    // With no extension negotiated, RSV1 is a protocol error.
    client
        .write_all(&frame_bytes(true, 4, 1, Some(KEY), b"x"))
        .await
        .unwrap();
    assert_eq!(
        read_frame(&mut client).await.unwrap().close_code(),
        Some(1002)
    );
}

#[tokio::test]
async fn a_writer_that_makes_no_progress_counts_as_idle() {
    // The backend answers the upgrade and then never reads again.
    let backend_addr = backend_after_101(|tcp| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(tcp);
    })
    .await;
    let sluice = Sluice::to(backend_addr, "idle_timeout = \"500ms\"", "").await;
    let client = raw_ws(sluice.plain_addr, "/").await;
    let (mut rd, mut wr) = client.into_split();
    let started = std::time::Instant::now();
    // Push frames until the backend's and sluice's buffers are full; the
    // writes toward the backend stop making progress.
    let writer = tokio::spawn(async move {
        let frame = frame_bytes(true, 0, 2, Some(KEY), &vec![0u8; 256 * 1024]);
        while wr.write_all(&frame).await.is_ok() {}
    });
    let close = read_frame(&mut rd).await.expect("a close frame");
    assert_eq!(close.close_code(), Some(1001));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed after {:?}",
        started.elapsed()
    );
    writer.abort();
}

/// A backend for one connection: it answers the upgrade with a valid 101,
/// then hands the socket to `after`.
async fn backend_after_101<F, Fut>(after: F) -> std::net::SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let (_, head) = read_head_server(&mut tcp).await;
        tcp.write_all(&good_101(&head)).await.unwrap();
        after(tcp).await;
    });
    addr
}

/// Reads a request head as a server would.
async fn read_head_server(tcp: &mut TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut b).await.unwrap();
        buf.push(b[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    (head.lines().next().unwrap().to_owned(), head)
}

#[tokio::test]
async fn a_finished_close_handshake_ends_the_tunnel_without_waiting_for_the_clients_fin() {
    // RFC 6455 §7.1.1: once the Close frames have crossed, the server side
    // closes TCP first. The backend answers the client's Close and hangs up;
    // sluice closes toward the client and the tunnel is gone, although the
    // client has not closed its socket (before, sluice waited for the
    // client's FIN, up to its 2 s linger).
    let backend_addr = backend_after_101(|mut tcp| async move {
        let close = read_frame(&mut tcp).await.expect("the client's close");
        assert_eq!(close.close_code(), Some(1000));
        tcp.write_all(&frame_bytes(true, 0, 8, None, &1000u16.to_be_bytes()))
            .await
            .unwrap();
    })
    .await;
    let sluice = Sluice::to(backend_addr, "", "").await;
    let mut client = raw_ws(sluice.plain_addr, "/").await;
    client
        .write_all(&frame_bytes(true, 0, 8, Some(KEY), &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let reply = read_frame(&mut client).await.expect("the backend's close");
    assert_eq!(reply.close_code(), Some(1000));
    assert!(
        read_to_end(&mut client).await.is_empty(),
        "EOF after the close"
    );
    let started = std::time::Instant::now();
    within("the tunnel to end", async {
        while sluice.running.shared.tunnels.live() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the tunnel lingered {:?} for a client that had nothing more to say",
        started.elapsed()
    );
    drop(client);
}
