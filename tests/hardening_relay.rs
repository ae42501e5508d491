//! Issue 12, the relay's items: the message rate is charged per client frame
//! of any opcode (3); RSV bits under a negotiated extension other than
//! permessage-deflate pass on every frame, as the README says (10); one
//! dangling byte of a frame header does not pin a read buffer, and idle
//! WebSocket-over-h2 tunnels hold none (11); frame and byte counters move
//! while a tunnel lives (13); keys and masks sluice makes look like a
//! CSPRNG's (14).

mod support;

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use support::hostile::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

// ------------------------------------------------------------ item 3

async fn rate_limited_tunnel() -> (Sluice, RawBackend, TcpStream) {
    let backend = RawBackend::start(good_101).await;
    let s = Sluice::to(
        backend.addr,
        "",
        "[route.limits]\nmessages_per_second = 1\nmessage_burst = 1\non_message_rate = \"close\"\n",
    )
    .await;
    let client = raw_ws(s.plain_addr, "/").await;
    (s, backend, client)
}

/// Writes `frames` (ignoring write errors: sluice may close first), then
/// expects a Close 1008 within 3 s.
async fn expect_1008_after(client: &mut TcpStream, frames: &[Vec<u8>], what: &str) {
    for f in frames {
        if client.write_all(f).await.is_err() {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match frame_within(client, left).await {
            Some(f) if f.opcode == 8 => {
                assert_eq!(f.close_code(), Some(1008), "{what}: {f:?}");
                return;
            }
            Some(_) => continue,
            None => panic!(
                "{what}: no Close 1008 within 3 s (messages_per_second = 1, message_burst = 1, on_message_rate = \"close\")"
            ),
        }
    }
}

#[tokio::test]
async fn empty_continuation_frames_are_charged_against_the_message_rate() {
    let (_s, _b, mut client) = rate_limited_tunnel().await;
    let mut frames = vec![frame_bytes(false, 0, 1, Some(KEY), b"x")];
    frames.extend((0..50).map(|_| frame_bytes(false, 0, 0, Some(KEY), b"")));
    expect_1008_after(
        &mut client,
        &frames,
        "1 text frame + 50 empty continuations",
    )
    .await;
}

#[tokio::test]
async fn pings_are_charged_against_the_message_rate() {
    let (_s, _b, mut client) = rate_limited_tunnel().await;
    let frames: Vec<_> = (0..50)
        .map(|_| frame_bytes(true, 0, 9, Some(KEY), b"p"))
        .collect();
    expect_1008_after(&mut client, &frames, "50 pings").await;
}

#[tokio::test]
async fn pongs_are_charged_against_the_message_rate() {
    let (_s, _b, mut client) = rate_limited_tunnel().await;
    let frames: Vec<_> = (0..50)
        .map(|_| frame_bytes(true, 0, 10, Some(KEY), b""))
        .collect();
    expect_1008_after(&mut client, &frames, "50 unsolicited pongs").await;
}

// ------------------------------------------------------------ item 10

#[tokio::test]
async fn rsv1_on_a_continuation_passes_under_a_negotiated_non_deflate_extension() {
    // The backend accepts the client's `x-custom` and at once sends a
    // fragmented message with RSV1 on both frames.
    let from_backend = [
        frame_bytes(false, 0b100, 1, None, b"ba"),
        frame_bytes(true, 0b100, 0, None, b"ck"),
    ]
    .concat();
    let sent = from_backend.clone();
    let backend = RawBackend::start(move |head| {
        let ok = String::from_utf8(good_101(head)).unwrap();
        let ok = ok.replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: x-custom\r\n\r\n");
        [ok.into_bytes(), sent.clone()].concat()
    })
    .await;
    let s = Sluice::to(backend.addr, "", "").await;
    let mut client = TcpStream::connect(s.plain_addr).await.unwrap();
    let (status, head) = raw_request(
        &mut client,
        &upgrade_request(
            &s.plain_addr.to_string(),
            "/",
            "Sec-WebSocket-Extensions: x-custom\r\n",
        ),
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        head_value(&head, "sec-websocket-extensions").as_deref(),
        Some("x-custom")
    );
    // Client -> backend: RSV1 on the first frame and on the continuation.
    let from_client = [
        frame_bytes(false, 0b100, 1, Some(KEY), b"fr"),
        frame_bytes(true, 0b100, 0, Some(KEY), b"ag"),
    ]
    .concat();
    client.write_all(&from_client).await.unwrap();
    // Backend -> client arrives untouched, and no Close follows.
    let mut got = vec![0u8; from_backend.len()];
    within("the backend's RSV1 frames", client.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, from_backend, "backend -> client frames were changed");
    if let Some(f) = frame_within(&mut client, Duration::from_millis(500)).await {
        panic!(
            "RSV1 under x-custom was refused: sluice sent {f:?} (close code {:?})",
            f.close_code()
        );
    }
    let t = std::time::Instant::now();
    while backend.received(0).len() < from_client.len() && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        backend.received(0),
        from_client,
        "client -> backend frames did not pass unchanged"
    );
}

