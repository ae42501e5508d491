//! The WebSocket handshake, from the client's request to an open tunnel, in
//! three steps, each a function below:
//!
//! 1. `admit`: the local checks, in the contract's order: validate
//!    (400/426) → origin (403) → handshake rate (429 + Retry-After) → per-IP
//!    tunnel cap (429) → tunnel caps (503); then, with `[cluster]`, the same
//!    per-IP rate and cap across every instance (`admit_shared`: one Redis
//!    call, only for what the local checks admitted). The backend is not
//!    contacted until all have passed.
//! 2. `offer` and `reach`: the request toward the backend, sent to one
//!    of the route's backends (refusers ejected, the next one tried) and
//!    answered within `handshake_timeout` (502/504).
//! 3. `open_tunnel`: the backend's 101 is believed only if its
//!    `Sec-WebSocket-Accept` matches the key and its `Upgrade` is websocket;
//!    then [`relay::Tunnel`] is spawned and the 101 (200 on h2) returned.
//!    Any other answer goes to the client as plain HTTP (`refusal`) and no
//!    tunnel opens, so the client connection stays HTTP (no smuggling).
//!
//! WebSocket over h2 (RFC 8441 extended CONNECT) takes the same path and
//! becomes an HTTP/1.1 upgrade toward the backend with a fresh key.

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::ctx::{Body, ConnCtx};
use super::error::{text_response, ProxyError};
use crate::backend::{self, BackendError};
use crate::headers::{self, Forwarding};
use crate::metrics::{HandshakeLabel, HandshakeOutcome, RouteLabel};
use crate::policy::cluster::Verdict;
use crate::policy::origin;
use crate::policy::rate::{ConnectionGuard, TunnelSlot};
use crate::pool::{Attempt, Lease};
use crate::relay;
use crate::route::Picked;
use crate::stream::BackendStream;

mod backend_leg;
mod negotiate;

pub use negotiate::accept_key;
use negotiate::{Negotiated, Offered};

/// An HTTP/1.1 request that asks for websocket in `Upgrade`. Requests whose
/// `Upgrade` names only other protocols are not WebSocket requests: they are
/// proxied as plain HTTP with `Upgrade` stripped.
pub fn is_websocket_request<B>(req: &Request<B>) -> bool {
    headers::has_token(req.headers(), header::UPGRADE, "websocket")
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
    let outcome = match &result {
        Ok(Answered::Tunnel(_)) => HandshakeOutcome::Accepted,
        Ok(Answered::Refusal(_)) => HandshakeOutcome::RefusedByBackend,
        Err(e) => HandshakeOutcome::Rejected(e.reason()),
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
    let mut admitted = admit(ctx, picked, host, &req)?;
    admit_shared(ctx, picked, &mut admitted).await?;
    // `balance = "hash"`: the key as the client sent it.
    let key = picked.route.hash_key.as_ref().and_then(|k| {
        crate::affinity::request_key(
            k,
            req.headers(),
            req.uri().query(),
            admitted.forwarding.client.ip,
        )
    });
    let offer = offer(picked, host, &req, admitted.key, admitted.forwarding);
    let reached = reach(ctx, picked, key, &offer.head).await?;
    if reached.answer.status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Answered::Refusal(refusal(ctx, picked, &req, reached)));
    }
    let negotiated = negotiate::check_backend_101(
        &reached.answer.headers,
        offer.key.as_bytes(),
        &offer.offered,
    )?;
    Ok(Answered::Tunnel(open_tunnel(
        ctx,
        picked,
        &mut req,
        (admitted.guard, admitted.cap),
        reached,
        negotiated,
    )))
}

/// A request that passed every local check.
struct Admitted {
    /// The client's `Sec-WebSocket-Key`; `None` on h2, which has none.
    key: Option<HeaderValue>,
    forwarding: Forwarding,
    /// The client's place under the route's per-IP tunnel cap.
    guard: ConnectionGuard,
    /// The tunnel's place under `server.max_tunnels` and `route.max_tunnels`.
    cap: TunnelSlot,
}

