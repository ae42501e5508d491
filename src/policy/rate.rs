//! Rate and connection limits, all keyed by client IP (contract `[limits]`).
//!
//! * [`HandshakeLimiter`]: GCRA per IP (governor's keyed limiter).
//! * [`ConnectionCounts`] / [`ConnectionGuard`]: open tunnels per IP; the
//!   guard is RAII, so the slot is released however a tunnel ends.
//! * [`MessageBucket`]: the per-tunnel token bucket for client data frames;
//!   it lives inside one relay task and needs no synchronisation.
//!
//! IPv6 clients are keyed by their /64: one host commonly owns a whole /64,
//! and keying by full address would let it mint unlimited fresh keys.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The key limits are counted under.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Above this many tracked IPs, a handshake also triggers eviction (checked
/// every [`EVICT_CHECK_EVERY`] handshakes), so a scan from many addresses is
/// cleaned up without waiting for the periodic housekeeping.
pub const SOFT_MAX_KEYS: usize = 65_536;
pub const EVICT_CHECK_EVERY: u64 = 1024;

/// Handshakes per second per IP with a burst.
///
/// Memory bound: a key's state is dropped once its bucket is full again,
/// i.e. `handshake_burst / handshakes_per_second` seconds after its last
/// handshake (2 s with the defaults). The map therefore holds at most the
/// distinct client addresses (IPv6: /64s) seen in that window, and is swept
/// every 10 s and whenever it passes [`SOFT_MAX_KEYS`].
#[derive(Debug)]
pub struct HandshakeLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: std::sync::atomic::AtomicU64,
    /// Sweep when the map grows past this; doubles over what a sweep could
    /// not remove, so a flood of live keys does not trigger a sweep per
    /// 1024 handshakes (quadratic work).
    sweep_above: std::sync::atomic::AtomicUsize,
}

impl HandshakeLimiter {
    pub fn new(per_second: u32, burst: u32) -> HandshakeLimiter {
        let quota = Quota::per_second(NonZeroU32::new(per_second.max(1)).unwrap())
            .allow_burst(NonZeroU32::new(burst.max(1)).unwrap());
        HandshakeLimiter {
            limiter: RateLimiter::keyed(quota),
            checks: std::sync::atomic::AtomicU64::new(0),
            sweep_above: std::sync::atomic::AtomicUsize::new(SOFT_MAX_KEYS),
        }
    }

    /// `Err(retry_after)` when the IP is over its rate.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let n = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % EVICT_CHECK_EVERY == EVICT_CHECK_EVERY - 1 {
            use std::sync::atomic::Ordering;
            if self.limiter.len() > self.sweep_above.load(Ordering::Relaxed) {
                self.limiter.retain_recent();
                let left = self.limiter.len();
                self.sweep_above
                    .store(SOFT_MAX_KEYS.max(left * 2), Ordering::Relaxed);
            }
        }
        // The limiter's own clock: making a new one per call costs a CPUID
        // (tens of microseconds on a VM) on exactly the path a flood takes.
        self.limiter
            .check_key(&limit_key(ip))
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Drops the state of keys whose bucket is full again. A key therefore
    /// lives at most `burst / rate` seconds after its last handshake, which
    /// bounds memory by the number of distinct IPs seen in that window.
    pub fn evict_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// Where else a slot is counted: the cluster's Redis (`policy::cluster`),
/// told when a slot it counted is freed.
pub trait SharedCount: Send + Sync + std::fmt::Debug {
    fn release(&self, key: IpAddr);
}

/// Open tunnels per IP, shared by every snapshot so that a reload does not
/// forget the tunnels that are already open.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    counts: Mutex<HashMap<IpAddr, u32>>,
    /// Told when a guard marked [`ConnectionGuard::counted_shared`] drops.
    shared: Option<Arc<dyn SharedCount>>,
}

impl ConnectionCounts {
    /// Counts that are also kept in `shared` (the cluster's Redis).
    pub fn with_shared(shared: Arc<dyn SharedCount>) -> ConnectionCounts {
        ConnectionCounts {
            counts: Mutex::default(),
            shared: Some(shared),
        }
    }

    /// Every key with open slots and its count: the truth the cluster's
    /// heartbeat re-asserts in Redis.
    pub fn all(&self) -> Vec<(IpAddr, u32)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(k, n)| (*k, *n)).collect()
    }

    /// Takes one slot for `ip`, or `None` when `max` are open already.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<ConnectionGuard> {
        let key = limit_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(ConnectionGuard {
            counts: self.clone(),
            key,
            shared: false,
        })
    }

    pub fn open(&self, ip: IpAddr) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&limit_key(ip)).copied().unwrap_or(0)
    }
}

