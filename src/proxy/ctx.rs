//! The vocabulary every request handler speaks: what one client
//! connection's requests are served with ([`ConnCtx`]) and the response body
//! type. A leaf of `proxy`: it knows nothing about routing, forwarding or
//! upgrades.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::headers::Forwarding;
use crate::shared::{Shared, Snapshot};

/// Response bodies: streamed from a backend, or made here.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Facts about one client connection, fixed at accept time.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// Which certificate of the snapshot's `tls::Sites` the TLS handshake
    /// chose (by SNI); `None` for cleartext.
    pub cert: Option<usize>,
}

/// What one connection's requests are served with.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub snapshot: Arc<Snapshot>,
    pub conn: ConnInfo,
    /// The connection's places under the ceilings and its busy count; a
    /// tunnel holds it on after the HTTP connection is gone.
    pub client: Arc<crate::conn::Client>,
}

impl ConnCtx {
    /// Who the client of a request with `headers` (as received) is, and
    /// what the backend is told about it (`server.trusted_proxies`).
    pub fn forwarding(&self, headers: &HeaderMap) -> Forwarding {
        Forwarding::resolve(
            headers,
            self.conn.peer.ip(),
            &self.snapshot.config.server.trusted_proxies,
            self.conn.tls,
        )
    }
}