/// Step 1: validate, origin, handshake rate, per-IP tunnel cap, tunnel caps.
fn admit(
    ctx: &ConnCtx,
    picked: &Picked<'_>,
    host: Option<&str>,
    req: &Request<Incoming>,
) -> Result<Admitted, ProxyError> {
    let key = negotiate::validate(req)?;
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
    let forwarding = ctx.forwarding(req.headers());
    ctx.snapshot.handshake_limiters[picked.index]
        .check(forwarding.client.ip)
        .map_err(|retry_after| ProxyError::HandshakeRate { retry_after })?;
    let guard = ctx
        .shared
        .connections
        .try_acquire(forwarding.client.ip, route.limits.max_connections_per_ip)
        .ok_or(ProxyError::TooManyConnections)?;
    let cap = ctx
        .shared
        .tunnel_counts
        .try_take(
            picked.label,
            route.max_tunnels,
            ctx.snapshot.config.server.max_tunnels,
        )
        .map_err(|cap| {
            tracing::info!(peer = %ctx.conn.peer, route = picked.index, ?cap, "tunnel cap reached");
            ProxyError::TunnelCap
        })?;
    Ok(Admitted {
        key,
        forwarding,
        guard,
        cap,
    })
}

/// Step 1b, with `[cluster]`: the per-IP handshake rate and tunnel cap
/// across every instance sharing the Redis. Redis down or slower than
/// `cluster.timeout` leaves the local checks' answer standing.
async fn admit_shared(
    ctx: &ConnCtx,
    picked: &Picked<'_>,
    admitted: &mut Admitted,
) -> Result<(), ProxyError> {
    let Some(cluster) = ctx.shared.cluster.current() else {
        return Ok(());
    };
    let ip = admitted.forwarding.client.ip;
    match cluster.admit(picked.label, ip, &picked.route.limits).await {
        // A local admission during an outage is in the counts the next
        // re-sync writes, so its release is reported like the others.
        Verdict::Admitted | Verdict::Local => {
            admitted.guard.counted_shared();
            Ok(())
        }
        Verdict::Rate(retry_after) => Err(ProxyError::HandshakeRate { retry_after }),
        Verdict::Connections => Err(ProxyError::TooManyConnections),
    }
}

/// The upgrade request sluice sends to the backend.
struct Offer {
    /// The request head, one buffer for one write.
    head: Vec<u8>,
    /// The `Sec-WebSocket-Key` sent: the client's, or a fresh one for h2.
    key: HeaderValue,
    offered: Offered,
}

/// Step 2a: the client's end-to-end headers (subprotocols, extensions,
/// cookies, authorization) plus sluice's forwarding headers and the
/// upgrade's own.
fn offer(
    picked: &Picked<'_>,
    host: Option<&str>,
    req: &Request<Incoming>,
    client_key: Option<HeaderValue>,
    forwarding: Forwarding,
) -> Offer {
    let key = client_key.unwrap_or_else(|| {
        HeaderValue::from_str(
            &base64::engine::general_purpose::STANDARD.encode(crate::frame::random_bytes::<16>()),
        )
        .expect("base64 is a valid header value")
    });
    let mut hdrs = req.headers().clone();
    forwarding.apply(&mut hdrs, host);
    if picked.route.websocket.strip_compression {
        negotiate::strip_deflate_offer(&mut hdrs);
    }
    hdrs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    hdrs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hdrs.insert(header::SEC_WEBSOCKET_KEY, key.clone());
    hdrs.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    Offer {
        head: backend_leg::request_head(path, &hdrs),
        key,
        offered: Offered::of(&hdrs),
    }
}

/// A backend that answered the upgrade request.
struct Reached {
    lease: Lease,
    stream: BackendStream,
    answer: backend_leg::Answer,
}

/// Step 2b: connect to one of the route's backends and exchange the
/// upgrade request for its answer, all within `handshake_timeout`. A
/// backend that refuses the connection is ejected and the next one tried;
/// nothing has been sent yet, so this is always safe.
async fn reach(
    ctx: &ConnCtx,
    picked: &Picked<'_>,
    key: Option<u64>,
    head: &[u8],
) -> Result<Reached, ProxyError> {
    let pool = picked.pool;
    let tls = pool.tls();
    let connect_seconds = ctx
        .shared
        .metrics
        .backend_connect_seconds
        .get_or_create(&RouteLabel {
            route: picked.label.to_owned(),
        })
        .clone();
    // `send_proxy_protocol`: the client connection's PROXY header first.
    let proxy_header = pool.proxy_header(ctx.conn.peer, ctx.conn.local);
    let exchange = async {
        let (lease, mut stream) = pool
            .try_each(true, key, |backend| {
                let backend = backend.clone();
                let connect_seconds = &connect_seconds;
                let proxy_header = proxy_header.as_deref();
                async move {
                    let started = std::time::Instant::now();
                    match backend::connect(&backend, tls, pool.congestion(), proxy_header).await {
                        Ok(stream) => {
                            connect_seconds.observe(started.elapsed().as_secs_f64());
                            Attempt::Done(stream)
                        }
                        Err(e @ (BackendError::Refused(_) | BackendError::TimedOut)) => {
                            Attempt::Refused(e)
                        }
                        Err(
                            e @ (BackendError::Tls(_)
                            | BackendError::Protocol(_)
                            | BackendError::Io(_)),
                        ) => Attempt::Failed(e),
                    }
                }
            })
            .await?;
        let answer = backend_leg::exchange(&mut stream, head).await?;
        Ok::<_, ProxyError>(Reached {
            lease,
            stream,
            answer,
        })
    };
    match tokio::time::timeout(ctx.snapshot.config.server.handshake_timeout, exchange).await {
        Err(_) => Err(ProxyError::BackendTimeout),
        Ok(result) => result,
    }
}

