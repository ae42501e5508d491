//! The tunnel: relays the two byte streams of an upgraded WebSocket
//! connection, reading every frame header as it passes and enforcing the
//! frame rows of the contract.
//!
//! A tunnel's life reads top to bottom in this folder:
//! * `tunnel`: from the backend's 101 to the access-log line (waits for the
//!   client side, runs the relay, counts and logs the ending);
//! * [`run`] (here): the two directions and the watchdog, joined in one task;
//! * `half`: one direction's loop: read, scan, write, insert Close frames;
//! * [`scan`]: the RFC 6455 rules as a sans-IO scanner (no IO, no buffer),
//!   driven the same way by the relay, the fuzzer, the property tests and
//!   the bench;
//! * `control`: the state the directions and the watchdog share, and the
//!   watchdog (idle, stalled writers, keep-alive pings and dead peers,
//!   planned ends, live counters);
//! * [`closing`]: what the daemon asks of open tunnels (the drain, backend
//!   removals) and the windows their closes are spread over;
//! * [`ending`]: why a tunnel ends and the one table from that to the Close
//!   codes each side gets; [`side`]: sides, directions and values per each;
//! * `buffers`: the read buffers and their shared spares.
//!
//! Invariants on the wire:
//! * A frame header is checked before any byte of it is forwarded; a frame
//!   that breaks a rule never reaches the other side, not even its header.
//! * Payload bytes are forwarded as they arrive: never unmasked, re-masked or
//!   gathered into messages. Only a partial header (at most 14 bytes) or a
//!   Close or Pong frame (at most 131 bytes, so a Close's code can be
//!   checked and the Pong answering sluice's own Ping recognised and
//!   dropped) is held back.
//! * sluice writes its own Close and Ping frames only at a frame boundary of
//!   the stream it writes to, masked toward the backend (sluice is the
//!   client on that leg) and unmasked toward the client.
//!
//! The relay core is generic over the two streams so that it runs unchanged
//! on raw TCP, TLS, or hyper's `Upgraded` (WebSocket over h2).

use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::config::OnMessageRate;
use crate::stream::Peer;

mod buffers;
pub mod closing;
mod control;
pub mod ending;
mod half;
pub mod scan;
pub mod side;
mod tunnel;

pub use closing::{Closing, Spread};
pub use ending::{CloseCode, Ending};
pub use scan::{Rules, Violation, RSV1};
pub use side::{Direction, PerDirection, PerSide, Side};
pub use tunnel::{Holds, Tunnel, Who};

use buffers::Pending;
use control::Control;
use half::Half;

/// Per-tunnel policy, resolved from the route and the handshake when the
/// tunnel opens.
#[derive(Debug, Clone)]
pub struct Policy {
    pub rules: Rules,
    pub idle_timeout: Duration,
    /// Close 1001 both ways after this, ±10 % jitter (so tunnels opened
    /// together do not all end together); zero = never.
    pub max_lifetime: Duration,
    /// A side silent this long gets a Ping from sluice; zero = no pings.
    pub ping_interval: Duration,
    /// No byte back within this after the Ping: that side is dead.
    pub ping_timeout: Duration,
    /// Client-to-backend frames (of any opcode): the rate and what to do
    /// above it.
    pub message_rate: MessageRate,
}

/// `limits.messages_per_second`, `message_burst`, `on_message_rate`.
#[derive(Debug, Clone, Copy)]
pub struct MessageRate {
    pub per_second: u32,
    pub burst: u32,
    pub over: OnMessageRate,
}

/// The counters a tunnel adds its traffic to while it lives (at most once a
/// second, so the relay's hot path touches only its own counts): its
/// route's, shared by the route's tunnels, indexed by `Direction as usize`.
pub type Live = std::sync::Arc<crate::metrics::RouteTraffic>;

/// What a finished tunnel did, for the access log and metrics.
#[derive(Debug, Clone)]
pub struct Report {
    pub ending: Ending,
    pub bytes: PerDirection<u64>,
    pub frames: PerDirection<u64>,
    /// Close codes sluice itself sent each side.
    pub sent_close: PerSide<Option<CloseCode>>,
    pub duration: Duration,
}

/// Runs a tunnel until both directions are finished.
///
/// `client_pre` / `backend_pre` are bytes hyper read past the handshake; they
/// are scanned like any other bytes. `closing` is what the daemon asks of
/// the tunnel from outside (the drain, a removal of its backend): Close
/// frames at the tunnel's moment in the window, at frame boundaries.
///
/// Not an `async fn`: an idle tunnel is mostly this future, and an `async fn`
/// keeps its arguments in the future for its whole life even after moving
/// them elsewhere. Here the state is built first and the future borrows it.
pub fn run<C: Peer, B: Peer>(
    client: C,
    client_pre: Bytes,
    backend: B,
    backend_pre: Bytes,
    policy: Policy,
    live: Live,
    closing: watch::Receiver<Closing>,
) -> impl std::future::Future<Output = Report> + Send {
    let ctl = Control::new(live, policy.max_lifetime);
    // Both halves of a stream are used from this one task, so the lock is
    // never contended; it only lets two `&mut` users take turns.
    let client = Mutex::new(client);
    let backend = Mutex::new(backend);
    let client_pre = Pending::from(client_pre);
    let backend_pre = Pending::from(backend_pre);
    async move {
        let mut closing = closing;
        let mut from_client = Half::new(
            Direction::ClientToBackend,
            &client,
            &backend,
            client_pre,
            &policy,
        );
        let mut from_backend = Half::new(
            Direction::BackendToClient,
            &backend,
            &client,
            backend_pre,
            &policy,
        );
        let ctl = &ctl;
        let relay = async {
            let a = from_client.run(ctl, &policy);
            let b = from_backend.run(ctl, &policy);
            tokio::pin!(a, b);
            let mut finished = [false; 2];
            std::future::poll_fn(|cx| {
                if !finished[0] {
                    finished[0] = std::future::Future::poll(a.as_mut(), cx).is_ready();
                }
                if !finished[1] {
                    finished[1] = std::future::Future::poll(b.as_mut(), cx).is_ready();
                }
                let complete = ctl.complete.load(std::sync::atomic::Ordering::Acquire);
                if finished == [true; 2] || complete {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await
        };
        tokio::select! {
            _ = relay => {}
            _ = control::watch(ctl, &policy, &mut closing) => {}
        }
        ctl.report()
    }
}
