//! Listeners and the life of one client connection, top to bottom:
//! accept → take the current snapshot → from a `server.proxy_protocol`
//! peer, its PROXY header (then the per-IP cap on the client it names) →
//! TLS handshake under
//! `handshake_timeout` → serve HTTP/1.1 or h2 (with upgrades) until the
//! client leaves or a drain asks the connection to finish.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use crate::conn::{self, Busy, Client, State};
use crate::metrics::CloseReason;
use crate::proxy::{self, ConnCtx, ConnInfo};
use crate::proxy_protocol::ReadError;
use crate::shared::{Shared, Snapshot};
use crate::stream::{ClientStream, Corked, MaybeTls};

/// h2 header-list limit: large enough for real cookies, small enough that a
/// CONTINUATION flood cannot make sluice buffer megabytes per stream.
const H2_MAX_HEADER_LIST: u32 = 32 * 1024;
/// Concurrent h2 streams per connection (RFC 9113 suggests at least 100).
const H2_MAX_STREAMS: u32 = 128;
/// Streams a client may reset before being answered; bounds rapid reset
/// (CVE-2023-44487) work per connection.
const H2_MAX_PENDING_RESETS: usize = 20;

/// A bound listener.
#[derive(Debug)]
pub struct Listener {
    pub listener: TcpListener,
    pub tls: bool,
}

impl Listener {
    /// `reuse_port`: see `server.reuse_port`.
    pub fn bind(addr: SocketAddr, tls: bool, reuse_port: bool) -> io::Result<Listener> {
        Ok(Listener {
            listener: crate::socket::listen(addr, reuse_port)?,
            tls,
        })
    }

