//! Contract, "Tunnels that end well": closes spread over `drain_spread`. On
//! a drain every tunnel gets Close 1001 at its moment in the window, at a
//! frame boundary; a reload that removes a backend from a route with
//! `on_backend_removed = "close"` gives that backend's tunnels Close 1012
//! (1001 to the backend) the same way and leaves every other tunnel alone.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::hostile::wait_metric;
use support::tunnels::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const N: usize = 1000;
/// Of the N tunnels, this many carry a stream of fragmented messages from
/// the backend while the drain runs.
const STREAMING: usize = 100;

const MANY_FROM_ONE_IP: &str =
    "[limits]\nhandshakes_per_second = 100000\nhandshake_burst = 100000\n\
                                max_connections_per_ip = 100000\n";

/// Writes fragmented binary messages (5 frames of 200 bytes, each frame in
/// two writes) until it gets a Close, then, like a well-behaved peer,
/// finishes the frame it is in and answers with a Close. Returns the code
/// it got.
async fn stream_until_closed(backend: TcpStream) -> Option<u16> {
    let (mut rd, mut wr) = backend.into_split();
    let closing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = closing.clone();
    let writer = tokio::spawn(async move {
        loop {
            for i in 0..5u8 {
                let bytes = frame_bytes(i == 4, 0, if i == 0 { 2 } else { 0 }, None, &[i; 200]);
                for piece in [&bytes[..101], &bytes[101..]] {
                    if wr.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = wr
                        .write_all(&frame_bytes(true, 0, 8, None, &1001u16.to_be_bytes()))
                        .await;
                    let _ = wr.shutdown().await;
                    return;
                }
            }
        }
    });
    let code = loop {
        match read_frame(&mut rd).await {
            Some(f) if f.opcode == 8 => break f.close_code(),
            Some(_) => continue,
            None => break None,
        }
    };
    closing.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = writer.await;
    code
}

/// Reads frames until the Close, checking that every frame before it is
/// well-formed and in a valid message sequence; replies to the Close.
/// Returns the close code and when it came.
async fn until_close(mut client: TcpStream) -> Result<(Instant, u16), String> {
    let mut in_message = false;
    let mut frames = 0;
    loop {
        let Some(f) = read_frame(&mut client).await else {
            return Err(format!("EOF after {frames} frames, before any Close"));
        };
        match (f.opcode, in_message) {
            (8, _) => {
                let at = Instant::now();
                let _ = client
                    .write_all(&frame_bytes(true, 0, 8, Some(KEY), &f.payload[..2]))
                    .await;
                return Ok((at, f.close_code().unwrap_or(0)));
            }
            (2, false) | (0, true) => in_message = !f.fin,
            other => {
                return Err(format!(
                    "frame {frames}: opcode/in-message {other:?}: {f:?}"
                ))
            }
        }
        if f.payload.len() != 200 || f.masked {
            return Err(format!("frame {frames} malformed: {f:?}"));
        }
        frames += 1;
    }
}

#[tokio::test]
async fn a_drain_spreads_its_closes_over_drain_spread_each_at_a_frame_boundary() {
    let (backend, mut sockets) = raw_ws_backend().await;
    let s = Sluice::start(
        "drain_spread = \"3s\"\nshutdown_grace = \"10s\"",
        &format!("{MANY_FROM_ONE_IP}[[route]]\nbackends = [\"{backend}\"]\n"),
    )
    .await;
    let opening = Instant::now();
    let mut clients = Vec::with_capacity(N);
    let mut streams = Vec::new();
    for i in 0..N {
        clients.push(raw_ws(s.plain_addr, "/").await);
        let backend = within("the backend's socket", sockets.recv())
            .await
            .unwrap();
        if i < STREAMING {
            streams.push(tokio::spawn(stream_until_closed(backend)));
        } else {
            // Held open, silent; it answers nothing (the test ends before a ping).
            tokio::spawn(async move {
                let mut backend = backend;
                let _ = read_to_end(&mut backend).await;
            });
        }
    }
    println!("{N} tunnels opened in {:?}", opening.elapsed());
    // Let the streams get going.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(until_close(c)))
        .collect();
    let started = Instant::now();
    let Sluice { running, .. } = s;
    let report = running.drain(Duration::from_secs(10)).await;
    assert!(report.finished, "{report:?}");
    let mut at = Vec::with_capacity(N);
    for (i, r) in readers.into_iter().enumerate() {
        let (when, code) = r
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("tunnel {i}: {e}"));
        assert_eq!(code, 1001, "tunnel {i}");
        at.push(when.saturating_duration_since(started).as_secs_f64());
    }
    for (i, s) in streams.into_iter().enumerate() {
        assert_eq!(s.await.unwrap(), Some(1001), "streaming backend {i}");
    }
    at.sort_by(f64::total_cmp);
    let q = [0.0, 0.25, 0.5, 0.75, 1.0].map(|p| quantile(&at, p));
    println!("close times over a 3 s drain_spread (min, quartiles, max): {q:.3?}");
    for (p, want) in [(0.25, 0.75), (0.5, 1.5), (0.75, 2.25)] {
        let got = quantile(&at, p);
        assert!(
            (got - want).abs() < 0.35,
            "quantile {p}: {got:.3} s, want about {want} s ({q:.3?})"
        );
    }
    assert!(
        q[0] < 0.2 && q[4] < 3.4,
        "closes from {:.3} s to {:.3} s",
        q[0],
        q[4]
    );
}

