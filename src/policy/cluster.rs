//! `[cluster]`: the per-IP handshake rate and tunnels-per-IP cap held across
//! every sluice that shares one Redis.
//!
//! The local limits stay the first check; Redis is asked only about a
//! handshake they admitted, once, by one Lua script (`cluster/admit.lua`:
//! the route's GCRA step, then the tunnel count summed over the live
//! instances), and told once when that tunnel closes (`cluster/release.lua`).
//! Nothing else touches Redis on the way of a request or a frame.
//!
//! Tunnel counts are per instance (a hash `sluice:tun:{instance}`, client key
//! → open tunnels) and live only while that instance heartbeats
//! (`cluster/heartbeat.lua`, every [`HEARTBEAT`], TTL [`INSTANCE_TTL`]), so a
//! crashed instance's tunnels stop counting within [`INSTANCE_TTL`]. The
//! heartbeat replaces the hash with the true local counts after anything
//! that may have lost an update (an outage, a failed release, a reload) and
//! every [`RESYNC`], so a lost decrement heals.
//!
//! Redis down, erroring, or slower than `cluster.timeout` is an outage: the
//! local limits alone decide, nothing waits for Redis, one log line when it
//! starts and one when it ends. While it lasts a probe runs every
//! [`PROBE`]; a Redis that answers the probe within the timeout gets the
//! true counts and is used again.

use std::fmt::Display;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::rate::{limit_key, ConnectionCounts, SharedCount};
use crate::config::{self, Limits};
use crate::metrics::{ClusterCheckLabel, ClusterOutcome, Metrics};

/// A silent instance's tunnels stop counting after this (contract: 30 s).
pub const INSTANCE_TTL: Duration = Duration::from_secs(15);
/// How often a live instance says so: three beats per TTL, so one slow
/// heartbeat does not drop its counts.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// The true local counts replace the shared ones at least this often.
pub const RESYNC: Duration = Duration::from_secs(60);
/// The probe's period during an outage.
pub const PROBE: Duration = Duration::from_secs(1);
/// Heartbeats, re-syncs and releases keep no client waiting and a re-sync
/// carries every open client key, so they may take longer than a check.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(2);

const INSTANCES: &str = "sluice:instances";
const COUNTS_PREFIX: &str = "sluice:tun:";

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("cluster/admit.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("cluster/release.lua")));
static BEAT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("cluster/heartbeat.lua")));

/// What the shared limits say about one handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// Over the shared handshake rate: 429 with this Retry-After.
    Rate(Duration),
    /// The shared tunnels-per-IP cap is reached: 429.
    Connections,
    /// Redis did not answer in time (or is known down): the local limits,
    /// which already admitted it, decide.
    Local,
}

/// The process's cluster client, replaced when a reload changes `[cluster]`;
/// empty without it. Tunnel slots report their release here, to whichever
/// client is current.
#[derive(Debug)]
pub struct ClusterSlot {
    /// This process in Redis, for its whole life (reloads keep it).
    instance: Arc<str>,
    current: ArcSwapOption<Cluster>,
}

impl Default for ClusterSlot {
    fn default() -> Self {
        ClusterSlot::new()
    }
}

impl ClusterSlot {
    pub fn new() -> ClusterSlot {
        let id: String = crate::frame::random_bytes::<8>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ClusterSlot {
            instance: Arc::from(id),
            current: ArcSwapOption::empty(),
        }
    }

