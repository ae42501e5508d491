//! The WebSocket handshake, from the client's request to an open tunnel.
//!
//! Checks run in the contract's order and the backend is not contacted until
//! every local check has passed: validate (400/426) → origin (403) →
//! handshake rate (429 + Retry-After) → per-IP tunnel cap (429) → backend
//! connect and handshake within `handshake_timeout` (502/504). The backend's
//! 101 is believed only if its `Sec-WebSocket-Accept` matches the key and its
//! `Upgrade` is websocket; any other answer goes to the client as plain HTTP
//! and no tunnel opens, so the client connection stays HTTP (no smuggling).
//!
//! WebSocket over h2 (RFC 8441 extended CONNECT) takes the same path and
//! becomes an HTTP/1.1 upgrade toward the backend with a fresh key.

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use sha1::{Digest, Sha1};

use crate::backend::{self, BackendError};
use crate::headers;
use crate::metrics::{HandshakeLabel, RouteLabel};
use crate::policy::origin;
use crate::proxy::{Body, ConnCtx, ProxyError};
use crate::relay::{self, RSV1};
use crate::route::Picked;
use crate::stream::BackendStream;

mod backend_leg;

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// An HTTP/1.1 request that asks for websocket in `Upgrade`. Requests whose
/// `Upgrade` names only other protocols are not WebSocket requests: they are
/// proxied as plain HTTP with `Upgrade` stripped.
pub fn is_websocket_request<B>(req: &Request<B>) -> bool {
    headers::has_token(req.headers(), header::UPGRADE, "websocket")
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Handles a WebSocket handshake on a route that matched, and counts its
/// outcome.
pub async fn handle(
    ctx: &ConnCtx,
    picked: &Picked<'_>,
    host: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let started = std::time::Instant::now();
    let result = handshake(ctx, picked, host, req).await;
    // Counted by what happened, not by the status the client sees: on h2 a
    // tunnel is a 200, and a backend's 200 refusal is not a tunnel.
    let outcome = match &result {
        Ok(Answered::Tunnel(_)) => "accepted",
        Ok(Answered::Refusal(_)) => "refused_by_backend",
        Err(e) => e.reason(),
    };
    let metrics = &ctx.shared.metrics;
    metrics
        .handshakes
        .get_or_create(&HandshakeLabel {
            route: picked.label.to_owned(),
            outcome,
        })
        .inc();
    metrics
        .handshake_seconds
        .get_or_create(&RouteLabel {
            route: picked.label.to_owned(),
        })
        .observe(started.elapsed().as_secs_f64());
    result.map(|answered| match answered {
        Answered::Tunnel(resp) | Answered::Refusal(resp) => resp,
    })
}

/// The response to an upgrade that reached the backend.
enum Answered {
    /// The backend accepted; the tunnel opens once this is sent.
    Tunnel(Response<Body>),
    /// The backend refused; its answer goes to the client as plain HTTP.
    Refusal(Response<Body>),
}

async fn handshake(
    ctx: &ConnCtx,
    picked: &Picked<'_>,
    host: Option<&str>,
    mut req: Request<Incoming>,
) -> Result<Answered, ProxyError> {
    let h2 = req.version() == Version::HTTP_2;
    let key = validate(&req)?;
    let route = picked.route;
    let policy = &route.websocket;

    let origin_value = req
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if !origin::allows(
        policy.allowed_origins.as_deref(),
        origin_value,
        host,
        ctx.conn.tls,
        policy.allow_missing_origin,
    ) {
        tracing::info!(peer = %ctx.conn.peer, route = picked.index, origin = origin_value.unwrap_or("-"), "origin not allowed");
        return Err(ProxyError::OriginForbidden);
    }

    let (client, xff) = headers::forwarded_for(
        req.headers(),
        ctx.conn.peer.ip(),
        &ctx.snapshot.config.server.trusted_proxies,
    );
    ctx.snapshot.handshake_limiters[picked.index]
        .check(client.ip)
        .map_err(|retry_after| ProxyError::HandshakeRate { retry_after })?;
    let guard = ctx
        .shared
        .connections
        .try_acquire(client.ip, route.limits.max_connections_per_ip)
        .ok_or(ProxyError::TooManyConnections)?;

    // The request toward the backend: the client's end-to-end headers
    // (subprotocols, extensions, cookies, authorization) plus our own.
    let backend_key = match &key {
        Some(k) => k.clone(),
        None => HeaderValue::from_str(
            &base64::engine::general_purpose::STANDARD.encode(crate::frame::random_bytes::<16>()),
        )
        .expect("base64 is a valid header value"),
    };
    let mut hdrs = req.headers().clone();
    headers::strip_hop_by_hop(&mut hdrs);
    if policy.strip_compression {
        strip_deflate_offer(&mut hdrs);
    }
    headers::set_forwarded(&mut hdrs, &client, xff, ctx.conn.tls, host);
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        hdrs.insert(header::HOST, h);
    }
    hdrs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    hdrs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hdrs.insert(header::SEC_WEBSOCKET_KEY, backend_key.clone());
    hdrs.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    let offered_extensions = hdrs
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .flat_map(extension_names)
        .collect::<Vec<_>>();
    let offered_protocols = tokens(&hdrs, header::SEC_WEBSOCKET_PROTOCOL);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let head = backend_leg::request_head(path, &hdrs);

    let timeout = ctx.snapshot.config.server.handshake_timeout;
    let tls = picked.pool.tls().clone();
    let connect_histogram = ctx
        .shared
        .metrics
        .backend_connect_seconds
        .get_or_create(&RouteLabel {
            route: picked.label.to_owned(),
        })
        .clone();
    let exchange = async {
        // A backend that refuses the connection is ejected and the next one
        // tried; nothing has been sent yet, so this is always safe.
        let (lease, mut stream) = connect_with_retry(picked.pool, &tls, &connect_histogram).await?;
        let answer = backend_leg::exchange(&mut stream, &head).await?;
        Ok::<_, ProxyError>((lease, stream, answer))
    };
    let (lease, backend_io, answer) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err(ProxyError::BackendTimeout),
        Ok(result) => result?,
    };

    if answer.status != StatusCode::SWITCHING_PROTOCOLS {
        // Refused: pass the answer on as plain HTTP. hyper keeps reading the
        // client connection as HTTP, so pipelined bytes never reach this
        // backend as tunnel data.
        tracing::info!(peer = %ctx.conn.peer, route = picked.index, status = answer.status.as_u16(), "backend refused upgrade");
        if h2 && answer.status.is_success() {
            // On h2 a 2xx is how sluice says "tunnel open" (RFC 8441 §5);
            // passing the backend's 200 on would tell the client a
            // WebSocket is open when none is.
            tracing::warn!(peer = %ctx.conn.peer, route = picked.index, status = answer.status.as_u16(), "backend answered a WebSocket upgrade with a success status, not 101; the h2 client gets 502");
            let mut refusal = Response::new(Either::Right(Full::new(Bytes::from_static(
                b"backend did not accept the WebSocket upgrade\n",
            ))));
            *refusal.status_mut() = StatusCode::BAD_GATEWAY;
            refusal.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(Answered::Refusal(refusal));
        }
        let mut refusal = Response::new(Either::Right(Full::new(answer.rest)));
        *refusal.status_mut() = answer.status;
        *refusal.headers_mut() = answer.headers;
        headers::strip_hop_by_hop(refusal.headers_mut());
        return Ok(Answered::Refusal(refusal));
    }
    let negotiated = check_backend_101(
        &answer.headers,
        backend_key.as_bytes(),
        &offered_extensions,
        &offered_protocols,
    )?;

    let tunnel = relay::Tunnel {
        who: relay::Who {
            peer: ctx.conn.peer,
            route: picked.label.to_owned(),
            backend: lease.backend().authority(),
        },
        client: hyper::upgrade::on(&mut req),
        backend: backend_io,
        backend_pre: answer.rest,
        policy: relay::Policy {
            max_frame_bytes: policy.max_frame_bytes,
            max_message_bytes: policy.max_message_bytes,
            allowed_rsv: negotiated.allowed_rsv,
            allowed_rsv_continuation: negotiated.allowed_rsv_continuation,
            idle_timeout: ctx.snapshot.config.server.idle_timeout,
            message_rate: relay::MessageRate {
                per_second: route.limits.messages_per_second,
                burst: route.limits.message_burst,
                over: route.limits.on_message_rate,
            },
        },
    };
    // The tunnel keeps its client connection's places under the connection
    // ceilings (and keeps an h2 connection that carries it from looking
    // idle), its per-IP tunnel slot, its backend lease and the drain's count.
    let holds: relay::Holds =
        Box::new((guard, lease, ctx.client.begin(), ctx.shared.tunnels.track()));
    tunnel.spawn(ctx.shared.clone(), holds);

    let mut reply_headers = answer.headers;
    headers::strip_hop_by_hop(&mut reply_headers);
    let mut reply = Response::new(Either::Right(Full::new(Bytes::new())));
    if h2 {
        // RFC 8441 §5: a 2xx answers the extended CONNECT; h2 has no accept key.
        reply_headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        *reply.status_mut() = StatusCode::OK;
    } else {
        reply_headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        reply_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    }
    *reply.headers_mut() = reply_headers;
    Ok(Answered::Tunnel(reply))
}

