//! What the WebSocket handshake's headers must say: the client's upgrade
//! request (RFC 6455 §4.2.1, RFC 8441 §4 on h2), the backend's 101 (RFC 6455
//! §4.1), and the extensions and subprotocols offered and chosen. Pure
//! functions on headers; the steps that use them are in `upgrade`.

use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
use sha1::{Digest, Sha1};

use crate::headers;
use crate::proxy::error::ProxyError;
use crate::relay::RSV1;

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// RFC 6455 §4.2.1 (and RFC 8441 §4 for h2). Returns the client's key on
/// HTTP/1.1, `None` on h2, which has no key.
pub(super) fn validate<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let h = req.headers();
    let version = h.get(header::SEC_WEBSOCKET_VERSION);
    if req.version() == Version::HTTP_2 {
        if req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .map(|p| p.as_str())
            != Some("websocket")
        {
            return Err(ProxyError::MethodNotAllowed);
        }
    } else {
        if req.version() != Version::HTTP_11 {
            return Err(ProxyError::BadRequest("WebSocket upgrade needs HTTP/1.1"));
        }
        if req.method() != Method::GET {
            return Err(ProxyError::BadRequest("WebSocket upgrade must be GET"));
        }
        if !headers::has_token(h, header::CONNECTION, "upgrade") {
            return Err(ProxyError::BadRequest(
                "Upgrade without Connection: upgrade",
            ));
        }
    }
    // An upgrade request has no body; one that carries one is either broken
    // or trying to hide a second request in it.
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(ProxyError::BadRequest("WebSocket upgrade with a body"));
    }
    match version {
        None => return Err(ProxyError::BadRequest("missing Sec-WebSocket-Version")),
        Some(v) if v.as_bytes() != b"13" => return Err(ProxyError::WrongWebSocketVersion),
        Some(_) => {}
    }
    if req.version() == Version::HTTP_2 {
        return Ok(None);
    }
    let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = keys
        .next()
        .ok_or(ProxyError::BadRequest("missing Sec-WebSocket-Key"))?;
    if keys.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate Sec-WebSocket-Key"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| ProxyError::BadRequest("Sec-WebSocket-Key is not base64"))?;
    if decoded.len() != 16 {
        return Err(ProxyError::BadRequest("Sec-WebSocket-Key is not 16 bytes"));
    }
    Ok(Some(key.clone()))
}

/// What the backend's 101 negotiated.
pub(super) struct Negotiated {
    pub allowed_rsv: u8,
    pub allowed_rsv_continuation: u8,
}

/// The extensions and subprotocols a request sent to the backend offers;
/// its 101 may choose only among them.
#[derive(Debug)]
pub(super) struct Offered {
    extensions: Vec<String>,
    protocols: Vec<String>,
}

impl Offered {
    pub(super) fn of(h: &HeaderMap) -> Offered {
        Offered {
            extensions: h
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .flat_map(extension_names)
                .collect(),
            protocols: tokens(h, header::SEC_WEBSOCKET_PROTOCOL),
        }
    }
}

/// Believes a 101 only if it is a real WebSocket acceptance of our key.
pub(super) fn check_backend_101(
    h: &HeaderMap,
    key: &[u8],
    offered: &Offered,
) -> Result<Negotiated, ProxyError> {
    if !headers::has_token(h, header::UPGRADE, "websocket") {
        return Err(ProxyError::BadBackendHandshake(
            "101 without Upgrade: websocket",
        ));
    }
    let accept = h
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .ok_or(ProxyError::BadBackendHandshake(
            "101 without Sec-WebSocket-Accept",
        ))?;
    if accept.as_bytes() != accept_key(key).as_bytes() {
        return Err(ProxyError::BadBackendHandshake(
            "Sec-WebSocket-Accept does not match the key",
        ));
    }
    let mut allowed_rsv = 0;
    let mut allowed_rsv_continuation = 0;
    for name in h
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .flat_map(extension_names)
    {
        // RFC 6455 §9.1: a server may only accept extensions the client offered.
        if !offered.extensions.contains(&name) {
            return Err(ProxyError::BadBackendHandshake(
                "backend accepted an extension that was not offered",
            ));
        }
        if name == "permessage-deflate" {
            // RFC 7692 §6: RSV1 on a message's first frame only.
            allowed_rsv |= RSV1;
        } else {
            // An extension sluice does not know may use any bit anywhere.
            allowed_rsv |= 0b111;
            allowed_rsv_continuation |= 0b111;
        }
    }
    let chosen = tokens(h, header::SEC_WEBSOCKET_PROTOCOL);
    if chosen.len() > 1 || chosen.iter().any(|p| !offered.protocols.contains(p)) {
        return Err(ProxyError::BadBackendHandshake(
            "backend chose a subprotocol that was not offered",
        ));
    }
    Ok(Negotiated {
        allowed_rsv,
        allowed_rsv_continuation,
    })
}

fn extension_names(v: &HeaderValue) -> Vec<String> {
    v.to_str()
        .unwrap_or("")
        .split(',')
        .filter_map(|offer| offer.split(';').next())
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

fn tokens(h: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Removes permessage-deflate offers so frame limits apply to real payload sizes.
pub(super) fn strip_deflate_offer(h: &mut HeaderMap) {
    let kept: Vec<String> = h
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|offer| {
            let name = offer.split(';').next().unwrap_or("").trim();
            !name.eq_ignore_ascii_case("permessage-deflate")
        })
        .map(|o| o.trim().to_owned())
        .collect();
    h.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn deflate_offer_is_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; client_max_window_bits, x-foo"),
        );
        strip_deflate_offer(&mut h);
        assert_eq!(h[header::SEC_WEBSOCKET_EXTENSIONS], "x-foo");
    }
}
