//! sluice: a TLS-terminating reverse proxy for HTTP and WebSocket backends that
//! reads WebSocket frame headers as they pass and enforces origin, rate and
//! frame-size policy.
//!
//! # Layout
//! Data flows one way through the modules:
//!
//! ```text
//! main -> daemon -> server -> proxy -> upgrade -> relay -> frame
//!                     |          |         |
//!                   shared     headers   policy, backend
//! ```
//!
//! * [`config`] turns the TOML file into a validated [`config::Config`]; every
//!   later stage sees only resolved, plain data.
//! * [`shared`] holds the current [`shared::Snapshot`] (config, router, TLS
//!   acceptor, limiters) behind an `ArcSwap`; a connection takes one snapshot at
//!   accept time and keeps it for its whole life.
//! * [`server`] owns listeners and the life of one client connection.
//! * [`proxy`] is the per-connection hyper service: routing and plain HTTP.
//! * [`upgrade`] is the WebSocket handshake (its backend leg is spoken
//!   directly on the socket); on success it hands both streams to [`relay`],
//!   which is generic over the two streams and never sees hyper.
//! * [`socket`] holds the options sluice sets on its own sockets
//!   (`reuse_port`, `tcp_congestion`).
//! * [`frame`] is the pass-through frame-header scanner: no IO, no allocation.
//!
//! The leaves (`frame`, `route`, `headers`, `policy::origin`, `config`) do no
//! network IO and are unit-tested with plain values.
#![warn(missing_debug_implementations)]

pub mod admin;
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
pub mod relay;
pub mod route;
pub mod server;
pub mod shared;
pub mod socket;
pub mod stream;
pub mod tls;

/// Kept at its old path for the test harness (`sluice::upgrade::accept_key`).
pub use proxy::upgrade;