/// RFC 6455 §4.2.1 (and RFC 8441 §4 for h2). Returns the client's key on
/// HTTP/1.1, `None` on h2, which has no key.
fn validate<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let h = req.headers();
    let version = h.get(header::SEC_WEBSOCKET_VERSION);
    if req.version() == Version::HTTP_2 {
        if req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .map(|p| p.as_str())
            != Some("websocket")
        {
            return Err(ProxyError::MethodNotAllowed);
        }
    } else {
        if req.version() != Version::HTTP_11 {
            return Err(ProxyError::BadRequest("WebSocket upgrade needs HTTP/1.1"));
        }
        if req.method() != Method::GET {
            return Err(ProxyError::BadRequest("WebSocket upgrade must be GET"));
        }
        if !headers::has_token(h, header::CONNECTION, "upgrade") {
            return Err(ProxyError::BadRequest(
                "Upgrade without Connection: upgrade",
            ));
        }
    }
    // An upgrade request has no body; one that carries one is either broken
    // or trying to hide a second request in it.
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(ProxyError::BadRequest("WebSocket upgrade with a body"));
    }
    match version {
        None => return Err(ProxyError::BadRequest("missing Sec-WebSocket-Version")),
        Some(v) if v.as_bytes() != b"13" => return Err(ProxyError::WrongWebSocketVersion),
        Some(_) => {}
    }
    if req.version() == Version::HTTP_2 {
        return Ok(None);
    }
    let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = keys
        .next()
        .ok_or(ProxyError::BadRequest("missing Sec-WebSocket-Key"))?;
    if keys.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate Sec-WebSocket-Key"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| ProxyError::BadRequest("Sec-WebSocket-Key is not base64"))?;
    if decoded.len() != 16 {
        return Err(ProxyError::BadRequest("Sec-WebSocket-Key is not 16 bytes"));
    }
    Ok(Some(key.clone()))
}

