//! One direction of a tunnel: read from the sender, let the [`Scanner`]
//! check the bytes, write what passed to the receiver, and insert sluice's
//! own Close frames at frame boundaries. This file holds the IO, the time
//! and the shared flags; the rules are in `scan`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncWrite, ReadBuf};
use tokio::time::{sleep, timeout, Instant};

use crate::config::OnMessageRate;
use crate::frame::{self, Header};
use crate::policy::rate::MessageBucket;
use crate::stream::Peer;

use super::buffers::{self, Pending, BIG_BUF_LEN, BUF_LEN, SMALL_BUF_LEN};
use super::control::{ping_token, Control, Insert, LINGER};
use super::ending::{CloseCode, Ending};
use super::scan::{Gate, Scanner, Violation, Walk};
use super::side::{Direction, Side};
use super::Policy;

/// What the relay's gate stops a walk for.
enum Stop {
    /// The message rate says wait this long before the next frame.
    Throttle(Duration),
    /// A close was requested for our receiver and we are at a frame boundary.
    InjectClose(CloseCode),
    /// A keep-alive Ping is due toward our receiver and we are at a frame
    /// boundary.
    InjectPing,
    /// The next this many bytes are the Pong answering sluice's own Ping:
    /// dropped, not forwarded.
    Skip(usize),
    Violation(Violation),
}

/// What waiting on the sender produced.
enum Input {
    /// `n` new bytes after the held ones.
    Data(usize),
    /// EOF or a read error.
    Ended,
    /// A Close was requested toward our receiver while at a frame boundary.
    CloseRequested(CloseCode),
    /// A Ping is due toward our receiver, and we are at a frame boundary.
    PingDue,
}

/// Locks a stream for one poll. Poisoning cannot leave a stream half-updated
/// in a way that matters here (a panic ends the tunnel anyway).
fn lock<S>(m: &Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One direction of a tunnel: reads from `src`, writes to `dst`.
pub struct Half<'a, R, W> {
    dir: Direction,
    src: &'a Mutex<R>,
    dst: &'a Mutex<W>,
    /// The read buffer, taken from the spares only while the sender is
    /// talking; an idle direction holds none (or a small one, see
    /// `SMALL_BUF_LEN`).
    buf: Option<Box<[u8]>>,
    /// `buf[..held]` are bytes read but not yet processed: a partial header
    /// or a partial Close frame. `held <= buf.len()`; `held > 0` implies `buf`.
    held: usize,
    scanner: Scanner,
    /// Sluice has forwarded or sent a Close to `dst`.
    closed_dst: bool,
    /// The client's frame rate (client-to-backend only).
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
        then: Option<Stop>,
    },
    /// The message rate said wait; then scan `buf[start..len]` again.
    Throttle {
        sleep: Pin<Box<tokio::time::Sleep>>,
        start: usize,
        len: usize,
    },
    /// Writing sluice's own Ping, `frame[written..n]` still to go; then scan
    /// `buf[start..len]` (nothing when they are equal: back to reading).
    Ping {
        frame: [u8; frame::PING_FRAME_MAX],
        n: u8,
        written: u8,
        start: usize,
        len: usize,
    },
}

/// Why a direction's relay loop stopped.
enum End {
    /// The sender closed or reset its stream.
    SourceEnded,
    /// A close toward our receiver was requested and is due now.
    Close(CloseCode),
    Violation(Violation),
    /// Our receiver stopped taking bytes; already recorded.
    WriteFailed,
}

/// The relay's side of a walk: close requests at boundaries, the message
/// rate and the Close bookkeeping for each frame taken.
struct RelayGate<'g> {
    dir: Direction,
    ctl: &'g Control,
    bucket: &'g mut Option<(MessageBucket, OnMessageRate)>,
    closed_dst: &'g mut bool,
}

