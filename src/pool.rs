//! A route's backends as a pool: balancing (round robin, least
//! connections, or rendezvous hashing of a request key, `crate::affinity`), health (active checks and passive ejection on connect
//! failures) and leases that count a backend's open tunnels and in-flight
//! requests.
//!
//! Health rules:
//! * A connect failure ejects the backend for [`EJECT_FOR`] (passive).
//! * With `health_check` configured, `unhealthy_after` consecutive failed
//!   checks mark it unhealthy and `healthy_after` consecutive passes mark it
//!   healthy again (which also ends a passive ejection).
//! * New connections go only to usable backends. When none is usable because
//!   of passive ejections alone, sluice still tries them (fail open: a refused
//!   connection is the contract's 502). Only when active checks have marked
//!   every untried backend unhealthy is the answer 503.
//! * Existing tunnels are never touched by health changes.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Backend, Balance, HealthCheck, ProxyVersion, Route};

/// How long a backend that refused a connection gets no new ones.
pub const EJECT_FOR: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Member {
    backend: Backend,
    /// `affinity::backend_id`: the backend's identity under `balance = "hash"`.
    id: u64,
    /// Open tunnels plus in-flight requests.
    active: AtomicUsize,
    /// Set by active checks only.
    healthy: AtomicBool,
    fails: AtomicU32,
    passes: AtomicU32,
    /// Passive ejection: milliseconds since the pool's `start`.
    ejected_until: AtomicU64,
}

/// The backends of one route in one config snapshot.
#[derive(Debug)]
pub struct Pool {
    members: Vec<Member>,
    /// TLS toward this route's `https://` backends.
    tls: Arc<rustls::ClientConfig>,
    /// `server.tcp_congestion`, set on every socket toward a backend.
    congestion: Option<Arc<str>>,
    /// Keep-alive connections for plain HTTP requests on this route.
    http: crate::backend::HttpClient,
    /// The same over HTTP/2, for `h2://` and `h2c://` backends.
    http2: crate::backend::HttpClient,
    /// `tls` offering ALPN h2.
    h2_tls: Arc<rustls::ClientConfig>,
    /// `send_proxy_protocol`: a PROXY header on every backend connection.
    send_proxy: Option<ProxyVersion>,
    balance: Balance,
    health: Option<HealthCheck>,
    next: AtomicUsize,
    start: Instant,
}

/// Why no backend could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// Every backend was tried already for this request.
    AllTried,
    /// Active health checks marked every untried backend unhealthy.
    AllUnhealthy,
}

/// What one attempt on a backend came to (see [`Pool::try_each`]).
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// The backend took the request.
    Done(T),
    /// The backend refused the connection (or did not accept it in time):
    /// it is ejected and, if the caller allows, the next one is tried.
    Refused(E),
    /// Any other failure: no other backend is tried.
    Failed(E),
}

/// Why [`Pool::try_each`] reached no backend.
#[derive(Debug)]
pub enum Unreached<E> {
    /// Active checks marked every backend unhealthy; none was tried.
    Unhealthy,
    /// The last attempt's error: every backend refused, or one failed.
    Failed(E),
}

/// One use of a backend; counts toward least-connections until dropped.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    index: usize,
}

