//! The tunnel: relays the two byte streams of an upgraded WebSocket
//! connection, reading every frame header as it passes and enforcing the
//! frame rows of the contract.
//!
//! Owns: frame-boundary tracking per direction, the frame and message checks,
//! the client message rate, idle and stalled-writer timeouts, and the Close
//! frames sluice itself sends. Does not own: the handshake (`upgrade`), header
//! parsing (`frame`), or what a tunnel may do before it exists (`policy`).
//!
//! Invariants on the wire:
//! * A frame header is checked before any byte of it is forwarded; a frame
//!   that breaks a rule never reaches the other side, not even its header.
//! * Payload bytes are forwarded as they arrive: never unmasked, re-masked or
//!   gathered into messages. Only a partial header (at most 14 bytes) or a
//!   Close frame (at most 139 bytes, so its code can be checked) is held back.
//! * sluice writes its own Close frames only at a frame boundary of the
//!   stream it writes to, masked toward the backend (sluice is the client on
//!   that leg) and unmasked toward the client.
//!
//! The relay is generic over the two streams so that it runs unchanged on raw
//! TCP, TLS, or hyper's `Upgraded` (WebSocket over h2).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, Instant};

mod tunnel;

pub use tunnel::{Holds, Tunnel, Who};

use crate::config::OnMessageRate;
use crate::frame::{self, Header, HeaderError};
use crate::policy::rate::MessageBucket;
use crate::stream::Peer;

/// Bytes read from a socket in one go. 16 KiB holds one full TLS record.
const BUF_LEN: usize = 16 * 1024;
/// A direction waiting with a partial frame header or Close frame held (at
/// most 131 bytes) keeps them in a buffer this small, not a read buffer, so
/// a peer that sends one byte of a header and stops pins almost nothing.
/// Streams that cannot signal readiness (WebSocket over h2) also wait with
/// one of these.
const SMALL_BUF_LEN: usize = 256;
/// The read size for a direction whose last read filled its buffer: bulk
/// transfers then cost a quarter of the system calls per byte.
const BIG_BUF_LEN: usize = 64 * 1024;
/// How long sluice keeps reading (and discarding) from a peer after it sent
/// that peer a Close, so the peer's Close reply and in-flight data do not turn
/// the TCP close into a reset that could destroy the Close frame in transit.
const LINGER: Duration = Duration::from_secs(2);
/// RSV1, which permessage-deflate (RFC 7692) uses to mark compressed messages.
pub const RSV1: u8 = 0b100;

/// Per-tunnel policy, resolved from the route when the tunnel opens.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_frame_bytes: u64,
    pub max_message_bytes: u64,
    /// RSV bits the negotiated extensions allow on the first frame of a
    /// message and on control frames' data siblings (`RSV1` with
    /// permessage-deflate).
    pub allowed_rsv: u8,
    /// RSV bits allowed on continuation frames: permessage-deflate's RSV1
    /// marks only a message's first frame (RFC 7692 §6), while an extension
    /// sluice does not know may use any bit on any frame.
    pub allowed_rsv_continuation: u8,
    pub idle_timeout: Duration,
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

/// The counters a tunnel adds its traffic to while it lives (frames and
/// bytes, indexed by `Direction as usize`), at most once a second, so the
/// relay's hot path touches only its own counts.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub frames: [prometheus_client::metrics::counter::Counter; 2],
    pub bytes: [prometheus_client::metrics::counter::Counter; 2],
}

/// How often a tunnel with new traffic adds it to the [`Live`] counters.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToBackend,
    BackendToClient,
}

