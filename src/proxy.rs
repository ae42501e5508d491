//! The hyper service for one client connection: request sanity checks,
//! routing, and plain HTTP forwarding. WebSocket handshakes go to `upgrade`.
//!
//! Every rejection is a [`ProxyError`]; [`ProxyError::status`] is the one
//! table from error to status code, and each rejection logs one line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::backend::BackendError;
use crate::headers;
use crate::metrics::{RouteLabel, StatusLabel};
use crate::route::{self, Picked};
use crate::shared::{Shared, Snapshot};

/// Response bodies: streamed from a backend, or made here.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Facts about one client connection, fixed at accept time.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// Which certificate of the snapshot's `tls::Sites` the TLS handshake
    /// chose (by SNI); `None` for cleartext.
    pub cert: Option<usize>,
}

/// What one connection's requests are served with.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub snapshot: Arc<Snapshot>,
    pub conn: ConnInfo,
    /// The connection's places under the ceilings and its busy count; a
    /// tunnel holds it on after the HTTP connection is gone.
    pub client: Arc<crate::conn::Client>,
}

/// Why a request was not proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("bad request: {0}")]
    BadPath(#[from] route::PathError),
    #[error("unsupported WebSocket version")]
    WrongWebSocketVersion,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("no route")]
    NoRoute,
    #[error("origin not allowed")]
    OriginForbidden,
    #[error("handshake rate exceeded")]
    HandshakeRate { retry_after: Duration },
    #[error("too many connections from this address")]
    TooManyConnections,
    #[error("backend unavailable")]
    Backend(#[from] BackendError),
    #[error("backend timed out")]
    BackendTimeout,
    #[error("no healthy backend")]
    NoHealthyBackend,
    #[error("backend handshake invalid: {0}")]
    BadBackendHandshake(&'static str),
    /// An h2 request for a host this connection's certificate was not
    /// chosen for (connection coalescing onto another site).
    #[error("misdirected request: this connection's certificate is not for that host")]
    Misdirected,
}

/// Who is at fault, which decides the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Backend,
}

impl ProxyError {
    /// The contract's status table. Exhaustive: a new error must pick a status.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::WrongWebSocketVersion => StatusCode::UPGRADE_REQUIRED,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::OriginForbidden => StatusCode::FORBIDDEN,
            ProxyError::HandshakeRate { .. } | ProxyError::TooManyConnections => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::Backend(BackendError::TimedOut) | ProxyError::BackendTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Backend(_) | ProxyError::BadBackendHandshake(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoHealthyBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::BadPath(_)
            | ProxyError::WrongWebSocketVersion
            | ProxyError::MethodNotAllowed
            | ProxyError::NoRoute
            | ProxyError::OriginForbidden
            | ProxyError::HandshakeRate { .. }
            | ProxyError::TooManyConnections
            | ProxyError::Misdirected => Fault::Client,
            ProxyError::Backend(_)
            | ProxyError::BackendTimeout
            | ProxyError::BadBackendHandshake(_)
            | ProxyError::NoHealthyBackend => Fault::Backend,
        }
    }

    /// The short label used in logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::BadPath(_)
            | ProxyError::WrongWebSocketVersion
            | ProxyError::MethodNotAllowed => "bad_request",
            ProxyError::NoRoute => "no_route",
            ProxyError::OriginForbidden => "origin",
            ProxyError::HandshakeRate { .. } => "rate",
            ProxyError::TooManyConnections => "connections_per_ip",
            ProxyError::Backend(BackendError::TimedOut) | ProxyError::BackendTimeout => "timeout",
            ProxyError::Backend(_) | ProxyError::BadBackendHandshake(_) => "backend_error",
            ProxyError::NoHealthyBackend => "no_healthy_backend",
            ProxyError::Misdirected => "misdirected",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let mut body = self.to_string();
        body.push('\n');
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match &self {
            ProxyError::WrongWebSocketVersion => {
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            ProxyError::HandshakeRate { retry_after } => {
                // Whole seconds, at least 1, rounded up so a client that obeys it succeeds.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            _ => {}
        }
        resp
    }
}

