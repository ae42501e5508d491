//! What the two directions of a tunnel and its watchdog share, and the
//! watchdog itself (idle and stalled-writer timeouts, the drain, the live
//! counters' flush).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::frame;

use super::closing::Closing;
use super::ending::{CloseCode, Ending};
use super::side::{Direction, PerDirection, PerSide, Side};
use super::{Live, Policy, Report};

/// What a direction inserts at a frame boundary of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Close(CloseCode),
    Ping,
}

/// How long sluice keeps reading (and discarding) from a peer after it sent
/// that peer a Close, so the peer's Close reply and in-flight data do not turn
/// the TCP close into a reset that could destroy the Close frame in transit.
pub const LINGER: Duration = Duration::from_secs(2);
/// How often a tunnel with new traffic adds it to the [`Live`] counters.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Bit of a side's request word: a Ping is due toward that side. The rest
/// of the word is the requested Close code (at most 4999).
const PING_DUE: u16 = 0x8000;

/// Why a planned end comes (the top byte of `planned_end`).
const PLAN_LIFETIME: u64 = 1;
const PLAN_DRAIN: u64 = 2;
const PLAN_REMOVED: u64 = 3;
const PLAN_SHIFT: u32 = 56;

/// The payload of sluice's own Pings: one random token per process, so the
/// Pong answering one is recognised (and not forwarded) without any
/// per-tunnel state. A peer that learns it can only hide its own Pongs.
pub fn ping_token() -> [u8; frame::PING_TOKEN_LEN] {
    static TOKEN: OnceLock<[u8; frame::PING_TOKEN_LEN]> = OnceLock::new();
    *TOKEN.get_or_init(frame::random_bytes)
}

/// State the two directions and the watchdog share. Both directions and the
/// watchdog run in one task, and every poll of that task polls all three, so
/// a flag set by one is seen by the others on the next poll; whoever sets a
/// flag yields once to guarantee that poll happens.
#[derive(Debug)]
pub struct Control {
    pub start: Instant,
    /// Milliseconds since `start` when bytes were last forwarded either way
    /// (`idle_timeout`): sluice's own Ping and the Pong answering it are
    /// not tunnel traffic and do not keep a tunnel from being idle.
    last_activity: AtomicU64,
    /// Per side: milliseconds since `start` when bytes last arrived from it.
    /// Any byte shows the side is alive (its Pong to sluice's Ping too).
    heard: PerSide<AtomicU64>,
    /// Per side: 1 + milliseconds since `start` when sluice's Ping to it was
    /// written; 0 = no Ping waiting for an answer.
    ping_sent: PerSide<AtomicU64>,
    /// Per receiver: 1 + milliseconds since `start` when a write toward it
    /// started waiting for the peer to take bytes; 0 while writes go
    /// through. The watchdog ends a tunnel whose writes stall for
    /// `idle_timeout`, so a write needs no timer of its own.
    pub write_blocked: PerSide<AtomicU64>,
    /// Per side, what the direction writing to it is asked to insert at its
    /// next frame boundary: a Close code (first request wins; 0 = none) and
    /// [`PING_DUE`].
    request: PerSide<AtomicU16>,
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
    /// When the tunnel ends by plan, and why: the cause (`PLAN_*`) in the
    /// top byte, milliseconds after `start` below; 0 = no plan. Set at open
    /// by `max_lifetime` (jittered); a drain or a backend removal may bring
    /// it forward. Written by the watchdog only.
    planned_end: AtomicU64,
}

/// What a look at the pings found.
struct PingLook {
    /// A side that did not answer in time.
    dead: Option<Side>,
    /// Pings were asked for: the directions must be polled to send them.
    asked: bool,
    /// When to look again (milliseconds since `start`).
    next: Option<u64>,
}

impl PingLook {
    fn next_at(&mut self, at: u64) {
        self.next = Some(self.next.map_or(at, |n| n.min(at)));
    }
}