    pub fn current(&self) -> Option<Arc<Cluster>> {
        self.current.load_full()
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Starts, replaces or stops the client so that it matches `settings`;
    /// unchanged settings keep the running client (and its connection).
    /// Needs a tokio runtime when `settings` is `Some`.
    pub fn configure(
        &self,
        settings: Option<&config::Cluster>,
        counts: &Arc<ConnectionCounts>,
        metrics: &Metrics,
    ) {
        let current = self.current.load_full();
        if current.as_ref().map(|c| &c.settings) == settings {
            return;
        }
        let next = settings.and_then(|s| {
            Cluster::start(s.clone(), self.instance.clone(), counts.clone(), metrics)
        });
        match (&current, &next) {
            (_, Some(c)) => {
                tracing::info!(redis = %c.redis_name, instance = %self.instance, timeout_ms = c.settings.timeout.as_millis() as u64, "cluster limits on Redis")
            }
            (Some(_), None) => tracing::info!("cluster limits off: local limits alone"),
            (None, None) => {}
        }
        if next.is_none() {
            metrics.cluster_redis_up.set(0);
        }
        self.current.store(next);
    }
}

impl SharedCount for ClusterSlot {
    fn release(&self, key: IpAddr) {
        if let Some(cluster) = self.current.load_full() {
            cluster.release(key);
        }
    }
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One `[cluster]` setting's client: the Redis connection (reconnecting by
/// itself), whether Redis is usable now, and the upkeep task.
#[derive(Debug)]
pub struct Cluster {
    settings: config::Cluster,
    /// The URL without credentials, for log lines.
    redis_name: String,
    redis: ConnectionManager,
    /// `sluice:tun:{instance}`.
    counts_key: String,
    instance: Arc<str>,
    /// UNKNOWN until the first probe, then UP or DOWN.
    state: AtomicU8,
    /// Something may have been lost since the last re-sync: releases are
    /// skipped (the next re-sync carries the truth) until it has run.
    dirty: AtomicBool,
    redis_up: Gauge,
    /// By [`ClusterOutcome`], in its declaration order.
    checks: [Counter; 4],
}

impl Cluster {
    /// The client and its upkeep task (which ends when the client is
    /// dropped). `None`, logged, if the URL is refused (config checks it
    /// first, so only by a change in the redis crate).
    fn start(
        settings: config::Cluster,
        instance: Arc<str>,
        counts: Arc<ConnectionCounts>,
        metrics: &Metrics,
    ) -> Option<Arc<Cluster>> {
        let redis_name = without_credentials(&settings.redis);
        // The connection manager reconnects by itself; the per-call timeout
        // is ours, so a response timeout only bounds what a black hole keeps.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(BACKGROUND_TIMEOUT))
            .set_response_timeout(Some(BACKGROUND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(PROBE);
        let redis = redis::Client::open(settings.redis.as_str())
            .and_then(|client| ConnectionManager::new_lazy_with_config(client, manager_config));
        let redis = match redis {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(redis = %redis_name, error = %e, "cluster Redis refused; local limits alone");
                return None;
            }
        };
        let outcome = |outcome| {
            metrics
                .cluster_checks
                .get_or_create(&ClusterCheckLabel { outcome })
                .clone()
        };
        let cluster = Arc::new(Cluster {
            counts_key: format!("{COUNTS_PREFIX}{instance}"),
            instance,
            redis_name,
            settings,
            redis,
            state: AtomicU8::new(UNKNOWN),
            dirty: AtomicBool::new(true),
            redis_up: metrics.cluster_redis_up.clone(),
            checks: [
                outcome(ClusterOutcome::Admitted),
                outcome(ClusterOutcome::RefusedRate),
                outcome(ClusterOutcome::RefusedConnections),
                outcome(ClusterOutcome::FallbackLocal),
            ],
        });
        cluster.redis_up.set(0);
        tokio::spawn(upkeep(Arc::downgrade(&cluster), counts));
        Some(cluster)
    }

    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// The shared check for a handshake the local limits admitted on route
    /// `route` (its label: routes are matched across instances by it).
    /// Takes at most `cluster.timeout`; during an outage, no time at all.
    pub async fn admit(&self, route: &str, ip: IpAddr, limits: &Limits) -> Verdict {
        let verdict = if self.is_up() {
            self.ask(route, ip, limits).await
        } else {
            Verdict::Local
        };
        let outcome = match verdict {
            Verdict::Admitted => 0,
            Verdict::Rate(_) => 1,
            Verdict::Connections => 2,
            Verdict::Local => 3,
        };
        self.checks[outcome].inc();
        verdict
    }

    async fn ask(&self, route: &str, ip: IpAddr, limits: &Limits) -> Verdict {
        let client = limit_key(ip).to_string();
        let emission_us = 1e6 / f64::from(limits.handshakes_per_second.max(1));
        let mut call = ADMIT.prepare_invoke();
        call.key(format!("sluice:hs:{route}:{client}"))
            .key(INSTANCES)
            .key(&self.counts_key)
            .arg(emission_us)
            .arg(limits.handshake_burst)
            .arg(&client)
            .arg(limits.max_connections_per_ip)
            .arg(COUNTS_PREFIX)
            .arg(INSTANCE_TTL.as_millis() as u64);
        let mut redis = self.redis.clone();
        let answer = tokio::time::timeout(
            self.settings.timeout,
            call.invoke_async::<Vec<i64>>(&mut redis),
        )
        .await;
        match answer {
            Ok(Ok(v)) => match v.as_slice() {
                [0] => Verdict::Admitted,
                [1, us] => Verdict::Rate(Duration::from_micros((*us).max(0) as u64)),
                [2] => Verdict::Connections,
                other => {
                    self.outage(format_args!("unexpected answer {other:?}"));
                    Verdict::Local
                }
            },
            Ok(Err(e)) => {
                self.outage(e);
                Verdict::Local
            }
            Err(_) => {
                self.outage(SLOW);
                Verdict::Local
            }
        }
    }

    /// A tunnel counted here closed. Sent in the background; skipped while
    /// a re-sync is due, since that re-sync carries the true count.
    fn release(self: Arc<Self>, key: IpAddr) {
        if !self.is_up() || self.dirty.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.dirty.store(true, Ordering::Release);
            return;
        };
        runtime.spawn(async move {
            let mut call = RELEASE.prepare_invoke();
            call.key(&self.counts_key).arg(key.to_string());
            let mut redis = self.redis.clone();
            match tokio::time::timeout(BACKGROUND_TIMEOUT, call.invoke_async::<i64>(&mut redis))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => self.outage(e),
                Err(_) => self.outage(SLOW),
            }
        });
    }

