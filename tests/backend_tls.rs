//! `https://` backends: TLS toward the backend with SNI from the URL,
//! verified against `backend_ca` (or the system roots), with an optional
//! client certificate (mTLS), for plain HTTP and for WebSocket upgrades.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A test CA with a server certificate for localhost and a client certificate.
struct Pki {
    dir: PathBuf,
    ca_pem: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
    roots: rustls::RootCertStore,
}

fn pki() -> Pki {
    let dir = TestCert::new().dir;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca).unwrap();
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let client_cert = dir.join("client.pem");
    std::fs::write(&client_cert, client.pem()).unwrap();
    let client_key_path = dir.join("client-key.pem");
    std::fs::write(&client_key_path, client_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    Pki {
        dir,
        ca_pem,
        client_cert,
        client_key: client_key_path,
        server_chain: vec![server.der().clone()],
        server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
        roots,
    }
}

/// A TLS backend answering HTTP with "tls ok" and WebSocket upgrades with an
/// echo; with `require_client_cert`, only clients with a cert from the CA.
async fn tls_backend(pki: &Pki, require_client_cert: bool) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(pki.roots.clone()),
            provider,
        )
        .build()
        .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(
            pki.server_chain.clone(),
            PrivateKeyDer::Pkcs8(pki.server_key.clone_key()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // Upgrade requests go to tungstenite, the rest to hyper:
                // tell them apart by the request head.
                let (head, tls) = sniff(tls).await;
                if head.to_ascii_lowercase().contains("upgrade: websocket") {
                    let Ok(ws) = tokio_tungstenite::accept_async(tls).await else {
                        return;
                    };
                    let (mut tx, mut rx) = ws.split();
                    while let Some(Ok(m)) = rx.next().await {
                        if m.is_text() && tx.send(m).await.is_err() {
                            break;
                        }
                    }
                } else {
                    let service = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from("tls ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                }
            });
        }
    });
    addr
}

/// Reads the request head and hands back a stream that replays it.
async fn sniff(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
) -> (String, Replay<tokio_rustls::server::TlsStream<TcpStream>>) {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if tls.read(&mut b).await.unwrap_or(0) == 0 {
            break;
        }
        buf.push(b[0]);
    }
    (
        String::from_utf8_lossy(&buf).into_owned(),
        Replay {
            pre: buf,
            pos: 0,
            inner: tls,
        },
    )
}

struct Replay<S> {
    pre: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Replay<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pos < self.pre.len() {
            let n = (self.pre.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.pre[start..start + n]);
            self.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn route(backend: SocketAddr, extra: &str) -> String {
    format!(
        "[[route]]\nbackends = [\"https://localhost:{}\"]\n{extra}\n",
        backend.port()
    )
}

#[tokio::test]
async fn https_backend_verified_against_backend_ca() {
    let pki = pki();
    let backend = tls_backend(&pki, false).await;
    let s = Sluice::start(
        "",
        &route(
            backend,
            &format!("backend_ca = \"{}\"", pki.ca_pem.display()),
        ),
    )
    .await;
    assert_eq!(
        get(s.plain_addr, "x", "/", "").await,
        (200, "tls ok".to_owned())
    );
    let mut ws = ws_plain(s.plain_addr, "/").await;
    echo_once(&mut ws, Message::Text("over TLS to the backend".into())).await;
}

#[tokio::test]
async fn https_backend_with_an_untrusted_certificate_is_502() {
    let pki = pki();
    let backend = tls_backend(&pki, false).await;
    // No backend_ca: the system roots do not know the test CA.
    let s = Sluice::start("", &route(backend, "")).await;
    assert_eq!(get(s.plain_addr, "x", "/", "").await.0, 502);
}

#[tokio::test]
async fn mtls_backend_needs_the_client_certificate() {
    let pki = pki();
    let backend = tls_backend(&pki, true).await;
    let without = Sluice::start(
        "",
        &route(
            backend,
            &format!("backend_ca = \"{}\"", pki.ca_pem.display()),
        ),
    )
    .await;
    assert_eq!(get(without.plain_addr, "x", "/", "").await.0, 502);
    let with = Sluice::start(
        "",
        &route(
            backend,
            &format!(
                "backend_ca = \"{}\"\nbackend_cert = \"{}\"\nbackend_key = \"{}\"",
                pki.ca_pem.display(),
                pki.client_cert.display(),
                pki.client_key.display()
            ),
        ),
    )
    .await;
    assert_eq!(
        get(with.plain_addr, "x", "/", "").await,
        (200, "tls ok".to_owned())
    );
    let _ = &pki.dir;
}