impl Control {
    pub fn new(live: Live, max_lifetime: Duration) -> Control {
        let planned_end = if max_lifetime.is_zero() {
            0
        } else {
            let ms = (jittered(max_lifetime).as_millis() as u64).clamp(1, (1 << PLAN_SHIFT) - 1);
            (PLAN_LIFETIME << PLAN_SHIFT) | ms
        };
        Control {
            planned_end: AtomicU64::new(planned_end),
            start: Instant::now(),
            last_activity: AtomicU64::new(0),
            heard: PerSide::default(),
            ping_sent: PerSide::default(),
            write_blocked: PerSide::default(),
            request: PerSide::default(),
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

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Bytes arrived from `side`.
    pub fn heard_from(&self, side: Side) {
        self.heard[side].store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes that arrived from the sender of `dir` were forwarded: tunnel
    /// traffic, for `idle_timeout` (as of their arrival; no clock read here).
    pub fn forwarded(&self, dir: Direction) {
        let at = self.heard[dir.sender()].load(Ordering::Relaxed);
        self.last_activity.store(at, Ordering::Relaxed);
    }

    /// When the planned end comes and why, if one is planned.
    fn planned(&self) -> Option<(Instant, u64)> {
        let p = self.planned_end.load(Ordering::Relaxed);
        (p != 0).then(|| (self.at(p & ((1 << PLAN_SHIFT) - 1)), p >> PLAN_SHIFT))
    }

    /// Plans the end for `at` (for `cause`) unless an earlier one is planned.
    fn plan_end(&self, at: Instant, cause: u64) {
        let ms = at.saturating_duration_since(self.start).as_millis() as u64;
        let ms = ms.clamp(1, (1 << PLAN_SHIFT) - 1);
        if self.planned().is_none_or(|(planned, _)| at < planned) {
            self.planned_end
                .store((cause << PLAN_SHIFT) | ms, Ordering::Relaxed);
        }
    }

    /// When the watchdog must look next: the idle deadline, or earlier if a
    /// write is blocked. Also says whether a write has been stalled too long.
    fn next_deadline(&self, idle: Duration) -> (Instant, Option<Side>) {
        let last = self.last_activity.load(Ordering::Relaxed);
        let mut deadline = self.at(last) + idle;
        for side in Side::BOTH {
            let since = self.write_blocked[side].load(Ordering::Relaxed);
            if since == 0 {
                continue;
            }
            let stalled_until = self.at(since - 1) + idle;
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
            let _ = self.request[side].fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (r & !PING_DUE == 0).then_some(r | code.get())
            });
        }
    }

    /// What the direction writing to `side` must insert at its next frame
    /// boundary: a requested Close first, else a due Ping. One load.
    /// `closed`: a Close already went to `side`, after which nothing more
    /// goes there, not even a Ping (a due one is dropped).
    pub fn insert_due(&self, side: Side, closed: bool) -> Option<Insert> {
        let r = self.request[side].load(Ordering::Acquire);
        match CloseCode::from_u16(r & !PING_DUE) {
            Some(code) => Some(Insert::Close(code)),
            None if r & PING_DUE != 0 && closed => {
                self.ping_done(side, false);
                None
            }
            None if r & PING_DUE != 0 => Some(Insert::Ping),
            None => None,
        }
    }

    /// The direction writing to `side` wrote sluice's Ping to it (or, with
    /// `sent` false, gave up on it: a Close went that way).
    pub fn ping_done(&self, side: Side, sent: bool) {
        self.request[side].fetch_and(!PING_DUE, Ordering::AcqRel);
        if sent {
            self.ping_sent[side].store(self.now_ms() + 1, Ordering::Relaxed);
            self.live.pings[side as usize].inc();
        }
    }

    /// Every Ping sent has been answered (bytes came back after it), and no
    /// Ping waits to be sent.
    fn pings_answered(&self) -> bool {
        Side::BOTH.into_iter().all(|side| {
            let sent = self.ping_sent[side].load(Ordering::Relaxed);
            let due = self.request[side].load(Ordering::Relaxed) & PING_DUE != 0;
            !due && (sent == 0 || self.heard[side].load(Ordering::Relaxed) + 1 >= sent)
        })
    }

    /// The keep-alive at `now` (ms): a side silent for about `interval`
    /// (within 1/16 of it, so both sides of an idle tunnel are asked in one
    /// wake-up) gets a Ping; a side that has not answered its Ping within
    /// `timeout`, or whose Ping could not be written because it stopped
    /// taking bytes, is dead.
    fn look_at_pings(&self, policy: &Policy, now: u64) -> PingLook {
        let mut look = PingLook {
            dead: None,
            asked: false,
            next: None,
        };
        let interval = policy.ping_interval.as_millis() as u64;
        let timeout = policy.ping_timeout.as_millis() as u64;
        // No pings on a tunnel that is ending: its Close frames are on their way.
        let closing = self.ending.get().is_some()
            || Direction::BOTH
                .into_iter()
                .any(|d| self.saw_close[d].load(Ordering::Relaxed));
        if interval == 0 || closing {
            return look;
        }
        for side in Side::BOTH {
            let heard = self.heard[side].load(Ordering::Relaxed);
            let sent = self.ping_sent[side].load(Ordering::Relaxed);
            if sent != 0 {
                let at = sent - 1;
                if heard < at {
                    if now >= at + timeout {
                        look.dead = Some(side);
                        return look;
                    }
                    look.next_at(at + timeout);
                    continue;
                }
                // Answered.
                self.ping_sent[side].store(0, Ordering::Relaxed);
            }
            if self.request[side].load(Ordering::Relaxed) & PING_DUE != 0 {
                // Asked for but not written: the direction toward `side` is
                // inside a frame, or `side` takes no bytes at all.
                let blocked = self.write_blocked[side].load(Ordering::Relaxed) != 0;
                if blocked && now >= heard + interval + timeout {
                    look.dead = Some(side);
                    return look;
                }
                look.next_at(now + timeout);
                continue;
            }
            let due = heard + interval;
            if due <= now + interval / 16 {
                self.request[side].fetch_or(PING_DUE, Ordering::AcqRel);
                look.asked = true;
                look.next_at(now + timeout);
            } else {
                look.next_at(due);
            }
        }
        look
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

    /// Takes this tunnel's moments in the windows `closing` asks for (each
    /// once: `taken` remembers which) and plans the end for the earliest.
    fn take_slots(&self, closing: &Closing, taken: &mut u8) {
        if let (Some(drain), 0) = (&closing.drain, *taken & 1) {
            *taken |= 1;
            self.plan_end(drain.slot(), PLAN_DRAIN);
        }
        if let (Some(removed), 0) = (&closing.removed, *taken & 2) {
            *taken |= 2;
            self.plan_end(removed.slot(), PLAN_REMOVED);
        }
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

/// The watchdog: ends the tunnel on idleness, a stalled writer, a dead
/// peer, its planned end (lifetime, drain, backend removal); asks for
/// keep-alive Pings; flushes the live counters a second after new traffic;
/// and returns once the tunnel has had its chance to close (the caller then
/// stops waiting for the directions).
pub async fn watch(ctl: &Control, policy: &Policy, closing: &mut watch::Receiver<Closing>) {
    let idle = policy.idle_timeout;
    let winding_down = std::future::poll_fn(|_| {
        if ctl.winding_down() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    tokio::pin!(winding_down);
    // Which of the drain's and the removal's moments this tunnel has taken
    // (bits 1 and 2; 3 = both, nothing more to wait for).
    let mut taken = 0u8;
    // A tunnel opened after the drain began (its upgrade was waiting for
    // the backend) or after its backend was removed gets a moment like the
    // rest: past already once the window is over.
    ctl.take_slots(&closing.borrow_and_update(), &mut taken);
    // When traffic not yet on /metrics must be flushed; no timer is armed
    // for it while the tunnel is idle.
    let mut flush_at: Option<Instant> = None;
    // Pings were sent and their answers are awaited: once they are in, the
    // timer moves to the next Ping without waking the task.
    let mut awaiting = false;
    let next_look = |flush_at: Option<Instant>, pings: Option<u64>| {
        let deadline = ctl.next_deadline(idle).0;
        [
            Some(deadline),
            flush_at,
            ctl.planned().map(|(at, _)| at),
            pings.map(|ms| ctl.at(ms)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(deadline)
    };
    // One timer for the tunnel's whole life, moved rather than remade: an
    // idle tunnel is mostly this future, and it is kept small.
    let first = next_look(None, ctl.look_at_pings(policy, 0).next);
    let timer = sleep_until(first);
    tokio::pin!(timer);
    let new_traffic = std::future::poll_fn(|_| {
        if ctl.unflushed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    tokio::pin!(new_traffic);
    let answered = std::future::poll_fn(|_| {
        if ctl.pings_answered() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    tokio::pin!(answered);
    let linger = loop {
        tokio::select! {
            _ = &mut new_traffic, if flush_at.is_none() => {
                let at = Instant::now() + FLUSH_EVERY;
                flush_at = Some(at);
                if at < timer.deadline() {
                    timer.as_mut().reset(at);
                }
            }
            _ = &mut answered, if awaiting => {
                awaiting = false;
                let pings = ctl.look_at_pings(policy, ctl.now_ms());
                timer.as_mut().reset(next_look(flush_at, pings.next));
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
                if let Some((at, cause)) = ctl.planned() {
                    if Instant::now() >= at {
                        ctl.planned_end.store(0, Ordering::Relaxed);
                        match cause {
                            PLAN_DRAIN => {
                                ctl.end_and_request(Ending::Drain);
                                // From here the daemon's shutdown_grace
                                // bounds the wait (a peer mid-frame gets
                                // its Close when the frame is over).
                                tokio::task::yield_now().await;
                            }
                            PLAN_REMOVED => {
                                ctl.end_and_request(Ending::BackendRemoved);
                                break LINGER * 2;
                            }
                            _ => {
                                ctl.end_and_request(Ending::Lifetime);
                                break LINGER * 2;
                            }
                        }
                    }
                }
                let pings = ctl.look_at_pings(policy, ctl.now_ms());
                if let Some(side) = pings.dead {
                    // Its socket is closed when the tunnel ends, after the
                    // other side has had its Close 1001.
                    ctl.end_and_request(Ending::Dead(side));
                    break LINGER;
                }
                if pings.asked {
                    awaiting = true;
                    // The directions may have been polled already: make
                    // them look, so the Pings go out now.
                    tokio::task::yield_now().await;
                }
                timer.as_mut().reset(next_look(flush_at, pings.next));
            }
            changed = closing.changed(), if taken != 3 => {
                if changed.is_err() {
                    // The process state is gone: nothing will drain us later.
                    taken = 3;
                    ctl.end_and_request(Ending::Drain);
                    tokio::task::yield_now().await;
                } else {
                    ctl.take_slots(&closing.borrow_and_update(), &mut taken);
                    if let Some((at, _)) = ctl.planned() {
                        if at < timer.deadline() {
                            timer.as_mut().reset(at);
                        }
                    }
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