impl Lease {
    pub fn backend(&self) -> &Backend {
        &self.pool.members[self.index].backend
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// The backend refused or timed out a connection: eject it for a while.
    pub fn connect_failed(&self) {
        let m = &self.pool.members[self.index];
        let until = self.pool.now_ms() + EJECT_FOR.as_millis() as u64;
        m.ejected_until.store(until, Ordering::Relaxed);
        tracing::warn!(backend = %m.backend.authority(), eject_ms = EJECT_FOR.as_millis() as u64, "backend ejected after a failed connect");
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.members[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// `congestion` is `server.tcp_congestion`, for every backend socket.
    pub fn new(
        route: &Route,
        tls: Arc<rustls::ClientConfig>,
        congestion: Option<Arc<str>>,
    ) -> Pool {
        let h2_tls = crate::backend::h2_tls(&tls);
        Pool {
            http: crate::backend::http_client(tls.clone(), congestion.clone()),
            http2: crate::backend::http2_client(h2_tls.clone(), congestion.clone()),
            h2_tls,
            send_proxy: route.send_proxy_protocol,
            tls,
            congestion,
            members: route
                .backends
                .iter()
                .map(|b| Member {
                    backend: b.clone(),
                    id: crate::affinity::backend_id(b),
                    active: AtomicUsize::new(0),
                    healthy: AtomicBool::new(true),
                    fails: AtomicU32::new(0),
                    passes: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                })
                .collect(),
            balance: route.balance,
            health: route.health_check.clone(),
            next: AtomicUsize::new(0),
            start: Instant::now(),
        }
    }

    pub fn tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }

    pub fn congestion(&self) -> Option<&str> {
        self.congestion.as_deref()
    }

    /// The client for a request of the client connection from `client` to
    /// `local` toward `backend`: HTTP/2 for `h2://`/`h2c://`, else
    /// HTTP/1.1; pooled, except on a `send_proxy_protocol` route, where the
    /// request gets a connection of its own that begins with the client's
    /// PROXY header (`backend::one_shot_client`).
    pub fn http(
        &self,
        backend: &Backend,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Cow<'_, crate::backend::HttpClient> {
        match self.proxy_header(client, local) {
            None if backend.h2 => Cow::Borrowed(&self.http2),
            None => Cow::Borrowed(&self.http),
            Some(header) => Cow::Owned(crate::backend::one_shot_client(
                if backend.h2 { &self.h2_tls } else { &self.tls }.clone(),
                self.congestion.clone(),
                backend.h2,
                header.into(),
            )),
        }
    }

    /// The PROXY header a backend connection made for the client
    /// connection from `client` to `local` begins with, if the route sends
    /// one.
    pub fn proxy_header(&self, client: SocketAddr, local: SocketAddr) -> Option<Vec<u8>> {
        self.send_proxy
            .map(|v| crate::proxy_protocol::encode(v, client, local))
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Picks a backend not in `tried`, preferring usable ones. `key` is the
    /// request's hashed key under `balance = "hash"` (`None`: round robin).
    pub fn pick(self: &Arc<Self>, tried: &[usize], key: Option<u64>) -> Result<Lease, NoBackend> {
        let now = self.now_ms();
        let untried = || (0..self.members.len()).filter(|i| !tried.contains(i));
        let healthy = |i: &usize| self.members[*i].healthy.load(Ordering::Relaxed);
        let usable =
            |i: &usize| healthy(i) && self.members[*i].ejected_until.load(Ordering::Relaxed) <= now;
        let index = self
            .choose(untried().filter(usable), key)
            .or_else(|| self.choose(untried().filter(healthy), key))
            .ok_or(if untried().next().is_none() {
                NoBackend::AllTried
            } else {
                NoBackend::AllUnhealthy
            })?;
        self.members[index].active.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            pool: self.clone(),
            index,
        })
    }

    /// Tries the backends in balance order until one takes the attempt.
    /// A refusal ejects that backend; the next one is tried only when
    /// `retry` is set (the caller knows nothing was sent that a second
    /// backend could receive twice). The lease comes back with the result.
    /// `key`: see [`Pool::pick`]; under hashing the next backend tried is
    /// the key's next best.
    ///
    /// The attempt's future owns what it uses (it does not borrow the
    /// `&Backend`), so a hyper service holding it stays `Send`.
    pub async fn try_each<T, E, F>(
        self: &Arc<Self>,
        retry: bool,
        key: Option<u64>,
        mut attempt: impl FnMut(&Backend) -> F,
    ) -> Result<(Lease, T), Unreached<E>>
    where
        F: Future<Output = Attempt<T, E>>,
    {
        let mut tried = Vec::new();
        let mut last = None;
        loop {
            let lease = match self.pick(&tried, key) {
                Ok(lease) => lease,
                Err(NoBackend::AllUnhealthy) if last.is_none() => return Err(Unreached::Unhealthy),
                Err(_) => return Err(Unreached::Failed(last.expect("a backend was tried"))),
            };
            match attempt(lease.backend()).await {
                Attempt::Done(t) => return Ok((lease, t)),
                Attempt::Refused(e) => {
                    lease.connect_failed();
                    tried.push(lease.index());
                    if !retry {
                        return Err(Unreached::Failed(e));
                    }
                    last = Some(e);
                }
                Attempt::Failed(e) => return Err(Unreached::Failed(e)),
            }
        }
    }

    fn choose(&self, candidates: impl Iterator<Item = usize>, key: Option<u64>) -> Option<usize> {
        let candidates: Vec<usize> = candidates.collect();
        if candidates.is_empty() {
            return None;
        }
        match (self.balance, key) {
            (Balance::Hash, Some(key)) => {
                crate::affinity::pick(key, candidates.iter().map(|&i| (i, self.members[i].id)))
            }
            // A request without the key goes round robin.
            (Balance::RoundRobin | Balance::Hash, _) => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                Some(candidates[n % candidates.len()])
            }
            (Balance::LeastConnections, _) => {
                // Ties go round robin so equal backends share the load.
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                let min = candidates
                    .iter()
                    .map(|i| self.members[*i].active.load(Ordering::Relaxed))
                    .min()?;
                let tied: Vec<usize> = candidates
                    .into_iter()
                    .filter(|i| self.members[*i].active.load(Ordering::Relaxed) == min)
                    .collect();
                Some(tied[n % tied.len()])
            }
        }
    }