/// The backend answered something other than 101: its answer goes to the
/// client as plain HTTP. hyper keeps reading the client connection as HTTP,
/// so pipelined bytes never reach this backend as tunnel data.
fn refusal(
    ctx: &ConnCtx,
    picked: &Picked<'_>,
    req: &Request<Incoming>,
    reached: Reached,
) -> Response<Body> {
    let answer = reached.answer;
    tracing::info!(peer = %ctx.conn.peer, route = picked.index, status = answer.status.as_u16(), "backend refused upgrade");
    if req.version() == Version::HTTP_2 && answer.status.is_success() {
        // On h2 a 2xx is how sluice says "tunnel open" (RFC 8441 §5);
        // passing the backend's 200 on would tell the client a WebSocket is
        // open when none is.
        tracing::warn!(peer = %ctx.conn.peer, route = picked.index, status = answer.status.as_u16(), "backend answered a WebSocket upgrade with a success status, not 101; the h2 client gets 502");
        return text_response(
            StatusCode::BAD_GATEWAY,
            Bytes::from_static(b"backend did not accept the WebSocket upgrade\n"),
        );
    }
    let mut refusal = Response::new(Either::Right(Full::new(answer.rest)));
    *refusal.status_mut() = answer.status;
    *refusal.headers_mut() = answer.headers;
    headers::strip_hop_by_hop(refusal.headers_mut());
    refusal
}

/// Step 3: spawn the tunnel and answer the client.
fn open_tunnel(
    ctx: &ConnCtx,
    picked: &Picked<'_>,
    req: &mut Request<Incoming>,
    (guard, cap): (ConnectionGuard, TunnelSlot),
    reached: Reached,
    negotiated: Negotiated,
) -> Response<Body> {
    let route = picked.route;
    let policy = &route.websocket;
    let Reached {
        lease,
        stream,
        answer,
    } = reached;
    let tunnel = relay::Tunnel {
        who: relay::Who {
            peer: ctx.conn.peer,
            route: picked.label.to_owned(),
            backend: lease.backend().authority(),
        },
        client: hyper::upgrade::on(&mut *req),
        backend: stream,
        backend_pre: answer.rest,
        policy: relay::Policy {
            rules: relay::Rules {
                max_frame_bytes: policy.max_frame_bytes,
                max_message_bytes: policy.max_message_bytes,
                allowed_rsv: negotiated.allowed_rsv,
                allowed_rsv_continuation: negotiated.allowed_rsv_continuation,
            },
            idle_timeout: ctx.snapshot.config.server.idle_timeout,
            max_lifetime: policy.max_lifetime,
            ping_interval: policy.ping_interval,
            ping_timeout: policy.ping_timeout,
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
    let holds = relay::Holds {
        tunnel_slot: guard,
        cap,
        lease,
        connection: ctx.client.keep_for_tunnel(req.version() == Version::HTTP_2),
        tracked: ctx.shared.tunnels.track(),
    };
    // Spawned before the answer is returned: hyper completes the client's
    // upgrade only after writing it.
    tunnel.spawn(ctx.shared.clone(), holds);

    let mut reply_headers = answer.headers;
    headers::strip_hop_by_hop(&mut reply_headers);
    let mut reply = Response::new(Either::Right(Full::new(Bytes::new())));
    if req.version() == Version::HTTP_2 {
        // RFC 8441 §5: a 2xx answers the extended CONNECT; h2 has no accept key.
        reply_headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        *reply.status_mut() = StatusCode::OK;
    } else {
        reply_headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        reply_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    }
    *reply.headers_mut() = reply_headers;
    reply
}