/// Serves one request. Never fails: every error becomes a response.
pub async fn serve(ctx: ConnCtx, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let version = req.version();
    let result = route_request(&ctx, req).await;
    Ok(match result {
        Ok(resp) => {
            // The access-log line: one per request, at the response head.
            tracing::info!(
                peer = %ctx.conn.peer, %method, path, ?version, status = resp.status().as_u16(),
                head_ms = started.elapsed().as_millis() as u64,
                "request"
            );
            resp
        }
        Err(e) => {
            let status = e.status().as_u16();
            ctx.shared
                .metrics
                .requests_rejected
                .get_or_create(&crate::metrics::ReasonLabel { reason: e.reason() })
                .inc();
            match e.fault() {
                Fault::Client => tracing::info!(
                    peer = %ctx.conn.peer, %method, path, status, reason = e.reason(), error = %e,
                    "request rejected"
                ),
                Fault::Backend => tracing::warn!(
                    peer = %ctx.conn.peer, %method, path, status, reason = e.reason(), error = %error_chain(&e),
                    "request failed"
                ),
            }
            e.into_response()
        }
    })
}

async fn route_request(
    ctx: &ConnCtx,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let extended_connect = req.extensions().get::<hyper::ext::Protocol>().is_some();
    if req.method() == Method::CONNECT && !extended_connect {
        return Err(ProxyError::MethodNotAllowed);
    }
    // Routes match what the backend will be sent, so no spelling of a path
    // or host can reach one route's policy and another's backend.
    let host = request_host(&req)?.map(|h| match route::normalize_host(&h) {
        std::borrow::Cow::Borrowed(_) => h,
        std::borrow::Cow::Owned(n) => n,
    });
    if req.version() == hyper::Version::HTTP_2
        && !ctx
            .snapshot
            .serves(ctx.conn.cert, host.as_deref().map(route::host_without_port))
    {
        return Err(ProxyError::Misdirected);
    }
    if let std::borrow::Cow::Owned(path) = route::normalize_path(req.uri().path())? {
        set_path(&mut req, &path)?;
    }
    let picked = ctx
        .snapshot
        .router
        .pick(
            host.as_deref().map(route::host_without_port),
            req.uri().path(),
        )
        .ok_or(ProxyError::NoRoute)?;
    if extended_connect || crate::upgrade::is_websocket_request(&req) {
        return crate::upgrade::handle(ctx, &picked, host.as_deref(), req).await;
    }
    let metrics = &ctx.shared.metrics;
    let route = RouteLabel {
        route: picked.label.to_owned(),
    };
    let in_flight = metrics
        .http_requests_in_flight
        .get_or_create(&route)
        .clone();
    in_flight.inc();
    // Decremented however the request ends, including a client that hangs
    // up mid-request (hyper then drops this future).
    let _in_flight = InFlight(in_flight);
    let result = forward(ctx, &picked, host.as_deref(), req).await;
    let status = match &result {
        Ok(resp) => resp.status(),
        Err(e) => e.status(),
    };
    metrics
        .http_responses
        .get_or_create(&StatusLabel {
            route: route.route,
            status: status.as_u16(),
        })
        .inc();
    result
}

/// One request in `sluice_http_requests_in_flight`.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Replaces the request's path, keeping its query (and on h2 its scheme and
/// authority) unchanged.
fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), ProxyError> {
    const BAD: ProxyError = ProxyError::BadRequest("request target cannot be normalized");
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| BAD)?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| BAD)?;
    Ok(())
}

