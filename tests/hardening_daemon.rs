//! Issue 12, the items around the tunnel: a backend's refusal with an
//! endless chunk-size line is cut at 4 KiB per line (5); an upgrade still
//! waiting for its backend when SIGTERM arrives gets Close 1001 and does not
//! hold the drain for `shutdown_grace` (6); a reload refused because the new
//! admin address cannot be bound changes nothing (7); a backend answering
//! an upgrade with 200 is a refusal, over h2 too, and is counted as one (8);
//! clients that hang up mid-request do not leak
//! `sluice_http_requests_in_flight` (12).
//!
//! Item 15 (`listen_fds()` clearing `LISTEN_*` after the runtime started) has
//! no black-box test: the environment a process changes at run time is not
//! visible from outside (/proc/<pid>/environ shows the exec-time block).
//! tests/daemon.rs `socket_activation_uses_the_inherited_socket` covers the
//! behaviour that must not change.

mod support;

use std::time::{Duration, Instant};

use support::hostile::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ------------------------------------------------------------ item 5

/// The backend refuses the upgrade with a chunked 403 whose first
/// chunk-size line never ends (`1;ext=` and 8 MiB of 'a', no CRLF). The client gets a
/// 502 promptly and sluice does not buffer the line (RSS grows < 4 MiB).
#[tokio::test]
async fn a_refusal_with_an_endless_chunk_size_line_is_cut_at_the_line_cap_with_502() {
    let backend = RawBackend::start(|_| {
        let mut v = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        // A chunk size, then a chunk extension that never ends (8 MiB, no
        // CRLF). (A run of hex digits alone would overflow the size at 16.)
        v.extend_from_slice(b"1;ext=");
        v.extend_from_slice(&vec![b'a'; 8 << 20]);
        v
    })
    .await;
    let (_dir, path) = write_config(&format!(
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\nhandshake_timeout = \"5s\"\n\
         [[route]]\nbackends = [\"{}\"]\n",
        backend.addr
    ));
    let proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;
    // Warm up with one request sluice refuses itself (CONNECT: 405).
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = raw_request(&mut tcp, b"CONNECT x:1 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    drop(tcp);
    let before = proc.settled_rss_kib().await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&upgrade_request(&addr.to_string(), "/", ""))
        .await
        .unwrap();
    let t = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(3), read_head(&mut tcp)).await;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = proc.rss_kib().saturating_sub(before);
    match answer {
        Ok((status, head)) => assert_eq!(
            status, 502,
            "an endless chunk-size line in a refusal: {head} (RSS +{grown} KiB)"
        ),
        Err(_) => panic!(
            "no answer within 3 s to an upgrade refused with an endless chunk-size line (RSS +{grown} KiB)"
        ),
    }
    assert!(took < Duration::from_secs(2), "502 after {took:?}");
    assert!(
        grown < 4 * 1024,
        "sluice's RSS grew by {grown} KiB while reading an endless chunk-size line (cap: 4 KiB per line)"
    );
}

// ------------------------------------------------------------ item 6

