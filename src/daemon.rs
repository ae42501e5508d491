//! Running as a daemon: start, signals, reload, drain, sd_notify.
//!
//! Signals enter as a [`Signal`] value so tests can drive the same code paths
//! without a process. A reload builds a complete new snapshot first and only
//! then swaps it in; a bad config is logged and changes nothing.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::server::Listener;
use crate::shared::{Shared, Snapshot};

/// What the process was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Reload,
    Shutdown,
}

/// A running proxy: its shared state and its listeners by address.
#[derive(Debug)]
pub struct Running {
    pub shared: Arc<Shared>,
    listeners: HashMap<(SocketAddr, bool), (SocketAddr, JoinHandle<()>)>,
    /// The admin listener: (configured, bound, task).
    admin: Option<(SocketAddr, SocketAddr, JoinHandle<()>)>,
    /// Sockets inherited from systemd socket activation, by address, not yet
    /// used by a listener.
    inherited: HashMap<SocketAddr, std::net::TcpListener>,
}

impl Running {
    /// Binds every listener of the snapshot's config and starts serving.
    pub async fn start(shared: Arc<Shared>) -> io::Result<Running> {
        let mut running = Running {
            shared,
            listeners: HashMap::new(),
            admin: None,
            inherited: HashMap::new(),
        };
        running.inherit_sockets();
        let config = running.shared.snapshot().config.clone();
        running.open_listeners(&config).await?;
        Ok(running)
    }

    /// Bound addresses (with port 0 resolved) of the TLS listeners.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(true)
    }

    /// Bound addresses of the cleartext listeners.
    pub fn plain_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(false)
    }

    /// Takes the sockets systemd passed (`LISTEN_FDS`), so a restart of the
    /// binary never refuses a connection on an address systemd holds.
    fn inherit_sockets(&mut self) {
        use std::os::fd::FromRawFd;
        let fds = match sd_notify::listen_fds() {
            Ok(fds) => fds,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring LISTEN_FDS");
                return;
            }
        };
        for fd in fds {
            // SAFETY: systemd hands these descriptors to this process (LISTEN_PID
            // was checked by listen_fds) and nothing else in it owns them.
            let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            match listener.local_addr() {
                Ok(addr) => {
                    tracing::info!(%addr, fd, "inherited socket from systemd");
                    self.inherited.insert(addr, listener);
                }
                Err(e) => {
                    tracing::warn!(fd, error = %e, "inherited descriptor is not a TCP listener")
                }
            }
        }
    }

    /// Bound address of the admin listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, bound, _)| *bound)
    }

    fn addrs(&self, tls: bool) -> Vec<SocketAddr> {
        let mut v: Vec<_> = self
            .listeners
            .iter()
            .filter(|((_, t), _)| *t == tls)
            .map(|(_, (bound, _))| *bound)
            .collect();
        v.sort();
        v
    }

    /// Opens listeners the config has and we do not; closes those we have
    /// and it does not. Kept listeners keep their sockets, so a reload never
    /// refuses a connection on them.
    async fn open_listeners(&mut self, config: &Config) -> io::Result<()> {
        let wanted: Vec<(SocketAddr, bool)> = config
            .server
            .listen
            .iter()
            .map(|a| (*a, true))
            .chain(config.server.listen_plain.iter().map(|a| (*a, false)))
            .collect();
        let mut opened = Vec::new();
        for key in &wanted {
            if self.listeners.contains_key(key) {
                continue;
            }
            let bound = match self.inherited.remove(&key.0) {
                Some(std) => Listener::from_std(std, key.1),
                None => Listener::bind(key.0, key.1, config.server.reuse_port),
            };
            let listener = match bound {
                Ok(l) => l,
                Err(e) => {
                    // All or nothing: do not leave half of a new config bound.
                    for k in opened {
                        if let Some((_, task)) = self.listeners.remove(&k) {
                            task.abort();
                        }
                    }
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot listen on {}: {e}", key.0),
                    ));
                }
            };
            let bound = listener.local_addr()?;
            tracing::info!(addr = %bound, tls = key.1, "listening");
            let task = tokio::spawn(listener.serve(self.shared.clone()));
            self.listeners.insert(*key, (bound, task));
            opened.push(*key);
        }
        if self.admin.as_ref().map(|(want, _, _)| *want) != config.server.admin {
            if let Some((_, _, task)) = self.admin.take() {
                task.abort();
            }
            if let Some(addr) = config.server.admin {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}"))
                })?;
                let bound = listener.local_addr()?;
                tracing::info!(addr = %bound, "admin listening");
                let task = tokio::spawn(crate::admin::serve(listener, self.shared.clone()));
                self.admin = Some((addr, bound, task));
            }
        }
        let stale: Vec<_> = self
            .listeners
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in stale {
            if let Some((bound, task)) = self.listeners.remove(&key) {
                tracing::info!(addr = %bound, tls = key.1, "listener closed by reload");
                task.abort();
            }
        }
        Ok(())
    }

    /// Loads `path` and, if it is good, swaps it in for new connections.
    pub async fn reload(&mut self, path: &Path) -> Result<(), ReloadError> {
        let result = self.try_reload(path).await;
        let label = crate::metrics::ResultLabel {
            result: if result.is_ok() { "ok" } else { "failed" },
        };
        self.shared.metrics.reloads.get_or_create(&label).inc();
        result
    }

    async fn try_reload(&mut self, path: &Path) -> Result<(), ReloadError> {
        let config = Config::load(path)?;
        let snapshot = Snapshot::build(config)?;
        let config = snapshot.config.clone();
        let previous = self.shared.snapshot();
        self.shared.replace(snapshot);
        if let Err(e) = self.open_listeners(&config).await {
            self.shared.replace_arc(previous);
            return Err(ReloadError::Listen(e));
        }
        Ok(())
    }

    /// Stops accepting, sends Close 1001 on every tunnel, lets in-flight
    /// requests finish, and returns when all are done or `grace` has passed.
    pub async fn drain(self, grace: Duration) -> DrainReport {
        let tunnels_before = self.shared.tunnels.live();
        self.shared.start_drain();
        for (_, (_, task)) in self.listeners {
            task.abort();
        }
        let all_done = async {
            self.shared.tunnels.wait_idle().await;
            self.shared.http_conns.wait_idle().await;
        };
        let finished = tokio::time::timeout(grace, all_done).await.is_ok();
        if let Some((_, _, task)) = self.admin {
            task.abort();
        }
        DrainReport {
            tunnels_at_start: tunnels_before,
            cut_tunnels: self.shared.tunnels.live(),
            cut_connections: self.shared.http_conns.live(),
            finished,
        }
    }
}

