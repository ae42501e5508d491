//! What every connection shares: the current config [`Snapshot`], swapped as
//! one unit on reload, and the process-wide state that must outlive any one
//! snapshot (the backend HTTP pool, per-IP tunnel counts, the drain signal).

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError};
use crate::conn::{client_ceiling, Ceiling, LogGate};
use crate::policy::cluster::ClusterSlot;
use crate::policy::rate::{ConnectionCounts, HandshakeLimiter, TunnelCounts};
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
        self.current.store(snapshot);
    }

    /// Turns true once when the process starts draining.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn start_drain(&self) {
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
