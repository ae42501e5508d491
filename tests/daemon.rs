//! Contract: signals and sd_notify, on the real binary. SIGHUP reloads config
//! and certificates without touching open tunnels and refuses a bad file;
//! SIGTERM sends Close 1001 both ways and exits 0; NOTIFY_SOCKET gets
//! READY=1, RELOADING=1 … READY=1 and STOPPING=1; the admin listener serves
//! /healthz and /metrics.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::hostile::{Proc, BIN};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("sluice.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn plain_config(backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n{extra}\n\
         [[route]]\nbackends = [\"{backend}\"]\n"
    )
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (status, _) = raw_request(
        &mut tcp,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let mut body = String::new();
    let _ = within("body", tcp.read_to_string(&mut body)).await;
    (status, body)
}

#[tokio::test]
async fn sighup_swaps_routes_for_new_connections_and_keeps_open_tunnels() {
    let first = EchoWs::start().await;
    let second = EchoWs::start().await;
    let dir = TestCert::new().dir;
    let path = config(&dir, &plain_config(first.addr, ""));
    let proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;

    let mut ws = ws_plain(addr, "/").await;
    echo_once(&mut ws, Message::Text("before".into())).await;

    // Same listener, new backend.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&first.addr.to_string(), &second.addr.to_string());
    std::fs::write(&path, text).unwrap();
    proc.signal("HUP");
    proc.wait_line("config reloaded", 1).await;

    echo_once(&mut ws, Message::Text("after reload, same tunnel".into())).await;
    let mut ws2 = ws_plain(addr, "/").await;
    echo_once(&mut ws2, Message::Text("new".into())).await;
    assert_eq!(first.connections(), 1);
    assert_eq!(second.connections(), 1);

    // A broken file is refused and the old config keeps serving.
    std::fs::write(
        &path,
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\nbogus = 1\n",
    )
    .unwrap();
    proc.signal("HUP");
    let err = proc.wait_line("reload refused", 1).await;
    assert!(err.contains("sluice.toml:3"), "{err}");
    let mut ws3 = ws_plain(addr, "/").await;
    echo_once(&mut ws3, Message::Text("still serving".into())).await;
    assert_eq!(second.connections(), 2);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn sighup_renews_the_certificate_for_new_handshakes() {
    let backend = HttpEcho::start().await;
    let cert_a = TestCert::new();
    let dir = cert_a.dir.clone();
    let body = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[[route]]\nbackends = [\"{}\"]\n",
        backend.addr
    );
    let path = config(&dir, &body);
    let proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;

    let presented = |cert: &TestCert| {
        let cfg = cert.client_config();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(
                    rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                )
                .await;
            tls.is_ok()
        }
    };
    assert!(presented(&cert_a).await);
    let cert_b = TestCert::new();
    std::fs::copy(&cert_b.cert_path, dir.join("cert.pem")).unwrap();
    std::fs::copy(&cert_b.key_path, dir.join("key.pem")).unwrap();
    proc.signal("HUP");
    proc.wait_line("config reloaded", 1).await;
    assert!(
        presented(&cert_b).await,
        "new handshakes present the new certificate"
    );
    assert!(!presented(&cert_a).await, "the old certificate is gone");
}

#[tokio::test]
async fn sigterm_closes_tunnels_with_1001_both_ways_and_exits_0() {
    let backend = RawBackend::start(good_101).await;
    let dir = TestCert::new().dir;
    let path = config(&dir, &plain_config(backend.addr, ""));
    let mut proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;
    let admin = proc.addr("admin listening").await;
    let mut client = raw_ws(addr, "/").await;

    proc.signal("TERM");
    let close = read_frame(&mut client).await.expect("close to the client");
    assert_eq!(close.close_code(), Some(1001));
    // While the tunnel drains, load balancers are told to go elsewhere.
    assert_eq!(
        http_get(admin, "/healthz").await,
        (503, "draining\n".to_owned())
    );
    // Answer the close like a real client and go away.
    drop(client);
    let status = proc.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
    let got = backend.received(0);
    let mut s = &got[..];
    let f = read_frame(&mut s).await.expect("close to the backend");
    assert!(f.masked);
    assert_eq!(f.close_code(), Some(1001));
}

