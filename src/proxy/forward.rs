//! Plain HTTP: a request on a route that matched goes to one of its
//! backends over the route's pooled client, bodies streamed both ways, and
//! is counted per route (`sluice_http_requests_in_flight`,
//! `sluice_http_responses_total`).
//!
//! Only a bodiless idempotent request is sent again to another backend, and
//! only after the first one refused the connection; the whole exchange up to
//! the response head is bounded by `handshake_timeout`.

use http::{Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use super::ctx::{Body, ConnCtx};
use super::error::ProxyError;
use crate::headers;
use crate::metrics::{RouteLabel, StatusLabel};
use crate::pool::Attempt;
use crate::route::Picked;

/// Forwards a request on a route that matched, and counts it.
pub async fn handle(
    ctx: &ConnCtx,
    picked: &Picked<'_>,
    host: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
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
    let result = forward(ctx, picked, host, req).await;
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
    let forwarding = ctx.forwarding(&parts.headers);
    // `balance = "hash"`: the key as the client sent it.
    let key = picked.route.hash_key.as_ref().and_then(|k| {
        crate::affinity::request_key(k, &parts.headers, parts.uri.query(), forwarding.client.ip)
    });
    forwarding.apply(&mut parts.headers, host);
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());

    let deadline = tokio::time::Instant::now() + ctx.snapshot.config.server.handshake_timeout;
    let (_lease, resp) = picked
        .pool
        .try_each(retryable, key, |backend| {
            let scheme = if backend.tls { "https" } else { "http" };
            // Backends speak HTTP/1.1 whatever the client spoke (h2 only to
            // `h2://` and `h2c://` backends).
            let mut attempt = http::request::Builder::new()
                .method(parts.method.clone())
                .version(if backend.h2 {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                })
                .uri(format!("{scheme}://{}{pq}", backend.authority()));
            if let Some(h) = attempt.headers_mut() {
                *h = parts.headers.clone();
            }
            let req_body = match body.take() {
                Some(b) => Either::Left(b),
                None => Either::Right(http_body_util::Empty::new()),
            };
            let sent = attempt.body(req_body).map(|req| {
                picked
                    .pool
                    .http(backend, ctx.conn.peer, ctx.conn.local)
                    .request(req)
            });
            async move {
                let Ok(sent) = sent else {
                    return Attempt::Failed(ProxyError::BadRequest(
                        "request target cannot be forwarded",
                    ));
                };
                match tokio::time::timeout_at(deadline, sent).await {
                    Err(_) => Attempt::Failed(ProxyError::BackendTimeout),
                    Ok(Ok(resp)) => Attempt::Done(resp),
                    Ok(Err(e)) if e.is_connect() => Attempt::Refused(ProxyError::from(e)),
                    Ok(Err(e)) => Attempt::Failed(ProxyError::from(e)),
                }
            }
        })
        .await?;
    let mut resp = resp;
    headers::strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(Either::Left))
}
