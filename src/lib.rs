//! sluice: a TLS-terminating reverse proxy for HTTP and WebSocket backends that
//! reads WebSocket frame headers as they pass and enforces origin, rate and
//! frame-size policy.
//!
//! # Layout
//! Every arrow between modules points down the pipeline; there is no cycle:
//!
//! ```text
//! main -> daemon -> server -> proxy -> proxy::{forward, upgrade} -> relay -> relay::scan -> frame
//!           |         |                 |              |              |
//!         shared     conn      proxy::{ctx, error}   negotiate,    relay::{half, control, closing,
//!           |                  headers, route,       backend_leg     ending, side, buffers}
//!    config, tls -> acme       policy -> config       pool -> backend
//! ```
//!
//! * [`config`] turns the TOML file into a validated [`config::Config`]
//!   (model, resolve, values, error rendering; no IO); every later stage
//!   sees only resolved, plain data.
//! * [`shared`] holds the current [`shared::Snapshot`] (config, router, TLS
//!   acceptor and certificates, limiters) behind an `ArcSwap`; a connection
//!   takes one snapshot at accept time and keeps it for its whole life.
//! * [`tls`] builds the listeners' rustls config and [`tls::Sites`], the
//!   SNI resolver over the certificate files and [`acme::Certs`] (the
//!   certificate ACME issued and the challenge answers in progress). The
//!   daemon runs [`acme::renew`], the one task that talks to the ACME
//!   server and swaps a new certificate into `Certs` without a reload.
//! * [`server`] owns listeners and the life of one client connection, top to
//!   bottom: the ceilings at accept, TLS, the first-request and keep-alive
//!   deadlines, hyper. [`conn`] is what one connection holds (its places
//!   under the ceilings, whether it is busy).
//! * [`proxy`] is request handling: `proxy` itself checks, normalizes and
//!   routes a request and dispatches it to `proxy::forward` (plain HTTP over
//!   the route's pooled client) or `proxy::upgrade` (the WebSocket handshake:
//!   admit, offer and reach the backend, its leg spoken directly on the
//!   socket, then open a [`relay::Tunnel`]). Both paths call down into
//!   `proxy::ctx` (the connection's context, the body type) and
//!   `proxy::error` (`ProxyError` and its one status table), never into each
//!   other or into `proxy` itself.
//! * [`pool`] is a route's backends: balancing, health, leases, and
//!   `Pool::try_each`, the one retry loop (refusers ejected); under
//!   `balance = "hash"` it picks with [`affinity`] (the request's key,
//!   rendezvous hashing). [`backend`] opens the connections; [`headers`]
//!   holds the forwarded-request rules.
//! * [`proxy_protocol`] reads the PROXY header a listed balancer sends
//!   (`server` calls it before TLS) and makes the one a route sends to its
//!   backends (`send_proxy_protocol`).
//! * [`relay`] is a tunnel's life in one folder: `relay::tunnel` (from the
//!   101 to the log line; the only part that sees hyper), the two
//!   directions' loop (`half`) and their shared state and watchdog
//!   (`control`: idle, keep-alive pings, planned ends), what the daemon asks
//!   of open tunnels (`relay::closing`: drains and backend removals, spread
//!   over a window; plain types that [`shared`] publishes, so that leaf is
//!   the one part of `relay` that `shared` names), over [`relay::scan`],
//!   the RFC 6455 rules as a sans-IO scanner that the fuzzer, the property
//!   tests and the bench drive too.
//! * [`policy`] is the state behind the limits: `policy::rate` (the local
//!   per-IP limiters and counts, the tunnel caps), `policy::origin`, and
//!   `policy::cluster` (`[cluster]`: the per-IP rate and tunnel cap shared
//!   with the other instances through Redis, asked only after the local
//!   limits admit; its outage leaves the local answer standing).
//! * [`socket`] holds the options sluice sets on its own sockets
//!   (`reuse_port`, `tcp_congestion`).
//! * [`frame`] parses frame headers and Close payloads: no IO, no allocation.
//!
//! The leaves (`frame`, `relay::scan`, `route`, `headers`, `policy::origin`,
//! `config`, `proxy::upgrade::negotiate`) do no network IO and are
//! unit-tested with plain values.
#![warn(missing_debug_implementations)]

pub mod acme;
pub mod admin;
pub mod affinity;
pub mod backend;
pub mod cli;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod demo;
pub mod frame;
pub mod headers;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod relay;
pub mod route;
pub mod server;
pub mod shared;
pub mod socket;
pub mod stream;
pub mod tls;

/// The handshake's old path, still used by the test harness
/// (`sluice::upgrade::accept_key`).
pub use proxy::upgrade;
