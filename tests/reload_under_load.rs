//! Contract (SIGHUP): open connections keep running untouched while the
//! config is swapped. Many tunnels echo continuously through repeated
//! reloads; not one may be dropped or see an error. `SLUICE_RELOAD_TUNNELS`
//! sets the tunnel count (default 200; the closing note's run used 1000).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sluice::config::Config;
use sluice::daemon::Running;
use sluice::shared::{Shared, Snapshot};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn config_text(cert: &TestCert, backend: std::net::SocketAddr, timeout: &str) -> String {
    format!(
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\nhandshake_timeout = \"{timeout}\"\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [limits]\nhandshakes_per_second = 100000\nhandshake_burst = 100000\nmax_connections_per_ip = 100000\n\
         [[route]]\nbackends = [\"{backend}\"]\n",
        cert.cert_path.display(),
        cert.key_path.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_keep_echoing_through_ten_reloads() {
    let tunnels: usize = std::env::var("SLUICE_RELOAD_TUNNELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let first = EchoWs::start().await;
    let second = EchoWs::start().await;
    let cert = TestCert::new();
    let path = cert.dir.join("sluice.toml");
    std::fs::write(&path, config_text(&cert, first.addr, "10s")).unwrap();
    let snapshot = Snapshot::build(Config::load(&path).unwrap()).unwrap();
    let mut running = Running::start(Shared::new(snapshot)).await.unwrap();
    let addr = running.plain_addrs()[0];

    let stop = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..tunnels {
        let mut ws = ws_plain(addr, "/").await;
        let (stop, echoes) = (stop.clone(), echoes.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = Message::Text(format!("tunnel {i} message {n}"));
                ws.send(msg.clone())
                    .await
                    .map_err(|e| format!("tunnel {i}: send: {e}"))?;
                match tokio::time::timeout(WAIT, ws.next()).await {
                    Ok(Some(Ok(got))) if got == msg => {}
                    other => return Err(format!("tunnel {i}: bad echo {other:?}")),
                }
                n += 1;
                echoes.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ws.close(None)
                .await
                .map_err(|e| format!("tunnel {i}: close: {e}"))?;
            Ok::<u64, String>(n)
        }));
    }

    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (backend, timeout) = if round % 2 == 0 {
            (second.addr, "9s")
        } else {
            (first.addr, "10s")
        };
        std::fs::write(&path, config_text(&cert, backend, timeout)).unwrap();
        running
            .reload(&path)
            .await
            .unwrap_or_else(|e| panic!("reload {round}: {e}"));
        // New connections follow the new config.
        let before = second.connections();
        let mut ws = ws_plain(addr, "/").await;
        echo_once(&mut ws, Message::Text("fresh".into())).await;
        if backend == second.addr {
            assert_eq!(second.connections(), before + 1, "round {round}");
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        match c.await.unwrap() {
            Ok(n) => assert!(n > 0),
            Err(e) => failures.push(e),
        }
    }
    println!(
        "{tunnels} tunnels, 10 reloads, {} echoes, {} tunnels failed",
        echoes.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    // The tunnels opened before the first reload were on the first backend.
    assert!(first.connections() >= tunnels);
}

#[tokio::test]
async fn reload_opens_added_listeners_closes_removed_ones_and_keeps_the_rest() {
    let backend = HttpEcho::start().await;
    let cert = TestCert::new();
    let path = cert.dir.join("sluice.toml");
    let kept = refused_addr().await;
    let added = refused_addr().await;
    let write = |listeners: &[std::net::SocketAddr]| {
        let list: Vec<String> = listeners.iter().map(|a| format!("\"{a}\"")).collect();
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten_plain = [{}]\n[[route]]\nbackends = [\"{}\"]\n",
                list.join(", "),
                backend.addr
            ),
        )
        .unwrap();
    };
    write(&[kept]);
    let snapshot = Snapshot::build(Config::load(&path).unwrap()).unwrap();
    let mut running = Running::start(Shared::new(snapshot)).await.unwrap();
    // A connection accepted before the reload, on the listener that stays.
    let mut before = tokio::net::TcpStream::connect(kept).await.unwrap();

    write(&[kept, added]);
    running.reload(&path).await.unwrap();
    assert_eq!(running.plain_addrs(), {
        let mut v = vec![kept, added];
        v.sort();
        v
    });
    for addr in [kept, added] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (status, _) = raw_request(&mut tcp, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200, "{addr}");
    }
    let (status, _) = raw_request(&mut before, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        status, 200,
        "a connection from before the reload keeps working"
    );

    write(&[added]);
    running.reload(&path).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(kept).await.is_err(),
        "removed listener still accepts"
    );
    assert_eq!(running.plain_addrs(), vec![added]);
}