/// What the backend's 101 negotiated.
struct Negotiated {
    allowed_rsv: u8,
    allowed_rsv_continuation: u8,
}

/// Believes a 101 only if it is a real WebSocket acceptance of our key.
fn check_backend_101(
    h: &HeaderMap,
    key: &[u8],
    offered_extensions: &[String],
    offered_protocols: &[String],
) -> Result<Negotiated, ProxyError> {
    if !headers::has_token(h, header::UPGRADE, "websocket") {
        return Err(ProxyError::BadBackendHandshake(
            "101 without Upgrade: websocket",
        ));
    }
    let accept = h
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .ok_or(ProxyError::BadBackendHandshake(
            "101 without Sec-WebSocket-Accept",
        ))?;
    if accept.as_bytes() != accept_key(key).as_bytes() {
        return Err(ProxyError::BadBackendHandshake(
            "Sec-WebSocket-Accept does not match the key",
        ));
    }
    let mut allowed_rsv = 0;
    let mut allowed_rsv_continuation = 0;
    for name in h
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .flat_map(extension_names)
    {
        // RFC 6455 §9.1: a server may only accept extensions the client offered.
        if !offered_extensions.contains(&name) {
            return Err(ProxyError::BadBackendHandshake(
                "backend accepted an extension that was not offered",
            ));
        }
        if name == "permessage-deflate" {
            // RFC 7692 §6: RSV1 on a message's first frame only.
            allowed_rsv |= RSV1;
        } else {
            // An extension sluice does not know may use any bit anywhere.
            allowed_rsv |= 0b111;
            allowed_rsv_continuation |= 0b111;
        }
    }
    let chosen = tokens(h, header::SEC_WEBSOCKET_PROTOCOL);
    if chosen.len() > 1 || chosen.iter().any(|p| !offered_protocols.contains(p)) {
        return Err(ProxyError::BadBackendHandshake(
            "backend chose a subprotocol that was not offered",
        ));
    }
    Ok(Negotiated {
        allowed_rsv,
        allowed_rsv_continuation,
    })
}