// ------------------------------------------------------------ item 11
//
// RSS only counts pages that were touched, so each tunnel first carries a
// 16 000-byte frame (filling a read buffer) before it is measured; tunnels
// are set up one after another, so a buffer that is released after use is
// reused by the next tunnel and costs nothing per tunnel, while a buffer a
// tunnel keeps costs its full 16 KiB.

/// Many handshakes and tunnels from 127.0.0.1 are the point here, not the
/// per-IP limits.
const MANY_HANDSHAKES: &str = "[limits]\nhandshakes_per_second = 100000\nhandshake_burst = 100000\nmax_connections_per_ip = 100000\n";

const PAYLOAD: usize = 16_000;

/// Waits until the backend's connection `idx` has received `len` bytes.
async fn backend_got(backend: &RawBackend, idx: usize, len: usize) {
    let t = std::time::Instant::now();
    loop {
        if backend.connections() > idx && backend.received(idx).len() >= len {
            return;
        }
        assert!(
            t.elapsed() < WAIT,
            "backend connection {idx} never got {len} bytes"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// 400 tunnels each carry one 16 000-byte frame (the baseline), then 400
/// more carry the same frame followed by one dangling byte of the next
/// frame's header (0x81: FIN + text, no length yet), sent in the same
/// write. The dangling byte may cost a few bytes per tunnel, not a read
/// buffer pinned with it: the difference must stay under 4 KiB per tunnel
/// (today ~16 KiB).
#[tokio::test]
async fn a_dangling_frame_header_byte_does_not_pin_a_read_buffer_per_tunnel() {
    const N: usize = 400;
    let backend = RawBackend::start(good_101).await;
    let body = format!(
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\nhandshake_timeout = \"10s\"\nidle_timeout = \"300s\"\n\
         {MANY_HANDSHAKES}[[route]]\nbackends = [\"{}\"]\n",
        backend.addr
    );
    let (_dir, path) = write_config(&body);
    let proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;
    let frame = frame_bytes(true, 0, 2, Some(KEY), &vec![0x5a; PAYLOAD]);
    let mut conn = 0;
    let mut open = |dangling: bool| {
        let frame = frame.clone();
        let backend = &backend;
        let idx = conn;
        conn += 1;
        async move {
            let mut t = raw_ws(addr, "/").await;
            let mut bytes = frame.clone();
            if dangling {
                bytes.push(0x81);
            }
            t.write_all(&bytes).await.unwrap();
            backend_got(backend, idx, frame.len()).await;
            t
        }
    };
    // Warm up threads, pools and allocator arenas.
    let mut warm = Vec::new();
    for _ in 0..20 {
        warm.push(open(false).await);
    }
    let base = proc.settled_rss_kib().await;
    let mut idle = Vec::with_capacity(N);
    for _ in 0..N {
        idle.push(open(false).await);
    }
    let after_idle = proc.settled_rss_kib().await;
    let mut dangling = Vec::with_capacity(N);
    for _ in 0..N {
        dangling.push(open(true).await);
    }
    let after_dangling = proc.settled_rss_kib().await;
    let idle_per = after_idle.saturating_sub(base) as f64 / N as f64;
    let dangling_per = after_dangling.saturating_sub(after_idle) as f64 / N as f64;
    eprintln!(
        "RSS: base {base} KiB; +{N} tunnels after a frame {after_idle} KiB ({idle_per:.1} KiB each); \
         +{N} with a dangling header byte {after_dangling} KiB ({dangling_per:.1} KiB each)"
    );
    assert!(
        dangling_per - idle_per < 4.0,
        "a tunnel holding one dangling frame-header byte costs {dangling_per:.1} KiB, one without {idle_per:.1} KiB (allowed difference: 4 KiB)"
    );
    // The tunnels still work: complete the dangling frame on one of them.
    let last = frame_bytes(true, 0, 1, Some(KEY), b"ok");
    dangling[0].write_all(&last[1..]).await.unwrap();
    backend_got(&backend, 20 + N, frame.len() + last.len()).await;
    assert_eq!(backend.received(20 + N)[frame.len()..], last[..]);
    drop((warm, idle, dangling));
}

/// 200 WebSocket-over-h2 tunnels (4 h2 connections x 50 streams), opened
/// one after another, each echoing one 16 000-byte message through an
/// echo backend, then left idle: sluice's relay must not keep its two
/// 16 KiB read buffers per idle h2 tunnel (35.5 KiB per tunnel before).
///
/// What is left is not sluice's: hyper's `H2Upgraded` keeps the `Bytes` of
/// the last DATA frame it read (advanced to empty, but still holding the
/// h2 codec's read-buffer chunk the frame arrived in) until the next DATA
/// frame, so a tunnel whose last frame was large pins about 16 KiB in
/// hyper (measured 20.0 KiB per tunnel in all). The limit is therefore set
/// between "no relay buffers" and "one relay buffer kept": 24 KiB.
#[tokio::test]
async fn idle_websocket_over_h2_tunnels_hold_no_read_buffers() {
    let backend = EchoWs::start().await;
    let cert = TestCert::new();
    let body = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nhandshake_timeout = \"10s\"\nidle_timeout = \"300s\"\n{MANY_HANDSHAKES}\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n[[route]]\nbackends = [\"{}\"]\n",
        cert.cert_path.display(),
        cert.key_path.display(),
        backend.addr
    );
    let path = cert.dir.join("sluice.toml");
    std::fs::write(&path, body).unwrap();
    let proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(h2_over_tls(addr, &cert).await);
    }
    let frame = frame_bytes(true, 0, 2, Some(KEY), &vec![0x5a; PAYLOAD]);
    let echo_len = 4 + PAYLOAD; // unmasked, 16-bit length
    let open = |send: &h2::client::SendRequest<Bytes>| {
        let send = send.clone();
        let frame = frame.clone();
        async move {
            let mut send = within("h2 ready", send.ready()).await.unwrap();
            let (resp, mut stream) = send
                .send_request(ws_connect_request(addr.port(), "/", &[]), false)
                .unwrap();
            let resp = within("extended CONNECT", resp).await.unwrap();
            assert_eq!(resp.status(), 200);
            stream.send_data(Bytes::from(frame), false).unwrap();
            let mut body = resp.into_body();
            let mut got = 0;
            while got < echo_len {
                let chunk = within("echo over h2", body.data())
                    .await
                    .expect("stream ended")
                    .unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                got += chunk.len();
            }
            (body, stream)
        }
    };
    let mut streams = Vec::new();
    for send in &conns {
        streams.push(open(send).await);
    }
    let base = proc.settled_rss_kib().await;
    let per_conn = 50;
    for send in &conns {
        for _ in 0..per_conn {
            streams.push(open(send).await);
        }
    }
    let after = proc.settled_rss_kib().await;
    let n = conns.len() * per_conn;
    let per = after.saturating_sub(base) as f64 / n as f64;
    eprintln!(
        "RSS: base {base} KiB, +{n} idle h2 WebSocket tunnels {after} KiB ({per:.1} KiB each)"
    );
    assert!(
        per < 24.0,
        "an idle WebSocket-over-h2 tunnel costs {per:.1} KiB (limit 24 KiB: no relay read buffers kept while idle)"
    );
    drop(streams);
}

// ------------------------------------------------------------ item 13

#[tokio::test]
async fn frame_and_byte_counters_move_while_the_tunnel_is_open() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(backend.addr, "admin = \"127.0.0.1:0\"", "").await;
    let admin = s.running.admin_addr().unwrap();
    let mut ws = ws_plain(s.plain_addr, "/").await;
    for i in 0..10 {
        echo_once(&mut ws, Message::Text(format!("message {i:02}"))).await;
    }
    // "at least once a second": within 2.5 s, with the tunnel still open.
    for (name, direction, at_least) in [
        ("sluice_ws_frames_total", "client_to_backend", 10.0),
        ("sluice_ws_frames_total", "backend_to_client", 10.0),
        ("sluice_ws_bytes_total", "client_to_backend", 10.0 * 10.0),
        ("sluice_ws_bytes_total", "backend_to_client", 10.0 * 10.0),
    ] {
        wait_metric(
            admin,
            name,
            &[("route", "*/"), ("direction", direction)],
            Duration::from_millis(2500),
            "counters of a live tunnel",
            |v| v.unwrap_or(0.0) >= at_least,
        )
        .await;
    }
    // Still the same open tunnel.
    echo_once(&mut ws, Message::Text("still open".into())).await;
    let text = scrape(admin).await;
    assert_eq!(
        metric(&text, "sluice_ws_tunnels_open", &[("route", "*/")]),
        Some(1.0),
        "{text}"
    );
}

