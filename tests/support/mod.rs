//! Test harness: the real sluice server type on loopback port 0, real
//! backends that count their connections, and real clients.
#![allow(
    dead_code,
    clippy::field_reassign_with_default,
    clippy::result_large_err
)]

pub mod browser;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice::config::Config;
use sluice::daemon::Running;
use sluice::shared::{Shared, Snapshot};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Every wait in a test is bounded by this, and failing it fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A certificate for localhost / 127.0.0.1 written to a fresh directory.
pub struct TestCert {
    pub dir: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    pub fn new() -> TestCert {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, ck.cert.pem()).unwrap();
        std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
        TestCert {
            dir,
            cert_path,
            key_path,
            der: CertificateDer::from(ck.cert.der().to_vec()),
        }
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_trusting([self.der.clone()])
    }
}

/// An HTTP/1.1 client that trusts `roots` and nothing else.
pub fn client_trusting(
    roots: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A client that takes any server certificate (name and issuer unchecked)
/// but still checks the handshake's signatures: for tests that ask which
/// certificate came back, or whether a handshake happens at all. Every
/// connection is a full handshake (no resumption), so each one asks the
/// server's resolver.
pub fn any_certificate_client(alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// A running sluice (in-process, the real server type).
pub struct Sluice {
    pub running: Running,
    pub tls_addr: SocketAddr,
    pub plain_addr: SocketAddr,
    pub cert: TestCert,
}

impl Sluice {
    /// Starts sluice with one TLS and one cleartext listener on port 0 and
    /// the given extra TOML (routes, `[websocket]`, `[limits]`, ...). The
    /// `[server]` table is written here; `server_extra` adds keys to it.
    pub async fn start(server_extra: &str, rest: &str) -> Sluice {
        let cert = TestCert::new();
        let toml = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nlisten_plain = [\"127.0.0.1:0\"]\n{server_extra}\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n{rest}",
            cert.cert_path.display(),
            cert.key_path.display()
        );
        let config = Config::parse(&toml, &cert.dir.join("sluice.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let snapshot = Snapshot::build(config).unwrap();
        let running = Running::start(Shared::new(snapshot)).await.unwrap();
        let tls_addr = running.tls_addrs()[0];
        let plain_addr = running.plain_addrs()[0];
        Sluice {
            running,
            tls_addr,
            plain_addr,
            cert,
        }
    }

    /// One route to `backend` with `extra` route keys.
    pub async fn to(backend: SocketAddr, server_extra: &str, extra: &str) -> Sluice {
        Sluice::start(
            server_extra,
            &format!("[[route]]\nbackends = [\"{backend}\"]\n{extra}"),
        )
        .await
    }

    /// One route over several backends with `extra` route keys.
    pub async fn to_many(backends: &[SocketAddr], extra: &str) -> Sluice {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        Sluice::start(
            "",
            &format!("[[route]]\nbackends = [{}]\n{extra}\n", list.join(", ")),
        )
        .await
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.plain_addr)
    }

    /// A TLS connection to the TLS listener.
    pub async fn tls_connect(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.tls_addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.cert.client_config());
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }
}

pub type Ws<S> = WebSocketStream<S>;

/// A WebSocket client over cleartext through sluice.
pub async fn ws_plain(addr: SocketAddr, path: &str) -> Ws<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = within(
        "ws handshake",
        tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `msg` and expects the same message back.
pub async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    let got = within("echo", ws.next())
        .await
        .expect("stream ended")
        .expect("ws error");
    assert_eq!(got, msg);
}

/// Reads frames until a Close arrives; returns its code.
pub async fn expect_close<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> u16 {
    loop {
        match within("close frame", ws.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => panic!("close without code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error instead of close: {e}"),
            None => panic!("stream ended without close"),
        }
    }
}

/// A WebSocket echo backend that counts connections and records the
/// handshake headers it saw.
pub struct EchoWs {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl EchoWs {
    pub async fn start() -> EchoWs {
        Self::start_with_protocol(None).await
    }

    /// `protocol`: the subprotocol to select when the client offers it.
    pub async fn start_with_protocol(protocol: Option<&'static str>) -> EchoWs {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (acc, reqs) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let callback = |req: &Request, mut resp: Response| {
                        reqs.lock().unwrap().push(req.headers().clone());
                        if let (Some(p), Some(offered)) =
                            (protocol, req.headers().get("sec-websocket-protocol"))
                        {
                            if offered.to_str().unwrap().split(',').any(|o| o.trim() == p) {
                                resp.headers_mut()
                                    .insert("sec-websocket-protocol", p.parse().unwrap());
                            }
                        }
                        Ok(resp)
                    };
                    let mut config =
                        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
                    config.max_message_size = Some(64 << 20);
                    config.max_frame_size = Some(64 << 20);
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(
                        tcp,
                        callback,
                        Some(config),
                    )
                    .await
                    else {
                        return;
                    };
                    let (mut tx, mut rx) = ws.split();
                    while let Some(Ok(msg)) = rx.next().await {
                        if msg.is_text() || msg.is_binary() {
                            if tx.send(msg).await.is_err() {
                                break;
                            }
                        } else if msg.is_close() {
                            break;
                        }
                    }
                    let _ = tx.close().await;
                });
            }
        });
        EchoWs {
            addr,
            accepted,
            requests,
        }
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// An HTTP backend that answers every request with a description of it:
/// `method path`, then the request headers, then the SHA-1... (here: byte
/// count and a simple FNV hash) of the body, streamed.
pub struct HttpEcho {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
}

