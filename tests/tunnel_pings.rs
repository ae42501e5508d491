//! Contract, "Tunnels that end well": keep-alive pings. A side silent for
//! `ping_interval` gets a Ping from sluice (unmasked toward the client,
//! masked toward the backend, only at a frame boundary); the Pong answering
//! it is not forwarded; a side that does not answer within `ping_timeout`
//! is dead: its socket is closed and the other side gets Close 1001.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::hostile::{metric, scrape, wait_metric};
use support::tunnels::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn pings(interval: &str, timeout: &str) -> String {
    format!("[route.websocket]\nping_interval = \"{interval}\"\nping_timeout = \"{timeout}\"\n")
}

#[tokio::test]
async fn a_silent_client_gets_a_ping_and_its_pong_stays_with_sluice() {
    let backend = RecordingWs::start().await;
    let s = Sluice::to(backend.addr, "admin = \"127.0.0.1:0\"", &pings("1s", "5s")).await;
    let opened = Instant::now();
    let mut client = raw_ws(s.plain_addr, "/").await;
    let ping = read_frame(&mut client).await.expect("a Ping, not EOF");
    let at = opened.elapsed();
    assert_eq!((ping.opcode, ping.masked), (9, false), "{ping:?}");
    assert_eq!(ping.payload.len(), 8, "{ping:?}");
    assert!(
        at >= Duration::from_millis(900) && at <= Duration::from_millis(1600),
        "the Ping came after {at:?} (ping_interval 1s)"
    );
    // Its Pong stays with sluice; the client's own Ping and Pong pass.
    client
        .write_all(&frame_bytes(true, 0, 10, Some(KEY), &ping.payload))
        .await
        .unwrap();
    client
        .write_all(&frame_bytes(true, 0, 10, Some(KEY), b"unsolicited"))
        .await
        .unwrap();
    client
        .write_all(&frame_bytes(true, 0, 9, Some(KEY), b"mine"))
        .await
        .unwrap();
    let pong = read_frame(&mut client).await.expect("the backend's Pong");
    assert_eq!((pong.opcode, &pong.payload[..]), (10, &b"mine"[..]));
    client
        .write_all(&frame_bytes(true, 0, 1, Some(KEY), b"after"))
        .await
        .unwrap();
    let (echo, _) = next_non_ping(&mut client, Some(KEY)).await;
    assert_eq!(echo.expect("the echo").payload, b"after");
    let got: Vec<Message> = backend.received(0).into_iter().map(|(_, m)| m).collect();
    let pongs: Vec<_> = got.iter().filter(|m| m.is_pong()).collect();
    assert_eq!(
        pongs,
        [&Message::Pong(b"unsolicited".to_vec())],
        "the backend got {got:?}"
    );
    assert!(got.contains(&Message::Ping(b"mine".to_vec())), "{got:?}");
    assert!(got.contains(&Message::Text("after".into())), "{got:?}");
    let admin = s.running.admin_addr().unwrap();
    let text = scrape(admin).await;
    let sent = metric(
        &text,
        "sluice_ws_pings_sent_total",
        &[("direction", "to_client")],
    );
    assert!(sent >= Some(1.0), "pings to the client: {sent:?}\n{text}");
}

#[tokio::test]
async fn a_client_that_never_answers_is_dropped_after_interval_and_timeout_and_the_backend_gets_1001(
) {
    let backend = RecordingWs::start().await;
    let s = Sluice::to(backend.addr, "admin = \"127.0.0.1:0\"", &pings("1s", "1s")).await;
    let opened = Instant::now();
    let mut client = raw_ws(s.plain_addr, "/").await;
    // The client reads what comes but never answers: a dead peer.
    let (at, code) = backend.close_of(0).await;
    let after = at - opened;
    assert_eq!(code, 1001);
    assert!(
        after >= Duration::from_millis(1900) && after <= Duration::from_millis(3000),
        "the backend's Close came after {after:?} (interval 1s + timeout 1s)"
    );
    let first = read_frame(&mut client).await.expect("the Ping");
    assert_eq!(first.opcode, 9);
    // Then its socket is closed (after the backend's close handshake).
    let rest = read_to_end(&mut client).await;
    let gone = opened.elapsed();
    assert!(
        gone <= Duration::from_secs(6),
        "socket closed after {gone:?}"
    );
    println!("dead client: backend got 1001 after {after:?}, client socket closed after {gone:?}; then {} more bytes", rest.len());
    wait_metric(
        s.running.admin_addr().unwrap(),
        "sluice_ws_peers_dead_total",
        &[("side", "client")],
        Duration::from_secs(5),
        "the dead client counted",
        |v| v == Some(1.0),
    )
    .await;
}

