//! Reaching a backend: TCP (and TLS for `https://` backends), the pooled
//! client for plain HTTP, and the typed errors that decide 502 versus 504.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::Backend;
use crate::stream::{BackendStream, MaybeTls};

/// Why a backend could not be used. The proxy maps these to statuses.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend refused the connection")]
    Refused(#[source] io::Error),
    #[error("backend did not answer in time")]
    TimedOut,
    #[error("TLS to the backend failed")]
    Tls(#[source] io::Error),
    #[error("backend broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("backend connection failed")]
    Io(#[source] io::Error),
}

/// Connects to a backend, with TLS when it is an `https://` backend.
/// `congestion` is `server.tcp_congestion`; `proxy_header`, a PROXY
/// protocol header (`send_proxy_protocol`), goes first, before TLS.
pub async fn connect(
    backend: &Backend,
    tls: &Arc<ClientConfig>,
    congestion: Option<&str>,
    proxy_header: Option<&[u8]>,
) -> Result<BackendStream, BackendError> {
    let to = Target {
        host: &backend.host,
        port: backend.port,
        use_tls: backend.tls,
    };
    connect_to(to, tls, congestion, proxy_header).await
}

/// Where a connection goes.
struct Target<'a> {
    host: &'a str,
    port: u16,
    use_tls: bool,
}

async fn connect_to(
    Target {
        host,
        port,
        use_tls,
    }: Target<'_>,
    tls: &Arc<ClientConfig>,
    congestion: Option<&str>,
    proxy_header: Option<&[u8]>,
) -> Result<BackendStream, BackendError> {
    let host_for_dns = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host_for_dns, port))
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => BackendError::TimedOut,
            _ => BackendError::Refused(e),
        })?;
    // WebSocket traffic is small messages; Nagle would add latency to each.
    let _ = tcp.set_nodelay(true);
    crate::socket::set_congestion(&tcp, congestion, host_for_dns.parse().ok());
    let mut tcp = tcp;
    if let Some(header) = proxy_header {
        // Far below the socket buffer: one write, no wait.
        tcp.write_all(header).await.map_err(BackendError::Io)?;
    }
    if !use_tls {
        return Ok(MaybeTls::Plain(tcp));
    }
    let name = ServerName::try_from(host_for_dns.to_owned())
        .map_err(|_| BackendError::Protocol("backend host is not a valid TLS server name"))?;
    let stream = TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(BackendError::Tls)?;
    Ok(MaybeTls::Tls(Box::new(stream)))
}

impl Connection for BackendStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// The connector behind the pooled HTTP client: the URI's scheme picks TLS.
#[derive(Debug, Clone)]
pub struct Connector {
    tls: Arc<ClientConfig>,
    congestion: Option<Arc<str>>,
    /// Sent first on every connection: only on a client made for one
    /// client connection's request (`send_proxy_protocol`).
    proxy_header: Option<Bytes>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<BackendStream>;
    type Error = BackendError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let congestion = self.congestion.clone();
        let proxy_header = self.proxy_header.clone();
        Box::pin(async move {
            let use_tls = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .ok_or(BackendError::Protocol("backend URI without host"))?;
            let port = uri.port_u16().unwrap_or(if use_tls { 443 } else { 80 });
            let to = Target {
                host,
                port,
                use_tls,
            };
            connect_to(to, &tls, congestion.as_deref(), proxy_header.as_deref())
                .await
                .map(TokioIo::new)
        })
    }
}

/// Pooled keep-alive client for plain HTTP requests.
pub type HttpClient = hyper_util::client::legacy::Client<Connector, RequestBody>;

/// The client's body on a first attempt; empty on a retry (only bodiless
/// idempotent requests are retried).
pub type RequestBody =
    http_body_util::Either<hyper::body::Incoming, http_body_util::Empty<bytes::Bytes>>;

/// Pooled HTTP/2 client for `h2://` (TLS, ALPN h2) and `h2c://` backends;
/// `h2_tls` is the route's TLS with ALPN h2 ([`h2_tls`]).
pub fn http2_client(h2_tls: Arc<ClientConfig>, congestion: Option<Arc<str>>) -> HttpClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_only(true)
        .set_host(false)
        .build(Connector {
            tls: h2_tls,
            congestion,
            proxy_header: None,
        })
}

/// The route's TLS toward `h2://` backends: the same, offering ALPN h2.
pub fn h2_tls(tls: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut h2_tls = (**tls).clone();
    h2_tls.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(h2_tls)
}

pub fn http_client(tls: Arc<ClientConfig>, congestion: Option<Arc<str>>) -> HttpClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        // The client's own Host is forwarded, as HAProxy does; backends that
        // route virtual hosts need it.
        .set_host(false)
        .build(Connector {
            tls,
            congestion,
            proxy_header: None,
        })
}

/// A client for one request of one client connection on a
/// `send_proxy_protocol` route: its connection begins with `proxy_header`
/// and is never reused. A PROXY header describes one client connection, so
/// a backend connection that carries one cannot serve another client; and
/// it is not kept for the same client's next request either, since that
/// would need a pool per client connection (HAProxy keeps such connections
/// private to their client session; here each request pays a connect).
/// `tls` is the route's, with ALPN h2 for an h2 backend.
pub fn one_shot_client(
    tls: Arc<ClientConfig>,
    congestion: Option<Arc<str>>,
    h2: bool,
    proxy_header: Bytes,
) -> HttpClient {
    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    builder
        .pool_max_idle_per_host(0)
        .timer(hyper_util::rt::TokioTimer::new())
        .set_host(false);
    if h2 {
        builder.http2_only(true);
    }
    builder.build(Connector {
        tls,
        congestion,
        proxy_header: Some(proxy_header),
    })
}