impl HttpEcho {
    pub async fn start() -> HttpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (acc, reqs) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let mut head = format!("{} {}\n", req.method(), req.uri());
                            for (k, v) in req.headers() {
                                head.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
                            }
                            let mut body = req.into_body();
                            let (mut n, mut hash) = (0u64, FNV_OFFSET);
                            while let Some(frame) = body.frame().await {
                                if let Ok(data) = frame.unwrap().into_data() {
                                    n += data.len() as u64;
                                    hash = fnv(hash, &data);
                                }
                            }
                            head.push_str(&format!("body-len: {n}\nbody-hash: {hash:016x}\n"));
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(head),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        HttpEcho {
            addr,
            accepted,
            requests,
        }
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

pub const FNV_OFFSET: u64 = 0xcbf29ce484222325;
pub fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A backend that accepts and never answers (504).
pub async fn silent_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    (addr, accepted)
}

/// An address nothing listens on (502).
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A raw backend: answers the first request head with `reply` (computed
/// from the head), then records every byte it receives after that.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// Bytes received after the first request head, per connection.
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawBackend {
    pub async fn start<F>(reply: F) -> RawBackend
    where
        F: Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (acc, rec) = (accepted.clone(), received.clone());
        let reply = Arc::new(reply);
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let idx = acc.fetch_add(1, Ordering::SeqCst);
                rec.lock().unwrap().push(Vec::new());
                let (rec, reply) = (rec.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let head_end = loop {
                        let mut chunk = [0u8; 4096];
                        let n = match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = find(&buf, b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    rec.lock().unwrap()[idx].extend_from_slice(&buf[head_end..]);
                    if tcp.write_all(&reply(&head)).await.is_err() {
                        return;
                    }
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = tcp.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        rec.lock().unwrap()[idx].extend_from_slice(&chunk[..n]);
                    }
                });
            }
        });
        RawBackend {
            addr,
            accepted,
            received,
        }
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn received(&self, conn: usize) -> Vec<u8> {
        self.received.lock().unwrap()[conn].clone()
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of `name` in a raw request/response head.
pub fn head_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Writes a raw request and reads one response head (and whatever body bytes
/// came in the same reads). Returns (status, head).
pub async fn raw_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> (u16, String) {
    stream.write_all(request).await.unwrap();
    read_head(stream).await
}

pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    within("response head", async {
        loop {
            let n = stream.read(&mut byte).await.unwrap();
            assert!(
                n > 0,
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.push(byte[0]);
            if buf.ends_with(b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let head = String::from_utf8(buf).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head)
}

/// `GET target` on a new connection to `addr` with `Connection: close`, plus
/// `extra` header lines (each ending in "\r\n"): the status, and the body as
/// read to the end of the connection.
pub async fn get(addr: SocketAddr, host: &str, target: &str, extra: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    let (status, _) = raw_request(&mut tcp, request.as_bytes()).await;
    let mut body = Vec::new();
    let _ = within("body", tcp.read_to_end(&mut body)).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Reads a response body of `Content-Length` bytes after `read_head`.
pub async fn read_body<S: AsyncRead + Unpin>(stream: &mut S, head: &str) -> Vec<u8> {
    let len: usize = head_value(head, "content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    within("response body", stream.read_exact(&mut body))
        .await
        .unwrap();
    body
}

/// A valid upgrade request for `path` on `host`.
pub fn upgrade_request(host: &str, path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Builds one frame. `mask`: Some(key) masks the payload.
pub fn frame_bytes(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A frame read off a raw stream (unmasked if it was masked).
#[derive(Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Reads one frame from a raw stream; `None` at EOF.
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Option<RawFrame> {
    within("a frame", async {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.ok()?;
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await.ok()?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.ok()?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut key = [0u8; 4];
        if masked {
            s.read_exact(&mut key).await.ok()?;
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await.ok()?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        Some(RawFrame {
            fin: h[0] & 0x80 != 0,
            opcode: h[0] & 0x0F,
            masked,
            payload,
        })
    })
    .await
}

/// Reads until EOF (or error); returns what was read.
pub async fn read_to_end<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    within("EOF", async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    out
}

/// The HTTP/1.1 101 a well-behaved backend sends for `head`.
pub fn good_101(head: &str) -> Vec<u8> {
    let key = head_value(head, "sec-websocket-key").unwrap();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        sluice::upgrade::accept_key(key.as_bytes())
    )
    .into_bytes()
}

/// Opens a raw upgraded connection through sluice's cleartext listener.
pub async fn raw_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (status, head) = raw_request(&mut tcp, &upgrade_request(&addr.to_string(), path, "")).await;
    assert_eq!(status, 101, "{head}");
    tcp
}

pub mod hostile;
pub mod redis_server;
pub mod tunnels;
