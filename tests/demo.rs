//! Contract: `sluice demo` needs no files: TLS on 127.0.0.1:8443 with a
//! self-signed certificate, a page at `/` with a browser WebSocket client,
//! and a built-in echo backend behind `/ws`. (The port is the contract's.)

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use support::browser;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn tls() -> tokio_rustls::client::TlsStream<TcpStream> {
    // The demo's certificate is made fresh in memory; a browser user
    // clicks through the warning, this client accepts it the same way.
    let cfg = any_certificate_client(b"http/1.1");
    let tcp = TcpStream::connect("127.0.0.1:8443").await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// Both tests use the demo's fixed port; they take turns.
static DEMO_PORT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn demo_serves_the_page_and_echoes_over_wss() {
    let _port = DEMO_PORT.lock().await;
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("demo")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let t = Instant::now();
    let first = out.next().expect("demo printed nothing").unwrap();
    assert!(first.contains("https://127.0.0.1:8443/"), "{first}");
    assert!(t.elapsed() < WAIT);

    let mut page = tls().await;
    let (status, _) = raw_request(
        &mut page,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let mut html = String::new();
    let _ = within("page", page.read_to_string(&mut html)).await;
    assert!(html.contains("new WebSocket("), "{html}");

    let (mut ws, _) = within(
        "wss handshake",
        tokio_tungstenite::client_async("wss://127.0.0.1:8443/ws", tls().await),
    )
    .await
    .unwrap();
    ws.send(Message::Text("hello demo".into())).await.unwrap();
    let echo = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echo, Message::Text("hello demo".into()));
    drop(child);
}

/// A real browser: headless Chromium loads the demo page through sluice, and
/// the page's script opens a WebSocket, sends, and shows the echo. Once with
/// HTTP/2 (the WebSocket goes over RFC 8441 extended CONNECT) and once with
/// HTTP/1.1 (a classic upgrade); sluice's access log shows which.
#[tokio::test]
async fn browser_page_echoes_over_h2_and_http1() {
    let Some(chromium) = browser::chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium (.ci/run does)"
        );
        eprintln!("chromium not installed: skipping the browser test");
        return;
    };
    let _port = DEMO_PORT.lock().await;
    for (mode, extra, expect_log) in [
        (
            "h2",
            &[][..],
            "method=CONNECT path=\"/ws\" version=HTTP/2.0 status=200",
        ),
        (
            "http/1.1",
            &["--disable-http2"][..],
            "method=GET path=\"/ws\" version=HTTP/1.1 status=101",
        ),
    ] {
        let mut demo = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .arg("demo")
                .env("RUST_LOG", "info")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut out = BufReader::new(demo.0.stdout.take().unwrap()).lines();
        out.next().expect("demo printed nothing").unwrap();
        let browser = browser::Browser::launch(chromium, extra);
        let shown = browser
            .eval_until(
                "https://127.0.0.1:8443/",
                "(document.getElementById('log') || {}).textContent || ''",
                WAIT,
                |v| v.contains("echo:") || v.contains("error") || v.contains("close"),
            )
            .await;
        drop(browser);
        let _ = demo.0.kill();
        let _ = demo.0.wait();
        let mut log = String::new();
        use std::io::Read;
        demo.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert_eq!(shown, "open\necho: hello from the browser\n", "{mode}");
        assert!(
            log.contains(expect_log),
            "{mode}: expected {expect_log:?} in sluice's log:\n{log}"
        );
    }
}

/// The seed article's Node.js `ws` server as the backend, behind sluice on
/// TLS, driven by a real browser: open, echo, clean close.
#[tokio::test]
async fn browser_through_sluice_to_the_node_ws_backend() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let ws_installed = std::path::Path::new(dir).join("node_modules/ws").exists();
    let (true, Some(chromium), true) = (node_ok, browser::chromium(), ws_installed) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install node, chromium and tests/node (npm ci)"
        );
        eprintln!("node, chromium or tests/node/node_modules missing: skipping");
        return;
    };
    let mut node = KillOnDrop(
        Command::new("node")
            .arg(format!("{dir}/server.js"))
            .arg("0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let line = BufReader::new(node.0.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let port: u16 = line.trim_start_matches("port ").parse().unwrap();
    let sluice = Sluice::to(format!("127.0.0.1:{port}").parse().unwrap(), "", "").await;
    for (mode, extra) in [("h2", &[][..]), ("http/1.1", &["--disable-http2"][..])] {
        let browser = browser::Browser::launch(chromium, extra);
        let shown = browser
            .eval_until(
                &format!("https://localhost:{}/", sluice.tls_addr.port()),
                "(document.getElementById('log') || {}).textContent || ''",
                WAIT,
                |v| v.contains("close") || v.contains("error"),
            )
            .await;
        assert_eq!(shown, "open\necho: hello node\nclose 1000\n", "{mode}");
    }
    drop(node);
}

/// A child process that is killed however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
