//! What every connection shares: the current config [`Snapshot`], swapped as
//! one unit on reload, and the process-wide state that must outlive any one
//! snapshot (the backend HTTP pool, per-IP tunnel counts, the drain signal).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::OnBackendRemoved;
use crate::config::{Config, ConfigError};
use crate::conn::{client_ceiling, Ceiling, LogGate};
use crate::policy::cluster::ClusterSlot;
use crate::policy::rate::{ConnectionCounts, HandshakeLimiter, TunnelCounts};
use crate::relay::{Closing, Spread};
use crate::route::Router;

/// Everything derived from one config file. A connection takes one snapshot
/// when it is accepted and keeps it to the end, so a reload never changes an
/// open connection.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub acceptor: Option<TlsAcceptor>,
    /// The certificates the acceptor chooses from by SNI; `None` without
    /// `[tls]` or with an acceptor made elsewhere (the demo).
    pub sites: Option<Arc<crate::tls::Sites>>,
    /// Handshake limiters, one per route, in route order.
    pub handshake_limiters: Vec<HandshakeLimiter>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("config", &self.config.path)
            .field("routes", &self.router)
            .field("tls", &self.acceptor.is_some())
            .finish()
    }
}

impl Snapshot {
    /// Starts the active health checks of every route that has them; they
    /// stop by themselves once this snapshot is gone.
    pub fn start_health_checks(&self) {
        for pool in self.router.pools() {
            crate::pool::Pool::spawn_checks(pool);
        }
    }

    /// Builds a snapshot: the checks that need the host (the congestion
    /// control, then certificates). Same path for `check`, `run` and reload,
    /// so they cannot disagree.
    pub fn build(config: Config) -> Result<Snapshot, ConfigError> {
        Snapshot::build_after(config, None)
    }

    /// [`Snapshot::build`] for a reload: the ACME state of `previous` is
    /// kept when `[tls.acme]` is unchanged (the certificate in memory, the
    /// renewal task in the daemon).
    pub fn build_after(
        config: Config,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        check_host(&config)?;
        let acme =
            config.tls.as_ref().and_then(|t| t.acme.as_ref()).map(|a| {
                crate::acme::Certs::reuse(a, previous.and_then(|p| p.sites.as_ref()?.acme()))
            });
        let (acceptor, sites) = match crate::tls::load(&config, acme)? {
            Some(l) => (Some(TlsAcceptor::from(l.server_config)), Some(l.sites)),
            None => (None, None),
        };
        Snapshot::assemble(config, acceptor, sites)
    }

    /// Builds a snapshot around an acceptor made elsewhere (the demo's
    /// in-memory certificate).
    pub fn with_acceptor(
        config: Config,
        acceptor: Option<TlsAcceptor>,
    ) -> Result<Snapshot, ConfigError> {
        check_host(&config)?;
        Snapshot::assemble(config, acceptor, None)
    }

    /// Whether a request for `host` may be served on a connection whose
    /// handshake chose certificate `served` (see `tls::Sites::serves`).
    pub fn serves(&self, served: Option<usize>, host: Option<&str>) -> bool {
        match (&self.sites, served) {
            (Some(sites), Some(served)) => sites.serves(served, host),
            _ => true,
        }
    }

    fn assemble(
        config: Config,
        acceptor: Option<TlsAcceptor>,
        sites: Option<Arc<crate::tls::Sites>>,
    ) -> Result<Snapshot, ConfigError> {
        let backend_tls = config
            .routes
            .iter()
            .map(|r| crate::tls::backend_client_config(&r.backend_tls, &config.path))
            .collect::<Result<Vec<_>, _>>()?;
        let handshake_limiters = config
            .routes
            .iter()
            .map(|r| {
                HandshakeLimiter::new(r.limits.handshakes_per_second, r.limits.handshake_burst)
            })
            .collect();
        Ok(Snapshot {
            router: Router::build(&config, backend_tls),
            config: Arc::new(config),
            acceptor,
            sites,
            handshake_limiters,
        })
    }
}

/// The config checks parsing cannot make because they need the host, each
/// reported at the line of its key like a parse error. `server.tcp_congestion`:
/// whether this process may use that algorithm is only known by trying it on
/// a socket.
fn check_host(config: &Config) -> Result<(), ConfigError> {
    let server = &config.server;
    if let (Some(algorithm), Some(at)) = (&server.tcp_congestion, &server.tcp_congestion_at) {
        crate::socket::check_congestion(algorithm).map_err(|why| at.error(&config.path, why))?;
    }
    Ok(())
}