/// The request's host: `Host`, or `:authority` on h2. Two Host or two Origin
/// headers are ambiguous, and a proxy and a backend that pick differently are
/// a routing bypass, so both are refused (contract).
fn request_host(req: &Request<Incoming>) -> Result<Option<String>, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate Host header"));
    }
    if req.headers().get_all(header::ORIGIN).iter().count() > 1 {
        return Err(ProxyError::BadRequest("duplicate Origin header"));
    }
    let host = match host {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ProxyError::BadRequest("Host is not ASCII"))?
                .to_owned(),
        ),
        None => None,
    };
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    if req.version() == Version::HTTP_2 {
        if let (Some(h), Some(a)) = (&host, &authority) {
            if !h.eq_ignore_ascii_case(a) {
                return Err(ProxyError::BadRequest("Host differs from :authority"));
            }
        }
        return Ok(authority.or(host));
    }
    if req.version() == Version::HTTP_11 && host.is_none() {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    Ok(host.or(authority))
}

/// Proxies an ordinary HTTP request with streaming bodies.
async fn forward(
    ctx: &ConnCtx,
    picked: &Picked<'_>,
    host: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    // Safe to send again to another backend only if the method is idempotent
    // and there is no body that the first attempt could have consumed.
    let retryable = parts.method.is_idempotent() && hyper::body::Body::is_end_stream(&body);
    let mut body = Some(body);
    // Upgrade tokens other than websocket (h2c and others) are hop-by-hop and
    // go with the rest: the request continues as plain HTTP (contract).
    headers::strip_hop_by_hop(&mut parts.headers);
    let (client, xff) = headers::forwarded_for(
        &parts.headers,
        ctx.conn.peer.ip(),
        &ctx.snapshot.config.server.trusted_proxies,
    );
    headers::set_forwarded(&mut parts.headers, &client, xff, ctx.conn.tls, host);
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        parts.headers.insert(header::HOST, h);
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    // Backends speak HTTP/1.1 whatever the client spoke.
    parts.version = Version::HTTP_11;

    let deadline = tokio::time::Instant::now() + ctx.snapshot.config.server.handshake_timeout;
    let mut tried = Vec::new();
    let mut last = None;
    loop {
        let lease = match picked.pool.pick(&tried) {
            Ok(lease) => lease,
            Err(crate::pool::NoBackend::AllUnhealthy) if last.is_none() => {
                return Err(ProxyError::NoHealthyBackend)
            }
            Err(_) => return Err(last.expect("a backend was tried")),
        };
        let backend = lease.backend();
        let scheme = if backend.tls { "https" } else { "http" };
        let mut attempt = http::request::Builder::new()
            .method(parts.method.clone())
            .version(if backend.h2 {
                Version::HTTP_2
            } else {
                parts.version
            })
            .uri(format!("{scheme}://{}{pq}", backend.authority()));
        if let Some(h) = attempt.headers_mut() {
            *h = parts.headers.clone();
        }
        let req_body = match body.take() {
            Some(b) => Either::Left(b),
            None => Either::Right(http_body_util::Empty::new()),
        };
        let req = attempt
            .body(req_body)
            .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
        let result =
            tokio::time::timeout_at(deadline, picked.pool.http(backend).request(req)).await;
        match result {
            Err(_) => return Err(ProxyError::BackendTimeout),
            Ok(Ok(mut resp)) => {
                headers::strip_hop_by_hop(resp.headers_mut());
                return Ok(resp.map(Either::Left));
            }
            Ok(Err(e)) if e.is_connect() => {
                lease.connect_failed();
                tried.push(lease.index());
                let e = classify_client_error(e);
                if !retryable {
                    return Err(e);
                }
                last = Some(e);
            }
            Ok(Err(e)) => return Err(classify_client_error(e)),
        }
    }
}

fn classify_client_error(e: hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(be) = err.downcast_ref::<BackendError>() {
            return match be {
                BackendError::TimedOut => ProxyError::BackendTimeout,
                BackendError::Refused(io) => ProxyError::Backend(BackendError::Refused(
                    std::io::Error::new(io.kind(), io.to_string()),
                )),
                _ => ProxyError::BadBackendHandshake("backend connection failed"),
            };
        }
        source = err.source();
    }
    ProxyError::Backend(BackendError::Io(std::io::Error::other(error_chain(&e))))
}

/// `error: cause: cause` on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