/// One open tunnel's slot; dropping it frees the slot. Entries at zero are
/// removed, so the map is bounded by the number of open tunnels.
/// The flag fits the padding after the address: a tunnel holds no more
/// than before the cluster existed.
#[derive(Debug)]
pub struct ConnectionGuard {
    counts: Arc<ConnectionCounts>,
    key: IpAddr,
    /// Also counted in the counts' [`SharedCount`], which is told on drop.
    shared: bool,
}

impl ConnectionGuard {
    /// This slot is counted in the shared store too (or will be, by its next
    /// re-sync), so freeing it must be reported there.
    pub fn counted_shared(&mut self) {
        self.shared = self.counts.shared.is_some();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        {
            let mut counts = self.counts.counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&self.key);
                }
            }
        }
        if self.shared {
            if let Some(shared) = &self.counts.shared {
                shared.release(self.key);
            }
        }
    }
}

/// A token bucket for one tunnel's client data messages.
#[derive(Debug, Clone)]
pub struct MessageBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl MessageBucket {
    pub fn new(per_second: u32, burst: u32) -> MessageBucket {
        let burst = f64::from(burst.max(1));
        MessageBucket {
            per_second: f64::from(per_second.max(1)),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_releases_on_drop() {
        let counts = Arc::new(ConnectionCounts::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = counts.try_acquire(ip, 2).unwrap();
        let _b = counts.try_acquire(ip, 2).unwrap();
        assert!(counts.try_acquire(ip, 2).is_none());
        drop(a);
        assert_eq!(counts.open(ip), 1);
        assert!(counts.try_acquire(ip, 2).is_some());
    }

    /// Every tunnel holds one guard: the cluster's flag must not grow it.
    #[test]
    fn a_guard_is_no_bigger_with_the_cluster_flag() {
        assert_eq!(std::mem::size_of::<ConnectionGuard>(), 32);
    }

    #[test]
    fn ipv6_keyed_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(limit_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn bucket_allows_burst_then_paces() {
        let t0 = Instant::now();
        let mut b = MessageBucket::new(10, 3);
        b.last = t0;
        for _ in 0..3 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn handshake_limiter_rejects_after_burst() {
        let l = HandshakeLimiter::new(1, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check(ip).is_ok());
        assert!(l.check(ip).is_ok());
        let retry = l.check(ip).unwrap_err();
        assert!(retry <= Duration::from_secs(1));
        assert!(l.check("192.0.2.2".parse().unwrap()).is_ok());
    }
}

/// Open tunnels, process-wide and per route (by the route's label, so a
/// reload that keeps a route keeps counting its open tunnels), for
/// `server.max_tunnels` and `route.max_tunnels`. Shared by every snapshot.
#[derive(Debug, Default)]
pub struct TunnelCounts {
    total: AtomicU32,
    /// One counter per route label ever seen (a handful), shared by the
    /// route's tunnels so a tunnel's slot holds no copy of the label.
    by_route: Mutex<HashMap<String, Arc<AtomicU32>>>,
}

/// Which cap a refused tunnel met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelCap {
    Process,
    Route,
}

impl TunnelCounts {
    /// Takes a place for one more tunnel on `route`, or says which cap
    /// (0 = none) is reached. Checked before the backend is contacted.
    pub fn try_take(
        self: &Arc<Self>,
        route: &str,
        route_max: u32,
        process_max: u32,
    ) -> Result<TunnelSlot, TunnelCap> {
        // Check and count under the lock, so two handshakes cannot both
        // take the last place; releases need no lock.
        let mut by_route = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        if process_max > 0 && self.total.load(Ordering::Acquire) >= process_max {
            return Err(TunnelCap::Process);
        }
        let on_route = match by_route.get(route) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(AtomicU32::new(0));
                by_route.insert(route.to_owned(), c.clone());
                c
            }
        };
        if route_max > 0 && on_route.load(Ordering::Acquire) >= route_max {
            return Err(TunnelCap::Route);
        }
        self.total.fetch_add(1, Ordering::AcqRel);
        on_route.fetch_add(1, Ordering::AcqRel);
        Ok(TunnelSlot {
            counts: self.clone(),
            route: on_route,
        })
    }
}

/// One tunnel's place under the tunnel caps; released on drop.
#[derive(Debug)]
pub struct TunnelSlot {
    counts: Arc<TunnelCounts>,
    route: Arc<AtomicU32>,
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        self.route.fetch_sub(1, Ordering::AcqRel);
    }
}