/// Process-wide state.
#[derive(Debug)]
pub struct Shared {
    current: ArcSwap<Snapshot>,
    /// `server.max_client_connections`: accept pauses at this many.
    pub ceiling: Arc<Ceiling>,
    /// Open client connections per IP, for `max_client_connections_per_ip`.
    pub client_conns: Arc<ConnectionCounts>,
    /// Open tunnels, for `server.max_tunnels` and `route.max_tunnels`.
    pub tunnel_counts: Arc<TunnelCounts>,
    /// One log line per second for refusals a flood controls the rate of.
    pub per_ip_log: LogGate,
    /// The same for connections closed over their PROXY header.
    pub proxy_header_log: LogGate,
    pub started: tokio::time::Instant,
    pub connections: Arc<ConnectionCounts>,
    /// The `[cluster]` client: per-IP limits shared through Redis. Changed
    /// by a reload only when `[cluster]` changes.
    pub cluster: Arc<ClusterSlot>,
    /// Open client connections (HTTP) and open tunnels, counted apart.
    pub http_conns: Arc<Tracker>,
    pub tunnels: Arc<Tracker>,
    pub metrics: crate::metrics::Metrics,
    shutdown: watch::Sender<bool>,
    /// How the daemon asks open tunnels to close (drain, backend removal).
    pub tunnel_signals: TunnelSignals,
}

