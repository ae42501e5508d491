//! Running as a daemon: start, signals, reload, drain, sd_notify.
//!
//! Unix signals are mapped to a [`Signal`] value, and `run` acts on that value
//! alone. Tests do not inject signals: in-process tests call
//! [`Running::reload`] (the same function SIGHUP reaches), and the signal
//! contract itself is tested on the real binary (`tests/daemon.rs`). A reload
//! builds a complete new snapshot first and only then swaps it in; a bad
//! config is logged and changes nothing.

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
    /// The ACME renewal task and the state it keeps served.
    acme: Option<(Arc<crate::acme::Certs>, JoinHandle<()>)>,
}

impl Running {
    /// Binds every listener of the snapshot's config and starts serving.
    pub async fn start(shared: Arc<Shared>) -> io::Result<Running> {
        Running::start_with(shared, Inherited::default()).await
    }

    /// Like [`Running::start`], using the sockets systemd passed first, so a
    /// restart of the binary never refuses a connection on an address
    /// systemd holds.
    pub async fn start_with(shared: Arc<Shared>, inherited: Inherited) -> io::Result<Running> {
        let mut running = Running {
            shared,
            listeners: HashMap::new(),
            admin: None,
            inherited: inherited.0,
            acme: None,
        };
        let config = running.shared.snapshot().config.clone();
        let prepared = running.prepare(&config).await?;
        running.commit(prepared);
        running.sync_acme();
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

    /// Binds what the config has and we do not, serving nothing yet. All or
    /// nothing: on any failure what was bound here is released (inherited
    /// sockets go back) and the running listeners are untouched.
    async fn prepare(&mut self, config: &Config) -> io::Result<Prepared> {
        let mut prepared = Prepared {
            wanted: wanted(config),
            listeners: Vec::new(),
            admin: None,
        };
        for key in prepared.wanted.clone() {
            if self.listeners.contains_key(&key) {
                continue;
            }
            let (inherited, bound) = match self.inherited.remove(&key.0) {
                Some(std) => (true, Listener::from_std(std, key.1)),
                None => (
                    false,
                    Listener::bind(key.0, key.1, config.server.reuse_port),
                ),
            };
            match bound {
                Ok(l) => prepared.listeners.push((key, inherited, l)),
                Err(e) => {
                    self.release(prepared);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot listen on {}: {e}", key.0),
                    ));
                }
            }
        }
        let current_admin = self.admin.as_ref().map(|(want, _, _)| *want);
        if current_admin != config.server.admin {
            prepared.admin = Some(match config.server.admin {
                None => None,
                Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => Some((addr, l)),
                    Err(e) => {
                        self.release(prepared);
                        return Err(io::Error::new(
                            e.kind(),
                            format!("cannot listen on {addr} (admin): {e}"),
                        ));
                    }
                },
            });
        }
        Ok(prepared)
    }

    /// Undoes a [`Running::prepare`] that will not be committed.
    fn release(&mut self, prepared: Prepared) {
        for ((addr, _), inherited, listener) in prepared.listeners {
            if inherited {
                if let Ok(std) = listener.listener.into_std() {
                    self.inherited.insert(addr, std);
                }
            }
        }
    }

    /// Starts serving what [`Running::prepare`] bound and closes what the
    /// config no longer has. Kept listeners keep their sockets, so a reload
    /// never refuses a connection on them.
    fn commit(&mut self, prepared: Prepared) {
        for (key, _, listener) in prepared.listeners {
            let Ok(bound) = listener.local_addr() else {
                continue;
            };
            tracing::info!(addr = %bound, tls = key.1, "listening");
            let task = tokio::spawn(listener.serve(self.shared.clone()));
            self.listeners.insert(key, (bound, task));
        }
        if let Some(admin) = prepared.admin {
            if let Some((_, _, task)) = self.admin.take() {
                task.abort();
            }
            if let Some((addr, listener)) = admin {
                if let Ok(bound) = listener.local_addr() {
                    tracing::info!(addr = %bound, "admin listening");
                    let task = tokio::spawn(crate::admin::serve(listener, self.shared.clone()));
                    self.admin = Some((addr, bound, task));
                }
            }
        }
        let stale: Vec<_> = self
            .listeners
            .keys()
            .filter(|k| !prepared.wanted.contains(k))
            .copied()
            .collect();
        for key in stale {
            if let Some((bound, task)) = self.listeners.remove(&key) {
                tracing::info!(addr = %bound, tls = key.1, "listener closed by reload");
                task.abort();
            }
        }
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

    /// Everything that can fail (parse, certificates, binding new
    /// addresses) happens before anything changes, so a refused reload
    /// leaves the running listeners, admin and config exactly as they were.
    async fn try_reload(&mut self, path: &Path) -> Result<(), ReloadError> {
        let config = Config::load(path)?;
        let snapshot = Snapshot::build_after(config, Some(&self.shared.snapshot()))?;
        let config = snapshot.config.clone();
        let prepared = self.prepare(&config).await.map_err(ReloadError::Listen)?;
        self.shared.replace(snapshot);
        self.commit(prepared);
        self.sync_acme();
        Ok(())
    }

    /// One ACME renewal task, for the current snapshot's `[tls.acme]`: kept
    /// when a reload kept the state, replaced when it changed, stopped when
    /// it went.
    fn sync_acme(&mut self) {
        let snapshot = self.shared.snapshot();
        let wanted = snapshot.sites.as_ref().and_then(|s| s.acme()).cloned();
        let same = match (&self.acme, &wanted) {
            (Some((running, _)), Some(wanted)) => Arc::ptr_eq(running, wanted),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some((_, task)) = self.acme.take() {
            task.abort();
        }
        if let Some(certs) = wanted {
            let shared = self.shared.clone();
            let task = tokio::spawn(crate::acme::renew(certs.clone(), move || {
                shared
                    .metrics
                    .set_certificates(shared.snapshot().sites.as_deref());
            }));
            self.acme = Some((certs, task));
        }
    }

    /// Stops accepting, sends Close 1001 on every tunnel, lets in-flight
    /// requests finish, and returns when all are done or `grace` has passed.
    pub async fn drain(self, grace: Duration) -> DrainReport {
        let tunnels_before = self.shared.tunnels.live();
        // The Close frames go out spread over drain_spread, which ends
        // early enough in the grace for the last close handshakes.
        let spread = self
            .shared
            .snapshot()
            .config
            .server
            .spread_window()
            .min(grace.mul_f64(0.9));
        tracing::info!(
            tunnels = tunnels_before,
            spread_ms = spread.as_millis() as u64,
            "closing tunnels spread over the drain window"
        );
        self.shared.start_drain(spread);
        if let Some((_, task)) = &self.acme {
            task.abort();
        }
        for (_, (_, task)) in self.listeners {
            task.abort();
        }
        // A connection whose upgrade is still in flight becomes a tunnel
        // (tracked before the connection ends): done only when both are
        // zero at once.
        let all_done = async {
            loop {
                self.shared.tunnels.wait_idle().await;
                self.shared.http_conns.wait_idle().await;
                if self.shared.tunnels.live() == 0 {
                    break;
                }
            }
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

/// Listeners bound for a config but not serving yet.
struct Prepared {
    /// Every (address, tls) the config has.
    wanted: Vec<(SocketAddr, bool)>,
    /// Newly bound: key, whether the socket was inherited, the listener.
    listeners: Vec<((SocketAddr, bool), bool, Listener)>,
    /// `Some` when the admin listener changes: the new one, or none.
    admin: Option<Option<(SocketAddr, tokio::net::TcpListener)>>,
}

fn wanted(config: &Config) -> Vec<(SocketAddr, bool)> {
    config
        .server
        .listen
        .iter()
        .map(|a| (*a, true))
        .chain(config.server.listen_plain.iter().map(|a| (*a, false)))
        .collect()
}

/// Listening sockets systemd passed (`LISTEN_FDS`), by address.
#[derive(Debug, Default)]
pub struct Inherited(HashMap<SocketAddr, std::net::TcpListener>);

impl Inherited {
    /// Takes the sockets systemd passed and clears `LISTEN_*` from the
    /// environment. Call it before any thread starts: changing the
    /// environment while another thread may read it is unsound.
    pub fn take_from_env() -> Inherited {
        use std::os::fd::FromRawFd;
        let mut inherited = HashMap::new();
        let fds = match sd_notify::listen_fds() {
            Ok(fds) => fds,
            Err(e) => {
                eprintln!("sluice: ignoring LISTEN_FDS: {e}");
                return Inherited(inherited);
            }
        };
        for fd in fds {
            // SAFETY: systemd hands these descriptors to this process (LISTEN_PID
            // was checked by listen_fds) and nothing else in it owns them.
            let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            match listener.local_addr() {
                Ok(addr) => {
                    inherited.insert(addr, listener);
                }
                Err(e) => eprintln!("sluice: inherited descriptor {fd} is not a TCP listener: {e}"),
            }
        }
        Inherited(inherited)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
///
/// `inherited`: the sockets systemd passed, taken before the runtime started
/// ([`Inherited::take_from_env`]).
pub async fn run(path: PathBuf, inherited: Inherited) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while starting must not take the
    // default action (terminate) once the process has told systemd it is up.
    let mut signals = Signals::new()?;
    let config = Config::load(&path)?;
    let snapshot = Snapshot::build(config)?;
    let shared = Shared::new(snapshot);
    for addr in inherited.0.keys() {
        tracing::info!(%addr, "inherited socket from systemd");
    }
    let mut running = Running::start_with(shared.clone(), inherited).await?;
    notify(&[NotifyState::Ready]);
    // After READY=1: its first tick feeds the watchdog at once, and systemd
    // expects READY=1 first.
    spawn_housekeeping(shared.clone());
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
