//! Contract, "Behind a load balancer, and across hosts": with `[cluster]`,
//! `handshakes_per_second`/`handshake_burst` and `max_connections_per_ip`
//! hold across every sluice sharing one Redis; a crashed instance's tunnel
//! counts expire within 30 s; Redis down or slow never stops sluice from
//! serving (local limits alone, logged once).
//!
//! Real parts: Debian's `redis-server` on a free loopback port, two `sluice`
//! binaries, raw TCP clients.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::hostile::*;
use support::redis_server::RedisServer;
use support::*;
use tokio::net::TcpStream;

/// One `sluice run` with one route to `backend`, its `[limits]` and `[cluster]`.
struct Instance {
    proc: Proc,
    plain: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

impl Instance {
    async fn start(redis: &str, backend: SocketAddr, limits: &str, cluster: &str) -> Instance {
        let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let (_, config) = write_config(&format!(
            "[server]\nlisten_plain = [\"{plain}\"]\nadmin = \"{admin}\"\n\
             [limits]\n{limits}\n[[route]]\nbackends = [\"{backend}\"]\n\
             [cluster]\nredis = \"{redis}\"\n{cluster}\n"
        ));
        let proc = Proc::start(&config, None);
        proc.wait_line("sluice ready", 1).await;
        Instance {
            proc,
            plain,
            admin,
            config,
        }
    }

    /// Until `sluice_cluster_redis_up` is `up`.
    async fn redis_up(&self, up: bool) {
        let want = if up { 1.0 } else { 0.0 };
        wait_metric(
            self.admin,
            "sluice_cluster_redis_up",
            &[],
            WAIT,
            "the cluster's Redis state",
            |v| v == Some(want),
        )
        .await;
    }

    async fn checks(&self, outcome: &str) -> f64 {
        let text = scrape(self.admin).await;
        metric(
            &text,
            "sluice_cluster_checks_total",
            &[("outcome", outcome)],
        )
        .unwrap_or(0.0)
    }

