//! Contract (v2) "Deadlines and ceilings for every connection" (issue 12,
//! item 1): a connection that sends no complete request head within
//! `handshake_timeout` of accept is closed, whatever it sent (nothing, a
//! TLS handshake alone, part of the h2 preface, part of a head);
//! `keepalive_timeout` closes idle HTTP/1.1 keep-alive connections and h2
//! connections with no open stream (even ones that answer PINGs);
//! `max_client_connections_per_ip` closes the connection at once, before
//! TLS; `max_client_connections` pauses accept so that sluice never runs out
//! of descriptors for backends, and a flood from one IP does not stop
//! another IP's request from being served.
//!
//! Timeouts are short ("1s") and every wait is bounded: "closed" means EOF
//! or a reset within the timeout plus 1.5 s of slack.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use support::hostile::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLACK: Duration = Duration::from_millis(1500);
const LOCAL2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// handshake_timeout = 1s, keepalive long, admin on; one HTTP backend.
async fn sluice_1s(backend: SocketAddr) -> Sluice {
    Sluice::to(
        backend,
        "handshake_timeout = \"1s\"\nadmin = \"127.0.0.1:0\"",
        "",
    )
    .await
}

async fn closed_by_handshake_timeout(s: &Sluice) {
    let admin = s.running.admin_addr().unwrap();
    wait_metric(
        admin,
        "sluice_client_connections_closed_total",
        &[("reason", "handshake_timeout")],
        Duration::from_secs(3),
        "the close is counted",
        |v| v.unwrap_or(0.0) >= 1.0,
    )
    .await;
}

// ------------------------------------------------- handshake_timeout