/// The backend answers the upgrade 1.5 s late; SIGTERM arrives while the
/// upgrade waits. The tunnel that then opens gets Close 1001 at once (or
/// the upgrade is refused with a 5xx), and sluice exits 0 long before
/// `shutdown_grace` (20 s).
#[tokio::test]
async fn an_upgrade_pending_at_sigterm_gets_close_1001_and_does_not_hold_the_drain() {
    let (backend, received) = delayed_ws_backend(Duration::from_millis(1500)).await;
    let (_dir, path) = write_config(&format!(
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\nhandshake_timeout = \"10s\"\nshutdown_grace = \"20s\"\n\
         [[route]]\nbackends = [\"{backend}\"]\n"
    ));
    let mut proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(&upgrade_request(&addr.to_string(), "/", ""))
        .await
        .unwrap();
    // The upgrade has reached the backend, which sits on it.
    let t = Instant::now();
    while received.lock().unwrap().is_empty() {
        assert!(t.elapsed() < WAIT, "the backend never got the upgrade");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    proc.signal("TERM");
    let term = Instant::now();
    let (status, head) = read_head(&mut client).await;
    if status == 101 {
        let close = frame_within(&mut client, Duration::from_secs(3)).await;
        let code = close.as_ref().and_then(|f| f.close_code());
        assert_eq!(
            code,
            Some(1001),
            "a tunnel opened during the drain must get Close 1001 at once; got {close:?} (None: EOF or nothing within 3 s), {:?} after SIGTERM",
            term.elapsed()
        );
        // The backend side got its 1001 too (masked).
        let t = Instant::now();
        loop {
            let got = received.lock().unwrap()[0].clone();
            if got.len() >= 8 {
                let mut s = &got[..];
                let f = read_frame(&mut s).await.expect("a close to the backend");
                assert!(f.masked);
                assert_eq!(f.close_code(), Some(1001));
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "no close to the backend: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        assert!(
            (500..600).contains(&status),
            "an upgrade pending at SIGTERM: {head}"
        );
    }
    drop(client);
    let status = proc
        .wait_exit(Duration::from_secs(6).saturating_sub(term.elapsed()))
        .await;
    assert!(status.success(), "{status:?}");
}

// ------------------------------------------------------------ item 7

async fn healthz(admin: std::net::SocketAddr) -> Option<u16> {
    let mut tcp = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(admin))
        .await
        .ok()?
        .ok()?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut resp))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A reload whose new admin address is taken is refused, and a refused
/// reload changes nothing: the old admin listener still answers /healthz
/// and the new config's extra listener is not accepting connections.
#[tokio::test]
async fn a_reload_refused_for_an_unbindable_admin_address_changes_nothing() {
    let backend = HttpEcho::start().await;
    let admin_port = free_port();
    let new_port = free_port();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let config = |admin: u16, listen: &str| {
        format!(
            "[server]\nlisten_plain = [{listen}]\nadmin = \"127.0.0.1:{admin}\"\nshutdown_grace = \"1s\"\n\
             [[route]]\nbackends = [\"{}\"]\n",
            backend.addr
        )
    };
    let (_dir, path) = write_config(&config(admin_port, "\"127.0.0.1:0\""));
    let proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;
    let admin = proc.addr("admin listening").await;
    assert_eq!(admin.port(), admin_port);
    assert_eq!(healthz(admin).await, Some(200));

    std::fs::write(
        &path,
        config(
            taken_port,
            &format!("\"127.0.0.1:0\", \"127.0.0.1:{new_port}\""),
        ),
    )
    .unwrap();
    proc.signal("HUP");
    proc.wait_line("reload refused", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(
        healthz(admin).await,
        Some(200),
        "the running admin listener stopped answering after a refused reload"
    );
    // The refused config's new listener does not serve.
    let new_addr: std::net::SocketAddr = format!("127.0.0.1:{new_port}").parse().unwrap();
    if let Ok(mut tcp) = TcpStream::connect(new_addr).await {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            raw_request(
                &mut tcp,
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            ),
        )
        .await;
        panic!(
            "the refused config's listener 127.0.0.1:{new_port} accepts connections (answer: {answer:?})"
        );
    }
    // The old listener still serves.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (status, _) = raw_request(
        &mut tcp,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    drop(taken);
}

// ------------------------------------------------------------ item 8

fn answers_200(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello".to_vec()
}

#[tokio::test]
async fn an_h2_websocket_refused_by_the_backend_with_200_is_not_reported_as_open() {
    let bodyless = |_: &str| b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
    for (what, backend) in [
        ("200 without a body", RawBackend::start(bodyless).await),
        ("200 with a body", RawBackend::start(answers_200).await),
    ] {
        let s = Sluice::to(backend.addr, "admin = \"127.0.0.1:0\"", "").await;
        let send = h2_over_tls(s.tls_addr, &s.cert).await;
        let mut send = within("h2 ready", send.ready()).await.unwrap();
        let (resp, _stream) = send
            .send_request(ws_connect_request(s.tls_addr.port(), "/", &[]), false)
            .unwrap();
        let status = match within("extended CONNECT response", resp).await {
            Ok(r) => r.status(),
            Err(e) => {
                panic!("backend {what}: the refusal must reach the client as a response, got {e}")
            }
        };
        assert!(
            !status.is_success(),
            "backend {what}: reached the h2 client as :status {status}, which means \"WebSocket open\""
        );
        assert_eq!(status, 502, "backend {what}");
        assert_eq!(backend.connections(), 1);
        let text = scrape(s.running.admin_addr().unwrap()).await;
        assert_eq!(
            metric(
                &text,
                "sluice_ws_handshakes_total",
                &[("outcome", "accepted")]
            )
            .unwrap_or(0.0),
            0.0,
            "backend {what}: a refused h2 upgrade was counted as accepted: {text}"
        );
    }
}

