//! Backend pools: retry on the next backend, least connections, active
//! health checks with ejection and recovery, 503 when all are unhealthy,
//! open tunnels left alone when their backend turns unhealthy.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// An HTTP backend whose `/healthz` answers 200 or 503 at the test's say,
/// and which answers any other path with its own name.
struct Switchable {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

impl Switchable {
    async fn start(name: &'static str) -> Switchable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let served = Arc::new(AtomicUsize::new(0));
        let (h, s) = (healthy.clone(), served.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (h, s) = (h.clone(), s.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (h, s) = (h.clone(), s.clone());
                        async move {
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(name)));
                            if req.uri().path() == "/healthz" {
                                if !h.load(Ordering::SeqCst) {
                                    *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                }
                            } else {
                                s.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Switchable {
            addr,
            healthy,
            served,
        }
    }
}

#[tokio::test]
async fn a_refused_backend_is_retried_on_the_next_for_upgrades_and_gets() {
    let echo = EchoWs::start().await;
    let http = HttpEcho::start().await;
    let dead = refused_addr().await;
    let s = Sluice::start(
        "",
        &format!(
            "[[route]]\npath = \"/ws\"\nbackends = [\"{dead}\", \"{}\"]\n[[route]]\nbackends = [\"{dead}\", \"{}\"]\n",
            echo.addr, http.addr
        ),
    )
    .await;
    for _ in 0..3 {
        let mut ws = ws_plain(s.plain_addr, "/ws").await;
        echo_once(&mut ws, Message::Text("via the live backend".into())).await;
        assert_eq!(get(s.plain_addr, "x", "/x", "").await.0, 200);
    }
    assert_eq!(echo.connections(), 3);
}

#[tokio::test]
async fn least_connections_sends_new_tunnels_to_the_least_busy_backend() {
    let a = EchoWs::start().await;
    let b = EchoWs::start().await;
    let s = Sluice::to_many(&[a.addr, b.addr], "balance = \"least_connections\"").await;
    let mut first = ws_plain(s.plain_addr, "/").await;
    echo_once(&mut first, Message::Text("1".into())).await;
    let first_on_a = a.connections() == 1;
    let mut second = ws_plain(s.plain_addr, "/").await;
    echo_once(&mut second, Message::Text("2".into())).await;
    // One each: the second went to the backend without a tunnel.
    assert_eq!((a.connections(), b.connections()), (1, 1));
    // Close the first; the next tunnel must go to the backend it freed,
    // since the other still carries the second.
    first.close(None).await.unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = ws_plain(s.plain_addr, "/").await;
    echo_once(&mut third, Message::Text("3".into())).await;
    let freed = if first_on_a { &a } else { &b };
    assert_eq!(
        freed.connections(),
        2,
        "a={} b={}",
        a.connections(),
        b.connections()
    );
    echo_once(&mut second, Message::Text("2 still open".into())).await;
}

#[tokio::test]
async fn health_checks_eject_and_restore_backends_and_all_unhealthy_is_503() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let s = Sluice::to_many(
        &[a.addr, b.addr],
        "health_check = { path = \"/healthz\", interval = \"50ms\", timeout = \"200ms\", unhealthy_after = 2, healthy_after = 1 }",
    )
    .await;
    a.healthy.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = a.served.load(Ordering::SeqCst);
    for _ in 0..6 {
        assert_eq!(
            get(s.plain_addr, "x", "/x", "").await,
            (200, "b".to_owned())
        );
    }
    assert_eq!(
        a.served.load(Ordering::SeqCst),
        before,
        "an unhealthy backend gets no requests"
    );

    b.healthy.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(s.plain_addr, "x", "/x", "").await.0, 503);

    a.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(s.plain_addr, "x", "/x", "").await,
        (200, "a".to_owned())
    );
}

#[tokio::test]
async fn open_tunnels_survive_their_backend_turning_unhealthy() {
    let echo = EchoWs::start().await;
    // A TCP health check against a port nothing listens on... is not what we
    // want; instead check the echo backend with a path it cannot serve, so it
    // is marked unhealthy while the tunnel through it is open.
    let s = Sluice::to_many(
        &[echo.addr],
        "health_check = { path = \"/healthz\", interval = \"50ms\", timeout = \"200ms\", unhealthy_after = 1 }",
    )
    .await;
    let mut ws = ws_plain(s.plain_addr, "/").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // New connections are refused with 503 ...
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let (status, _) = raw_request(
        &mut tcp,
        &upgrade_request(&s.plain_addr.to_string(), "/", ""),
    )
    .await;
    assert_eq!(status, 503);
    // ... while the open tunnel keeps echoing.
    echo_once(&mut ws, Message::Text("still here".into())).await;
}