/// Route /a over b1 and b2, route /b over b1; with the given /a setting.
fn two_routes(b1: &RecordingWs, b2: &RecordingWs, a_backends: &str, on_removed: &str) -> String {
    format!(
        "[[route]]\npath = \"/a\"\nbackends = [{a_backends}]\n{on_removed}\n\
         [[route]]\npath = \"/b\"\nbackends = [\"{}\"]\n",
        b1.addr,
    )
    .replace("B2", &b2.addr.to_string())
}

/// Opens a tunnel on /a to each backend and one on /b (to b1): the tunnels
/// `(a_to_b1, a_to_b2, b_to_b1)`, and b1's connection index of a_to_b1.
async fn three_tunnels(
    s: &Sluice,
    b1: &RecordingWs,
    b2: &RecordingWs,
) -> (Ws<TcpStream>, Ws<TcpStream>, Ws<TcpStream>, usize) {
    let first = ws_plain(s.plain_addr, "/a").await;
    let second = ws_plain(s.plain_addr, "/a").await;
    assert_eq!((b1.connections(), b2.connections()), (1, 1), "round robin");
    // Which of the two went to b1: its echo shows up in b1's record.
    let (mut first, second) = (first, second);
    echo_once(&mut first, Message::Text("which".into())).await;
    let first_on_b1 = b1
        .received(0)
        .iter()
        .any(|(_, m)| m == &Message::Text("which".into()));
    let (a1, a2) = if first_on_b1 {
        (first, second)
    } else {
        (second, first)
    };
    let b = ws_plain(s.plain_addr, "/b").await;
    (a1, a2, b, 0)
}

async fn still_echoes(ws: &mut Ws<TcpStream>, what: &str) {
    let msg = Message::Text(format!("{what} is still open"));
    ws.send(msg.clone()).await.unwrap();
    match within(what, ws.next()).await {
        Some(Ok(m)) => assert_eq!(m, msg, "{what}"),
        other => panic!("{what}: {other:?}"),
    }
}

#[tokio::test]
async fn a_reload_that_removes_a_backend_closes_its_tunnels_with_1012_when_the_route_says_close() {
    let (b1, b2) = (RecordingWs::start().await, RecordingWs::start().await);
    let close = "on_backend_removed = \"close\"";
    let server = "admin = \"127.0.0.1:0\"\ndrain_spread = \"1s\"";
    let both = format!("\"{}\", \"B2\"", b1.addr);
    let mut s = Sluice::start(server, &two_routes(&b1, &b2, &both, close)).await;
    let (mut a1, mut a2, mut b, on_b1) = three_tunnels(&s, &b1, &b2).await;
    let reloaded = Instant::now();
    reload(&mut s, server, &two_routes(&b1, &b2, "\"B2\"", close)).await;
    let code = expect_close(&mut a1).await;
    let after = reloaded.elapsed();
    // The close handshake ends the tunnel (and counts its Close).
    while let Some(Ok(_)) = within("the end of the tunnel", a1.next()).await {}
    assert_eq!(code, 1012, "the client of the removed backend");
    assert!(
        after < Duration::from_millis(1500),
        "Close 1012 after {after:?} (drain_spread 1s)"
    );
    let (_, to_backend) = b1.close_of(on_b1).await;
    assert_eq!(to_backend, 1001, "the removed backend");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    still_echoes(&mut a2, "the tunnel to the kept backend").await;
    still_echoes(&mut b, "the other route's tunnel to the removed backend").await;
    wait_metric(
        s.running.admin_addr().unwrap(),
        "sluice_ws_closes_total",
        &[("code", "1012"), ("direction", "to_client")],
        Duration::from_secs(5),
        "Close 1012 counted",
        |v| v == Some(1.0),
    )
    .await;
    // A tunnel opened after the reload goes to the kept backend and stays.
    let mut later = ws_plain(s.plain_addr, "/a").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    still_echoes(&mut later, "a tunnel opened after the reload").await;
}