#[tokio::test]
async fn an_http1_upgrade_answered_200_is_counted_as_refused_by_backend() {
    let backend = RawBackend::start(answers_200).await;
    let s = Sluice::to(backend.addr, "admin = \"127.0.0.1:0\"", "").await;
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let (status, head) = raw_request(
        &mut tcp,
        &upgrade_request(&s.plain_addr.to_string(), "/", ""),
    )
    .await;
    // Contract: anything but 101 goes to the client as plain HTTP.
    assert_eq!(status, 200, "{head}");
    assert_eq!(read_body(&mut tcp, &head).await, b"hello");
    let text = scrape(s.running.admin_addr().unwrap()).await;
    assert_eq!(
        metric(
            &text,
            "sluice_ws_handshakes_total",
            &[("outcome", "accepted")]
        )
        .unwrap_or(0.0),
        0.0,
        "a backend's 200 was counted as an accepted handshake: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "sluice_ws_handshakes_total",
            &[("route", "*/"), ("outcome", "refused_by_backend")]
        ),
        Some(1.0),
        "{text}"
    );
}

// ------------------------------------------------------------ item 12

async fn in_flight_is(admin: std::net::SocketAddr, want: f64, what: &str) {
    wait_metric(
        admin,
        "sluice_http_requests_in_flight",
        &[("route", "*/")],
        Duration::from_secs(3),
        what,
        |v| v.unwrap_or(0.0) == want,
    )
    .await;
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_body_does_not_leak_requests_in_flight() {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "admin = \"127.0.0.1:0\"", "").await;
    let admin = s.running.admin_addr().unwrap();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
        tcp.write_all(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
        in_flight_is(admin, 1.0, "a request with its body under way is in flight").await;
        drop(tcp);
        in_flight_is(admin, 0.0, "a client that hung up mid-body").await;
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_before_a_slow_backend_answers_does_not_leak_requests_in_flight() {
    let (backend, accepted) = silent_backend().await;
    let s = Sluice::to(
        backend,
        "admin = \"127.0.0.1:0\"\nhandshake_timeout = \"10s\"",
        "",
    )
    .await;
    let admin = s.running.admin_addr().unwrap();
    for i in 0..3 {
        let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
        tcp.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        in_flight_is(admin, 1.0, "a request waiting for its backend is in flight").await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), i + 1);
        drop(tcp);
        in_flight_is(admin, 0.0, "a client that hung up before the response").await;
    }
}

#[tokio::test]
async fn an_h2_client_that_resets_its_stream_before_the_response_does_not_leak_requests_in_flight()
{
    let (backend, _accepted) = silent_backend().await;
    let s = Sluice::to(
        backend,
        "admin = \"127.0.0.1:0\"\nhandshake_timeout = \"10s\"",
        "",
    )
    .await;
    let admin = s.running.admin_addr().unwrap();
    let send = h2_over_tls(s.tls_addr, &s.cert).await;
    for _ in 0..3 {
        let mut send = within("h2 ready", send.clone().ready()).await.unwrap();
        let req = http::Request::get(format!("https://localhost:{}/slow", s.tls_addr.port()))
            .body(())
            .unwrap();
        let (resp, mut stream) = send.send_request(req, false).unwrap();
        in_flight_is(
            admin,
            1.0,
            "an h2 request waiting for its backend is in flight",
        )
        .await;
        stream.send_reset(h2::Reason::CANCEL);
        drop(resp);
        in_flight_is(
            admin,
            0.0,
            "an h2 client that reset its stream before the response",
        )
        .await;
    }
}
