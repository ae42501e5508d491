//! What one client connection holds while it is open: its place under the
//! process-wide and per-IP connection ceilings, and a record of whether it is
//! serving anything, which the connection's driver (`server`) turns into its
//! deadlines (contract, "Deadlines and ceilings for every connection").
//!
//! A connection's [`Client`] lives as long as its socket does: the HTTP
//! connection holds it, and a tunnel made from that connection holds it on,
//! so a tunnel counts against the ceilings exactly like the connection it
//! came from.

use std::net::IpAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::policy::rate::{ConnectionCounts, ConnectionGuard};

/// The process-wide cap on open client connections. When it is reached the
/// listeners stop calling `accept`, so new connections wait in the kernel's
/// backlog instead of failing, and nothing already open is disturbed.
#[derive(Debug)]
pub struct Ceiling {
    max: AtomicUsize,
    open: AtomicUsize,
    freed: Notify,
}

impl Ceiling {
    pub fn new(max: usize) -> Ceiling {
        Ceiling {
            max: AtomicUsize::new(max.max(1)),
            open: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// A reload may move the cap either way; connections over a lowered cap
    /// stay open and new ones wait until enough have closed.
    pub fn set_max(&self, max: usize) {
        self.max.store(max.max(1), Ordering::Release);
        self.freed.notify_waiters();
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits for room under the cap and takes one place.
    pub async fn acquire(self: &Arc<Self>) -> Place {
        loop {
            let mut freed = pin!(self.freed.notified());
            // Registered before the check, so a close between the check and
            // the wait is not missed.
            freed.as_mut().enable();
            let open = self.open.load(Ordering::Acquire);
            if open < self.max() {
                if self
                    .open
                    .compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Place(self.clone());
                }
                continue;
            }
            freed.await;
        }
    }
}

/// One place under the [`Ceiling`]; dropping it frees the place.
#[derive(Debug)]
pub struct Place(Arc<Ceiling>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// The process ceiling `server.max_client_connections` means: the value
/// itself, or for 0 half the open-file limit, which leaves the other half
/// for backend sockets, listeners and files, so descriptors for backends run
/// out after accept has paused, never before.
pub fn client_ceiling(configured: u32) -> usize {
    if configured > 0 {
        return configured as usize;
    }
    (open_file_limit() / 2).max(1)
}

/// The soft `RLIMIT_NOFILE`.
pub fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return usize::MAX / 2;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX / 2)
}

/// Raises the soft open-file limit to the hard one, as nginx's
/// `worker_rlimit_nofile` or Go's runtime do: the soft default (often 1024)
/// was made for programs that call `select`, and a proxy needs two
/// descriptors per tunnel. Failure (a seccomp filter, as in the shipped
/// unit, which sets `LimitNOFILE=` instead) leaves the limit as it is.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    PerIpCap,
}

/// Takes a place for a new connection from `ip` under
/// `server.max_client_connections_per_ip` (0 = no cap, nothing counted).
pub fn admit(
    counts: &Arc<ConnectionCounts>,
    ip: IpAddr,
    per_ip: u32,
) -> Result<Option<ConnectionGuard>, Refused> {
    if per_ip == 0 {
        return Ok(None);
    }
    counts
        .try_acquire(ip, per_ip)
        .map(Some)
        .ok_or(Refused::PerIpCap)
}

/// One open client connection: its places under the ceilings and what it is
/// doing.
#[derive(Debug)]
pub struct Client {
    accepted: Instant,
    /// Requests being served (until their response body is sent) and
    /// tunnels carried on the connection (WebSocket over h2).
    busy: AtomicUsize,
    /// A complete request head has arrived.
    served: AtomicBool,
    /// Milliseconds after `accepted` when `busy` last fell to zero.
    idle_since_ms: AtomicU64,
    changed: Notify,
    /// The driver saw the connection busy and waits to hear when it is
    /// not: only then does the last request's end wake it (a connection
    /// that upgrades, or is closed before its deadline, never wakes it).
    watching: AtomicBool,
    places: std::sync::Mutex<Places>,
}