impl Gate for RelayGate<'_> {
    type Stop = Stop;

    fn boundary(&mut self) -> Option<Stop> {
        match self.ctl.insert_due(self.dir.receiver(), *self.closed_dst)? {
            Insert::Close(code) => Some(Stop::InjectClose(code)),
            Insert::Ping => Some(Stop::InjectPing),
        }
    }

    fn pong(&mut self, frame: &Header, wire: &[u8]) -> Option<Stop> {
        if frame.payload_len != frame::PING_TOKEN_LEN as u64 {
            return None;
        }
        let mut payload = [0u8; frame::PING_TOKEN_LEN];
        payload.copy_from_slice(&wire[usize::from(frame.header_len)..]);
        if let Some(mask) = frame.mask {
            frame::apply_mask(&mut payload, mask, 0);
        }
        (payload == ping_token()).then_some(Stop::Skip(wire.len()))
    }

    fn take(&mut self, frame: &Header) -> Result<(), Stop> {
        // Every client frame costs a token, whatever its opcode: empty
        // continuations or pings must not dodge the rate (contract).
        if let Some((bucket, over)) = self.bucket {
            if let Err(wait) = bucket.take(std::time::Instant::now()) {
                return Err(match over {
                    OnMessageRate::Close => Stop::Violation(Violation::MessageRateExceeded),
                    OnMessageRate::Throttle => Stop::Throttle(wait),
                });
            }
        }
        if frame.opcode == frame::opcode::CLOSE {
            self.ctl.saw_close[self.dir].store(true, Ordering::Release);
            *self.closed_dst = true;
        }
        self.ctl.frames[self.dir].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl<'a, R: Peer, W: Peer> Half<'a, R, W> {
    pub fn new(
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
            scanner: Scanner::new(dir),
            closed_dst: false,
            bucket,
            waits_without_buffer: lock(src).has_readiness(),
            busy: false,
            talking: false,
            phase: Phase::Read,
        }
    }

    pub async fn run(&mut self, ctl: &Control, policy: &Policy) {
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
            End::Close(code) => Box::pin(self.close_and_linger(Some(code), ctl, policy)).await,
            End::Violation(violation) => {
                let sender = self.dir.sender();
                let codes = ctl.end(Ending::Violation {
                    by: sender,
                    violation,
                });
                // The sender hears of its violation from the other direction.
                ctl.request_close(sender, codes[sender]);
                tokio::task::yield_now().await;
                let to_receiver = codes[self.dir.receiver()];
                Box::pin(self.close_and_linger(to_receiver, ctl, policy)).await
            }
            End::WriteFailed => {}
        }
        self.phase = Phase::Read;
        if let Some(buf) = self.buf.take() {
            buffers::give(buf);
        }
        ctl.done[self.dir].store(true, Ordering::Release);
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
                        ctl.heard_from(self.dir.sender());
                        ctl.bytes[self.dir].fetch_add(n as u64, Ordering::Relaxed);
                        let len = std::mem::take(&mut self.held) + n;
                        self.phase = self.scanned(0, len, ctl, policy);
                    }
                    Input::Ended => return Poll::Ready(End::SourceEnded),
                    Input::CloseRequested(code) => return Poll::Ready(End::Close(code)),
                    Input::PingDue => self.phase = self.ping(0, 0),
                },
                Phase::Write { from, to, .. } => {
                    if *from < *to {
                        let buf = self.buf.as_ref().expect("writes come from a held buffer");
                        let sent = send(self.dst, buf, from, *to, cx, ctl, self.dir);
                        if let Err(end) = std::task::ready!(sent) {
                            return Poll::Ready(end);
                        }
                        ctl.forwarded(self.dir);
                        if self.closed_dst {
                            ctl.close_delivered[self.dir].store(true, Ordering::Release);
                        }
                    }
                    let Phase::Write { to, len, then, .. } =
                        std::mem::replace(&mut self.phase, Phase::Read)
                    else {
                        unreachable!("matched above")
                    };
                    match then {
                        None => {
                            // Keep the unprocessed tail (an incomplete header
                            // or Close frame) for the next read to complete.
                            if to < len {
                                let buf = self.buf.as_mut().expect("held buffer");
                                buf.copy_within(to..len, 0);
                                self.held = len - to;
                            }
                        }
                        Some(Stop::Throttle(wait)) => {
                            // Stop reading so TCP pushes back on the client,
                            // then look at the same frame again.
                            self.phase = Phase::Throttle {
                                sleep: Box::pin(sleep(wait)),
                                start: to,
                                len,
                            };
                        }
                        Some(Stop::InjectClose(code)) => return Poll::Ready(End::Close(code)),
                        Some(Stop::InjectPing) => self.phase = self.ping(to, len),
                        Some(Stop::Skip(n)) => self.phase = self.scanned(to + n, len, ctl, policy),
                        Some(Stop::Violation(v)) => return Poll::Ready(End::Violation(v)),
                    }
                }
                Phase::Ping {
                    frame, n, written, ..
                } => {
                    let mut at = usize::from(*written);
                    let sent = send(
                        self.dst,
                        &frame[..],
                        &mut at,
                        usize::from(*n),
                        cx,
                        ctl,
                        self.dir,
                    );
                    *written = at as u8;
                    if let Err(end) = std::task::ready!(sent) {
                        return Poll::Ready(end);
                    }
                    ctl.ping_done(self.dir.receiver(), true);
                    let Phase::Ping { start, len, .. } =
                        std::mem::replace(&mut self.phase, Phase::Read)
                    else {
                        unreachable!("matched above")
                    };
                    if start < len {
                        self.phase = self.scanned(start, len, ctl, policy);
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

    /// sluice's own Ping toward our receiver (masked toward the backend,
    /// where sluice is the client); then `buf[start..len]` is scanned.
    fn ping(&self, start: usize, len: usize) -> Phase {
        let mask = match self.dir.receiver() {
            Side::Backend => Some(frame::random_bytes()),
            Side::Client => None,
        };
        let mut out = [0u8; frame::PING_FRAME_MAX];
        let n = frame::encode_ping(ping_token(), mask, &mut out);
        Phase::Ping {
            frame: out,
            n: n as u8,
            written: 0,
            start,
            len,
        }
    }

    /// Walks `buf[start..len]`; the checked part is written next, then what
    /// stopped the walk (if anything but "need more bytes") is acted on.
    fn scanned(&mut self, start: usize, len: usize, ctl: &Control, policy: &Policy) -> Phase {
        let buf = self.buf.as_ref().expect("scans run on a held buffer");
        let mut gate = RelayGate {
            dir: self.dir,
            ctl,
            bucket: &mut self.bucket,
            closed_dst: &mut self.closed_dst,
        };
        let (n, walk) = self
            .scanner
            .walk(&policy.rules, &buf[start..len], &mut gate);
        Phase::Write {
            from: start,
            to: start + n,
            len,
            then: match walk {
                Walk::NeedMore => None,
                Walk::Violation(v) => Some(Stop::Violation(v)),
                Walk::Gate(stop) => Some(stop),
            },
        }
    }

    /// Waits for the sender to say something, holding no buffer while it is
    /// silent (when the stream can signal readiness), or for a close request
    /// toward our receiver that can be honoured now (at a frame boundary).
    fn poll_input(&mut self, cx: &mut std::task::Context<'_>, ctl: &Control) -> Poll<Input> {
        loop {
            if self.scanner.at_boundary() {
                match ctl.insert_due(self.dir.receiver(), self.closed_dst) {
                    Some(Insert::Close(code)) => return Poll::Ready(Input::CloseRequested(code)),
                    Some(Insert::Ping) => return Poll::Ready(Input::PingDue),
                    None => {}
                }
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
                if let Some(small) = self.buf.replace(buffers::take(BIG_BUF_LEN)) {
                    buffers::give(small);
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
                            buffers::give(buf);
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
            buffers::take(len)
        };
        if let Some(old) = self.buf.take() {
            new[..self.held].copy_from_slice(&old[..self.held]);
            buffers::give(old);
        }
        self.buf = Some(new);
    }

    /// The sender closed or reset its stream.
    async fn source_ended(&mut self, ctl: &Control, policy: &Policy) {
        if ctl.saw_close[self.dir].load(Ordering::Acquire) {
            ctl.end(Ending::Closed);
            if ctl.close_delivered[self.dir.reverse()].load(Ordering::Acquire) {
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
            let codes = ctl.end(Ending::Vanished(self.dir.sender()));
            if self.scanner.at_boundary() && !self.closed_dst {
                // The receiver would otherwise wait for a Close that never comes.
                if let Some(code) = codes[self.dir.receiver()] {
                    self.send_close(code, ctl, policy).await;
                }
            }
        }
        // Pass the FIN on; the other direction keeps flowing (half-close).
        let _ = timeout(LINGER, shutdown(self.dst)).await;
    }

    /// Sends our receiver a Close (unless one already went, or `code` is
    /// none), ends the stream toward it, then discards what the sender still
    /// says for a while.
    async fn close_and_linger(&mut self, code: Option<CloseCode>, ctl: &Control, policy: &Policy) {
        if let (false, Some(code)) = (self.closed_dst, code) {
            self.send_close(code, ctl, policy).await;
        }
        let _ = timeout(LINGER, shutdown(self.dst)).await;
        let buf = self.buf.get_or_insert_with(|| buffers::take(BUF_LEN));
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

    async fn send_close(&mut self, code: CloseCode, ctl: &Control, policy: &Policy) {
        let mut out = [0u8; frame::CLOSE_FRAME_MAX];
        let receiver = self.dir.receiver();
        // Masked toward the backend: sluice is the client on that leg.
        let mask = match receiver {
            Side::Backend => Some(frame::random_bytes()),
            Side::Client => None,
        };
        let n = frame::encode_close(code.get(), code.reason(), mask, &mut out);
        self.closed_dst = true;
        if let Ok(Ok(())) = timeout(
            policy.idle_timeout.min(LINGER),
            write_all(self.dst, &out[..n]),
        )
        .await
        {
            ctl.sent_close(receiver, code);
        }
    }
}

/// `write_all` + `flush` on a shared stream, locking it for each poll only.
async fn write_all<W: AsyncWrite + Unpin>(dst: &Mutex<W>, bytes: &[u8]) -> io::Result<()> {
    let mut from = 0;
    std::future::poll_fn(|cx| poll_write_all(dst, bytes, &mut from, bytes.len(), cx)).await
}

/// Writes `buf[*from..to]` and flushes, advancing `from` as bytes go.
/// Writes `bytes[*from..to]` toward `dir`'s receiver, keeping the
/// watchdog's clock of a stalled write (set while it waits, so a write
/// stalled for idle_timeout ends the tunnel; cleared when it is done). A
/// failed write ends the tunnel: the receiver vanished, and the sender is
/// asked to close with its code.
fn send<W: AsyncWrite + Unpin>(
    dst: &Mutex<W>,
    bytes: &[u8],
    from: &mut usize,
    to: usize,
    cx: &mut std::task::Context<'_>,
    ctl: &Control,
    dir: Direction,
) -> Poll<Result<(), End>> {
    let receiver = dir.receiver();
    let blocked = &ctl.write_blocked[receiver];
    match poll_write_all(dst, bytes, from, to, cx) {
        Poll::Pending => {
            if blocked.load(Ordering::Relaxed) == 0 {
                blocked.store(ctl.now_ms() + 1, Ordering::Relaxed);
            }
            Poll::Pending
        }
        Poll::Ready(result) => {
            blocked.store(0, Ordering::Relaxed);
            if result.is_err() {
                let codes = ctl.end(Ending::Vanished(receiver));
                let sender = dir.sender();
                ctl.request_close(sender, codes[sender]);
                return Poll::Ready(Err(End::WriteFailed));
            }
            Poll::Ready(Ok(()))
        }
    }
}

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
