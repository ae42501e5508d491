//! Contract, "Tunnels that end well": `route.max_tunnels` and
//! `server.max_tunnels`. The upgrade beyond a cap gets 503 with Retry-After
//! and the backend is never contacted; a closed tunnel frees its place.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

async fn upgrade(s: &Sluice, path: &str) -> (u16, String, TcpStream) {
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let host = s.plain_addr.to_string();
    let (status, head) = raw_request(&mut tcp, &upgrade_request(&host, path, "")).await;
    (status, head, tcp)
}

/// Closes a raw tunnel properly (Close 1000, waits for the reply).
async fn close(mut tunnel: TcpStream) {
    tunnel
        .write_all(&frame_bytes(true, 0, 8, Some(KEY), &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let reply = read_frame(&mut tunnel).await.expect("close reply");
    assert_eq!(reply.close_code(), Some(1000));
}

/// Polls (10/s) until an upgrade on `path` is accepted again.
async fn accepted_again(s: &Sluice, path: &str) -> TcpStream {
    within("a tunnel place to free up", async {
        loop {
            let (status, head, tcp) = upgrade(s, path).await;
            match status {
                101 => return tcp,
                503 => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => panic!("unexpected {head}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_route_at_max_tunnels_answers_503_with_retry_after_and_spares_the_backend() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(backend.addr, "", "max_tunnels = 1\n").await;
    let first = raw_ws(s.plain_addr, "/").await;
    assert_eq!(backend.connections(), 1);
    let (status, head, _) = upgrade(&s, "/").await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head_value(&head, "retry-after").is_some(),
        "503 without Retry-After: {head}"
    );
    assert_eq!(backend.connections(), 1, "the 503 reached the backend");
    close(first).await;
    let _again = accepted_again(&s, "/").await;
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn server_max_tunnels_caps_every_route_together() {
    let backend = EchoWs::start().await;
    let s = Sluice::start(
        "max_tunnels = 2",
        &format!(
            "[[route]]\npath = \"/a\"\nbackends = [\"{0}\"]\n[[route]]\npath = \"/b\"\nbackends = [\"{0}\"]\n",
            backend.addr
        ),
    )
    .await;
    let a = raw_ws(s.plain_addr, "/a").await;
    let _b = raw_ws(s.plain_addr, "/b").await;
    for path in ["/a", "/b"] {
        let (status, head, _) = upgrade(&s, path).await;
        assert_eq!(status, 503, "{path}: {head}");
    }
    assert_eq!(backend.connections(), 2, "a 503 reached the backend");
    close(a).await;
    let _again = accepted_again(&s, "/b").await;
    assert_eq!(backend.connections(), 3);
}

/// Contract: "caps survive reloads without miscounting open tunnels": the
/// tunnels opened before a reload still count against the route's cap
/// after it, and a tunnel closed after it frees its place.
#[tokio::test]
async fn tunnels_opened_before_a_reload_still_count_against_the_cap() {
    let backend = EchoWs::start().await;
    let route = format!(
        "[[route]]\nbackends = [\"{}\"]\nmax_tunnels = 2\n",
        backend.addr
    );
    let mut s = Sluice::start("", &route).await;
    let first = raw_ws(s.plain_addr, "/").await;
    let _second = raw_ws(s.plain_addr, "/").await;
    support::tunnels::reload(&mut s, "", &route).await;
    let (status, head, _) = upgrade(&s, "/").await;
    assert_eq!(status, 503, "after the reload: {head}");
    assert_eq!(backend.connections(), 2, "the 503 reached the backend");
    // A reload that changes the cap: the open tunnels count against the new one.
    support::tunnels::reload(
        &mut s,
        "",
        &route.replace("max_tunnels = 2", "max_tunnels = 3"),
    )
    .await;
    let _third = raw_ws(s.plain_addr, "/").await;
    let (status, head, _) = upgrade(&s, "/").await;
    assert_eq!(status, 503, "at the new cap of 3: {head}");
    close(first).await;
    let _again = accepted_again(&s, "/").await;
    assert_eq!(backend.connections(), 4);
}