    fn lines_with(&self, needle: &str) -> usize {
        let lines = self.proc.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    }
}

/// An upgrade from client address `from`: the status, the head, and the
/// connection (a tunnel while it is kept, when the status is 101).
async fn upgrade_from(from: &str, to: SocketAddr) -> (u16, String, TcpStream) {
    let from: IpAddr = from.parse().unwrap();
    let mut tcp = within("connect", connect_from(from, to)).await.unwrap();
    let (status, head) = raw_request(&mut tcp, &upgrade_request(&to.to_string(), "/", "")).await;
    (status, head, tcp)
}

const UNAVAILABLE: &str = "cluster Redis unavailable";
const ANSWERING: &str = "cluster Redis answering";

#[tokio::test]
async fn two_instances_together_admit_one_burst_not_two() {
    let redis = RedisServer::start().await;
    let backend = EchoWs::start().await;
    let limits = "handshakes_per_second = 1\nhandshake_burst = 5";
    let a = Instance::start(&redis.url(), backend.addr, limits, "").await;
    let b = Instance::start(&redis.url(), backend.addr, limits, "").await;
    a.redis_up(true).await;
    b.redis_up(true).await;
    // Each instance's first call loads the script (NOSCRIPT, then LOAD):
    // made from another client key, so the burst below is untouched.
    for s in [&a, &b] {
        assert_eq!(upgrade_from("127.0.0.2", s.plain).await.0, 101);
    }

    // Each admit script reads its GCRA state with one GET, and nothing else
    // sluice runs does: `cmdstat_get` counts the checks (EVALSHA also
    // counts heartbeats and releases).
    let calls_before = redis.calls("get").await;
    let mut admitted = 0;
    for i in 0..10 {
        let to = if i % 2 == 0 { a.plain } else { b.plain };
        let (status, head, _) = upgrade_from("127.0.0.3", to).await;
        match status {
            101 => admitted += 1,
            429 => assert!(
                head_value(&head, "retry-after").is_some(),
                "429 without Retry-After: {head}"
            ),
            _ => panic!("unexpected answer: {head}"),
        }
    }
    // Each instance's own burst (5) admitted all of its 5: the shared one
    // decided. One token may come back during the run (1/s).
    assert!(
        (5..=6).contains(&admitted),
        "two instances with burst 5 sharing Redis admitted {admitted} of 10"
    );
    let calls = redis.calls("get").await - calls_before;
    assert_eq!(
        calls, 10,
        "one Redis check per handshake the local limits admitted"
    );
    let refused = a.checks("refused_rate").await + b.checks("refused_rate").await;
    assert_eq!(refused, (10 - admitted) as f64);

    // The local limiter is the first check: A's own burst is spent, so
    // Redis is not asked again.
    let calls_before = redis.calls("get").await;
    for _ in 0..4 {
        assert_eq!(upgrade_from("127.0.0.3", a.plain).await.0, 429);
    }
    let asked = redis.calls("get").await - calls_before;
    assert!(
        asked <= 1,
        "Redis was asked {asked} times about handshakes A's local limit refused"
    );
}

#[tokio::test]
async fn the_tunnels_per_ip_cap_holds_across_instances() {
    let redis = RedisServer::start().await;
    let backend = EchoWs::start().await;
    let limits = "max_connections_per_ip = 3";
    let a = Instance::start(&redis.url(), backend.addr, limits, "").await;
    let b = Instance::start(&redis.url(), backend.addr, limits, "").await;
    a.redis_up(true).await;
    b.redis_up(true).await;

    let (s1, _, a1) = upgrade_from("127.0.0.4", a.plain).await;
    let (s2, _, _a2) = upgrade_from("127.0.0.4", a.plain).await;
    let (s3, _, _b1) = upgrade_from("127.0.0.4", b.plain).await;
    assert_eq!((s1, s2, s3), (101, 101, 101));
    let tunnels_at_backend = backend.connections();
    for s in [&a, &b] {
        let (status, head, _) = upgrade_from("127.0.0.4", s.plain).await;
        assert_eq!(
            status, 429,
            "a 4th tunnel for one IP over two instances: {head}"
        );
    }
    assert_eq!(
        backend.connections(),
        tunnels_at_backend,
        "a refused upgrade reached the backend"
    );
    assert_eq!(
        a.checks("refused_connections").await + b.checks("refused_connections").await,
        2.0
    );
    // Another client is not affected.
    assert_eq!(upgrade_from("127.0.0.5", b.plain).await.0, 101);

    // A tunnel closing on A frees a place on B.
    drop(a1);
    let _again = within("a place freed on A to be usable on B", async {
        loop {
            let (status, head, tcp) = upgrade_from("127.0.0.4", b.plain).await;
            match status {
                101 => return tcp,
                429 => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => panic!("unexpected {head}"),
            }
        }
    })
    .await;
    let instances: Vec<String> = redis
        .query(&["ZRANGE", "sluice:instances", "0", "-1"])
        .await
        .unwrap();
    assert_eq!(instances.len(), 2, "{instances:?}");
}

#[tokio::test]
async fn killing_redis_leaves_both_serving_on_local_limits_and_its_return_is_resynced() {
    let mut redis = RedisServer::start().await;
    let port = redis.port;
    let backend = EchoWs::start().await;
    let limits = "handshakes_per_second = 1\nhandshake_burst = 3";
    let a = Instance::start(&redis.url(), backend.addr, limits, "").await;
    let b = Instance::start(&redis.url(), backend.addr, limits, "").await;
    a.redis_up(true).await;
    b.redis_up(true).await;
    redis.kill();

    let mut open = Vec::new();
    for s in [&a, &b] {
        for _ in 0..3 {
            let t = Instant::now();
            let (status, head, tcp) = upgrade_from("127.0.0.6", s.plain).await;
            assert_eq!(status, 101, "Redis down must not refuse: {head}");
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "a handshake waited {:?} for a dead Redis",
                t.elapsed()
            );
            open.push(tcp);
        }
        // Local limits still hold.
        let (status, head, _) = upgrade_from("127.0.0.6", s.plain).await;
        assert_eq!(status, 429, "local burst over, Redis down: {head}");
        s.redis_up(false).await;
        assert_eq!(s.lines_with(UNAVAILABLE), 1, "one log line per outage");
    }
    assert!(a.checks("fallback_local").await + b.checks("fallback_local").await >= 6.0);

