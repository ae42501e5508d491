//! Why a request was not proxied, and the one table from that to what the
//! client sees: [`ProxyError::status`], the response of
//! [`ProxyError::into_response`], the log level of [`ProxyError::fault`] and
//! the metric label of [`ProxyError::reason`]. Each is an exhaustive match,
//! so a new error must pick a row in every one.
//!
//! A leaf of `proxy`: the plain-HTTP path and the upgrade path both return
//! these errors; nothing here knows which path made one.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper_util::client::legacy;

use super::ctx::Body;
use crate::backend::BackendError;
use crate::metrics::Rejection;
use crate::pool::Unreached;
use crate::route;

/// Why a request was not proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("bad request: {0}")]
    BadPath(#[from] route::PathError),
    #[error("unsupported WebSocket version")]
    WrongWebSocketVersion,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("no route")]
    NoRoute,
    #[error("origin not allowed")]
    OriginForbidden,
    #[error("handshake rate exceeded")]
    HandshakeRate { retry_after: Duration },
    #[error("too many connections from this address")]
    TooManyConnections,
    /// `server.max_tunnels` or `route.max_tunnels` reached (503).
    #[error("too many tunnels open; retry later")]
    TunnelCap,
    /// Reaching a backend for an upgrade failed.
    #[error("backend unavailable")]
    Backend(#[from] BackendError),
    /// The pooled HTTP client's request failed: the backend refused the
    /// connection or broke off the exchange.
    #[error("backend unavailable")]
    BackendRequest(#[source] legacy::Error),
    /// The pooled HTTP client could not set its connection up (TLS, or a
    /// backend it cannot name).
    #[error("backend handshake invalid: backend connection failed")]
    BackendConnect(#[source] legacy::Error),
    #[error("backend timed out")]
    BackendTimeout,
    #[error("no healthy backend")]
    NoHealthyBackend,
    #[error("backend handshake invalid: {0}")]
    BadBackendHandshake(&'static str),
    /// An h2 request for a host this connection's certificate was not
    /// chosen for (connection coalescing onto another site).
    #[error("misdirected request: this connection's certificate is not for that host")]
    Misdirected,
}

/// Who is at fault, which decides the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Backend,
}

impl ProxyError {
    /// The contract's status table.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::WrongWebSocketVersion => StatusCode::UPGRADE_REQUIRED,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::OriginForbidden => StatusCode::FORBIDDEN,
            ProxyError::HandshakeRate { .. } | ProxyError::TooManyConnections => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::Backend(BackendError::TimedOut) | ProxyError::BackendTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Backend(_)
            | ProxyError::BackendRequest(_)
            | ProxyError::BackendConnect(_)
            | ProxyError::BadBackendHandshake(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoHealthyBackend | ProxyError::TunnelCap => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::BadPath(_)
            | ProxyError::WrongWebSocketVersion
            | ProxyError::MethodNotAllowed
            | ProxyError::NoRoute
            | ProxyError::OriginForbidden
            | ProxyError::HandshakeRate { .. }
            | ProxyError::TooManyConnections
            | ProxyError::TunnelCap
            | ProxyError::Misdirected => Fault::Client,
            ProxyError::Backend(_)
            | ProxyError::BackendRequest(_)
            | ProxyError::BackendConnect(_)
            | ProxyError::BackendTimeout
            | ProxyError::BadBackendHandshake(_)
            | ProxyError::NoHealthyBackend => Fault::Backend,
        }
    }

    /// The label in logs and metrics.
    pub fn reason(&self) -> Rejection {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::BadPath(_)
            | ProxyError::WrongWebSocketVersion
            | ProxyError::MethodNotAllowed => Rejection::BadRequest,
            ProxyError::NoRoute => Rejection::NoRoute,
            ProxyError::OriginForbidden => Rejection::Origin,
            ProxyError::HandshakeRate { .. } => Rejection::Rate,
            ProxyError::TooManyConnections => Rejection::ConnectionsPerIp,
            ProxyError::TunnelCap => Rejection::TunnelCap,
            ProxyError::Backend(BackendError::TimedOut) | ProxyError::BackendTimeout => {
                Rejection::Timeout
            }
            ProxyError::Backend(_)
            | ProxyError::BackendRequest(_)
            | ProxyError::BackendConnect(_)
            | ProxyError::BadBackendHandshake(_) => Rejection::BackendError,
            ProxyError::NoHealthyBackend => Rejection::NoHealthyBackend,
            ProxyError::Misdirected => Rejection::Misdirected,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let mut body = self.to_string();
        body.push('\n');
        let mut resp = text_response(status, Bytes::from(body));
        let h = resp.headers_mut();
        match &self {
            ProxyError::WrongWebSocketVersion => {
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            ProxyError::HandshakeRate { retry_after } => {
                // Whole seconds, at least 1, rounded up so a client that obeys it succeeds.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            ProxyError::TunnelCap => {
                // Tunnels end at their own pace; a second is a polite retry.
                h.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            ProxyError::BadRequest(_)
            | ProxyError::BadPath(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::NoRoute
            | ProxyError::OriginForbidden
            | ProxyError::TooManyConnections
            | ProxyError::Backend(_)
            | ProxyError::BackendRequest(_)
            | ProxyError::BackendConnect(_)
            | ProxyError::BackendTimeout
            | ProxyError::NoHealthyBackend
            | ProxyError::BadBackendHandshake(_)
            | ProxyError::Misdirected => {}
        }
        resp
    }
}

/// A plain-text response made by sluice.
pub(super) fn text_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The pooled HTTP client's error, classified by the [`BackendError`] its
/// connector put in the source chain (linkerd's walk of `source()`); the
/// error itself is kept as the source.
impl From<legacy::Error> for ProxyError {
    fn from(e: legacy::Error) -> ProxyError {
        match find_source::<BackendError>(&e) {
            Some(BackendError::TimedOut) => ProxyError::BackendTimeout,
            // Without a `BackendError` the connection was made and the
            // backend broke off the exchange.
            Some(BackendError::Refused(_)) | None => ProxyError::BackendRequest(e),
            Some(BackendError::Tls(_) | BackendError::Protocol(_) | BackendError::Io(_)) => {
                ProxyError::BackendConnect(e)
            }
        }
    }
}

/// A backend could not be reached for an upgrade.
impl From<Unreached<BackendError>> for ProxyError {
    fn from(u: Unreached<BackendError>) -> ProxyError {
        match u {
            Unreached::Unhealthy => ProxyError::NoHealthyBackend,
            Unreached::Failed(e) => ProxyError::Backend(e),
        }
    }
}

/// A plain HTTP request reached no backend.
impl From<Unreached<ProxyError>> for ProxyError {
    fn from(u: Unreached<ProxyError>) -> ProxyError {
        match u {
            Unreached::Unhealthy => ProxyError::NoHealthyBackend,
            Unreached::Failed(e) => e,
        }
    }
}

fn find_source<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        source = err.source();
    }
    None
}

/// `error: cause: cause` on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
