//! Helpers for the hardening tests (issue 12): the real binary with its
//! stderr collected and its RSS readable, /metrics scraping that does not
//! care about label order, clients bound to a chosen loopback address, and
//! "closed within" / "still open" checks with short, bounded waits.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{raw_request, within, TestCert, WAIT};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// The sluice binary, its stderr collected line by line.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    /// Set when sluice's stderr ends (it exited).
    pub stderr_closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Proc {
    /// `sluice run -c config`; `nofile`: a lowered RLIMIT_NOFILE (soft and
    /// hard), set by the shell's `ulimit -n` before it `exec`s sluice, so the
    /// child's pid is sluice's.
    pub fn start(config: &Path, nofile: Option<u32>) -> Proc {
        Proc::spawn(Proc::command(config, nofile))
    }

    /// `sluice run -c config` with `NOTIFY_SOCKET` set to `notify`.
    pub fn start_notifying(config: &Path, notify: &Path) -> Proc {
        let mut cmd = Proc::command(config, None);
        cmd.env("NOTIFY_SOCKET", notify);
        Proc::spawn(cmd)
    }

    fn command(config: &Path, nofile: Option<u32>) -> Command {
        match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" run -c \"$1\""))
                    .arg(BIN)
                    .arg(config);
                c
            }
            None => {
                let mut c = Command::new(BIN);
                c.args(["run", "-c"]).arg(config);
                c
            }
        }
    }

    /// Runs `cmd`, which runs sluice as the child's own pid (directly, or
    /// by an `exec`), collecting its stderr.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.env("RUST_LOG", "info").stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr_closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closed = stderr_closed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Proc {
            child,
            lines,
            stderr_closed,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `nth` (1-based) log line containing `needle`.
    pub async fn wait_line(&self, needle: &str, nth: usize) -> String {
        let t = Instant::now();
        loop {
            let exited = self.stderr_closed.load(std::sync::atomic::Ordering::SeqCst);
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .nth(nth - 1)
            {
                return l.clone();
            }
            assert!(
                t.elapsed() < WAIT && !exited,
                "no log line with {needle:?} (sluice exited: {exited}); got {:#?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `addr=` of the first log line containing `needle`.
    pub async fn addr(&self, needle: &str) -> SocketAddr {
        let line = self.wait_line(needle, 1).await;
        let at = line.find("addr=").unwrap() + 5;
        line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_matches('"')
            .parse()
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < limit,
                "sluice did not exit within {limit:?}; log: {:#?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size in KiB (VmRSS of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The RSS once it stops moving (two reads 150 ms apart within 64 KiB),
    /// at most ~1.5 s of waiting.
    pub async fn settled_rss_kib(&self) -> u64 {
        let mut last = self.rss_kib();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = self.rss_kib();
            if now.abs_diff(last) < 64 {
                return now;
            }
            last = now;
        }
        last
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory with `sluice.toml` holding `body`.
pub fn write_config(body: &str) -> (PathBuf, PathBuf) {
    let dir = TestCert::new().dir;
    let path = dir.join("sluice.toml");
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP connection to `to` whose source address is `from` (any 127/8
/// address works on Linux loopback).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = if from.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(from, 0))?;
    sock.connect(to).await
}

/// GET /metrics on an admin listener; the body.
pub async fn scrape(admin: SocketAddr) -> String {
    let mut tcp = within("admin connect", TcpStream::connect(admin))
        .await
        .unwrap();
    let (status, _) = raw_request(
        &mut tcp,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "GET /metrics");
    let mut body = String::new();
    let _ = within("metrics body", tcp.read_to_string(&mut body)).await;
    body
}

/// The value of the sample `name{labels}` in a Prometheus text body; the
/// sample's labels must include every `labels` pair, in any order (other
/// labels may be present). Several matching samples are summed. `None`:
/// no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = if let Some(rest) = rest.strip_prefix('{') {
            let Some(end) = rest.find('}') else { continue };
            (&rest[..end], rest[end + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue; // a longer name with this prefix
        };
        let ok = labels.iter().all(|(k, v)| {
            label_part
                .split(',')
                .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
        });
        if ok {
            let v: f64 = value.split_whitespace().next().unwrap().parse().unwrap();
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Polls /metrics until `pred(value)` holds for the sample (None when
/// absent), at most `limit`; returns the last body on failure in the panic.
pub async fn wait_metric(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    limit: Duration,
    what: &str,
    pred: impl Fn(Option<f64>) -> bool,
) {
    let t = Instant::now();
    loop {
        let text = scrape(admin).await;
        if pred(metric(&text, name, labels)) {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "{what}: {name}{labels:?} is {:?} after {limit:?}; /metrics:\n{text}",
            metric(&text, name, labels)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads (discarding) until EOF or an error; panics if the peer has not
/// closed within `limit`. Returns how long it took.
pub async fn assert_closed_within<S: AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
    what: &str,
) -> Duration {
    let t = Instant::now();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: the connection is still open after {limit:?}"
    );
    t.elapsed()
}

/// Panics if the peer closes (or sends anything) within `d`.
pub async fn assert_open_for<S: AsyncRead + Unpin>(s: &mut S, d: Duration, what: &str) {
    let mut buf = [0u8; 1];
    if let Ok(r) = tokio::time::timeout(d, s.read(&mut buf)).await {
        panic!("{what}: expected the connection to stay open and silent for {d:?}, read {r:?}");
    }
}

/// A TLS client config for `cert` offering `alpn` (empty: no ALPN).
pub fn tls_config(cert: &TestCert, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*cert.client_config()).clone();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A completed TLS handshake over `tcp`.
pub async fn tls_over(
    tcp: TcpStream,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
}

/// An h2 client over TLS (ALPN h2) with extended CONNECT enabled by the
/// server; the connection task is spawned.
pub async fn h2_over_tls(addr: SocketAddr, cert: &TestCert) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tls_over(tcp, tls_config(cert, &[b"h2"])).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = within("h2 handshake", h2::client::handshake(tls))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let send = within("h2 ready", send.ready()).await.unwrap();
    within("SETTINGS_ENABLE_CONNECT_PROTOCOL", async {
        while !send.is_extended_connect_protocol_enabled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    send
}

/// An RFC 8441 extended CONNECT for a WebSocket on `path`.
pub fn ws_connect_request(port: u16, path: &str, extra: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://localhost:{port}{path}"))
        .header("sec-websocket-version", "13");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    req
}

/// A backend that reads one request head, waits `delay`, answers with a
/// good 101 and then records (and discards) whatever arrives. Returns its
/// address and the bytes received after the head, per connection.
pub async fn delayed_ws_backend(delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let rec = received.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let idx = {
                let mut r = rec.lock().unwrap();
                r.push(Vec::new());
                r.len() - 1
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    let n = match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = super::find(&buf, b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                tokio::time::sleep(delay).await;
                if tcp.write_all(&super::good_101(&head)).await.is_err() {
                    return;
                }
                while let Ok(n) = tcp.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    rec.lock().unwrap()[idx].extend_from_slice(&chunk[..n]);
                }
            });
        }
    });
    (addr, received)
}

/// Reads one frame, or `None` if none arrives within `limit` (or at EOF).
pub async fn frame_within<S: AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Option<super::RawFrame> {
    tokio::time::timeout(limit, super::read_frame(s))
        .await
        .ok()
        .flatten()
}
