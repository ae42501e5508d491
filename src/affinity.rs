//! `balance = "hash"`: which backend a request belongs to, by a key taken
//! from the request (`hash_key`). Pure functions; the pool (`crate::pool`)
//! calls [`pick`] with the backends it may use.
//!
//! Rendezvous ("highest random weight") hashing: every backend gets a score
//! for the key, `hash(key, backend)`, and the highest score among the usable
//! backends wins. Why rendezvous rather than a ring or Maglev:
//! * Removing a backend moves exactly the keys it won (each key's scores on
//!   the other backends do not change), about 1/N of them, and adding one
//!   takes only the keys it now wins; a ring needs hundreds of virtual nodes
//!   per backend to get that even, Maglev a lookup table rebuilt on change.
//! * An unhealthy or already-tried backend is simply left out of the
//!   candidates: its keys go to their second-best backend (spread over all
//!   the others, not piled on one neighbour) and come back when it recovers.
//! * O(N) per pick with no state: routes have a handful of backends, and a
//!   score is one xxh3 of 16 bytes.
//!
//! A backend is identified by its address as written (`backend_id`), not by
//! its place in the list, so reordering the list or removing another backend
//! by a reload keeps its keys. The hash is xxh3-64 with a fixed seed, never a
//! per-process random one: several sluice instances behind one balancer, and
//! one instance across reloads and restarts, must send a key to the same
//! backend.

use std::net::IpAddr;

use http::HeaderMap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::config::{Backend, HashKey};

/// Fixed so every instance and every version agrees ("sluice-1").
const SEED: u64 = 0x736c_7569_6365_2d31;

/// A key, hashed.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, SEED)
}

/// A backend's identity for hashing: its scheme and address as written.
pub fn backend_id(backend: &Backend) -> u64 {
    let scheme: &[u8] = match (backend.tls, backend.h2) {
        (false, false) => b"http://",
        (true, false) => b"https://",
        (false, true) => b"h2c://",
        (true, true) => b"h2://",
    };
    let mut name = scheme.to_vec();
    name.extend_from_slice(backend.authority().as_bytes());
    key_hash(&name)
}

/// Backend `id`'s weight for `key`.
pub fn score(key: u64, id: u64) -> u64 {
    let mut both = [0u8; 16];
    both[..8].copy_from_slice(&key.to_le_bytes());
    both[8..].copy_from_slice(&id.to_le_bytes());
    xxh3_64_with_seed(&both, SEED)
}

/// The candidate (`(index, backend id)`) with the highest score for `key`;
/// ties (two backends with one address) go to the lower id.
pub fn pick(key: u64, candidates: impl IntoIterator<Item = (usize, u64)>) -> Option<usize> {
    candidates
        .into_iter()
        .max_by_key(|&(_, id)| (score(key, id), std::cmp::Reverse(id)))
        .map(|(index, _)| index)
}

/// The hashed key of a request, or `None` when the request does not carry
/// it (or carries it empty, as nginx's `hash` treats an empty key): such a
/// request goes round robin. `client` is the client IP the limits use.
pub fn request_key(
    key: &HashKey,
    headers: &HeaderMap,
    query: Option<&str>,
    client: IpAddr,
) -> Option<u64> {
    match key {
        HashKey::ClientIp => Some(match client.to_canonical() {
            IpAddr::V4(a) => key_hash(&a.octets()),
            IpAddr::V6(a) => key_hash(&a.octets()),
        }),
        HashKey::Header(name) => headers
            .get(name)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty())
            .map(key_hash),
        HashKey::Cookie(name) => cookie(headers, name).map(key_hash),
        HashKey::Query(name) => form_urlencoded::parse(query?.as_bytes())
            .find(|(k, _)| k == name)
            .filter(|(_, v)| !v.is_empty())
            .map(|(_, v)| key_hash(v.as_bytes())),
    }
}

/// The first non-empty value of cookie `name` in any `Cookie` header (h2
/// clients may send one header per cookie).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
        .find(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn keys_come_from_where_hash_key_says() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "10.1.2.4".parse().unwrap();
        let h = headers(&[
            ("x-room", " lobby "),
            ("cookie", "a=1; sid=abc"),
            ("cookie", "sid=later"),
        ]);
        let k = |key: &HashKey, q: Option<&str>, ip| request_key(key, &h, q, ip);
        let header = HashKey::Header(http::HeaderName::from_static("x-room"));
        assert_eq!(k(&header, None, ip), Some(key_hash(b"lobby")));
        let sid = HashKey::Cookie("sid".into());
        assert_eq!(k(&sid, None, ip), Some(key_hash(b"abc")));
        assert_eq!(k(&HashKey::Cookie("none".into()), None, ip), None);
        let room = HashKey::Query("room".into());
        assert_eq!(
            k(&room, Some("a=1&room=blue%20sky&room=x"), ip),
            Some(key_hash(b"blue sky"))
        );
        assert_eq!(k(&room, Some("room="), ip), None, "empty is no key");
        assert_eq!(k(&room, Some("rooms=1"), ip), None);
        assert_eq!(k(&room, None, ip), None);
        assert_eq!(
            k(&HashKey::ClientIp, None, ip),
            k(&HashKey::ClientIp, None, "::ffff:10.1.2.3".parse().unwrap())
        );
        assert_ne!(
            k(&HashKey::ClientIp, None, ip),
            k(&HashKey::ClientIp, None, other)
        );
    }

    const PINNED: [usize; 12] = [1, 1, 2, 2, 2, 0, 2, 0, 2, 2, 1, 0];

    /// The mapping is a fixed function of (key, backend address): pinned so
    /// a change that would move every room on upgrade is noticed.
    #[test]
    fn the_mapping_is_fixed_across_processes() {
        let ids: Vec<u64> = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
            .iter()
            .map(|a| backend_id(&Backend::parse(a).unwrap()))
            .collect();
        let picks: Vec<usize> = (0..12)
            .map(|i| {
                pick(
                    key_hash(format!("room-{i}").as_bytes()),
                    ids.iter().copied().enumerate(),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(
            picks, PINNED,
            "the mapping changed: every deployed room would move"
        );
        // Every backend gets some of twelve rooms, and the result is stable.
        for b in 0..3 {
            assert!(picks.contains(&b), "{picks:?}");
        }
        let again: Vec<usize> = (0..12)
            .map(|i| {
                pick(
                    key_hash(format!("room-{i}").as_bytes()),
                    ids.iter().copied().enumerate().rev(),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(picks, again, "candidate order does not matter");
    }
}
