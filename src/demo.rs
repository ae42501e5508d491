//! `sluice demo`: the whole proxy with nothing to set up. A self-signed
//! certificate made in memory, two built-in backends on loopback (a page
//! server and a WebSocket echo server), and the ordinary config and server
//! path in front of them: the demo takes no shortcut through the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::daemon::Running;
use crate::shared::{Shared, Snapshot};

const DEMO_ADDR: &str = "127.0.0.1:8443";

pub async fn run() -> anyhow::Result<()> {
    let page = spawn_page_backend().await?;
    let echo = spawn_echo_backend().await?;
    let toml = format!(
        r#"
[server]
listen_plain = ["{DEMO_ADDR}"]
[[route]]
path = "/ws"
backends = ["{echo}"]
[[route]]
path = "/"
backends = ["{page}"]
"#
    );
    let mut config = Config::parse(&toml, Path::new("<demo>"))?;
    // The config is parsed like any other; only the certificate comes from
    // memory, so the one listener becomes a TLS listener here.
    config.server.listen = std::mem::take(&mut config.server.listen_plain);
    let acceptor = self_signed_acceptor()?;
    let shared = Shared::new(Snapshot::with_acceptor(config, Some(acceptor))?);
    let running = Running::start(shared).await?;
    println!("sluice demo: open https://{DEMO_ADDR}/ (self-signed certificate: accept the browser warning)");
    println!("WebSocket echo through the proxy at wss://{DEMO_ADDR}/ws; Ctrl-C stops");
    tokio::signal::ctrl_c().await?;
    running.drain(std::time::Duration::from_secs(2)).await;
    Ok(())
}

/// A certificate for localhost and 127.0.0.1 that lives only in memory.
pub fn self_signed_acceptor() -> anyhow::Result<TlsAcceptor> {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    Ok(TlsAcceptor::from(crate::tls::server_config(chain, key)?))
}

async fn spawn_page_backend() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
                    *resp.status_mut() = StatusCode::OK;
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn spawn_echo_backend() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>sluice demo</title>
<style>
 body { font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
 #log { background: #f4f4f4; padding: .5rem; min-height: 8rem; white-space: pre-wrap; font-family: monospace; }
</style>
<h1>sluice demo</h1>
<p>This page opened a WebSocket to <code>/ws</code> through sluice, which relays it to a built-in echo backend.</p>
<form id="f"><input id="msg" value="hello" autocomplete="off"> <button>send</button> <button type="button" id="close">close</button></form>
<p>Status: <span id="status">connecting</span></p>
<div id="log"></div>
<script>
const log = (line) => { document.getElementById('log').textContent += line + '\n'; };
const status = (s) => { document.getElementById('status').textContent = s; };
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
ws.onopen = () => { status('open'); log('open'); ws.send('hello from the browser'); };
ws.onmessage = (event) => { log('echo: ' + event.data); };
ws.onerror = () => { log('error'); };
ws.onclose = (event) => { status('closed'); log('close ' + event.code + (event.reason ? ' ' + event.reason : '')); };
document.getElementById('f').onsubmit = (e) => { e.preventDefault(); const m = document.getElementById('msg').value; ws.send(m); log('sent: ' + m); };
document.getElementById('close').onclick = () => ws.close(1000, 'bye');
</script>
</html>
"#;