/// A connection's places under the process ceiling and the per-IP cap.
#[derive(Debug, Default)]
pub struct Places {
    _ceiling: Option<Place>,
    _per_ip: Option<ConnectionGuard>,
}

/// What a tunnel keeps of the connection it came from: on HTTP/1.1 the
/// socket is the tunnel, so it takes the connection's places and lets the
/// rest go; on h2 it shares the connection with other streams and keeps it
/// busy (and alive) instead.
#[derive(Debug)]
pub enum Kept {
    Places(Places),
    Busy(Busy),
}

/// What a connection is doing, as its driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No complete request head yet.
    Opening,
    /// Serving a request or carrying a tunnel.
    Busy,
    /// Between requests since this instant.
    Idle(Instant),
}

impl Client {
    pub fn new(
        accepted: Instant,
        place: Option<Place>,
        per_ip: Option<ConnectionGuard>,
    ) -> Arc<Client> {
        Arc::new(Client {
            accepted,
            busy: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            changed: Notify::new(),
            watching: AtomicBool::new(false),
            places: std::sync::Mutex::new(Places {
                _ceiling: place,
                _per_ip: per_ip,
            }),
        })
    }

    /// Takes the connection's place under the per-IP cap after accept: for
    /// a `server.proxy_protocol` peer the client is known only once its
    /// PROXY header has been read.
    pub fn hold_per_ip(&self, guard: Option<ConnectionGuard>) {
        let mut places = self.places.lock().unwrap_or_else(|e| e.into_inner());
        places._per_ip = guard;
    }

    pub fn accepted(&self) -> Instant {
        self.accepted
    }

    /// A request head has arrived (or a tunnel starts): the connection is
    /// busy until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        // The driver learns of it at its next deadline; no wake-up now.
        self.served.store(true, Ordering::Release);
        Busy(self.clone())
    }

    /// What a tunnel made from this connection keeps; `shared` when the
    /// connection carries other streams too (h2).
    pub fn keep_for_tunnel(self: &Arc<Self>, shared: bool) -> Kept {
        if shared {
            return Kept::Busy(self.begin());
        }
        let mut places = self.places.lock().unwrap_or_else(|e| e.into_inner());
        Kept::Places(std::mem::take(&mut *places))
    }

    pub fn state(&self) -> State {
        if !self.served.load(Ordering::Acquire) {
            return State::Opening;
        }
        if self.busy.load(Ordering::Acquire) > 0 {
            return State::Busy;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        State::Idle(self.accepted + Duration::from_millis(ms))
    }

    /// Asks to be woken ([`Client::changed`]) when the connection stops
    /// being busy. Check the state again after calling it: the last request
    /// may have ended just before.
    pub fn watch(&self) {
        self.watching.store(true, Ordering::Release);
    }

    /// Resolves after the state may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// A request or tunnel in progress on a [`Client`] connection; keeps the
/// connection (and its places under the ceilings) alive.
#[derive(Debug)]
pub struct Busy(Arc<Client>);

impl Drop for Busy {
    fn drop(&mut self) {
        let client = &self.0;
        // Stamped before the count falls, so a driver that sees zero also
        // sees this request's end (a stamp while others stay busy is unused).
        let ms = client.accepted.elapsed().as_millis() as u64;
        client.idle_since_ms.store(ms, Ordering::Release);
        if client.busy.fetch_sub(1, Ordering::AcqRel) == 1
            && client.watching.swap(false, Ordering::AcqRel)
        {
            client.changed.notify_one();
        }
    }
}

/// Lets one log line through per second and counts the rest, for events an
/// attacker controls the rate of (a flood must not become a log flood).
#[derive(Debug, Default)]
pub struct LogGate {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    /// `Some(n)`: log now, mentioning the `n` events suppressed since the
    /// last line. `None`: stay quiet.
    pub fn pass(&self, now: Instant, epoch: Instant) -> Option<u64> {
        let second = now.saturating_duration_since(epoch).as_secs() + 1;
        let last = self.last_second.load(Ordering::Relaxed);
        if last != second
            && self
                .last_second
                .compare_exchange(last, second, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}