impl Shared {
    pub fn new(snapshot: Snapshot) -> Arc<Shared> {
        snapshot.start_health_checks();
        let ceiling = client_ceiling(snapshot.config.server.max_client_connections);
        let metrics = crate::metrics::Metrics::new();
        metrics.set_certificates(snapshot.sites.as_deref());
        // Tunnel slots tell the cluster (whichever client is current) when
        // they close.
        let cluster = Arc::new(ClusterSlot::new());
        let connections = Arc::new(ConnectionCounts::with_shared(cluster.clone()));
        cluster.configure(snapshot.config.cluster.as_ref(), &connections, &metrics);
        Arc::new(Shared {
            ceiling: Arc::new(Ceiling::new(ceiling)),
            client_conns: Arc::new(ConnectionCounts::default()),
            tunnel_counts: Arc::default(),
            per_ip_log: LogGate::default(),
            proxy_header_log: LogGate::default(),
            started: tokio::time::Instant::now(),
            current: ArcSwap::from_pointee(snapshot),
            connections,
            cluster,
            http_conns: Arc::default(),
            tunnels: Arc::default(),
            metrics,
            shutdown: watch::channel(false).0,
            tunnel_signals: TunnelSignals::default(),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn replace(&self, snapshot: Snapshot) {
        snapshot.start_health_checks();
        self.replace_arc(Arc::new(snapshot));
    }

    pub fn replace_arc(&self, snapshot: Arc<Snapshot>) {
        self.ceiling.set_max(client_ceiling(
            snapshot.config.server.max_client_connections,
        ));
        self.metrics.set_certificates(snapshot.sites.as_deref());
        self.cluster.configure(
            snapshot.config.cluster.as_ref(),
            &self.connections,
            &self.metrics,
        );
        let old = self.current.swap(snapshot.clone());
        self.close_removed_backends(&old, &snapshot);
    }

    /// `on_backend_removed = "close"`: the tunnels to a backend that `new`
    /// no longer has on a route (by its label) get their Close frames
    /// spread over `drain_spread`. The route's setting in `new` decides (in
    /// `old` when `new` has no such route). A backend is known by its
    /// `host:port`; one that comes back is no longer marked removed.
    fn close_removed_backends(&self, old: &Snapshot, new: &Snapshot) {
        let window = new.config.server.spread_window();
        let now: HashMap<&str, &crate::config::Route> = new.router.routes().collect();
        for (label, route) in old.router.routes() {
            let still = now.get(label);
            let policy = still.map_or(route.on_backend_removed, |r| r.on_backend_removed);
            if policy != OnBackendRemoved::Close {
                continue;
            }
            for backend in &route.backends {
                let authority = backend.authority();
                let kept =
                    still.is_some_and(|r| r.backends.iter().any(|b| b.authority() == authority));
                if !kept {
                    tracing::info!(
                        route = label,
                        backend = authority,
                        spread_ms = window.as_millis() as u64,
                        "backend removed by reload; its tunnels get Close 1012"
                    );
                    self.tunnel_signals
                        .backend_removed(label, &authority, window);
                }
            }
        }
        for (label, route) in new.router.routes() {
            for backend in &route.backends {
                self.tunnel_signals
                    .backend_present(label, &backend.authority());
            }
        }
    }

    /// Turns true once when the process starts draining.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Starts the drain: listeners stop, and every tunnel gets Close 1001
    /// at its moment in `spread` (see [`Spread::slot`]).
    pub fn start_drain(&self, spread: std::time::Duration) {
        self.tunnel_signals.drain(spread);
        self.shutdown.send_replace(true);
    }

    pub fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Drops idle per-IP limiter state; run periodically.
    pub fn evict_idle(&self) {
        for l in &self.snapshot().handshake_limiters {
            l.evict_idle();
        }
    }
}

/// The channels through which the daemon asks open tunnels to close: one
/// per (route label, backend `host:port`) ever seen, so a backend removal
/// wakes only that backend's tunnels and the drain wakes each tunnel once.
/// A tunnel holds one receiver, the size of the drain signal it replaces.
#[derive(Debug, Default)]
pub struct TunnelSignals(std::sync::Mutex<Signals>);

#[derive(Debug, Default)]
struct Signals {
    by_route: HashMap<String, HashMap<String, watch::Sender<Closing>>>,
    /// Set once the drain has started, for channels made after it.
    drain: Option<Arc<Spread>>,
}

impl Signals {
    /// The channel of (`route`, `backend`), made on first use (already
    /// draining if the drain has started).
    fn sender(&mut self, route: &str, backend: &str) -> &watch::Sender<Closing> {
        let drain = self.drain.clone();
        if !self.by_route.contains_key(route) {
            self.by_route.insert(route.to_owned(), HashMap::new());
        }
        let by_backend = self.by_route.get_mut(route).expect("inserted above");
        if !by_backend.contains_key(backend) {
            let closing = Closing {
                drain,
                removed: None,
            };
            by_backend.insert(backend.to_owned(), watch::Sender::new(closing));
        }
        &by_backend[backend]
    }
}

impl TunnelSignals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Signals> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The channel of a tunnel on `route` to `backend`.
    pub fn subscribe(&self, route: &str, backend: &str) -> watch::Receiver<Closing> {
        self.lock().sender(route, backend).subscribe()
    }

    /// Every tunnel, now and later, closes at its moment in `window`.
    pub fn drain(&self, window: std::time::Duration) {
        let mut signals = self.lock();
        let spread = Arc::new(Spread::new(window));
        signals.drain = Some(spread.clone());
        for tx in signals.by_route.values().flat_map(|b| b.values()) {
            tx.send_modify(|c| c.drain = Some(spread.clone()));
        }
    }

    /// The tunnels on `route` to `backend` close, spread over `window`
    /// (also those opening now, whose upgrade began before the reload).
    pub fn backend_removed(&self, route: &str, backend: &str, window: std::time::Duration) {
        let spread = Arc::new(Spread::new(window));
        self.lock()
            .sender(route, backend)
            .send_modify(|c| c.removed = Some(spread));
    }

    /// `backend` is on `route` (again): new tunnels to it stay. Tunnels
    /// that already took their moment still close; nobody is woken.
    pub fn backend_present(&self, route: &str, backend: &str) {
        let signals = self.lock();
        if let Some(tx) = signals.by_route.get(route).and_then(|b| b.get(backend)) {
            tx.send_if_modified(|c| {
                c.removed = None;
                false
            });
        }
    }
}

/// Resolves when the drain starts (or the process state is gone).
pub async fn drain_started(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|draining| *draining).await.map(|_| ());
}

/// Counts live connections and tunnels so a drain knows when it is done.
#[derive(Debug, Default)]
pub struct Tracker {
    live: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Tracker {
    pub fn track(self: &Arc<Self>) -> Tracked {
        self.live.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Tracked(self.clone())
    }

    pub fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once nothing is tracked.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One tracked connection or tunnel; dropping it untracks it.
#[derive(Debug)]
pub struct Tracked(Arc<Tracker>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self
            .0
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Parsing opens no socket, so it takes any name; the build refuses one
    /// this host lacks, at the key's line as a parse error would be.
    #[test]
    fn an_unusable_congestion_control_is_refused_by_the_build_at_its_line() {
        let text = "[server]\nlisten_plain = [\"127.0.0.1:0\"]\ntcp_congestion = \"warp-drive\"\n\
                    [[route]]\nbackends = [\"127.0.0.1:9\"]\n";
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let err = Snapshot::build(config).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_str()),
            (Some(3), "server.tcp_congestion")
        );
        assert!(
            err.to_string().starts_with(
                "t.toml:3: server.tcp_congestion: \"warp-drive\" is not available on this kernel"
            ),
            "{err}"
        );
    }
}
