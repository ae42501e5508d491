//! What the two directions of a tunnel and its watchdog share, and the
//! watchdog itself (idle and stalled-writer timeouts, the drain, the live
//! counters' flush).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::ending::{CloseCode, Ending};
use super::side::{Direction, PerDirection, PerSide, Side};
use super::{Live, Report};

/// How long sluice keeps reading (and discarding) from a peer after it sent
/// that peer a Close, so the peer's Close reply and in-flight data do not turn
/// the TCP close into a reset that could destroy the Close frame in transit.
pub const LINGER: Duration = Duration::from_secs(2);
/// How often a tunnel with new traffic adds it to the [`Live`] counters.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// State the two directions and the watchdog share. Both directions and the
/// watchdog run in one task, and every poll of that task polls all three, so
/// a flag set by one is seen by the others on the next poll; whoever sets a
/// flag yields once to guarantee that poll happens.
#[derive(Debug)]
pub struct Control {
    pub start: Instant,
    /// Milliseconds since `start` when a byte last arrived from either side.
    last_activity: AtomicU64,
    /// Per receiver: 1 + milliseconds since `start` when a write toward it
    /// started waiting for the peer to take bytes; 0 while writes go
    /// through. The watchdog ends a tunnel whose writes stall for
    /// `idle_timeout`, so a write needs no timer of its own.
    pub write_blocked: PerSide<AtomicU64>,
    /// Close code requested toward a side; 0 = none.
    close_request: PerSide<AtomicU16>,
    /// Close code sluice sent to a side; 0 = none.
    sent_close: PerSide<AtomicU16>,
    /// A Close frame has passed in this direction.
    pub saw_close: PerDirection<AtomicBool>,
    /// ... and has been written whole to its receiver.
    pub close_delivered: PerDirection<AtomicBool>,
    /// The close handshake is over both ways and one side has closed: the
    /// tunnel ends without waiting for the other.
    pub complete: AtomicBool,
    pub done: PerDirection<AtomicBool>,
    pub bytes: PerDirection<AtomicU64>,
    pub frames: PerDirection<AtomicU64>,
    /// What of `bytes` and `frames` has been added to the [`Live`] counters.
    flushed_bytes: PerDirection<AtomicU64>,
    flushed_frames: PerDirection<AtomicU64>,
    live: Live,
    ending: OnceLock<Ending>,
    /// Milliseconds after `start` when `max_lifetime` (jittered) is over;
    /// 0 = never.
    ends_at_ms: u64,
}