    /// Redis failed or was too slow: local limits alone until a probe
    /// succeeds. Logged once per outage.
    fn outage(&self, why: impl Display) {
        self.dirty.store(true, Ordering::Release);
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            self.redis_up.set(0);
            tracing::warn!(redis = %self.redis_name, error = %why, "cluster Redis unavailable: local limits alone until it answers again");
        }
    }

    /// A probe and a re-sync succeeded: shared limits again.
    fn back(&self) {
        if self.state.swap(UP, Ordering::AcqRel) != UP {
            self.redis_up.set(1);
            tracing::info!(redis = %self.redis_name, instance = %self.instance, "cluster Redis answering: shared limits in force");
        }
    }

    /// Whether Redis answers a PING within `limit`.
    async fn probe(&self, limit: Duration) -> Result<(), String> {
        let mut redis = self.redis.clone();
        match tokio::time::timeout(limit, redis::cmd("PING").query_async::<String>(&mut redis))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(SLOW.to_owned()),
        }
    }

    /// Keeps this instance alive in Redis; with `counts`, replaces its
    /// tunnel counts by them.
    async fn heartbeat(&self, counts: Option<Vec<(IpAddr, u32)>>) -> Result<(), String> {
        let mut call = BEAT.prepare_invoke();
        call.key(INSTANCES)
            .key(&self.counts_key)
            .arg(&*self.instance)
            .arg(INSTANCE_TTL.as_millis() as u64)
            .arg(if counts.is_some() { "1" } else { "0" });
        for (key, n) in counts.iter().flatten() {
            call.arg(key.to_string()).arg(*n);
        }
        let mut redis = self.redis.clone();
        let limit = BACKGROUND_TIMEOUT.max(self.settings.timeout);
        match tokio::time::timeout(limit, call.invoke_async::<i64>(&mut redis)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(SLOW.to_owned()),
        }
    }
}

const SLOW: &str = "no answer within the timeout";

/// The cluster's background work: heartbeats, re-syncs, and during an outage
/// the probe. Ends when its client is replaced or dropped.
async fn upkeep(cluster: Weak<Cluster>, counts: Arc<ConnectionCounts>) {
    let mut tick = tokio::time::interval(PROBE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat: Option<Instant> = None;
    let mut last_sync: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        let state = c.state.load(Ordering::Acquire);
        if state != UP {
            // Probed at the handshake's timeout, so a Redis that is merely
            // slow stays out instead of flapping; the first connection may
            // take longer to set up.
            let limit = if state == UNKNOWN {
                BACKGROUND_TIMEOUT
            } else {
                c.settings.timeout
            };
            if let Err(why) = c.probe(limit).await {
                c.outage(why);
                continue;
            }
        }
        // Cleared before the counts are read: a loss after this point sets
        // it again and is healed by the next re-sync.
        let dirty = c.dirty.swap(false, Ordering::AcqRel);
        let resync = state != UP || dirty || last_sync.is_none_or(|t| t.elapsed() >= RESYNC);
        if !resync && last_beat.is_some_and(|t| t.elapsed() < HEARTBEAT) {
            continue;
        }
        match c.heartbeat(resync.then(|| counts.all())).await {
            Ok(()) => {
                let now = Instant::now();
                last_beat = Some(now);
                if resync {
                    last_sync = Some(now);
                }
                c.back();
            }
            Err(why) => c.outage(why),
        }
    }
}

/// `redis://user:secret@host:6379/0` → `redis://host:6379/0`.
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_carry_no_redis_password() {
        assert_eq!(
            without_credentials("redis://:hunter2@10.0.0.5:6379/0"),
            "redis://10.0.0.5:6379/0"
        );
        assert_eq!(
            without_credentials("rediss://u:p@r.example:6380"),
            "rediss://r.example:6380"
        );
        assert_eq!(
            without_credentials("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }

    /// The crash bound of the contract (30 s) holds with a beat to spare.
    #[test]
    fn a_silent_instance_expires_within_the_contract() {
        assert!(INSTANCE_TTL + HEARTBEAT <= Duration::from_secs(30));
        assert!(INSTANCE_TTL >= HEARTBEAT * 3);
    }
}