#[tokio::test]
async fn a_plain_connection_that_sends_nothing_is_closed_within_handshake_timeout() {
    let backend = HttpEcho::start().await;
    let s = sluice_1s(backend.addr).await;
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    assert_closed_within(
        &mut tcp,
        Duration::from_secs(1) + SLACK,
        "zero bytes on the plain listener",
    )
    .await;
    closed_by_handshake_timeout(&s).await;
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn a_silent_connection_after_the_tls_handshake_is_closed_for_every_alpn() {
    let backend = HttpEcho::start().await;
    let s = sluice_1s(backend.addr).await;
    let alpns: [&[&[u8]]; 3] = [&[b"h2"], &[b"http/1.1"], &[]];
    let mut clients = Vec::new();
    for alpn in alpns {
        let tcp = TcpStream::connect(s.tls_addr).await.unwrap();
        let tls = tls_over(tcp, tls_config(&s.cert, alpn)).await.unwrap();
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(negotiated.as_deref(), alpn.first().copied());
        clients.push((alpn, tls, Instant::now()));
    }
    for (alpn, mut tls, since) in clients {
        let limit = (Duration::from_secs(1) + SLACK).saturating_sub(since.elapsed());
        let what = format!(
            "zero bytes after the TLS handshake, ALPN {:?}",
            alpn.iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
        );
        assert_closed_within(&mut tls, limit, &what).await;
    }
    closed_by_handshake_timeout(&s).await;
}

#[tokio::test]
async fn a_strict_prefix_of_the_h2_preface_is_closed_within_handshake_timeout() {
    let backend = HttpEcho::start().await;
    let s = sluice_1s(backend.addr).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    tcp.write_all(&preface[..23]).await.unwrap();
    assert_closed_within(
        &mut tcp,
        Duration::from_secs(1) + SLACK,
        "23 of the 24 bytes of the h2 preface",
    )
    .await;
    // The same after TLS with ALPN h2.
    let tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    let mut tls = tls_over(tcp, tls_config(&s.cert, &[b"h2"])).await.unwrap();
    tls.write_all(&preface[..23]).await.unwrap();
    assert_closed_within(
        &mut tls,
        Duration::from_secs(1) + SLACK,
        "23 bytes of the h2 preface after TLS (ALPN h2)",
    )
    .await;
    closed_by_handshake_timeout(&s).await;
}

#[tokio::test]
async fn a_partial_request_head_is_closed_within_handshake_timeout() {
    let backend = HttpEcho::start().await;
    let s = sluice_1s(backend.addr).await;
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    assert_closed_within(
        &mut tcp,
        Duration::from_secs(1) + SLACK,
        "a partial request head",
    )
    .await;
    assert_eq!(backend.requests(), 0);
}

// ------------------------------------------------- keepalive_timeout

#[tokio::test]
async fn an_idle_http1_keepalive_connection_is_closed_after_keepalive_timeout() {
    let backend = HttpEcho::start().await;
    // handshake_timeout is long: only keepalive_timeout can close it at ~1 s.
    let s = Sluice::to(
        backend.addr,
        "handshake_timeout = \"10s\"\nkeepalive_timeout = \"1s\"\nadmin = \"127.0.0.1:0\"",
        "",
    )
    .await;
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let req = b"GET /one HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let (status, head) = raw_request(&mut tcp, req).await;
    assert_eq!(status, 200, "{head}");
    read_body(&mut tcp, &head).await;
    // Not closed at 0.3 s: a second request on the same connection works.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, head) =
        raw_request(&mut tcp, b"GET /two HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(status, 200, "{head}");
    read_body(&mut tcp, &head).await;
    let took = assert_closed_within(
        &mut tcp,
        Duration::from_secs(1) + SLACK,
        "an idle HTTP/1.1 keep-alive connection",
    )
    .await;
    assert!(
        took >= Duration::from_millis(700),
        "closed too early: {took:?}"
    );
    assert_eq!(backend.requests(), 2);
    wait_metric(
        s.running.admin_addr().unwrap(),
        "sluice_client_connections_closed_total",
        &[("reason", "keepalive_timeout")],
        Duration::from_secs(3),
        "the keep-alive close is counted",
        |v| v.unwrap_or(0.0) >= 1.0,
    )
    .await;
}

#[tokio::test]
async fn an_h2_connection_with_no_open_stream_gets_goaway_after_keepalive_timeout_despite_pings() {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(
        backend.addr,
        "handshake_timeout = \"10s\"\nkeepalive_timeout = \"1s\"",
        "",
    )
    .await;
    let tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    let tls = tls_over(tcp, tls_config(&s.cert, &[b"h2"])).await.unwrap();
    let (send, mut conn) = within("h2 handshake", h2::client::handshake(tls))
        .await
        .unwrap();
    let mut pings = conn.ping_pong().expect("ping_pong");
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = conn.await;
        let _ = done_tx.send(r);
    });
    // One complete request, so the connection is past its handshake.
    let mut send = within("h2 ready", send.ready()).await.unwrap();
    let req = http::Request::get(format!("https://localhost:{}/x", s.tls_addr.port()))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = within("h2 response", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(chunk) = within("h2 body", body.data()).await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    drop(body);
    let idle_since = Instant::now();
    // Stay busy with PINGs (answered by sluice) but open no stream.
    let limit = Duration::from_secs(1) + SLACK + Duration::from_millis(500);
    let mut answered = 0;
    let ended = loop {
        if let Ok(r) = done_rx.try_recv() {
            break Some(r);
        }
        if idle_since.elapsed() > limit {
            break None;
        }
        let ping =
            tokio::time::timeout(Duration::from_millis(300), pings.ping(h2::Ping::opaque())).await;
        if let Ok(Ok(_)) = ping {
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert!(answered >= 1, "sluice never answered a PING");
    let ended = ended.unwrap_or_else(|| {
        panic!(
            "an h2 connection with no open stream (that answers PINGs) is still open {:?} after its last stream; keepalive_timeout = 1s",
            idle_since.elapsed()
        )
    });
    assert!(
        idle_since.elapsed() >= Duration::from_millis(700),
        "closed too early: {:?} ({ended:?})",
        idle_since.elapsed()
    );
    // GOAWAY first: the h2 client sees a graceful end (Ok) or a GOAWAY,
    // never a bare close of the connection.
    if let Err(e) = &ended {
        assert!(e.is_go_away(), "the connection ended without a GOAWAY: {e}");
    }
}

// ------------------------------------------------- per-IP cap

#[tokio::test]
async fn max_client_connections_per_ip_closes_the_next_connection_at_once_before_tls() {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(
        backend.addr,
        "handshake_timeout = \"10s\"\nmax_client_connections_per_ip = 2\nadmin = \"127.0.0.1:0\"",
        "",
    )
    .await;
    // Two silent connections from 127.0.0.1 to the TLS listener: kept.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(s.tls_addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The third is closed at once, before any TLS byte (we send none).
    let mut third = TcpStream::connect(s.tls_addr).await.unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_millis(800), third.read_to_end(&mut buf)).await;
    assert!(
        r.is_ok(),
        "the third connection from 127.0.0.1 is still open after 800 ms (cap 2 per IP)"
    );
    assert!(
        buf.is_empty(),
        "closed before TLS: no byte expected, got {buf:?}"
    );
    assert!(t.elapsed() < Duration::from_millis(800));
    // A TLS handshake from the same IP fails too.
    let tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    assert!(
        tls_over(tcp, tls_config(&s.cert, &[b"http/1.1"]))
            .await
            .is_err(),
        "a TLS handshake over the cap succeeded"
    );
    // Another IP is served, over TLS and plain.
    let tcp = connect_from(LOCAL2, s.tls_addr).await.unwrap();
    let mut tls = tls_over(tcp, tls_config(&s.cert, &[b"http/1.1"]))
        .await
        .unwrap();
    let (status, _) = raw_request(
        &mut tls,
        b"GET /other-ip HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    // The two held connections were not disturbed.
    for tcp in &mut held {
        assert_open_for(
            tcp,
            Duration::from_millis(100),
            "a connection under the cap",
        )
        .await;
    }
    wait_metric(
        s.running.admin_addr().unwrap(),
        "sluice_client_connections_closed_total",
        &[("reason", "per_ip_cap")],
        Duration::from_secs(3),
        "per-IP closes are counted",
        |v| v.unwrap_or(0.0) >= 2.0,
    )
    .await;
}

// ------------------------------------------------- descriptors

fn limited_config(backend: SocketAddr, server_extra: &str) -> String {
    format!(
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\nhandshake_timeout = \"30s\"\nshutdown_grace = \"1s\"\n{server_extra}\n\
         [[route]]\nbackends = [\"{backend}\"]\n"
    )
}

/// Opens `n` connections from `from` to `addr` and keeps them (silent).
async fn flood(from: IpAddr, addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(
            within("flood connect", connect_from(from, addr))
                .await
                .unwrap(),
        );
    }
    v
}

/// RLIMIT_NOFILE = 256 and no server key but the timeout: sluice holds a
/// client connection that has not yet sent its request, then 250 silent
/// connections arrive. With accept paused at half the limit (the default
/// `max_client_connections`), the request still gets a backend connection
/// and a 200; today every descriptor goes to the flood and the backend
/// connect fails (EMFILE).
#[tokio::test]
async fn accept_pauses_before_descriptors_run_out_so_backends_still_get_theirs() {
    let backend = HttpEcho::start().await;
    let (_dir, path) = write_config(&limited_config(backend.addr, ""));
    let proc = Proc::start(&path, Some(256));
    let addr = proc.addr("listening").await;
    let mut legit = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = flood(IpAddr::V4(Ipv4Addr::LOCALHOST), addr, 250).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    legit
        .write_all(b"GET /needs-a-backend HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(5), legit.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        got.is_ok() && resp.starts_with("HTTP/1.1 200"),
        "with 256 descriptors and 250 silent clients, a request already accepted gets {resp:?} (timed out: {}); log tail: {:#?}",
        got.is_err(),
        proc.lines.lock().unwrap().iter().rev().take(5).collect::<Vec<_>>()
    );
    assert_eq!(backend.requests(), 1);
    drop(held);
}

/// RLIMIT_NOFILE = 256, `max_client_connections_per_ip = 100`: 300 silent
/// connections from 127.0.0.1 (they would be held for 30 s) do not stop a
/// GET from 127.0.0.2, sent while the flood is still open, from being
/// answered 200 by the backend.
#[tokio::test]
async fn a_flood_of_silent_connections_from_one_ip_does_not_stop_another_ips_request() {
    let backend = HttpEcho::start().await;
    let (_dir, path) = write_config(&limited_config(
        backend.addr,
        "max_client_connections_per_ip = 100",
    ));
    let proc = Proc::start(&path, Some(256));
    let addr = proc.addr("listening").await;
    let held = flood(IpAddr::V4(Ipv4Addr::LOCALHOST), addr, 300).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let mut tcp = connect_from(LOCAL2, addr).await.unwrap();
        tcp.write_all(b"GET /from-another-ip HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        let _ = tcp.read_to_end(&mut resp).await;
        String::from_utf8_lossy(&resp).into_owned()
    })
    .await;
    match served {
        Ok(resp) => assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}"),
        Err(_) => panic!(
            "a GET from 127.0.0.2 got no answer within 5 s while 300 silent connections from 127.0.0.1 were open (RLIMIT_NOFILE 256); log tail: {:#?}",
            proc.lines.lock().unwrap().iter().rev().take(5).collect::<Vec<_>>()
        ),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(backend.requests(), 1);
    drop(held);
}
