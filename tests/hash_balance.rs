//! Contract (v2) "Behind a load balancer, and across hosts": `balance =
//! "hash"` is consistent. With N backends, removing one moves only the keys
//! it held (about 1/N of all); a request without the key goes round robin;
//! an unhealthy backend's keys move and come back when it recovers.
//!
//! The property test drives `sluice::affinity` (what the pool picks with);
//! the others go through sluice on real sockets to backends that answer
//! with their own name.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use sluice::affinity::{backend_id, key_hash, pick};
use sluice::config::Backend;
use support::hostile::*;
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

// ------------------------------------------------------------ property

fn ids(n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| {
            backend_id(&Backend::parse(&format!("10.0.{}.{}:8080", i / 200, i % 200 + 1)).unwrap())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Remove one of N backends: every key that was not on it stays where
    /// it was, every key that was on it moves, and those are about 1/N.
    #[test]
    fn removing_one_of_n_backends_moves_only_its_keys(
        n in 2usize..=12,
        removed in 0usize..12,
        salt in any::<u64>(),
    ) {
        let removed = removed % n;
        let all = ids(n);
        let keys: Vec<u64> = (0..4000u64).map(|k| key_hash(&(k ^ salt).to_le_bytes())).collect();
        let before: Vec<u64> = keys
            .iter()
            .map(|&k| all[pick(k, all.iter().copied().enumerate()).unwrap()])
            .collect();
        let rest: Vec<u64> = all.iter().copied().filter(|&id| id != all[removed]).collect();
        let mut moved = 0usize;
        for (k, was) in keys.iter().zip(&before) {
            let now = rest[pick(*k, rest.iter().copied().enumerate()).unwrap()];
            if *was == all[removed] {
                moved += 1;
            } else {
                prop_assert_eq!(now, *was, "a key of a backend that stayed moved");
            }
        }
        let share = moved as f64 / keys.len() as f64;
        let want = 1.0 / n as f64;
        // Binomial sd at 4000 keys is at most 0.008; 6 sd of slack.
        prop_assert!((share - want).abs() < 0.05, "moved {share:.3}, want ~{want:.3} (n = {n})");
    }

    /// Adding a backend takes only the keys it wins; none move between the
    /// others.
    #[test]
    fn adding_a_backend_moves_keys_only_onto_it(n in 1usize..=11, salt in any::<u64>()) {
        let before_ids = ids(n);
        let after_ids = ids(n + 1);
        let new = after_ids[n];
        for k in 0..2000u64 {
            let k = key_hash(&(k ^ salt).to_le_bytes());
            let was = before_ids[pick(k, before_ids.iter().copied().enumerate()).unwrap()];
            let now = after_ids[pick(k, after_ids.iter().copied().enumerate()).unwrap()];
            prop_assert!(now == was || now == new);
        }
    }
}

// ------------------------------------------------------------ sockets

/// An HTTP backend that answers every request with its name; abort the
/// handle to stop it (its port closes).
async fn named(name: &'static str, at: Option<SocketAddr>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(at.unwrap_or("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            conns.spawn(async move {
                let service = service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(name),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// Which backend answered `GET /?room=ROOM` (a fresh connection each time).
async fn backend_of(sluice: SocketAddr, room: &str) -> String {
    let (status, body) = get(sluice, "chat.test", &format!("/?room={room}"), "").await;
    assert_eq!(status, 200, "room {room}: {body}");
    body
}

fn rooms() -> Vec<String> {
    (0..60).map(|i| format!("room-{i}")).collect()
}

async fn map_rooms(sluice: SocketAddr) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for room in rooms() {
        map.insert(room.clone(), backend_of(sluice, &room).await);
    }
    map
}

#[tokio::test]
async fn one_room_stays_on_one_backend_and_rooms_spread_over_all() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(named(name, None).await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.0).collect();
    let s = Sluice::to_many(&addrs, "balance = \"hash\"\nhash_key = \"query:room\"").await;
    let first = map_rooms(s.plain_addr).await;
    let again = map_rooms(s.plain_addr).await;
    assert_eq!(first, again, "every room went to the same backend twice");
    let used: HashSet<&String> = first.values().collect();
    assert_eq!(used.len(), 3, "60 rooms use all three backends: {first:?}");
    // Keyless requests go round robin: three in a row hit three backends.
    let mut keyless = HashSet::new();
    for _ in 0..3 {
        let (status, body) = get(s.plain_addr, "chat.test", "/", "").await;
        assert_eq!(status, 200);
        keyless.insert(body);
    }
    assert_eq!(keyless.len(), 3, "no key: round robin");
}

