//! Contract: WebSocket tunnels relay both ways over ws and wss, carry the
//! handshake headers end to end, close when idle, and handle half-close.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SIZES: [usize; 6] = [0, 125, 126, 65535, 65536, 1 << 20];

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn echo_over_ws_text_and_binary_at_boundary_sizes() {
    let backend = EchoWs::start().await;
    let sluice = Sluice::to(backend.addr, "", "").await;
    let mut ws = ws_plain(sluice.plain_addr, "/").await;
    for len in SIZES {
        echo_once(&mut ws, Message::Binary(payload(len))).await;
        let text: String = payload(len)
            .iter()
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        echo_once(&mut ws, Message::Text(text)).await;
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn echo_over_wss_text_and_binary_at_boundary_sizes() {
    let backend = EchoWs::start().await;
    let sluice = Sluice::to(backend.addr, "", "").await;
    let tls = sluice.tls_connect().await;
    let url = format!("wss://localhost:{}/chat", sluice.tls_addr.port());
    let (mut ws, resp) = within("wss handshake", tokio_tungstenite::client_async(url, tls))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for len in SIZES {
        echo_once(&mut ws, Message::Binary(payload(len))).await;
        let text: String = payload(len)
            .iter()
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        echo_once(&mut ws, Message::Text(text)).await;
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn subprotocol_and_handshake_headers_reach_the_backend() {
    let backend = EchoWs::start_with_protocol(Some("chat.v2")).await;
    let sluice = Sluice::to(backend.addr, "", "").await;
    let mut req = sluice.ws_url("/room?x=1").into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert("sec-websocket-protocol", "chat.v1,chat.v2".parse().unwrap());
    h.insert("cookie", "session=abc".parse().unwrap());
    h.insert("authorization", "Bearer t0ken".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(sluice.plain_addr)
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v2");
    echo_once(&mut ws, Message::Text("hi".into())).await;
    let seen = backend.requests.lock().unwrap()[0].clone();
    assert_eq!(seen["cookie"], "session=abc");
    assert_eq!(seen["authorization"], "Bearer t0ken");
    assert_eq!(seen["sec-websocket-protocol"], "chat.v1,chat.v2");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn idle_tunnel_is_closed_with_1001_to_both_sides() {
    let backend = RawBackend::start(good_101).await;
    let sluice = Sluice::to(backend.addr, "idle_timeout = \"300ms\"", "").await;
    let mut client = raw_ws(sluice.plain_addr, "/").await;
    let close = read_frame(&mut client).await.expect("a close frame");
    assert_eq!(close.close_code(), Some(1001));
    assert!(!close.masked, "frames toward the client are unmasked");
    // The backend got a masked Close 1001 too.
    within("backend close", async {
        loop {
            let got = backend.received(0);
            if got.len() >= 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let got = backend.received(0);
    assert_eq!(got[0], 0x88);
    assert_eq!(got[1] & 0x80, 0x80, "frames toward the backend are masked");
    let mut s = &got[..];
    let f = read_frame(&mut s).await.unwrap();
    assert_eq!(f.close_code(), Some(1001));
}

#[tokio::test]
async fn half_close_passes_fin_and_other_direction_keeps_flowing() {
    // The backend answers the client's Close with data and its own Close
    // after the client has already shut down its sending side.
    let backend = RawBackend::start(|head| {
        let mut out = good_101(head);
        out.extend(frame_bytes(true, 0, 1, None, b"late data"));
        out
    })
    .await;
    let sluice = Sluice::to(backend.addr, "", "").await;
    let mut client = raw_ws(sluice.plain_addr, "/").await;
    let first = read_frame(&mut client).await.unwrap();
    assert_eq!(first.payload, b"late data");
    client
        .write_all(&frame_bytes(
            true,
            0,
            8,
            Some([1, 2, 3, 4]),
            &1000u16.to_be_bytes(),
        ))
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    // The backend saw the Close and then EOF (the FIN was passed on).
    within("backend EOF", async {
        loop {
            if backend.received(0).len() == 8 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let got = backend.received(0);
    let mut s = &got[..];
    assert_eq!(read_frame(&mut s).await.unwrap().close_code(), Some(1000));
}

#[tokio::test]
async fn backend_first_message_in_the_101_read_is_not_lost() {
    // The backend writes its 101 and a frame in one write: hyper may read
    // both, and the frame must still reach the client.
    let backend = RawBackend::start(|head| {
        let mut out = good_101(head);
        out.extend(frame_bytes(true, 0, 1, None, b"welcome"));
        out
    })
    .await;
    let sluice = Sluice::to(backend.addr, "", "").await;
    let mut ws = ws_plain(sluice.plain_addr, "/").await;
    let msg = within("welcome", ws.next()).await.unwrap().unwrap();
    assert_eq!(msg, Message::Text("welcome".into()));
}