fn extension_names(v: &HeaderValue) -> Vec<String> {
    v.to_str()
        .unwrap_or("")
        .split(',')
        .filter_map(|offer| offer.split(';').next())
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

fn tokens(h: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Removes permessage-deflate offers so frame limits apply to real payload sizes.
fn strip_deflate_offer(h: &mut HeaderMap) {
    let kept: Vec<String> = h
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|offer| {
            let name = offer.split(';').next().unwrap_or("").trim();
            !name.eq_ignore_ascii_case("permessage-deflate")
        })
        .map(|o| o.trim().to_owned())
        .collect();
    h.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
        }
    }
}

/// Connects to the pool's backends in balance order until one accepts.
/// Each refusal ejects that backend; when all refuse, the last error stands.
pub async fn connect_with_retry(
    pool: &std::sync::Arc<crate::pool::Pool>,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    histogram: &prometheus_client::metrics::histogram::Histogram,
) -> Result<(crate::pool::Lease, BackendStream), ProxyError> {
    let mut tried = Vec::new();
    let mut last = None;
    loop {
        let lease = match pool.pick(&tried) {
            Ok(lease) => lease,
            Err(crate::pool::NoBackend::AllUnhealthy) if last.is_none() => {
                return Err(ProxyError::NoHealthyBackend)
            }
            Err(_) => return Err(ProxyError::Backend(last.expect("a backend was tried"))),
        };
        let started = std::time::Instant::now();
        match backend::connect(lease.backend(), tls, pool.congestion()).await {
            Ok(stream) => {
                histogram.observe(started.elapsed().as_secs_f64());
                return Ok((lease, stream));
            }
            Err(e @ (BackendError::Refused(_) | BackendError::TimedOut)) => {
                lease.connect_failed();
                tried.push(lease.index());
                last = Some(e);
            }
            Err(e) => return Err(ProxyError::Backend(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn deflate_offer_is_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; client_max_window_bits, x-foo"),
        );
        strip_deflate_offer(&mut h);
        assert_eq!(h[header::SEC_WEBSOCKET_EXTENSIONS], "x-foo");
    }
}