    /// True if active checks currently consider backend `i` healthy.
    pub fn is_healthy(&self, i: usize) -> bool {
        self.members[i].healthy.load(Ordering::Relaxed)
    }

    fn record_check(&self, i: usize, ok: bool, check: &HealthCheck) {
        let m = &self.members[i];
        if ok {
            m.fails.store(0, Ordering::Relaxed);
            let passes = m.passes.fetch_add(1, Ordering::Relaxed) + 1;
            if passes >= check.healthy_after {
                m.ejected_until.store(0, Ordering::Relaxed);
                if !m.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(backend = %m.backend.authority(), "backend healthy again");
                }
            }
        } else {
            m.passes.store(0, Ordering::Relaxed);
            let fails = m.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if fails >= check.unhealthy_after && m.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(backend = %m.backend.authority(), fails, "backend unhealthy");
            }
        }
    }

    /// Runs active checks until the pool is dropped (its snapshot replaced
    /// and its last connection gone).
    pub fn spawn_checks(pool: &Arc<Pool>) {
        let Some(check) = pool.health.clone() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let weak: Weak<Pool> = Arc::downgrade(pool);
        tokio::spawn(async move {
            let interval = check.interval.max(Duration::from_millis(50));
            loop {
                tokio::time::sleep(interval).await;
                let Some(pool) = weak.upgrade() else { return };
                for i in 0..pool.members.len() {
                    let backend = &pool.members[i].backend;
                    // sluice's own connection: a LOCAL header, as HAProxy's
                    // `check-send-proxy` sends.
                    let header = pool.send_proxy.map(crate::proxy_protocol::encode_local);
                    let ok = tokio::time::timeout(
                        check.timeout,
                        probe(
                            backend,
                            check.path.as_deref(),
                            &pool.tls,
                            pool.congestion(),
                            header.as_deref(),
                        ),
                    )
                    .await
                    .unwrap_or(false);
                    pool.record_check(i, ok, &check);
                }
            }
        });
    }
}