/// How a drain went.
#[derive(Debug, Clone, Copy)]
pub struct DrainReport {
    pub tunnels_at_start: usize,
    pub cut_tunnels: usize,
    pub cut_connections: usize,
    pub finished: bool,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Listen(io::Error),
}

/// `sluice run`: serve until SIGTERM/SIGINT.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while starting must not take the
    // default action (terminate) once the process has told systemd it is up.
    let mut signals = Signals::new()?;
    let config = Config::load(&path)?;
    let snapshot = Snapshot::build(config)?;
    let shared = Shared::new(snapshot);
    let mut running = Running::start(shared.clone()).await?;
    spawn_housekeeping(shared.clone());
    notify(&[NotifyState::Ready]);
    tracing::info!(config = %path.display(), "sluice ready");

    while let Signal::Reload = signals.next().await {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        notify(&states);
        match running.reload(&path).await {
            Ok(()) => tracing::info!(config = %path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the previous config keeps serving")
            }
        }
        notify(&[NotifyState::Ready]);
    }

    notify(&[NotifyState::Stopping]);
    let grace = running.shared.snapshot().config.server.shutdown_grace;
    tracing::info!(
        tunnels = running.shared.tunnels.live(),
        grace_ms = grace.as_millis() as u64,
        "draining"
    );
    let report = running.drain(grace).await;
    tracing::info!(
        drained_tunnels = report.tunnels_at_start - report.cut_tunnels.min(report.tunnels_at_start),
        cut_tunnels = report.cut_tunnels,
        cut_connections = report.cut_connections,
        "stopped"
    );
    Ok(())
}

/// Periodic upkeep: idle per-IP limiter state is dropped so an address scan
/// cannot grow memory without bound; the systemd watchdog is fed.
fn spawn_housekeeping(shared: Arc<Shared>) {
    let mut watchdog_usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let period = if watchdog {
        Duration::from_micros(watchdog_usec / 2).min(Duration::from_secs(10))
    } else {
        Duration::from_secs(10)
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            shared.evict_idle();
            if watchdog {
                notify(&[NotifyState::Watchdog]);
            }
        }
    });
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Unix signals mapped to [`Signal`].
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::Reload,
            _ = self.term.recv() => Signal::Shutdown,
            _ = self.int.recv() => Signal::Shutdown,
        }
    }
}