#[tokio::test]
async fn a_reload_that_removes_a_backend_keeps_its_tunnels_by_default() {
    let (b1, b2) = (RecordingWs::start().await, RecordingWs::start().await);
    let server = "drain_spread = \"1s\"";
    let both = format!("\"{}\", \"B2\"", b1.addr);
    let mut s = Sluice::start(server, &two_routes(&b1, &b2, &both, "")).await;
    let (mut a1, mut a2, mut b, _) = three_tunnels(&s, &b1, &b2).await;
    reload(&mut s, server, &two_routes(&b1, &b2, "\"B2\"", "")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    still_echoes(&mut a1, "the tunnel to the removed backend").await;
    still_echoes(&mut a2, "the tunnel to the kept backend").await;
    still_echoes(&mut b, "the other route's tunnel").await;
}

/// The removal's closes are spread over drain_spread like a drain's.
#[tokio::test]
async fn the_closes_of_a_removed_backend_are_spread_over_drain_spread() {
    let (b1, b2) = (RecordingWs::start().await, RecordingWs::start().await);
    let close = "on_backend_removed = \"close\"";
    let server = "drain_spread = \"2s\"";
    let both = format!("\"{}\", \"B2\"", b1.addr);
    let mut s = Sluice::start(
        server,
        &format!("{MANY_FROM_ONE_IP}{}", two_routes(&b1, &b2, &both, close)),
    )
    .await;
    // Round robin: even tunnels to b1, odd ones to b2.
    let mut tunnels = Vec::new();
    for i in 0..40 {
        let mut ws = ws_plain(s.plain_addr, "/a").await;
        echo_once(&mut ws, Message::Text(format!("tunnel {i}"))).await;
        tunnels.push(ws);
    }
    assert_eq!((b1.connections(), b2.connections()), (20, 20));
    let on_b1 = |i: usize| {
        let text = Message::Text(format!("tunnel {i}"));
        (0..20).any(|c| b1.received(c).iter().any(|(_, m)| *m == text))
    };
    let (removed, kept): (Vec<_>, Vec<_>) = tunnels
        .into_iter()
        .enumerate()
        .partition(|(i, _)| on_b1(*i));
    assert_eq!(removed.len(), 20);
    // Each read in a task of its own: the moment a Close arrives is kept.
    let readers: Vec<_> = removed
        .into_iter()
        .map(|(_, mut ws)| {
            tokio::spawn(async move {
                let code = expect_close(&mut ws).await;
                (Instant::now(), code)
            })
        })
        .collect();
    let reloaded = Instant::now();
    reload(
        &mut s,
        server,
        &format!(
            "{MANY_FROM_ONE_IP}{}",
            two_routes(&b1, &b2, "\"B2\"", close)
        ),
    )
    .await;
    let mut at: Vec<f64> = Vec::new();
    for r in readers {
        let (when, code) = r.await.unwrap();
        assert_eq!(code, 1012);
        at.push(when.saturating_duration_since(reloaded).as_secs_f64());
    }
    at.sort_by(f64::total_cmp);
    let q = [0.0, 0.25, 0.5, 0.75, 1.0].map(|p| quantile(&at, p));
    println!("removal closes over a 2 s drain_spread (min, quartiles, max): {q:.3?}");
    assert!((q[2] - 1.0).abs() < 0.35, "median {:.3} s ({q:.3?})", q[2]);
    assert!(
        q[4] < 2.3 && q[4] > 1.4,
        "last close at {:.3} s ({q:.3?})",
        q[4]
    );
    for (i, mut ws) in kept {
        still_echoes(&mut ws, &format!("kept tunnel {i}")).await;
    }
}