/// One health probe: a TCP (or TLS) connect, and with a path a `GET` that
/// must answer 2xx or 3xx.
async fn probe(
    backend: &Backend,
    path: Option<&str>,
    tls: &Arc<rustls::ClientConfig>,
    congestion: Option<&str>,
    proxy_header: Option<&[u8]>,
) -> bool {
    let Ok(mut stream) = crate::backend::connect(backend, tls, congestion, proxy_header).await
    else {
        return false;
    };
    let Some(path) = path else {
        return true;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice-health-check\r\nConnection: close\r\n\r\n",
        backend.authority()
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..]).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    // "HTTP/1.1 200 "
    matches!(head.get(9), Some(b'2' | b'3'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn pool(extra: &str) -> Arc<Pool> {
        let toml = format!(
            "[server]\nlisten_plain = [\"127.0.0.1:0\"]\n[[route]]\nbackends = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n{extra}"
        );
        let config = Config::parse(&toml, Path::new("t.toml")).unwrap();
        let tls = crate::tls::backend_client_config(&Default::default(), &config.path).unwrap();
        Arc::new(Pool::new(&config.routes[0], tls, None))
    }

    #[test]
    fn round_robin_skips_ejected_and_tried() {
        let p = pool("");
        let ports: Vec<u16> = (0..3)
            .map(|_| p.pick(&[], None).unwrap().backend().port)
            .collect();
        assert_eq!(ports, [1, 2, 3]);
        p.pick(&[], None).unwrap().connect_failed(); // port 1 ejected
        let ports: Vec<u16> = (0..4)
            .map(|_| p.pick(&[], None).unwrap().backend().port)
            .collect();
        assert!(!ports.contains(&1), "{ports:?}");
        assert_eq!(
            p.pick(&[1, 2], None).unwrap().backend().port,
            1,
            "ejected is still tried when nothing else is left"
        );
        assert_eq!(p.pick(&[0, 1, 2], None).unwrap_err(), NoBackend::AllTried);
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn try_each_ejects_refusers_and_moves_on_only_when_allowed() {
        let p = pool("");
        let refuse_two = |port: u16| {
            if port < 3 {
                Attempt::Refused(port)
            } else {
                Attempt::Done(port)
            }
        };
        let (lease, port) =
            run(p.try_each(true, None, |b| std::future::ready(refuse_two(b.port)))).unwrap();
        assert_eq!((lease.backend().port, port), (3, 3));
        drop(lease);
        // (retry, the attempt refuses rather than fails) -> backends tried
        for (retry, refuse, want) in [(false, true, 1), (true, true, 3), (true, false, 1)] {
            let mut tries = 0;
            let result = run(p.try_each(retry, None, |b| {
                tries += 1;
                std::future::ready(if refuse {
                    Attempt::<(), _>::Refused(b.port)
                } else {
                    Attempt::Failed(b.port)
                })
            }));
            assert!(matches!(result, Err(Unreached::Failed(_))), "{result:?}");
            assert_eq!(tries, want, "retry {retry}, refuse {refuse}");
        }
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let p = pool("balance = \"least_connections\"");
        let a = p.pick(&[], None).unwrap();
        let b = p.pick(&[], None).unwrap();
        assert_ne!(a.index(), b.index());
        let c = p.pick(&[], None).unwrap();
        let all = [a.index(), b.index(), c.index()];
        assert!(all.contains(&0) && all.contains(&1) && all.contains(&2));
        let freed = b.index();
        drop(b);
        assert_eq!(p.pick(&[], None).unwrap().index(), freed);
    }

    #[test]
    fn active_checks_mark_unhealthy_and_back() {
        let p = pool("health_check = { unhealthy_after = 2, healthy_after = 1 }");
        let check = p.health.clone().unwrap();
        for i in 0..3 {
            p.record_check(i, false, &check);
            assert!(p.is_healthy(i));
            p.record_check(i, false, &check);
            assert!(!p.is_healthy(i));
        }
        assert_eq!(p.pick(&[], None).unwrap_err(), NoBackend::AllUnhealthy);
        p.record_check(2, true, &check);
        assert_eq!(p.pick(&[], None).unwrap().backend().port, 3);
    }

    #[test]
    fn hash_keeps_a_key_on_its_backend_moves_it_while_unhealthy_and_brings_it_back() {
        let p = pool("balance = \"hash\"\nhash_key = \"query:room\"\nhealth_check = { unhealthy_after = 1, healthy_after = 1 }");
        let check = p.health.clone().unwrap();
        let key = Some(crate::affinity::key_hash(b"lobby"));
        let home = p.pick(&[], key).unwrap().index();
        for _ in 0..5 {
            assert_eq!(p.pick(&[], key).unwrap().index(), home);
        }
        // A retry after a refusal goes to the key's second choice.
        let second = p.pick(&[home], key).unwrap().index();
        assert_ne!(second, home);
        p.record_check(home, false, &check);
        assert_eq!(p.pick(&[], key).unwrap().index(), second);
        p.record_check(home, true, &check);
        assert_eq!(p.pick(&[], key).unwrap().index(), home);
        // Without a key: round robin over all three.
        let mut seen: Vec<usize> = (0..3).map(|_| p.pick(&[], None).unwrap().index()).collect();
        seen.sort();
        assert_eq!(seen, [0, 1, 2]);
    }
}
