//! Request handling for one client connection: the hyper service's body.
//! [`serve`] takes a request through its sanity checks and normalization,
//! routes it on what the backend will be sent, and dispatches it to
//! [`forward`] (plain HTTP) or [`upgrade`] (WebSocket, including h2
//! extended CONNECT). Every rejection is a [`ProxyError`] and logs one line.
//!
//! Inside the folder the arrows point down: `mod` → `forward`, `upgrade` →
//! `ctx`, `error` (the shared vocabulary and the error table, which import
//! neither path).

use std::borrow::Cow;
use std::convert::Infallible;

use http::header;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;

use crate::metrics::RejectedLabel;
use crate::route;

pub mod ctx;
pub mod error;
pub mod forward;
pub mod upgrade;

pub use ctx::{Body, ConnCtx, ConnInfo};
pub use error::{error_chain, Fault, ProxyError};

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
                .get_or_create(&RejectedLabel { reason: e.reason() })
                .inc();
            match e.fault() {
                Fault::Client => tracing::info!(
                    peer = %ctx.conn.peer, %method, path, status, reason = e.reason().label(), error = %e,
                    "request rejected"
                ),
                Fault::Backend => tracing::warn!(
                    peer = %ctx.conn.peer, %method, path, status, reason = e.reason().label(), error = %error_chain(&e),
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
    if let Some(answer) = acme_http01(ctx, &req) {
        return Ok(answer);
    }
    let extended_connect = req.extensions().get::<hyper::ext::Protocol>().is_some();
    if req.method() == Method::CONNECT && !extended_connect {
        return Err(ProxyError::MethodNotAllowed);
    }
    // Routes match what the backend will be sent, so no spelling of a path
    // or host can reach one route's policy and another's backend.
    let host = request_host(&req)?.map(|h| match route::normalize_host(&h) {
        Cow::Borrowed(_) => h,
        Cow::Owned(n) => n,
    });
    // h2 connection coalescing must not carry a request to a site whose
    // certificate this connection was not made with (RFC 9110 §15.5.20).
    if req.version() == hyper::Version::HTTP_2
        && !ctx
            .snapshot
            .serves(ctx.conn.cert, host.as_deref().map(route::host_without_port))
    {
        return Err(ProxyError::Misdirected);
    }
    if let Cow::Owned(path) = route::normalize_path(req.uri().path())? {
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
    if extended_connect || upgrade::is_websocket_request(&req) {
        return upgrade::handle(ctx, &picked, host.as_deref(), req).await;
    }
    forward::handle(ctx, &picked, host.as_deref(), req).await
}

/// An HTTP-01 validation of an ACME order in progress, on a plain
/// listener: answered here, before routing. A token sluice does not know
/// goes to the routes like any request (a backend may run its own ACME).
fn acme_http01(ctx: &ConnCtx, req: &Request<Incoming>) -> Option<Response<Body>> {
    let path = req.uri().path();
    if ctx.conn.tls
        || !path.starts_with(crate::acme::HTTP01_PREFIX)
        || !matches!(*req.method(), Method::GET | Method::HEAD)
    {
        return None;
    }
    let certs = ctx.snapshot.sites.as_ref()?.acme()?;
    let token = &path[crate::acme::HTTP01_PREFIX.len()..];
    certs.http01_answer(token)?;
    tracing::info!(peer = %ctx.conn.peer, token, "ACME HTTP-01 validation answered");
    Some(crate::acme::answer_http01(certs, path).map(http_body_util::Either::Right))
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