    pub fn from_std(listener: std::net::TcpListener, tls: bool) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        Ok(Listener {
            listener: TcpListener::from_std(listener)?,
            tls,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until the drain starts. Each connection runs in its own task
    /// with the snapshot that was current when it was accepted.
    ///
    /// A place under `server.max_client_connections` is taken before
    /// `accept`, so at the ceiling new connections wait in the kernel's
    /// backlog and descriptors stay free for backends.
    pub async fn serve(self, shared: Arc<Shared>) {
        let mut shutdown = shared.shutdown_signal();
        let local = self.listener.local_addr().ok();
        // A listener bound to one address is every connection's local
        // address; only a wildcard bind needs asking per connection.
        let fixed_local = local.filter(|a| !a.ip().is_unspecified());
        loop {
            let place = tokio::select! {
                p = shared.ceiling.acquire() => p,
                _ = crate::shared::drain_started(&mut shutdown) => break,
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = crate::shared::drain_started(&mut shutdown) => break,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    // A dual-stack listener sees IPv4 clients as
                    // ::ffff:a.b.c.d; every rule compares them as IPv4.
                    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                    let snapshot = shared.snapshot();
                    // A balancer's connections are counted per client once
                    // its PROXY header names the client, not here.
                    let behind = proxy_protocol_peer(&snapshot, peer);
                    let per_ip = if behind {
                        None
                    } else {
                        match admit_per_ip(&shared, &snapshot, peer) {
                            Some(guard) => guard,
                            None => {
                                drop(tcp);
                                continue;
                            }
                        }
                    };
                    let client = Client::new(Instant::now(), Some(place), per_ip);
                    let shared = shared.clone();
                    let tls = self.tls;
                    tokio::spawn(async move {
                        let socket = Socket {
                            tcp,
                            peer,
                            local: fixed_local,
                            tls,
                            behind,
                        };
                        connection(socket, shared, snapshot, client).await;
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off rather than spin, and keep
                    // the listener (mini-redis does the same).
                    drop(place);
                    tracing::warn!(listener = ?local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::debug!(listener = ?local, "listener closed");
    }
}

/// `max_client_connections_per_ip` for `peer` (the accepted socket's, or
/// the client a PROXY header names): its place (`Some(None)` without a
/// cap), or `None` when it is refused, counted and logged (one line a
/// second at most).
fn admit_per_ip(
    shared: &Shared,
    snapshot: &Snapshot,
    peer: SocketAddr,
) -> Option<Option<crate::policy::rate::ConnectionGuard>> {
    let per_ip = snapshot.config.server.max_client_connections_per_ip;
    match conn::admit(&shared.client_conns, peer.ip(), per_ip) {
        Ok(guard) => Some(guard),
        Err(refused) => {
            shared.metrics.connection_closed(CloseReason::from(refused));
            if let Some(suppressed) = shared.per_ip_log.pass(Instant::now(), shared.started) {
                tracing::info!(%peer, max = per_ip, suppressed, "connection refused: max_client_connections_per_ip reached");
            }
            None
        }
    }
}

/// Whether `peer` is in `server.proxy_protocol`: its connections must
/// begin with a PROXY header.
fn proxy_protocol_peer(snapshot: &Snapshot, peer: SocketAddr) -> bool {
    let nets = &snapshot.config.server.proxy_protocol;
    !nets.is_empty() && nets.iter().any(|n| n.contains(&peer.ip()))
}

/// An accepted connection, as the listener hands it over.
struct Socket {
    tcp: TcpStream,
    peer: SocketAddr,
    /// The listener's address when it is bound to one.
    local: Option<SocketAddr>,
    tls: bool,
    /// From a `server.proxy_protocol` peer: a PROXY header comes first.
    behind: bool,
}

/// The life of one client connection.
async fn connection(
    socket: Socket,
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    client: Arc<Client>,
) {
    let Socket {
        mut tcp,
        mut peer,
        local,
        tls,
        behind,
    } = socket;
    let _tracked = shared.http_conns.track();
    shared.metrics.http_connections_open.inc();
    let _open = scopeguard(|| {
        shared.metrics.http_connections_open.dec();
    });
    let mut local = match local.map_or_else(|| tcp.local_addr(), Ok) {
        Ok(a) => a,
        Err(_) => return,
    };
    let _ = tcp.set_nodelay(true);
    crate::socket::set_congestion(
        &tcp,
        snapshot.config.server.tcp_congestion.as_deref(),
        Some(peer.ip()),
    );
    let handshake_timeout = snapshot.config.server.handshake_timeout;
    // The TLS handshake and the first request head share one deadline.
    let head_deadline = client.accepted() + handshake_timeout;

    if behind {
        // The PROXY header, under the same deadline as what follows it.
        let read = timeout_at(head_deadline, crate::proxy_protocol::read_header(&mut tcp)).await;
        let failed = match read {
            Ok(Ok(carried)) => Ok(carried),
            Err(_) => Err((
                CloseReason::ProxyHeaderTimeout,
                "no complete PROXY header within handshake_timeout".to_owned(),
            )),
            Ok(Err(e @ (ReadError::Closed | ReadError::Io(_)))) => {
                Err((CloseReason::ProxyHeaderMissing, e.to_string()))
            }
            Ok(Err(e @ ReadError::Malformed(_))) => {
                Err((CloseReason::ProxyHeaderInvalid, e.to_string()))
            }
        };
        let carried = match failed {
            Ok(carried) => carried,
            Err((reason, error)) => {
                // Closed before TLS or any request: no backend was contacted.
                shared.metrics.connection_closed(reason);
                if let Some(suppressed) =
                    shared.proxy_header_log.pass(Instant::now(), shared.started)
                {
                    tracing::info!(%peer, reason = reason.label(), error, suppressed, "connection closed: PROXY header");
                }
                return;
            }
        };
        // The header's client is the client for every rule from here on;
        // a LOCAL header (the balancer's own check) leaves the peer.
        if let Some(source) = carried.source {
            peer = source;
        }
        if let Some(destination) = carried.destination {
            local = destination;
        }
        match admit_per_ip(&shared, &snapshot, peer) {
            Some(guard) => client.hold_per_ip(guard),
            None => return,
        }
    }

    let mut cert = None;
    let stream: ClientStream = if tls {
        let Some(acceptor) = snapshot.acceptor.clone() else {
            tracing::warn!(%peer, "TLS listener without a certificate");
            return;
        };
        let handshake = async {
            let mut s = acceptor.accept(Corked::new(tcp)).await?;
            let (socket, session) = s.get_mut();
            socket.uncork();
            // Held after a TLS 1.3 handshake: session tickets, which go with
            // the first response. Before 1.3: the server's last flight, which
            // the client is waiting for.
            if session.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
                socket.drain().await?;
            }
            Ok::<_, io::Error>(s)
        };
        match timeout_at(head_deadline, handshake).await {
            Ok(Ok(s)) if s.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) => {
                // An ACME server's TLS-ALPN-01 validation: it has seen the
                // challenge certificate, and speaks nothing after it.
                tracing::info!(%peer, sni = s.get_ref().1.server_name(), "ACME TLS-ALPN-01 validation answered");
                return;
            }
            Ok(Ok(s)) => {
                // The same choice the resolver made during the handshake.
                cert = snapshot
                    .sites
                    .as_ref()
                    .map(|sites| sites.pick(s.get_ref().1.server_name()));
                MaybeTls::Tls(Box::new(s))
            }
            Ok(Err(e)) => {
                shared.metrics.connection_closed(CloseReason::TlsFailed);
                tracing::info!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                shared
                    .metrics
                    .connection_closed(CloseReason::HandshakeTimeout);
                tracing::info!(%peer, timeout_ms = handshake_timeout.as_millis() as u64, "TLS handshake timed out");
                return;
            }
        }
    } else {
        MaybeTls::Plain(tcp)
    };

    let ctx = ConnCtx {
        shared: shared.clone(),
        snapshot: snapshot.clone(),
        conn: ConnInfo {
            peer,
            local,
            tls,
            cert,
        },
        client: client.clone(),
    };
    let service = service_fn(move |req| {
        // Busy until the response body has been sent.
        let busy = ctx.client.begin();
        let ctx = ctx.clone();
        async move {
            let resp = proxy::serve(ctx, req).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| Sending { body, _busy: busy }))
        }
    });
    let builder = http_builder();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut shutdown = shared.shutdown_signal();
    let keepalive = snapshot.config.server.keepalive_timeout;
    // One timer for the connection's deadlines: the first request head's,
    // then the keep-alive's each time the connection falls idle. Requests
    // in progress have none here (the backend's own timeouts bound them).
    // While no request has come the driver is not woken when one does (a
    // connection that upgrades then costs no wake-up at all); it looks again
    // at least every keepalive_timeout, so an idle connection is found
    // within one period even when the first request came late.
    let look_again = |now: Instant| head_deadline.min(now + keepalive);
    let timer = sleep_until(look_again(client.accepted()));
    tokio::pin!(timer);
    let mut armed = true;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = crate::shared::drain_started(&mut shutdown) => {
                // Finish in-flight requests, then close (contract: drain).
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
            _ = client.changed() => {}
            _ = &mut timer, if armed => {}
        }
        let now = Instant::now();
        armed = true;
        let mut state = client.state();
        if state == State::Busy {
            client.watch();
            state = client.state();
        }
        match state {
            State::Opening if now >= head_deadline => {
                // Zero bytes, part of the h2 preface, or part of a head:
                // hyper has no timer before it knows the protocol.
                shared
                    .metrics
                    .connection_closed(CloseReason::HandshakeTimeout);
                tracing::info!(%peer, timeout_ms = handshake_timeout.as_millis() as u64, "connection closed: no complete request head within handshake_timeout");
                return;
            }
            State::Opening => timer.as_mut().reset(look_again(now)),
            State::Busy => armed = false,
            State::Idle(since) if now >= since + keepalive => {
                shared
                    .metrics
                    .connection_closed(CloseReason::KeepaliveTimeout);
                tracing::debug!(%peer, timeout_ms = keepalive.as_millis() as u64, "idle connection closed (keepalive_timeout)");
                // h1: closes at once; h2: GOAWAY, then close.
                conn.as_mut().graceful_shutdown();
                break match timeout(handshake_timeout, conn.as_mut()).await {
                    Ok(r) => r,
                    Err(_) => Ok(()),
                };
            }
            State::Idle(since) => timer.as_mut().reset(since + keepalive),
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %proxy::error_chain(e.as_ref()), "connection ended with an error");
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection busy until it has been
    /// sent, so a long download is never mistaken for an idle connection.
    struct Sending<B> {
        #[pin]
        body: B,
        _busy: Busy,
    }
}

impl<B: hyper::body::Body> hyper::body::Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Runs `f` when dropped, however the scope ends.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The HTTP server settings. hyper's own header-read timer is off: it starts
/// only after the protocol sniff and runs during keep-alive idleness too, so
/// `connection` keeps the deadlines itself (first head within
/// `handshake_timeout` of accept; idle for `keepalive_timeout`).
fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}
