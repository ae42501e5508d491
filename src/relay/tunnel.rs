//! A tunnel's life, from the backend's 101 to its access-log line: wait for
//! hyper to hand over the client's stream, relay, then count and log how it
//! ended. Everything the tunnel holds (its places under the limits, its
//! backend lease) is released when it ends, in one place.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use crate::conn::Kept;
use crate::metrics::{CloseLabel, DeadLabel, EndingLabel, Metrics, RouteLabel};
use crate::policy::rate::{ConnectionGuard, TunnelSlot};
use crate::pool::Lease;
use crate::shared::{Shared, Tracked};
use crate::stream::{BackendStream, ClientStream, Tunneled};

use super::{CloseCode, Direction, Policy, Report, Side};

/// Who a tunnel is for, for its log line and metric labels.
#[derive(Debug, Clone)]
pub struct Who {
    pub peer: SocketAddr,
    /// The route's metrics label.
    pub route: String,
    /// The backend's `host:port`.
    pub backend: String,
}

/// What a tunnel keeps until it ends, dropped together when it does.
#[derive(Debug)]
pub struct Holds {
    /// Its place under `limits.max_connections_per_ip`.
    pub tunnel_slot: ConnectionGuard,
    /// Its place under `server.max_tunnels` and `route.max_tunnels`.
    pub cap: TunnelSlot,
    /// The backend lease (least-connections balancing counts it).
    pub lease: Lease,
    /// What it keeps of the client connection (places under the connection
    /// ceilings; on h2 the shared connection, kept busy).
    pub connection: Kept,
    /// The drain waits for it.
    pub tracked: Tracked,
}

/// An accepted upgrade, ready to become a tunnel once the client side is.
#[derive(Debug)]
pub struct Tunnel {
    pub who: Who,
    pub client: OnUpgrade,
    pub backend: BackendStream,
    /// Bytes the backend sent right after its 101: already tunnel data.
    pub backend_pre: Bytes,
    pub policy: Policy,
}

impl Tunnel {
    /// Runs the tunnel in its own task. Spawned before the 101 is returned:
    /// hyper completes the client upgrade only after the response is written.
    pub fn spawn(self, shared: Arc<Shared>, holds: Holds) {
        let live = shared.metrics.route_traffic(&self.who.route);
        let closing = shared
            .tunnel_signals
            .subscribe(&self.who.route, &self.who.backend);
        tokio::spawn(async move {
            let Tunnel {
                who,
                client,
                backend,
                backend_pre,
                policy,
            } = self;
            let client = match client.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(peer = %who.peer, route = who.route, error = %e, "client upgrade did not complete");
                    return;
                }
            };
            let (client, client_pre) = unwrap_client(client);
            let relay = super::run(
                client,
                client_pre,
                backend,
                backend_pre,
                policy,
                live,
                closing,
            );
            // The relay goes on in a task of its own. This one's layout
            // keeps a slot for everything the handshake handed over (the
            // upgrade, both streams before they moved into the relay, the
            // relay itself before it is awaited) for as long as it runs:
            // an idle tunnel would pay for much of it twice.
            tokio::spawn(relay_and_record(relay, who, shared, holds));
        });
    }
}

/// Runs the relay, then counts and logs how the tunnel ended and releases
/// what it held. Not an `async fn` (which rebinds its arguments inside the
/// future, rust-lang/rust#62958), and the relay not `.await`ed (which moves
/// it into a slot of its own): either would keep the relay, most of an idle
/// tunnel, twice. It is polled where it lies.
#[allow(clippy::manual_async_fn)]
fn relay_and_record(
    mut relay: impl std::future::Future<Output = Report> + Send,
    who: Who,
    shared: Arc<Shared>,
    holds: Holds,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let open = shared
            .metrics
            .tunnels_open
            .get_or_create(&RouteLabel {
                route: who.route.clone(),
            })
            .clone();
        open.inc();
        let report = std::future::poll_fn(|cx| {
            // SAFETY: `relay` lives in this future, which is pinned from its
            // first poll to its end, and is never moved after this point:
            // it is only ever touched through this pinned reference.
            unsafe { std::pin::Pin::new_unchecked(&mut relay) }.poll(cx)
        })
        .await;
        open.dec();
        record(&who, &report, &shared.metrics);
        // Last: the drain waits for the tracker, so the log line is out first.
        drop(holds);
    }
}

/// Unwraps the client's upgraded stream to the raw socket, dropping hyper's
/// buffer after taking the bytes it holds, which the relay scans first.
fn unwrap_client(client: Upgraded) -> (Tunneled<ClientStream>, Bytes) {
    // Behind hyper-util's auto builder the IO is wrapped in a private type;
    // its own downcast helper unwraps it (hyper issue #3587).
    match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<ClientStream>>(client) {
        Ok(parts) => (Tunneled::Socket(parts.io.into_inner()), parts.read_buf),
        // WebSocket over h2: the stream is an h2 stream, relayed as it is.
        Err(upgraded) => (Tunneled::H2(TokioIo::new(upgraded)), Bytes::new()),
    }
}

/// One access-log line per closed tunnel, and its metrics (its frames and
/// bytes are on the live counters already).
fn record(who: &Who, report: &Report, metrics: &Metrics) {
    let route = &who.route;
    for side in Side::BOTH {
        if let Some(code) = report.sent_close[side] {
            metrics
                .closes
                .get_or_create(&CloseLabel {
                    code: code.to_string(),
                    direction: side.toward_label(),
                })
                .inc();
        }
    }
    if let super::Ending::Dead(side) = report.ending {
        metrics
            .peers_dead
            .get_or_create(&DeadLabel {
                route: route.clone(),
                side: match side {
                    Side::Client => "client",
                    Side::Backend => "backend",
                },
            })
            .inc();
    }
    metrics
        .tunnel_endings
        .get_or_create(&EndingLabel {
            route: route.clone(),
            ending: report.ending.label(),
        })
        .inc();
    let code = |side| report.sent_close[side].map_or(0, |c: CloseCode| c.get());
    use Direction::{BackendToClient as B2C, ClientToBackend as C2B};
    tracing::info!(
        peer = %who.peer,
        route,
        backend = who.backend,
        ending = %report.ending,
        close_to_client = code(Side::Client),
        close_to_backend = code(Side::Backend),
        bytes_client_to_backend = report.bytes[C2B],
        bytes_backend_to_client = report.bytes[B2C],
        frames_client_to_backend = report.frames[C2B],
        frames_backend_to_client = report.frames[B2C],
        duration_ms = report.duration.as_millis() as u64,
        "tunnel closed"
    );
}
