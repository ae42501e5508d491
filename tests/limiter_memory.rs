//! Memory bound of the per-IP handshake limiter under a scan from many
//! addresses (`src/policy/rate.rs`: keys are dropped once their bucket is
//! full again, on `evict_idle` and, above `SOFT_MAX_KEYS`, every
//! `EVICT_CHECK_EVERY` checks).
//!
//! RSS and timings are per process, so the tests here take `SERIAL` and
//! never run side by side. Figures are printed; run with `--nocapture`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice::policy::rate::{HandshakeLimiter, EVICT_CHECK_EVERY, SOFT_MAX_KEYS};

static SERIAL: Mutex<()> = Mutex::new(());

/// Resident set size in bytes, from /proc/self/statm (pages) and the page
/// size the kernel reports in the auxiliary vector.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * page_size()
}

fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    let auxv = std::fs::read("/proc/self/auxv").unwrap();
    auxv.chunks_exact(16)
        .map(|c| {
            (
                u64::from_ne_bytes(c[..8].try_into().unwrap()),
                u64::from_ne_bytes(c[8..].try_into().unwrap()),
            )
        })
        .find(|&(k, _)| k == AT_PAGESZ)
        .map_or(4096, |(_, v)| v)
}

/// Distinct IPv4 keys 11.0.0.0, 11.0.0.1, ...
fn key(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))
}

struct Flood {
    elapsed: Duration,
    /// Largest `len()` seen, sampled every `EVICT_CHECK_EVERY` checks.
    peak: usize,
    rejected: usize,
}

fn flood(limiter: &HandshakeLimiter, n: u32) -> Flood {
    let mut peak = 0;
    let mut rejected = 0;
    let started = Instant::now();
    for i in 0..n {
        if limiter.check(key(i)).is_err() {
            rejected += 1;
        }
        if u64::from(i) % EVICT_CHECK_EVERY == 0 {
            peak = peak.max(limiter.len());
        }
    }
    Flood {
        elapsed: started.elapsed(),
        peak: peak.max(limiter.len()),
        rejected,
    }
}

#[test]
fn a_scan_from_a_million_addresses_stays_bounded_and_is_evicted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n: u32 = if cfg!(debug_assertions) {
        200_000
    } else {
        1_000_000
    };
    println!(
        "{} build: {n} distinct IPv4 keys (SOFT_MAX_KEYS = {SOFT_MAX_KEYS}, EVICT_CHECK_EVERY = {EVICT_CHECK_EVERY})",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );

    // 0. A slow quota (1/s, burst 1): no key is stale before 2 s, so the
    //    map holds (nearly) every key of the flood. That gives the bytes per
    //    key (the map keeps its peak capacity, so RSS / peak len), and the
    //    cost of the soft cap's sweeps when they find little to drop.
    //    Half the keys: those sweeps make this phase quadratic.
    let rss_before = rss_bytes();
    let limiter = HandshakeLimiter::new(1, 1);
    let f = flood(&limiter, n / 2);
    let growth = rss_bytes().saturating_sub(rss_before);
    let held = limiter.len();
    println!(
        "slow 1/s burst 1: {} checks in {:?} ({:.0} ns/check); len() after = {held}, \
         peak len() = {}; RSS +{} KiB = {:.1} bytes per peak key",
        n / 2,
        f.elapsed,
        f.elapsed.as_nanos() as f64 / f64::from(n / 2),
        f.peak,
        growth / 1024,
        growth as f64 / f.peak.max(1) as f64,
    );
    assert_eq!(f.rejected, 0, "a fresh key must never be rejected");
    drop(limiter);

    // 1. The default quota (20/s, burst 40). A key that made one handshake
    //    is indistinguishable from a fresh one 2/rate = 100 ms later, so
    //    what the map holds depends on how many keys the loop inserts per
    //    100 ms.
    let rss_before = rss_bytes();
    let limiter = HandshakeLimiter::new(20, 40);
    let f = flood(&limiter, n);
    let rss_after = rss_bytes();
    let held = limiter.len();
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "defaults 20/s burst 40: {n} checks in {:?} ({:.0} ns/check), {} rejected; \
         len() after = {held}, peak len() = {}; RSS +{} KiB = {:.1} bytes per peak key",
        f.elapsed,
        f.elapsed.as_nanos() as f64 / f64::from(n),
        f.rejected,
        f.peak,
        growth / 1024,
        growth as f64 / f.peak.max(1) as f64,
    );
    assert_eq!(f.rejected, 0, "a fresh key must never be rejected");
    assert!(held <= n as usize);
    // Every key made one handshake: its state is stale 2/rate = 100 ms later.
    std::thread::sleep(Duration::from_millis(250));
    limiter.evict_idle();
    assert_eq!(
        limiter.len(),
        0,
        "default limiter not empty after evict_idle"
    );
    drop(limiter);

    // 2. A fast-refilling quota (1000/s, burst 1: stale 2 ms after use).
    //    The soft cap's eviction during the flood keeps the map near
    //    SOFT_MAX_KEYS; once the flood stops, evict_idle empties it.
    let limiter = HandshakeLimiter::new(1000, 1);
    let f = flood(&limiter, n);
    let held = limiter.len();
    println!(
        "fast 1000/s burst 1: {n} checks in {:?} ({:.0} ns/check); len() after = {held}, peak len() = {}",
        f.elapsed,
        f.elapsed.as_nanos() as f64 / f64::from(n),
        f.peak,
    );
    assert_eq!(f.rejected, 0, "a fresh key must never be rejected");
    assert!(
        held <= 2 * SOFT_MAX_KEYS,
        "len() {held} after the flood > 2 * SOFT_MAX_KEYS"
    );
    assert!(
        f.peak <= 2 * SOFT_MAX_KEYS,
        "peak len() {} during the flood > 2 * SOFT_MAX_KEYS",
        f.peak
    );
    std::thread::sleep(Duration::from_millis(10));
    limiter.evict_idle();
    assert_eq!(limiter.len(), 0, "fast limiter not empty after evict_idle");
    assert!(limiter.is_empty());
}
