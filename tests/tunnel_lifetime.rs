//! Contract, "Tunnels that end well": `max_lifetime` closes a tunnel with
//! 1001 after the lifetime, jittered by ±10 %, so tunnels re-balance onto
//! new backends after a scale-out.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test]
async fn a_tunnel_past_max_lifetime_gets_close_1001_within_its_jitter() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(
        backend.addr,
        "",
        "[route.websocket]\nmax_lifetime = \"1s\"\n",
    )
    .await;
    let mut closes = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut tunnel = raw_ws(s.plain_addr, "/").await;
        let close = within("the lifetime's Close", read_frame(&mut tunnel))
            .await
            .expect("a Close frame, not EOF");
        let at = started.elapsed();
        assert_eq!(close.close_code(), Some(1001), "{close:?}");
        // ±10 % of 1 s, and the watchdog's timer resolution on top.
        assert!(
            at >= Duration::from_millis(880) && at <= Duration::from_millis(1300),
            "closed after {at:?}"
        );
        closes.push(at);
    }
    println!("lifetime closes after {closes:?}");
}

#[tokio::test]
async fn without_max_lifetime_a_tunnel_stays_open() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let mut tunnel = raw_ws(s.plain_addr, "/").await;
    let got = tokio::time::timeout(Duration::from_millis(1500), read_frame(&mut tunnel)).await;
    assert!(got.is_err(), "a frame arrived from nowhere: {got:?}");
}