#[tokio::test]
async fn a_silent_backend_is_pinged_masked_and_when_it_never_answers_the_client_gets_1001() {
    let (backend, mut sockets) = raw_ws_backend().await;
    let s = Sluice::to(backend, "admin = \"127.0.0.1:0\"", &pings("1s", "1s")).await;
    let opened = Instant::now();
    let mut client = ws_plain(s.plain_addr, "/").await;
    let mut backend = within("the backend's socket", sockets.recv())
        .await
        .unwrap();
    // The client (tungstenite) answers its Pings; the backend never does.
    let code = expect_close(&mut client).await;
    let after = opened.elapsed();
    assert_eq!(code, 1001);
    assert!(
        after >= Duration::from_millis(1900) && after <= Duration::from_millis(3000),
        "the client's Close came after {after:?} (interval 1s + timeout 1s)"
    );
    let ping = read_frame(&mut backend).await.expect("the Ping");
    assert_eq!(
        (ping.opcode, ping.masked, ping.payload.len()),
        (9, true, 8),
        "{ping:?}"
    );
    let _ = read_to_end(&mut backend).await;
    assert!(
        opened.elapsed() <= Duration::from_secs(6),
        "backend socket still open"
    );
    wait_metric(
        s.running.admin_addr().unwrap(),
        "sluice_ws_peers_dead_total",
        &[("side", "backend")],
        Duration::from_secs(5),
        "the dead backend counted",
        |v| v == Some(1.0),
    )
    .await;
}

#[tokio::test]
async fn peers_that_answer_keep_their_tunnel_and_ping_interval_0s_sends_none() {
    let backend = RecordingWs::start().await;
    let s = Sluice::start(
        "",
        &format!(
            "[[route]]\npath = \"/on\"\nbackends = [\"{0}\"]\n{1}\
             [[route]]\npath = \"/off\"\nbackends = [\"{0}\"]\n[route.websocket]\nping_interval = \"0s\"\n",
            backend.addr,
            pings("300ms", "300ms")
        ),
    )
    .await;
    let mut on = ws_plain(s.plain_addr, "/on").await;
    let mut off = raw_ws(s.plain_addr, "/off").await;
    // tungstenite answers while it reads; two seconds is many intervals.
    let quiet = tokio::time::timeout(Duration::from_secs(2), on.next()).await;
    let got = quiet
        .expect("a Ping within 2 s")
        .expect("open")
        .expect("no error");
    assert!(got.is_ping(), "{got:?}");
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = on.next().await {
            assert!(m.is_ping(), "{m:?}");
        }
    })
    .await;
    // The echo comes back; with 300 ms pings, a Ping may come before it.
    let text = Message::Text("still here".into());
    on.send(text.clone()).await.unwrap();
    let echoed = within("echo", async {
        loop {
            match on.next().await {
                Some(Ok(m)) if m.is_ping() => continue,
                other => break other,
            }
        }
    })
    .await;
    assert_eq!(echoed.expect("open").expect("no error"), text);
    let nothing = tokio::time::timeout(Duration::from_millis(500), read_frame(&mut off)).await;
    assert!(
        nothing.is_err(),
        "a frame on a tunnel without pings: {nothing:?}"
    );
    on.send(Message::Close(None)).await.unwrap();
}

