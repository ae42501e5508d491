//! What the daemon asks of open tunnels from outside: the drain (SIGTERM)
//! and the removal of their backend by a reload (`on_backend_removed =
//! "close"`), each with the window its Close frames are spread over.
//!
//! The daemon publishes a [`Closing`] on one `watch` channel per (route,
//! backend) pair, so a removal wakes only the tunnels of that backend and a
//! drain wakes each tunnel once. A tunnel then takes a moment in the window
//! ([`Spread::slot`]) and its watchdog's one timer waits for it: spreading
//! 100,000 closes takes no timer beyond the ones the tunnels already have.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// What the tunnels of one (route, backend) pair are asked to do.
#[derive(Debug, Clone, Default)]
pub struct Closing {
    /// The process is draining: Close 1001 both ways.
    pub drain: Option<Arc<Spread>>,
    /// A reload removed the backend from a route with
    /// `on_backend_removed = "close"`: Close 1012 to the client, 1001 to the
    /// backend. Cleared when a later reload adds the backend back.
    pub removed: Option<Arc<Spread>>,
}

/// A window that closes are spread over, evenly for any number of tunnels.
#[derive(Debug)]
pub struct Spread {
    start: Instant,
    window: Duration,
    /// How many tunnels have taken a moment so far.
    taken: AtomicU32,
}

impl Spread {
    /// A window of `window` starting now.
    pub fn new(window: Duration) -> Spread {
        Spread {
            start: Instant::now(),
            window,
            taken: AtomicU32::new(0),
        }
    }

    /// The moment of the next tunnel to ask. The i-th tunnel gets the i-th
    /// point of the van der Corput sequence (0, 1/2, 1/4, 3/4, 1/8, ...), so
    /// however many tunnels ask, and whenever the asking stops, the moments
    /// already given cover the window evenly: the count need not be known in
    /// advance, and a tunnel opened after the start gets a moment like the
    /// rest (already past once the window is over, which means at once).
    pub fn slot(&self) -> Instant {
        let i = self.taken.fetch_add(1, Ordering::Relaxed);
        self.start + self.window.mul_f64(van_der_corput(i))
    }
}

/// `i` with its bits mirrored behind the binary point: a point in [0, 1).
fn van_der_corput(i: u32) -> f64 {
    f64::from(i.reverse_bits()) / 4_294_967_296.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any prefix of the sequence is spread evenly: the first n points put
    /// about n/4 in each quarter of the window.
    #[test]
    fn the_first_n_moments_cover_the_window_evenly() {
        assert_eq!(
            (0..4).map(van_der_corput).collect::<Vec<_>>(),
            [0.0, 0.5, 0.25, 0.75]
        );
        for n in [4u32, 100, 1000, 100_000] {
            let mut quarters = [0u32; 4];
            for i in 0..n {
                quarters[(van_der_corput(i) * 4.0) as usize] += 1;
            }
            for q in quarters {
                assert!(q.abs_diff(n / 4) <= 1, "n={n}: {quarters:?}");
            }
        }
    }
}