    // Redis comes back empty: both are used again, and the six tunnels
    // opened during the outage are in it.
    let redis = RedisServer::start_on(port).await;
    for s in [&a, &b] {
        s.proc.wait_line(ANSWERING, 2).await;
        s.redis_up(true).await;
        assert_eq!(s.lines_with(UNAVAILABLE), 1);
    }
    let keys: Vec<String> = redis.query(&["KEYS", "sluice:tun:*"]).await.unwrap();
    let mut total = 0;
    for key in &keys {
        let n: Option<u32> = redis.query(&["HGET", key, "127.0.0.6"]).await.unwrap();
        total += n.unwrap_or(0);
    }
    assert_eq!(total, 6, "re-synced counts in {keys:?}");
    drop(open);
}

#[tokio::test]
async fn a_killed_instance_releases_its_tunnel_counts_within_30_s() {
    let redis = RedisServer::start().await;
    let backend = EchoWs::start().await;
    let limits = "max_connections_per_ip = 2";
    let mut a = Instance::start(&redis.url(), backend.addr, limits, "").await;
    let b = Instance::start(&redis.url(), backend.addr, limits, "").await;
    a.redis_up(true).await;
    b.redis_up(true).await;
    let (s1, _, _t1) = upgrade_from("127.0.0.7", a.plain).await;
    let (s2, _, _t2) = upgrade_from("127.0.0.7", a.plain).await;
    assert_eq!((s1, s2), (101, 101));
    assert_eq!(upgrade_from("127.0.0.7", b.plain).await.0, 429);

    // SIGKILL: no release is ever sent; only the missing heartbeat tells.
    a.proc.child.kill().unwrap();
    a.proc.child.wait().unwrap();
    let killed = Instant::now();
    loop {
        let (status, head, _) = upgrade_from("127.0.0.7", b.plain).await;
        match status {
            101 => break,
            429 => {}
            _ => panic!("unexpected {head}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the killed instance's tunnels still count after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "a SIGKILLed instance's counts were released after {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn a_redis_slower_than_the_timeout_costs_a_handshake_at_most_the_timeout() {
    let redis = RedisServer::start().await;
    let backend = EchoWs::start().await;
    let a = Instance::start(&redis.url(), backend.addr, "", "timeout = \"20ms\"").await;
    a.redis_up(true).await;
    assert_eq!(upgrade_from("127.0.0.8", a.plain).await.0, 101);

    // Redis busy for 2 s (as under a slow command or a fork on a big dataset).
    let url = redis.url();
    let sleeper = tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(2)
            .query_async::<()>(&mut conn)
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    for _ in 0..5 {
        let t = Instant::now();
        let (status, head, _) = upgrade_from("127.0.0.8", a.plain).await;
        assert_eq!(status, 101, "{head}");
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "a handshake took {:?} with cluster.timeout = 20ms",
            t.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "five handshakes waited for the busy Redis: {:?}",
        started.elapsed()
    );
    assert_eq!(a.lines_with(UNAVAILABLE), 1);
    // The test's own client gives up on DEBUG SLEEP before Redis wakes.
    let _ = sleeper.await;
    a.proc.wait_line(ANSWERING, 2).await;
    a.redis_up(true).await;
    assert_eq!(a.lines_with(UNAVAILABLE), 1, "one outage, one line");
}

/// A Redis address that accepts and never answers (a black hole), then a
/// reload that points `[cluster]` at a real Redis: the client is replaced.
#[tokio::test]
async fn a_black_hole_redis_never_stops_serving_and_a_reload_replaces_the_client() {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = hole.accept().await {
            held.push(tcp);
        }
    });
    let backend = EchoWs::start().await;
    let a = Instance::start(&format!("redis://{hole_addr}/0"), backend.addr, "", "").await;
    for _ in 0..3 {
        let t = Instant::now();
        let (status, head, _) = upgrade_from("127.0.0.9", a.plain).await;
        assert_eq!(status, 101, "{head}");
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }
    a.proc.wait_line(UNAVAILABLE, 1).await;
    a.redis_up(false).await;

    let redis = RedisServer::start().await;
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace(&format!("redis://{hole_addr}/0"), &redis.url());
    std::fs::write(&a.config, text).unwrap();
    a.proc.signal("HUP");
    a.proc.wait_line("config reloaded", 1).await;
    a.redis_up(true).await;
    assert_eq!(upgrade_from("127.0.0.9", a.plain).await.0, 101);
    assert_eq!(a.checks("admitted").await, 1.0);
    held.abort();
}