// ------------------------------------------------------------ item 14
//
// What these can show: the keys are not constant, not repeated, not a
// counter and roughly balanced in bits, i.e. not a trivially broken source.
// What they cannot show: that the source is a CSPRNG. A keyed hash of a
// counter (today's `RandomState` construction) passes them too, so these
// tests pass on today's code and guard against regressions to something
// worse; the CSPRNG itself is checked by review of src/.

const ROUTE_MANY_HANDSHAKES: &str =
    "[route.limits]\nhandshakes_per_second = 100000\nhandshake_burst = 100000\n";

fn bit_ratio(bytes: &[u8]) -> f64 {
    let ones: u32 = bytes.iter().map(|b| b.count_ones()).sum();
    f64::from(ones) / (bytes.len() * 8) as f64
}

fn assert_unpredictable(keys: &[Vec<u8>], what: &str, tolerance: f64) {
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        keys.len(),
        "{what}: repeated keys: {keys:?}"
    );
    let all: Vec<u8> = keys.concat();
    let ratio = bit_ratio(&all);
    assert!(
        (0.5 - tolerance..=0.5 + tolerance).contains(&ratio),
        "{what}: {ratio:.3} of the bits are ones: {keys:?}"
    );
    // Not a counter: consecutive keys do not differ by one constant
    // (as integers, or as XOR).
    let as_int = |k: &Vec<u8>| k.iter().fold(0u128, |a, b| (a << 8) | u128::from(*b));
    let diffs: std::collections::HashSet<_> = keys
        .windows(2)
        .map(|w| as_int(&w[1]).wrapping_sub(as_int(&w[0])))
        .collect();
    let xors: std::collections::HashSet<_> = keys
        .windows(2)
        .map(|w| as_int(&w[1]) ^ as_int(&w[0]))
        .collect();
    assert!(
        diffs.len() > keys.len() / 2,
        "{what}: keys step by a few constants"
    );
    assert!(
        xors.len() > keys.len() / 2,
        "{what}: keys differ by a few constant XORs"
    );
}