impl Control {
    pub fn new(live: Live, max_lifetime: Duration) -> Control {
        let ends_at_ms = if max_lifetime.is_zero() {
            0
        } else {
            (jittered(max_lifetime).as_millis() as u64).max(1)
        };
        Control {
            ends_at_ms,
            start: Instant::now(),
            last_activity: AtomicU64::new(0),
            write_blocked: PerSide::default(),
            close_request: PerSide::default(),
            sent_close: PerSide::default(),
            saw_close: PerDirection::default(),
            close_delivered: PerDirection::default(),
            complete: AtomicBool::new(false),
            done: PerDirection::default(),
            bytes: PerDirection::default(),
            frames: PerDirection::default(),
            flushed_bytes: PerDirection::default(),
            flushed_frames: PerDirection::default(),
            live,
            ending: OnceLock::new(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn touch(&self) {
        self.last_activity.store(self.now_ms(), Ordering::Relaxed);
    }

    /// When `max_lifetime` (jittered) ends, if it does.
    fn lifetime_ends(&self) -> Option<Instant> {
        (self.ends_at_ms != 0).then(|| self.start + Duration::from_millis(self.ends_at_ms))
    }

    /// When the watchdog must look next: the idle deadline, or earlier if a
    /// write is blocked. Also says whether a write has been stalled too long.
    fn next_deadline(&self, idle: Duration) -> (Instant, Option<Side>) {
        let last = self.last_activity.load(Ordering::Relaxed);
        let mut deadline = self.start + Duration::from_millis(last) + idle;
        for side in Side::BOTH {
            let since = self.write_blocked[side].load(Ordering::Relaxed);
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

    /// Asks the direction that writes to `side` to send it Close `code`
    /// (at its next frame boundary). The first request wins.
    pub fn request_close(&self, side: Side, code: Option<CloseCode>) {
        if let Some(code) = code {
            let _ = self.close_request[side].compare_exchange(
                0,
                code.get(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// The Close requested toward `side`, if any.
    pub fn close_requested(&self, side: Side) -> Option<CloseCode> {
        CloseCode::from_u16(self.close_request[side].load(Ordering::Acquire))
    }

    pub fn sent_close(&self, side: Side, code: CloseCode) {
        self.sent_close[side].store(code.get(), Ordering::Relaxed);
    }

    /// Records why the tunnel ends (the first cause wins) and returns the
    /// Close codes this cause sends each side.
    pub fn end(&self, ending: Ending) -> PerSide<Option<CloseCode>> {
        let _ = self.ending.set(ending);
        ending.close_codes()
    }

    /// [`Control::end`], with both closes requested from the directions.
    fn end_and_request(&self, ending: Ending) {
        let codes = self.end(ending);
        for side in Side::BOTH {
            self.request_close(side, codes[side]);
        }
    }

    /// Traffic not yet added to the [`Live`] counters.
    fn unflushed(&self) -> bool {
        Direction::BOTH.into_iter().any(|d| {
            self.bytes[d].load(Ordering::Relaxed) != self.flushed_bytes[d].load(Ordering::Relaxed)
                || self.frames[d].load(Ordering::Relaxed)
                    != self.flushed_frames[d].load(Ordering::Relaxed)
        })
    }

    /// Adds the traffic since the last flush to the [`Live`] counters.
    fn flush(&self) {
        for d in Direction::BOTH {
            let bytes = self.bytes[d].load(Ordering::Relaxed);
            let before = self.flushed_bytes[d].swap(bytes, Ordering::Relaxed);
            self.live.bytes[d as usize].inc_by(bytes - before);
            let frames = self.frames[d].load(Ordering::Relaxed);
            let before = self.flushed_frames[d].swap(frames, Ordering::Relaxed);
            self.live.frames[d as usize].inc_by(frames - before);
        }
    }

    /// The close handshake is complete and one side has finished: the other
    /// has nothing left to say.
    fn winding_down(&self) -> bool {
        let flag = |flags: &PerDirection<AtomicBool>, d| flags[d].load(Ordering::Acquire);
        let [a, b] = Direction::BOTH;
        flag(&self.saw_close, a)
            && flag(&self.saw_close, b)
            && (flag(&self.done, a) || flag(&self.done, b))
    }

    /// What the finished tunnel did; its traffic is flushed first.
    pub fn report(&self) -> Report {
        self.flush();
        let load = |a: &PerDirection<AtomicU64>, d| a[d].load(Ordering::Relaxed);
        let sent = |side| CloseCode::from_u16(self.sent_close[side].load(Ordering::Relaxed));
        use Direction::{BackendToClient as B2C, ClientToBackend as C2B};
        Report {
            ending: self.ending.get().copied().unwrap_or(Ending::Closed),
            bytes: PerDirection::new(load(&self.bytes, C2B), load(&self.bytes, B2C)),
            frames: PerDirection::new(load(&self.frames, C2B), load(&self.frames, B2C)),
            sent_close: PerSide::new(sent(Side::Client), sent(Side::Backend)),
            duration: self.start.elapsed(),
        }
    }
}

/// `lifetime` scaled by a random factor in [0.9, 1.1).
fn jittered(lifetime: Duration) -> Duration {
    let r = u16::from_ne_bytes(crate::frame::random_bytes());
    lifetime.mul_f64(0.9 + 0.2 * f64::from(r) / 65536.0)
}

/// The watchdog: ends the tunnel on idleness, a stalled writer or the
/// drain, flushes the live counters a second after new traffic, and returns
/// once the tunnel has had its chance to close (the caller then stops
/// waiting for the directions).
pub async fn watch(ctl: &Control, idle: Duration, shutdown: &mut watch::Receiver<bool>) {
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
    let first = ctl.next_deadline(idle).0;
    let timer = sleep_until(ctl.lifetime_ends().map_or(first, |at| at.min(first)));
    tokio::pin!(timer);
    let mut draining = false;
    // A tunnel opened after the drain began (its upgrade was waiting for
    // the backend) has missed the change: it is closed like the rest.
    if *shutdown.borrow_and_update() {
        draining = true;
        ctl.end_and_request(Ending::Drain);
        // The directions may have been polled already: make them look.
        tokio::task::yield_now().await;
    }
    // When traffic not yet on /metrics must be flushed; no timer is armed
    // for it while the tunnel is idle.
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
                    // The direction writing toward `toward` is stuck in its
                    // write; the other tells the sender goodbye.
                    ctl.end_and_request(Ending::WriteStalled { toward });
                    break LINGER * 2;
                }
                if Instant::now() >= deadline {
                    ctl.end_and_request(Ending::Idle);
                    // An idle peer may sit mid-frame forever; do not wait for it.
                    break LINGER * 2;
                }
                let lifetime = ctl.lifetime_ends();
                if lifetime.is_some_and(|at| Instant::now() >= at) {
                    ctl.end_and_request(Ending::Lifetime);
                    break LINGER * 2;
                }
                let next = [Some(deadline), flush_at, lifetime].into_iter().flatten().min();
                timer.as_mut().reset(next.unwrap_or(deadline));
            }
            changed = shutdown.changed(), if !draining => {
                if changed.is_err() || *shutdown.borrow() {
                    draining = true;
                    ctl.end_and_request(Ending::Drain);
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
}