/// One of the two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Direction {
    fn sender(self) -> Side {
        match self {
            Direction::ClientToBackend => Side::Client,
            Direction::BackendToClient => Side::Backend,
        }
    }
    fn receiver(self) -> Side {
        match self {
            Direction::ClientToBackend => Side::Backend,
            Direction::BackendToClient => Side::Client,
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// A rule a peer broke. Small and `Copy`: it is made on the hot path and
/// formatted only when logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    FrameTooLarge { len: u64, max: u64 },
    MessageTooLarge { len: u64, max: u64 },
    UnmaskedClientFrame,
    MaskedBackendFrame,
    ControlFrameTooLong { len: u64 },
    FragmentedControlFrame,
    ReservedOpcode(u8),
    ReservedBits(u8),
    UnexpectedContinuation,
    UnfinishedMessage,
    NonMinimalLength,
    LengthTopBitSet,
    BadClose(frame::CloseError),
    MessageRateExceeded,
}

impl Violation {
    /// The Close code the sender gets. Exhaustive on purpose: a new rule must
    /// decide its code here.
    pub fn close_code(self) -> u16 {
        match self {
            Violation::FrameTooLarge { .. } | Violation::MessageTooLarge { .. } => 1009,
            Violation::MessageRateExceeded => 1008,
            Violation::UnmaskedClientFrame
            | Violation::MaskedBackendFrame
            | Violation::ControlFrameTooLong { .. }
            | Violation::FragmentedControlFrame
            | Violation::ReservedOpcode(_)
            | Violation::ReservedBits(_)
            | Violation::UnexpectedContinuation
            | Violation::UnfinishedMessage
            | Violation::NonMinimalLength
            | Violation::LengthTopBitSet
            | Violation::BadClose(_) => 1002,
        }
    }
}

impl From<HeaderError> for Violation {
    fn from(e: HeaderError) -> Violation {
        match e {
            HeaderError::NonMinimalLength => Violation::NonMinimalLength,
            HeaderError::LengthTopBitSet => Violation::LengthTopBitSet,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::FrameTooLarge { len, max } => {
                write!(f, "frame payload {len} > max_frame_bytes {max}")
            }
            Violation::MessageTooLarge { len, max } => {
                write!(f, "message size {len} > max_message_bytes {max}")
            }
            Violation::UnmaskedClientFrame => f.write_str("client frame not masked"),
            Violation::MaskedBackendFrame => f.write_str("backend frame masked"),
            Violation::ControlFrameTooLong { len } => {
                write!(f, "control frame payload {len} > 125")
            }
            Violation::FragmentedControlFrame => f.write_str("fragmented control frame"),
            Violation::ReservedOpcode(op) => write!(f, "reserved opcode {op}"),
            Violation::ReservedBits(rsv) => {
                write!(f, "RSV bits {rsv:03b} without a negotiated extension")
            }
            Violation::UnexpectedContinuation => {
                f.write_str("continuation frame with no message open")
            }
            Violation::UnfinishedMessage => {
                f.write_str("new data frame while a fragmented message is open")
            }
            Violation::NonMinimalLength => f.write_str("payload length not minimally encoded"),
            Violation::LengthTopBitSet => f.write_str("64-bit payload length with the top bit set"),
            Violation::BadClose(e) => write!(f, "invalid close frame: {e:?}"),
            Violation::MessageRateExceeded => f.write_str("message rate exceeded"),
        }
    }
}

/// Why a tunnel ended; the first cause wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Both peers exchanged Close frames, or closed their streams cleanly.
    Closed,
    Violation {
        by: Side,
        violation: Violation,
    },
    Idle,
    WriteStalled {
        toward: Side,
    },
    Drain,
    /// A peer closed or reset its stream without sending a Close first.
    Vanished(Side),
}

impl Ending {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::Violation { .. } => "violation",
            Ending::Idle => "idle",
            Ending::WriteStalled { .. } => "write_stalled",
            Ending::Drain => "drain",
            Ending::Vanished(_) => "vanished",
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Closed => f.write_str("closed"),
            Ending::Violation { by, violation } => write!(f, "violation by {by}: {violation}"),
            Ending::Idle => f.write_str("idle timeout"),
            Ending::WriteStalled { toward } => write!(f, "writes toward {toward} stalled"),
            Ending::Drain => f.write_str("server shutting down"),
            Ending::Vanished(side) => write!(f, "{side} went away without a close frame"),
        }
    }
}

/// What a finished tunnel did, for the access log and metrics.
#[derive(Debug, Clone)]
pub struct Report {
    pub ending: Ending,
    /// Bytes and frames, indexed by `Direction as usize`.
    pub bytes: [u64; 2],
    pub frames: [u64; 2],
    /// Close codes sluice itself sent to (client, backend), 0 if none.
    pub sent_close: [u16; 2],
    pub duration: Duration,
}

/// State the two directions and the watchdog share. Both directions and the
/// watchdog run in one task, and every poll of that task polls all three, so
/// a flag set by one is seen by the others on the next poll; whoever sets a
/// flag yields once to guarantee that poll happens.
#[derive(Debug)]
struct Control {
    start: Instant,
    /// Milliseconds since `start` when a byte last arrived from either side.
    last_activity: AtomicU64,
    /// Per receiver (client, backend): 1 + milliseconds since `start` when a
    /// write toward it started waiting for the peer to take bytes; 0 while
    /// writes go through. The watchdog ends a tunnel whose writes stall for
    /// `idle_timeout`, so a write needs no timer of its own.
    write_blocked: [AtomicU64; 2],
    /// Close code requested toward (client, backend); 0 = none.
    close_request: [AtomicU16; 2],
    /// Close code sluice sent to (client, backend).
    sent_close: [AtomicU16; 2],
    /// A Close frame has passed in (client-to-backend, backend-to-client).
    saw_close: [AtomicBool; 2],
    /// ... and has been written whole to its receiver.
    close_delivered: [AtomicBool; 2],
    /// The close handshake is over both ways and one side has closed: the
    /// tunnel ends without waiting for the other.
    complete: AtomicBool,
    done: [AtomicBool; 2],
    bytes: [AtomicU64; 2],
    frames: [AtomicU64; 2],
    /// What of `bytes` and `frames` has been added to the [`Live`] counters.
    flushed_bytes: [AtomicU64; 2],
    flushed_frames: [AtomicU64; 2],
    live: Live,
    ending: OnceLock<Ending>,
}