#[tokio::test]
async fn a_websocket_handshake_follows_the_same_key() {
    let a = EchoWs::start().await;
    let b = EchoWs::start().await;
    let c = EchoWs::start().await;
    let s = Sluice::to_many(
        &[a.addr, b.addr, c.addr],
        "balance = \"hash\"\nhash_key = \"header:X-Room\"",
    )
    .await;
    let counts = || [a.connections(), b.connections(), c.connections()];
    for room in ["lobby", "kitchen", "attic"] {
        let before = counts();
        for _ in 0..4 {
            let mut req =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    s.ws_url("/ws"),
                )
                .unwrap();
            req.headers_mut().insert("x-room", room.parse().unwrap());
            let (mut ws, _) = within("ws connect", tokio_tungstenite::connect_async(req))
                .await
                .unwrap();
            echo_once(&mut ws, tokio_tungstenite::tungstenite::Message::text("hi")).await;
        }
        let after = counts();
        let grew: Vec<usize> = (0..3).filter(|&i| after[i] != before[i]).collect();
        assert_eq!(
            grew.len(),
            1,
            "room {room}: four tunnels, one backend ({before:?} -> {after:?})"
        );
        assert_eq!(after[grew[0]] - before[grew[0]], 4);
    }
}

#[tokio::test]
async fn an_unhealthy_backends_keys_move_and_come_back_when_it_recovers() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(named(name, None).await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.0).collect();
    let s = Sluice::to_many(
        &addrs,
        "balance = \"hash\"\nhash_key = \"query:room\"\n\
         health_check = { interval = \"100ms\", timeout = \"500ms\", unhealthy_after = 1, healthy_after = 1 }",
    )
    .await;
    let before = map_rooms(s.plain_addr).await;
    // Stop b: its port closes, the active check marks it unhealthy.
    let (b_addr, b_task) = backends.remove(1);
    b_task.abort();
    let _ = b_task.await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let during = map_rooms(s.plain_addr).await;
    for (room, was) in &before {
        let now = &during[room];
        if was == "b" {
            assert_ne!(now, "b", "{room} still on the stopped backend");
        } else {
            assert_eq!(now, was, "{room} moved although its backend stayed up");
        }
    }
    assert!(before.values().any(|b| b == "b"), "b held some rooms");
    // b comes back on the same address: its rooms return.
    let (_b, _task) = named("b", Some(b_addr)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = map_rooms(s.plain_addr).await;
    assert_eq!(after, before, "every room is home again");
}

#[tokio::test]
async fn a_reload_that_removes_a_backend_moves_only_its_rooms() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(named(name, None).await);
    }
    let config = |list: &[SocketAddr]| {
        let list: Vec<String> = list.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "[server]\nlisten_plain = [\"127.0.0.1:0\"]\n\
             [[route]]\nbackends = [{}]\nbalance = \"hash\"\nhash_key = \"query:room\"\n",
            list.join(", ")
        )
    };
    let all: Vec<SocketAddr> = backends.iter().map(|b| b.0).collect();
    let (_dir, path) = write_config(&config(&all));
    let proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;
    let before = map_rooms(addr).await;
    // The list is rewritten without b, and in another order: backends are
    // known by address, not by place.
    std::fs::write(&path, config(&[all[2], all[0]])).unwrap();
    proc.signal("HUP");
    proc.wait_line("config reloaded", 1).await;
    let after = map_rooms(addr).await;
    let mut moved = 0;
    for (room, was) in &before {
        if was == "b" {
            moved += 1;
            assert_ne!(&after[room], "b");
        } else {
            assert_eq!(
                &after[room], was,
                "{room} moved although its backend stayed"
            );
        }
    }
    assert!(
        (10..=30).contains(&moved),
        "about a third of 60 rooms were on b: {moved}"
    );
    // A second instance with the same config maps every room the same way.
    let (_dir2, path2) = write_config(&config(&[all[0], all[2]]));
    let other = Proc::start(&path2, None);
    let other_addr = other.addr("listening").await;
    assert_eq!(map_rooms(other_addr).await, after, "two instances agree");
}