/// Fragments of `total` bytes in frames of `frame` bytes, each written in
/// two pieces with pauses, so pings fall due while a frame is half sent.
async fn send_fragmented(s: &mut TcpStream, mask: Option<[u8; 4]>, data: &[u8], frame: usize) {
    let chunks: Vec<&[u8]> = data.chunks(frame).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 { 2 } else { 0 };
        let bytes = frame_bytes(i + 1 == chunks.len(), 0, opcode, mask, chunk);
        let half = bytes.len() / 2;
        s.write_all(&bytes[..half]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        s.write_all(&bytes[half..]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads one fragmented message, answering Pings; returns its bytes and how
/// many Pings came between its frames.
async fn receive_fragmented(s: &mut TcpStream, mask: Option<[u8; 4]>) -> (Vec<u8>, usize) {
    let mut data = Vec::new();
    let mut pings = 0;
    loop {
        let (f, p) = next_non_ping(s, mask).await;
        pings += p;
        let f = f.expect("a frame, not EOF");
        let want = if data.is_empty() { 2 } else { 0 };
        assert_eq!(f.opcode, want, "frame {} of the message", data.len());
        data.extend_from_slice(&f.payload);
        if f.fin {
            return (data, pings);
        }
    }
}

#[tokio::test]
async fn a_large_fragmented_message_flows_byte_identical_while_pings_fall_due_both_ways() {
    let (backend, mut sockets) = raw_ws_backend().await;
    let s = Sluice::to(backend, "", &pings("200ms", "5s")).await;
    let mut client = raw_ws(s.plain_addr, "/").await;
    let mut backend = within("the backend's socket", sockets.recv())
        .await
        .unwrap();
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 + i / 256) as u8).collect();

    // Client to backend: the backend is silent while the client talks, so
    // it is pinged between the fragments.
    let (_, (got, pings_to_backend)) = tokio::join!(
        send_fragmented(&mut client, Some(KEY), &data, 64 * 1024),
        receive_fragmented(&mut backend, None)
    );
    assert!(got == data, "the message changed on its way to the backend");
    assert!(
        pings_to_backend >= 2,
        "{pings_to_backend} pings reached the backend"
    );

    // And back: now the client is the silent one.
    let (_, (got, pings_to_client)) = tokio::join!(
        send_fragmented(&mut backend, None, &data, 64 * 1024),
        receive_fragmented(&mut client, Some(KEY))
    );
    assert!(got == data, "the message changed on its way to the client");
    assert!(
        pings_to_client >= 2,
        "{pings_to_client} pings reached the client"
    );
    println!("pings between fragments: {pings_to_backend} to the backend, {pings_to_client} to the client");
}

/// README decision: sluice's own Ping and the Pong answering it are not
/// tunnel traffic, so peers that answer but say nothing still reach
/// `idle_timeout`.
#[tokio::test]
async fn answered_pings_do_not_keep_an_idle_tunnel_past_idle_timeout() {
    let backend = RecordingWs::start().await;
    let s = Sluice::to(backend.addr, "idle_timeout = \"2s\"", &pings("300ms", "1s")).await;
    let opened = Instant::now();
    let mut client = ws_plain(s.plain_addr, "/").await;
    // tungstenite answers every Ping while expect_close reads.
    let code = expect_close(&mut client).await;
    let after = opened.elapsed();
    assert_eq!(code, 1001);
    assert!(
        after >= Duration::from_millis(1900) && after <= Duration::from_millis(3000),
        "closed after {after:?} (idle_timeout 2s)"
    );
    let pongs = backend
        .received(0)
        .iter()
        .filter(|(_, m)| m.is_pong())
        .count();
    assert_eq!(pongs, 0, "a Pong to sluice's Ping reached the backend");
}

/// A client that stops reading while the backend keeps sending (its
/// window full, so not even a Ping can be written to it) is dead after
/// interval + timeout as well, not after idle_timeout's stalled-writer rule.
#[tokio::test]
async fn a_client_that_stops_reading_under_a_stream_is_dead_after_interval_and_timeout() {
    let (backend, mut sockets) = raw_ws_backend().await;
    let s = Sluice::to(backend, "", &pings("1s", "1s")).await;
    let opened = Instant::now();
    let _client = raw_ws(s.plain_addr, "/").await;
    let backend = within("the backend's socket", sockets.recv())
        .await
        .unwrap();
    let (mut rd, mut wr) = backend.into_split();
    let writer = tokio::spawn(async move {
        let frame = frame_bytes(true, 0, 2, None, &[7u8; 16 * 1024]);
        while wr.write_all(&frame).await.is_ok() {}
    });
    let close = within("the backend's Close", async {
        loop {
            match read_frame(&mut rd).await {
                Some(f) if f.opcode == 8 => break f,
                Some(_) => continue,
                None => panic!("EOF before a Close"),
            }
        }
    })
    .await;
    let after = opened.elapsed();
    writer.abort();
    assert_eq!(close.close_code(), Some(1001));
    assert!(
        after >= Duration::from_millis(1900) && after <= Duration::from_millis(3500),
        "the backend's Close came after {after:?} (interval 1s + timeout 1s)"
    );
}

/// WebSocket over h2 (RFC 8441): the tunnel is an h2 stream, which cannot
/// signal readiness; pings go into it at frame boundaries all the same.
#[tokio::test]
async fn a_silent_client_over_h2_gets_a_ping_and_its_pong_stays_with_sluice() {
    use bytes::Bytes;
    use support::hostile::{h2_over_tls, ws_connect_request};
    let backend = RecordingWs::start().await;
    let s = Sluice::to(backend.addr, "", &pings("500ms", "5s")).await;
    let send = h2_over_tls(s.tls_addr, &s.cert).await;
    let mut send = within("h2 ready", send.ready()).await.unwrap();
    let (resp, mut stream) = send
        .send_request(ws_connect_request(s.tls_addr.port(), "/", &[]), false)
        .unwrap();
    let resp = within("extended CONNECT", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while got.len() < 10 {
        let chunk = within("the Ping over h2", body.data())
            .await
            .expect("stream ended")
            .unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    let ping = read_frame(&mut &got[..]).await.expect("a whole frame");
    assert_eq!(
        (ping.opcode, ping.masked, ping.payload.len()),
        (9, false, 8),
        "{ping:?}"
    );
    let mut answer = frame_bytes(true, 0, 10, Some(KEY), &ping.payload);
    answer.extend(frame_bytes(true, 0, 1, Some(KEY), b"over h2"));
    stream.send_data(Bytes::from(answer), false).unwrap();
    within("the message at the backend", async {
        while !backend
            .received(0)
            .iter()
            .any(|(_, m)| m == &Message::Text("over h2".into()))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let pongs = backend
        .received(0)
        .iter()
        .filter(|(_, m)| m.is_pong())
        .count();
    assert_eq!(pongs, 0, "sluice's Pong reached the backend over h2");
}