#[tokio::test]
async fn masking_keys_of_closes_sluice_sends_to_backends_are_distinct_and_balanced() {
    let backend = RawBackend::start(good_101).await;
    let s = Sluice::to(backend.addr, "", ROUTE_MANY_HANDSHAKES).await;
    const N: usize = 50;
    for _ in 0..N {
        let mut client = raw_ws(s.plain_addr, "/").await;
        // An unmasked client frame: 1002 to the client, 1001 (masked, by
        // sluice) to the backend.
        client
            .write_all(&frame_bytes(true, 0, 1, None, b"unmasked"))
            .await
            .unwrap();
        let f = read_frame(&mut client)
            .await
            .expect("a close to the client");
        assert_eq!(f.close_code(), Some(1002));
    }
    let mut keys = Vec::new();
    let t = std::time::Instant::now();
    for i in 0..N {
        loop {
            let got = backend.received(i);
            if got.len() >= 6 {
                assert_eq!(got[0] & 0x0F, 8, "a Close first: {got:?}");
                assert!(got[1] & 0x80 != 0, "sluice masks toward the backend");
                keys.push(got[2..6].to_vec());
                break;
            }
            assert!(t.elapsed() < WAIT, "backend {i} got no close: {got:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_unpredictable(&keys, "masking keys", 0.08);
}

#[tokio::test]
async fn sec_websocket_keys_sluice_makes_for_h2_clients_are_distinct_and_balanced() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(backend.addr, "", ROUTE_MANY_HANDSHAKES).await;
    let send = h2_over_tls(s.tls_addr, &s.cert).await;
    const N: usize = 50;
    let mut held = Vec::new();
    for _ in 0..N {
        let mut send = within("h2 ready", send.clone().ready()).await.unwrap();
        let (resp, stream) = send
            .send_request(ws_connect_request(s.tls_addr.port(), "/", &[]), false)
            .unwrap();
        let resp = within("extended CONNECT", resp).await.unwrap();
        assert_eq!(resp.status(), 200);
        held.push((resp, stream));
    }
    let keys: Vec<Vec<u8>> = backend
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|h| {
            let k = h["sec-websocket-key"].to_str().unwrap();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(k)
                .unwrap_or_else(|e| panic!("key {k:?} is not base64: {e}"));
            assert_eq!(raw.len(), 16, "a 16-byte nonce: {k}");
            raw
        })
        .collect();
    assert_eq!(keys.len(), N);
    assert_unpredictable(&keys, "Sec-WebSocket-Key", 0.04);
}