impl Control {
    fn new(live: Live) -> Control {
        Control {
            start: Instant::now(),
            last_activity: AtomicU64::new(0),
            write_blocked: [AtomicU64::new(0), AtomicU64::new(0)],
            close_request: [AtomicU16::new(0), AtomicU16::new(0)],
            sent_close: [AtomicU16::new(0), AtomicU16::new(0)],
            saw_close: [AtomicBool::new(false), AtomicBool::new(false)],
            close_delivered: [AtomicBool::new(false), AtomicBool::new(false)],
            complete: AtomicBool::new(false),
            done: [AtomicBool::new(false), AtomicBool::new(false)],
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            frames: [AtomicU64::new(0), AtomicU64::new(0)],
            flushed_bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            flushed_frames: [AtomicU64::new(0), AtomicU64::new(0)],
            live,
            ending: OnceLock::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_activity.store(self.now_ms(), Ordering::Relaxed);
    }

    /// When the watchdog must look next: the idle deadline, or earlier if a
    /// write is blocked. Also says whether a write has been stalled too long.
    fn next_deadline(&self, idle: Duration) -> (Instant, Option<Side>) {
        let last = self.last_activity.load(Ordering::Relaxed);
        let mut deadline = self.start + Duration::from_millis(last) + idle;
        for side in [Side::Client, Side::Backend] {
            let since = self.write_blocked[side as usize].load(Ordering::Relaxed);
            if since == 0 {
                continue;
            }
            let stalled_until = self.start + Duration::from_millis(since - 1) + idle;
            if Instant::now() >= stalled_until {
                return (stalled_until, Some(side));
            }
            deadline = deadline.min(stalled_until);
        }
        (deadline, None)
    }

    /// Asks the direction that writes to `side` to send it Close `code`.
    fn request_close(&self, side: Side, code: u16) {
        let i = side as usize;
        let _ =
            self.close_request[i].compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Traffic not yet added to the [`Live`] counters.
    fn unflushed(&self) -> bool {
        (0..2).any(|i| {
            self.bytes[i].load(Ordering::Relaxed) != self.flushed_bytes[i].load(Ordering::Relaxed)
                || self.frames[i].load(Ordering::Relaxed)
                    != self.flushed_frames[i].load(Ordering::Relaxed)
        })
    }

    /// Adds the traffic since the last flush to the [`Live`] counters.
    fn flush(&self) {
        let live = &self.live;
        for i in 0..2 {
            let bytes = self.bytes[i].load(Ordering::Relaxed);
            let before = self.flushed_bytes[i].swap(bytes, Ordering::Relaxed);
            live.bytes[i].inc_by(bytes - before);
            let frames = self.frames[i].load(Ordering::Relaxed);
            let before = self.flushed_frames[i].swap(frames, Ordering::Relaxed);
            live.frames[i].inc_by(frames - before);
        }
    }

    fn end(&self, ending: Ending) {
        let _ = self.ending.set(ending);
    }

    /// The close handshake is complete and one side has finished: the other
    /// has nothing left to say.
    fn winding_down(&self) -> bool {
        self.saw_close[0].load(Ordering::Acquire)
            && self.saw_close[1].load(Ordering::Acquire)
            && (self.done[0].load(Ordering::Acquire) || self.done[1].load(Ordering::Acquire))
    }
}

/// Runs a tunnel until both directions are finished.
///
/// `client_pre` / `backend_pre` are bytes hyper read past the handshake; they
/// are scanned like any other bytes. `shutdown` turning true drains the
/// tunnel: Close 1001 to both sides at their next frame boundary.
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
    shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = Report> + Send {
    let ctl = Control::new(live);
    // Both halves of a stream are used from this one task, so the lock is
    // never contended; it only lets two `&mut` users take turns.
    let client = Mutex::new(client);
    let backend = Mutex::new(backend);
    let client_pre = Pending::from(client_pre);
    let backend_pre = Pending::from(backend_pre);
    async move {
        let mut shutdown = shutdown;
        tunnel(
            &ctl,
            &client,
            client_pre,
            &backend,
            backend_pre,
            &policy,
            &mut shutdown,
        )
        .await
    }
}

/// Bytes read before the relay started, in a read buffer of their own.
struct Pending {
    buf: Option<Box<[u8]>>,
    len: usize,
}

impl From<Bytes> for Pending {
    fn from(pre: Bytes) -> Pending {
        let buf = (!pre.is_empty()).then(|| {
            let mut buf = if pre.len() <= BUF_LEN {
                pool::take(BUF_LEN)
            } else {
                vec![0u8; pre.len()].into_boxed_slice()
            };
            buf[..pre.len()].copy_from_slice(&pre);
            buf
        });
        Pending {
            buf,
            len: pre.len(),
        }
    }
}

async fn tunnel<C: Peer, B: Peer>(
    ctl: &Control,
    client: &Mutex<C>,
    client_pre: Pending,
    backend: &Mutex<B>,
    backend_pre: Pending,
    policy: &Policy,
    shutdown: &mut watch::Receiver<bool>,
) -> Report {
    let mut upstream = Half::new(
        Direction::ClientToBackend,
        client,
        backend,
        client_pre,
        policy,
    );
    let mut downstream = Half::new(
        Direction::BackendToClient,
        backend,
        client,
        backend_pre,
        policy,
    );

    let relay = async {
        let up = upstream.run(ctl, policy);
        let down = downstream.run(ctl, policy);
        tokio::pin!(up, down);
        let mut finished = [false; 2];
        std::future::poll_fn(|cx| {
            if !finished[0] {
                finished[0] = std::future::Future::poll(up.as_mut(), cx).is_ready();
            }
            if !finished[1] {
                finished[1] = std::future::Future::poll(down.as_mut(), cx).is_ready();
            }
            if finished == [true; 2] || ctl.complete.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    };
    let watchdog = async {
        let idle = policy.idle_timeout;
        let winding_down = std::future::poll_fn(|_| {
            if ctl.winding_down() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::pin!(winding_down);
        // One timer for the tunnel's whole life, moved rather than remade: an
        // idle tunnel is mostly this future, and it is kept small.
        let timer = sleep_until(ctl.next_deadline(idle).0);
        tokio::pin!(timer);
        let mut draining = false;
        // A tunnel opened after the drain began (its upgrade was waiting for
        // the backend) has missed the change: it is closed like the rest.
        if *shutdown.borrow_and_update() {
            draining = true;
            ctl.end(Ending::Drain);
            ctl.request_close(Side::Client, 1001);
            ctl.request_close(Side::Backend, 1001);
            // The directions may have been polled already: make them look.
            tokio::task::yield_now().await;
        }
        // When traffic not yet on /metrics must be flushed; no timer is
        // armed for it while the tunnel is idle.
        let mut flush_at: Option<Instant> = None;
        let new_traffic = std::future::poll_fn(|_| {
            if ctl.unflushed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::pin!(new_traffic);
        let linger = loop {
            tokio::select! {
                _ = &mut new_traffic, if flush_at.is_none() => {
                    let at = Instant::now() + FLUSH_EVERY;
                    flush_at = Some(at);
                    if at < timer.deadline() {
                        timer.as_mut().reset(at);
                    }
                }
                _ = &mut timer => {
                    if flush_at.is_some_and(|at| Instant::now() >= at) {
                        ctl.flush();
                        flush_at = None;
                    }
                    let (deadline, stalled) = ctl.next_deadline(idle);
                    if let Some(toward) = stalled {
                        // The direction writing toward `toward` is stuck in
                        // its write; the other tells the sender goodbye.
                        ctl.end(Ending::WriteStalled { toward });
                        ctl.request_close(other(toward), 1001);
                        break LINGER * 2;
                    }
                    if Instant::now() >= deadline {
                        ctl.end(Ending::Idle);
                        ctl.request_close(Side::Client, 1001);
                        ctl.request_close(Side::Backend, 1001);
                        // An idle peer may sit mid-frame forever; do not wait for it.
                        break LINGER * 2;
                    }
                    timer.as_mut().reset(flush_at.map_or(deadline, |at| at.min(deadline)));
                }
                changed = shutdown.changed(), if !draining => {
                    if changed.is_err() || *shutdown.borrow() {
                        draining = true;
                        ctl.end(Ending::Drain);
                        ctl.request_close(Side::Client, 1001);
                        ctl.request_close(Side::Backend, 1001);
                        tokio::task::yield_now().await;
                        // From here the daemon's shutdown_grace bounds the wait.
                    }
                }
                _ = &mut winding_down => break LINGER,
            }
        };
        // Let both directions see the close requests, then bound the wait.
        tokio::task::yield_now().await;
        timer.as_mut().reset(Instant::now() + linger);
        timer.await;
    };
    tokio::select! {
        _ = relay => {}
        _ = watchdog => {}
    }
    ctl.flush();
    let ending = ctl.ending.get().copied().unwrap_or(Ending::Closed);
    Report {
        ending,
        bytes: [
            ctl.bytes[0].load(Ordering::Relaxed),
            ctl.bytes[1].load(Ordering::Relaxed),
        ],
        frames: [
            ctl.frames[0].load(Ordering::Relaxed),
            ctl.frames[1].load(Ordering::Relaxed),
        ],
        sent_close: [
            ctl.sent_close[0].load(Ordering::Relaxed),
            ctl.sent_close[1].load(Ordering::Relaxed),
        ],
        duration: ctl.start.elapsed(),
    }
}

/// What scanning a buffer asks the loop to do next.
enum Scan {
    /// Everything checkable was checked; read more.
    Read,
    /// The message rate says wait this long before the next data frame.
    Throttle(Duration),
    /// A close was requested for our receiver and we are at a frame boundary.
    InjectClose(u16),
    Violation(Violation),
}

/// What waiting on the sender produced.
enum Input {
    /// `n` new bytes after the held ones.
    Data(usize),
    /// EOF or a read error.
    Ended,
    /// A Close was requested toward our receiver while at a frame boundary.
    CloseRequested(u16),
}

/// Locks a stream for one poll. Poisoning cannot leave a stream half-updated
/// in a way that matters here (a panic ends the tunnel anyway).
fn lock<S>(m: &Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One direction of a tunnel: reads from `src`, writes to `dst`.
struct Half<'a, R, W> {
    dir: Direction,
    src: &'a Mutex<R>,
    dst: &'a Mutex<W>,
    /// The read buffer, taken from the pool only while the sender is
    /// talking; an idle direction holds none.
    buf: Option<Box<[u8]>>,
    /// `buf[..held]` are bytes read but not yet processed: a partial header
    /// or a partial Close frame. `held <= buf.len()`; `held > 0` implies `buf`.
    held: usize,
    /// Payload bytes of the current frame not yet seen.
    remaining: u64,
    /// A fragmented data message is open (its last frame had FIN = 0).
    in_message: bool,
    /// Payload bytes of the open message so far.
    message_len: u64,
    /// Sluice has forwarded or sent a Close to `dst`.
    closed_dst: bool,
    bucket: Option<(MessageBucket, OnMessageRate)>,
    /// The sender can signal readiness, so an idle direction gives its
    /// buffer back (fixed for the stream's life; asked once).
    waits_without_buffer: bool,
    /// The last read filled the buffer: read with a big one next.
    busy: bool,
    /// The last read returned data: the sender is talking, so a stream
    /// without readiness reads with a full buffer next.
    talking: bool,
    phase: Phase,
}

/// Where a direction is in its relay loop. The loop is a hand-written poll
/// function over this, not an `async fn`: an idle tunnel's memory is mostly
/// its future, and this keeps each direction's part to a few words.
enum Phase {
    /// Waiting for the sender; `buf[..held]` holds an unprocessed tail.
    Read,
    /// Writing the checked bytes `buf[from..to]` to the receiver; `buf[to..len]`
    /// is not processed yet, and `then` says what comes after the write.
    Write {
        from: usize,
        to: usize,
        len: usize,
        then: Scan,
    },
    /// The message rate said wait; then scan `buf[start..len]` again.
    Throttle {
        sleep: Pin<Box<tokio::time::Sleep>>,
        start: usize,
        len: usize,
    },
}

/// Why a direction's relay loop stopped.
enum End {
    /// The sender closed or reset its stream.
    SourceEnded,
    /// A close toward our receiver was requested and is due now.
    Close(u16),
    Violation(Violation),
    /// Our receiver stopped taking bytes; already recorded.
    WriteFailed,
}

impl<'a, R: Peer, W: Peer> Half<'a, R, W> {
    fn new(
        dir: Direction,
        src: &'a Mutex<R>,
        dst: &'a Mutex<W>,
        pre: Pending,
        policy: &Policy,
    ) -> Self {
        let rate = policy.message_rate;
        let bucket = match dir {
            Direction::ClientToBackend => {
                Some((MessageBucket::new(rate.per_second, rate.burst), rate.over))
            }
            Direction::BackendToClient => None,
        };
        Half {
            dir,
            src,
            dst,
            held: pre.len,
            buf: pre.buf,
            remaining: 0,
            in_message: false,
            message_len: 0,
            closed_dst: false,
            bucket,
            waits_without_buffer: lock(src).has_readiness(),
            busy: false,
            talking: false,
            phase: Phase::Read,
        }
    }

    async fn run(&mut self, ctl: &Control, policy: &Policy) {
        // Bytes hyper handed over are processed before the first read.
        let held = std::mem::take(&mut self.held);
        if held > 0 {
            self.phase = self.scanned(0, held, ctl, policy);
        }
        let end = std::future::poll_fn(|cx| self.poll_relay(cx, ctl, policy)).await;
        // The endings are rare and their futures large: boxed, they cost a
        // running tunnel nothing.
        match end {
            End::SourceEnded => Box::pin(self.source_ended(ctl, policy)).await,
            End::Close(code) => {
                Box::pin(self.close_and_linger(code, close_reason(code), ctl, policy)).await
            }
            End::Violation(v) => {
                ctl.end(Ending::Violation {
                    by: self.dir.sender(),
                    violation: v,
                });
                ctl.request_close(self.dir.sender(), v.close_code());
                tokio::task::yield_now().await;
                Box::pin(self.close_and_linger(1001, "going away", ctl, policy)).await
            }
            End::WriteFailed => {}
        }
        self.phase = Phase::Read;
        if let Some(buf) = self.buf.take() {
            pool::give(buf);
        }
        ctl.done[self.dir.index()].store(true, Ordering::Release);
        // Make sure the watchdog and the other direction look at the flags.
        tokio::task::yield_now().await;
    }

    /// Read, check, forward, until the direction ends.
    fn poll_relay(
        &mut self,
        cx: &mut std::task::Context<'_>,
        ctl: &Control,
        policy: &Policy,
    ) -> Poll<End> {
        loop {
            match &mut self.phase {
                Phase::Read => match std::task::ready!(self.poll_input(cx, ctl)) {
                    Input::Data(n) => {
                        ctl.touch();
                        ctl.bytes[self.dir.index()].fetch_add(n as u64, Ordering::Relaxed);
                        let len = std::mem::take(&mut self.held) + n;
                        self.phase = self.scanned(0, len, ctl, policy);
                    }
                    Input::Ended => return Poll::Ready(End::SourceEnded),
                    Input::CloseRequested(code) => return Poll::Ready(End::Close(code)),
                },
                Phase::Write { from, to, .. } => {
                    if *from < *to {
                        let buf = self.buf.as_ref().expect("writes come from a held buffer");
                        let blocked = &ctl.write_blocked[self.dir.receiver() as usize];
                        match poll_write_all(self.dst, buf, from, *to, cx) {
                            Poll::Pending => {
                                // The watchdog ends a write stalled for idle_timeout.
                                if blocked.load(Ordering::Relaxed) == 0 {
                                    blocked.store(ctl.now_ms() + 1, Ordering::Relaxed);
                                }
                                return Poll::Pending;
                            }
                            Poll::Ready(result) => {
                                blocked.store(0, Ordering::Relaxed);
                                if result.is_err() {
                                    ctl.end(Ending::Vanished(self.dir.receiver()));
                                    ctl.request_close(self.dir.sender(), 1001);
                                    return Poll::Ready(End::WriteFailed);
                                }
                                if self.closed_dst {
                                    ctl.close_delivered[self.dir.index()]
                                        .store(true, Ordering::Release);
                                }
                            }
                        }
                    }
                    let Phase::Write { to, len, then, .. } =
                        std::mem::replace(&mut self.phase, Phase::Read)
                    else {
                        unreachable!("matched above")
                    };
                    match then {
                        Scan::Read => {
                            // Keep the unprocessed tail (an incomplete header
                            // or Close frame) for the next read to complete.
                            if to < len {
                                let buf = self.buf.as_mut().expect("held buffer");
                                buf.copy_within(to..len, 0);
                                self.held = len - to;
                            }
                        }
                        Scan::Throttle(wait) => {
                            // Stop reading so TCP pushes back on the client,
                            // then look at the same frame again.
                            self.phase = Phase::Throttle {
                                sleep: Box::pin(sleep(wait)),
                                start: to,
                                len,
                            };
                        }
                        Scan::InjectClose(code) => return Poll::Ready(End::Close(code)),
                        Scan::Violation(v) => return Poll::Ready(End::Violation(v)),
                    }
                }
                Phase::Throttle { sleep, start, len } => {
                    std::task::ready!(std::future::Future::poll(sleep.as_mut(), cx));
                    let (start, len) = (*start, *len);
                    self.phase = self.scanned(start, len, ctl, policy);
                }
            }
        }
    }

    /// Scans `buf[start..len]`; the checked part is written next.
    fn scanned(&mut self, start: usize, len: usize, ctl: &Control, policy: &Policy) -> Phase {
        let (pos, then) = self.scan(start, len, ctl, policy);
        Phase::Write {
            from: start,
            to: pos,
            len,
            then,
        }
    }

    /// Waits for the sender to say something, holding no buffer while it is
    /// silent (when the stream can signal readiness), or for a close request
    /// toward our receiver that can be honoured now (at a frame boundary).
    fn poll_input(&mut self, cx: &mut std::task::Context<'_>, ctl: &Control) -> Poll<Input> {
        let receiver = self.dir.receiver() as usize;
        loop {
            let code = ctl.close_request[receiver].load(Ordering::Acquire);
            if code != 0 && self.remaining == 0 {
                return Poll::Ready(Input::CloseRequested(code));
            }
            let small = self.buf.as_ref().is_none_or(|b| b.len() < BUF_LEN);
            if small && (self.waits_without_buffer || self.talking) {
                if self.waits_without_buffer {
                    // An error shows up in the read that follows.
                    let _ = std::task::ready!(lock(self.src).poll_read_ready(cx));
                }
                self.resize(BUF_LEN);
            }
            let held = self.held;
            if self.busy && held == 0 && self.buf.as_ref().is_some_and(|b| b.len() < BIG_BUF_LEN) {
                if let Some(small) = self.buf.replace(pool::take(BIG_BUF_LEN)) {
                    pool::give(small);
                }
            }
            let buf = self
                .buf
                .get_or_insert_with(|| vec![0; SMALL_BUF_LEN].into_boxed_slice());
            let room = buf.len() - held;
            let mut rb = ReadBuf::new(&mut buf[held..]);
            match Pin::new(&mut *lock(self.src)).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Input::Ended),
                Poll::Ready(Ok(())) => {
                    self.busy = rb.filled().len() == room;
                    self.talking = true;
                    return Poll::Ready(Input::Data(rb.filled().len()));
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Input::Ended),
                // The sender went quiet: wait holding at most a small buffer
                // for a partial header (none at all when the stream signals
                // readiness and nothing is held).
                Poll::Pending => {
                    self.busy = false;
                    self.talking = false;
                    if self.waits_without_buffer && held == 0 {
                        if let Some(buf) = self.buf.take() {
                            pool::give(buf);
                        }
                        // Spurious readiness: wait again, without a buffer.
                        continue;
                    }
                    if self.buf.as_ref().is_some_and(|b| b.len() > SMALL_BUF_LEN) {
                        self.resize(SMALL_BUF_LEN);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Moves the held bytes into a buffer of `len` (`SMALL_BUF_LEN`,
    /// `BUF_LEN`), giving the old one back.
    fn resize(&mut self, len: usize) {
        let mut new = if len == SMALL_BUF_LEN {
            vec![0; SMALL_BUF_LEN].into_boxed_slice()
        } else {
            pool::take(len)
        };
        if let Some(old) = self.buf.take() {
            new[..self.held].copy_from_slice(&old[..self.held]);
            pool::give(old);
        }
        self.buf = Some(new);
    }

    /// Scans `buf[start..len]` and returns how far the bytes are checked and
    /// may be forwarded (`start..pos`), and what to do next. Whole checked
    /// frames and payload pieces pass; at `pos` there is an incomplete header
    /// or Close frame, a frame that broke a rule, or a frame that must wait
    /// for the message rate.
    fn scan(&mut self, start: usize, len: usize, ctl: &Control, policy: &Policy) -> (usize, Scan) {
        let buf = self.buf.take().expect("scan runs on a held buffer");
        let result = self.scan_in(&buf[..len], start, ctl, policy);
        self.buf = Some(buf);
        result
    }

    fn scan_in(
        &mut self,
        buf: &[u8],
        start: usize,
        ctl: &Control,
        policy: &Policy,
    ) -> (usize, Scan) {
        let receiver = self.dir.receiver() as usize;
        let len = buf.len();
        let mut pos = start;
        loop {
            if self.remaining > 0 {
                let take = self.remaining.min((len - pos) as u64);
                pos += take as usize;
                self.remaining -= take;
                if self.remaining > 0 {
                    return (pos, Scan::Read);
                }
            }
            // At a frame boundary of the stream toward `dst`.
            let code = ctl.close_request[receiver].load(Ordering::Acquire);
            if code != 0 {
                return (pos, Scan::InjectClose(code));
            }
            if pos == len {
                return (pos, Scan::Read);
            }
            let header = match frame::parse_header(&buf[pos..len]) {
                Err(e) => return (pos, Scan::Violation(e.into())),
                Ok(None) => return (pos, Scan::Read),
                Ok(Some(h)) => h,
            };
            if let Err(v) = self.check(&header, policy) {
                return (pos, Scan::Violation(v));
            }
            let close = header.opcode == frame::opcode::CLOSE;
            if close {
                let total = usize::from(header.header_len) + header.payload_len as usize;
                if len - pos < total {
                    return (pos, Scan::Read);
                }
                if let Err(e) = check_close(&header, &buf[pos..pos + total]) {
                    return (pos, Scan::Violation(Violation::BadClose(e)));
                }
            }
            // Every client frame costs a token, whatever its opcode: empty
            // continuations or pings must not dodge the rate (contract).
            if let Some((bucket, mode)) = &mut self.bucket {
                if let Err(wait) = bucket.take(std::time::Instant::now()) {
                    let step = match mode {
                        OnMessageRate::Close => Scan::Violation(Violation::MessageRateExceeded),
                        OnMessageRate::Throttle => Scan::Throttle(wait),
                    };
                    return (pos, step);
                }
            }
            if close {
                ctl.saw_close[self.dir.index()].store(true, Ordering::Release);
                self.closed_dst = true;
            }
            self.account(&header);
            ctl.frames[self.dir.index()].fetch_add(1, Ordering::Relaxed);
            pos += usize::from(header.header_len);
            self.remaining = header.payload_len;
        }
    }

    /// RFC 6455 §5 rules for one header, checked before any byte of it moves.
    fn check(&self, h: &Header, policy: &Policy) -> Result<(), Violation> {
        // §5.1: a client MUST mask every frame; a server MUST NOT mask any.
        match (self.dir, h.mask.is_some()) {
            (Direction::ClientToBackend, false) => return Err(Violation::UnmaskedClientFrame),
            (Direction::BackendToClient, true) => return Err(Violation::MaskedBackendFrame),
            _ => {}
        }
        // §5.2: reserved opcodes MUST fail the connection.
        if h.is_reserved_opcode() {
            return Err(Violation::ReservedOpcode(h.opcode));
        }
        if h.is_control() {
            // §5.5: control frames MUST have a payload <= 125 and MUST NOT be fragmented.
            if !h.fin {
                return Err(Violation::FragmentedControlFrame);
            }
            if h.payload_len > 125 {
                return Err(Violation::ControlFrameTooLong { len: h.payload_len });
            }
            // RFC 7692 §6: RSV1 is only meaningful on the first frame of a data message.
            if h.rsv != 0 {
                return Err(Violation::ReservedBits(h.rsv));
            }
            return Ok(());
        }
        let continuation = h.opcode == frame::opcode::CONTINUATION;
        let allowed = if continuation {
            policy.allowed_rsv_continuation
        } else {
            policy.allowed_rsv
        };
        // §5.2: RSV bits MUST be 0 unless an extension defines them.
        if h.rsv & !allowed != 0 {
            return Err(Violation::ReservedBits(h.rsv));
        }
        // §5.4: fragments of one message are a data frame with FIN = 0 then
        // continuations; messages may not interleave.
        match (continuation, self.in_message) {
            (true, false) => return Err(Violation::UnexpectedContinuation),
            (false, true) => return Err(Violation::UnfinishedMessage),
            _ => {}
        }
        if h.payload_len > policy.max_frame_bytes {
            return Err(Violation::FrameTooLarge {
                len: h.payload_len,
                max: policy.max_frame_bytes,
            });
        }
        let message = if continuation { self.message_len } else { 0 }.saturating_add(h.payload_len);
        if message > policy.max_message_bytes {
            return Err(Violation::MessageTooLarge {
                len: message,
                max: policy.max_message_bytes,
            });
        }
        Ok(())
    }

    fn account(&mut self, h: &Header) {
        if h.is_control() {
            return;
        }
        if h.opcode == frame::opcode::CONTINUATION {
            self.message_len += h.payload_len;
        } else {
            self.message_len = h.payload_len;
        }
        self.in_message = !h.fin;
    }

    /// The sender closed or reset its stream.
    async fn source_ended(&mut self, ctl: &Control, policy: &Policy) {
        if ctl.saw_close[self.dir.index()].load(Ordering::Acquire) {
            ctl.end(Ending::Closed);
            let reverse = 1 - self.dir.index();
            if ctl.close_delivered[reverse].load(Ordering::Acquire) {
                // Close frames have gone both ways, so neither peer may send
                // anything more (RFC 6455 §5.5.1): once our receiver has the
                // FIN (and TLS close_notify), the tunnel is over. Waiting for
                // the other peer's FIN as well would only cost a read and a
                // shutdown per tunnel; dropping its stream closes it.
                let _ = timeout(LINGER, shutdown(self.dst)).await;
                ctl.complete.store(true, Ordering::Release);
                return;
            }
        } else {
            ctl.end(Ending::Vanished(self.dir.sender()));
            if self.remaining == 0 && !self.closed_dst {
                // The receiver would otherwise wait for a Close that never comes.
                self.send_close(1001, "going away", ctl, policy).await;
            }
        }
        // Pass the FIN on; the other direction keeps flowing (half-close).
        let _ = timeout(LINGER, shutdown(self.dst)).await;
    }

    /// Sends our receiver a Close (unless one already went), ends the stream
    /// toward it, then discards what the sender still says for a while.
    async fn close_and_linger(&mut self, code: u16, reason: &str, ctl: &Control, policy: &Policy) {
        if !self.closed_dst {
            self.send_close(code, reason, ctl, policy).await;
        }
        let _ = timeout(LINGER, shutdown(self.dst)).await;
        let buf = self.buf.get_or_insert_with(|| pool::take(BUF_LEN));
        let deadline = Instant::now() + LINGER;
        let src = self.src;
        let drain = async {
            loop {
                let n = std::future::poll_fn(|cx| {
                    let mut rb = ReadBuf::new(&mut buf[..]);
                    Pin::new(&mut *lock(src))
                        .poll_read(cx, &mut rb)
                        .map_ok(|()| rb.filled().len())
                })
                .await;
                if !matches!(n, Ok(n) if n > 0) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, drain).await;
    }

    async fn send_close(&mut self, code: u16, reason: &str, ctl: &Control, policy: &Policy) {
        let mut out = [0u8; frame::CLOSE_FRAME_MAX];
        let mask = match self.dir.receiver() {
            Side::Backend => Some(frame::random_bytes()),
            Side::Client => None,
        };
        let n = frame::encode_close(code, reason, mask, &mut out);
        self.closed_dst = true;
        if let Ok(Ok(())) = timeout(
            policy.idle_timeout.min(LINGER),
            write_all(self.dst, &out[..n]),
        )
        .await
        {
            ctl.sent_close[self.dir.receiver() as usize].store(code, Ordering::Relaxed);
        }
    }
}

/// `write_all` + `flush` on a shared stream, locking it for each poll only.
async fn write_all<W: AsyncWrite + Unpin>(dst: &Mutex<W>, bytes: &[u8]) -> io::Result<()> {
    let mut from = 0;
    std::future::poll_fn(|cx| poll_write_all(dst, bytes, &mut from, bytes.len(), cx)).await
}

/// Writes `buf[*from..to]` and flushes, advancing `from` as bytes go.
fn poll_write_all<W: AsyncWrite + Unpin>(
    dst: &Mutex<W>,
    buf: &[u8],
    from: &mut usize,
    to: usize,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<()>> {
    let mut dst = lock(dst);
    while *from < to {
        match std::task::ready!(Pin::new(&mut *dst).poll_write(cx, &buf[*from..to])) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => *from += n,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Pin::new(&mut *dst).poll_flush(cx)
}

async fn shutdown<W: AsyncWrite + Unpin>(dst: &Mutex<W>) -> io::Result<()> {
    std::future::poll_fn(|cx| Pin::new(&mut *lock(dst)).poll_shutdown(cx)).await
}

/// Read buffers shared by all tunnels. A direction takes one when its sender
/// has bytes ready and gives it back when the sender goes quiet, so an idle
/// tunnel holds no buffer at all; the pool keeps a bounded number of spares
/// so a busy proxy does not go back to the allocator for every read.
mod pool {
    use std::sync::Mutex;

    use super::{BIG_BUF_LEN, BUF_LEN};

    /// Spare buffers kept: 256 × 16 KiB + 32 × 64 KiB = 6 MiB at most.
    const MAX_SPARE: usize = 256;
    const MAX_SPARE_BIG: usize = 32;
    type Spares = Mutex<Vec<Box<[u8]>>>;
    static SPARE: Spares = Mutex::new(Vec::new());
    static SPARE_BIG: Spares = Mutex::new(Vec::new());

    fn class(len: usize) -> Option<(&'static Spares, usize)> {
        match len {
            BUF_LEN => Some((&SPARE, MAX_SPARE)),
            BIG_BUF_LEN => Some((&SPARE_BIG, MAX_SPARE_BIG)),
            _ => None,
        }
    }

    /// A buffer of `len` bytes, `BUF_LEN` or `BIG_BUF_LEN`.
    pub fn take(len: usize) -> Box<[u8]> {
        let spare =
            class(len).and_then(|(spare, _)| spare.lock().unwrap_or_else(|e| e.into_inner()).pop());
        spare.unwrap_or_else(|| vec![0u8; len].into_boxed_slice())
    }

    pub fn give(buf: Box<[u8]>) {
        let Some((spare, max)) = class(buf.len()) else {
            return;
        };
        let mut spare = spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < max {
            spare.push(buf);
        }
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        1009 => "frame too large",
        1008 => "policy violation",
        1002 => "protocol error",
        _ => "going away",
    }
}

/// Checks a whole Close frame (header included) from the wire.
fn check_close(h: &Header, wire: &[u8]) -> Result<(), frame::CloseError> {
    let mut payload = [0u8; 125];
    let body = &wire[usize::from(h.header_len)..];
    let payload = &mut payload[..body.len()];
    payload.copy_from_slice(body);
    if let Some(mask) = h.mask {
        frame::apply_mask(payload, mask, 0);
    }
    frame::check_close_payload(payload).map(|_| ())
}