/// A NOTIFY_SOCKET as systemd provides it: its path, and the next message
/// on it (trimmed), waiting at most `WAIT`.
struct Notify {
    path: PathBuf,
    sock: UnixDatagram,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        Notify { path, sock }
    }

    fn recv(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self.sock.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).trim().to_owned()
    }
}

#[tokio::test]
async fn notify_socket_gets_ready_reloading_ready_stopping_in_order() {
    let backend = EchoWs::start().await;
    let dir = TestCert::new().dir;
    let notify = Notify::bind(&dir);
    let path = config(&dir, &plain_config(backend.addr, ""));
    let mut proc = Proc::start_notifying(&path, &notify.path);
    assert_eq!(notify.recv(), "READY=1");
    // Every listener is bound by the time READY=1 is sent.
    let addr = proc.addr("listening").await;
    TcpStream::connect(addr).await.unwrap();
    proc.signal("HUP");
    let reloading = notify.recv();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert_eq!(notify.recv(), "READY=1");
    proc.signal("TERM");
    assert_eq!(notify.recv(), "STOPPING=1");
    assert!(proc.wait_exit(Duration::from_secs(5)).await.success());
}

#[tokio::test]
async fn the_systemd_watchdog_is_fed_at_half_its_period() {
    let backend = EchoWs::start().await;
    let dir = TestCert::new().dir;
    let notify = Notify::bind(&dir);
    let path = config(&dir, &plain_config(backend.addr, ""));
    // systemd sets WATCHDOG_PID to the service's main pid; `exec` keeps the
    // shell's pid, so `$$` is sluice's.
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run -c \"$1\""])
        .arg(BIN)
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    assert_eq!(notify.recv(), "READY=1");
    // WatchdogSec=200ms: a ping every 100 ms, so 5 arrive well within 1.5 s.
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(notify.recv(), "WATCHDOG=1");
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn admin_serves_healthz_and_metrics_that_move_with_traffic() {
    let backend = EchoWs::start().await;
    let dir = TestCert::new().dir;
    let path = config(&dir, &plain_config(backend.addr, ""));
    let proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;
    let admin = proc.addr("admin listening").await;
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".to_owned()));

    let mut ws = ws_plain(addr, "/").await;
    echo_once(&mut ws, Message::Binary(vec![1, 2, 3])).await;
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("sluice_ws_tunnels_open{route=\"*/\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_ws_handshakes_total{route=\"*/\",outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let t = Instant::now();
    loop {
        let (_, metrics) = http_get(admin, "/metrics").await;
        if metrics
            .contains("sluice_ws_frames_total{route=\"*/\",direction=\"client_to_backend\"} 2")
        {
            break;
        }
        assert!(t.elapsed() < WAIT, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn socket_activation_uses_the_inherited_socket() {
    let Ok(activate) = which("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate not installed; .ci/run installs it");
        return;
    };
    let backend = HttpEcho::start().await;
    let port = refused_addr().await.port();
    let dir = TestCert::new().dir;
    let path = config(
        &dir,
        &format!(
            "[server]\nlisten_plain = [\"127.0.0.1:{port}\"]\n[[route]]\nbackends = [\"{}\"]\n",
            backend.addr
        ),
    );
    let mut activated = Command::new(activate);
    activated
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-E", "RUST_LOG=info", BIN, "run", "-c"])
        .arg(&path);
    let mut proc = Proc::spawn(activated);
    // The socket is systemd's (here: the activator's) before sluice runs.
    let t = Instant::now();
    let (status, _) = loop {
        if let Ok(Ok(mut tcp)) =
            tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port))).await
        {
            break raw_request(
                &mut tcp,
                b"GET /activated HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
        }
        assert!(t.elapsed() < WAIT, "activator never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200);
    proc.wait_line("inherited socket from systemd", 1).await;
    proc.signal("TERM");
    assert!(proc.wait_exit(Duration::from_secs(5)).await.success());
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.exists())
        })
        .ok_or(())
}
