//! TLS material: the server config for the listeners (certificate chain and
//! key from PEM files, ALPN) and the client config for `https://` backends.
//! Errors while loading name the config file, line and key, like every other
//! config error, because operators fix them in the same place.

use std::sync::Arc;

use rustls::crypto::ring;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use std::path::Path;

use crate::config::{BackendTls, Config, ConfigError};

/// Loads `[tls]` from a validated config. `Ok(None)` when there is no `[tls]`.
pub fn load(config: &Config) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let cert_path = &tls.cert.value;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            tls.cert.error(
                &config.path,
                format!("cannot load certificate chain {}: {e}", cert_path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(tls.cert.error(
            &config.path,
            format!("no certificate found in {}", cert_path.display()),
        ));
    }
    let key_path = &tls.key.value;
    // PrivateKeyDer's PEM reader accepts PKCS#8, PKCS#1 (RSA) and SEC1 (EC).
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        tls.key.error(
            &config.path,
            format!("cannot load private key {}: {e}", key_path.display()),
        )
    })?;
    server_config(certs, key).map(Some).map_err(|e| {
        tls.key.error(
            &config.path,
            format!("key does not fit the certificate: {e}"),
        )
    })
}

/// The listeners' cipher suites, in the server's order of preference:
/// Mozilla's recommended order, AES-128-GCM first. Chosen by the server, not
/// the client, because most clients list AES-256-GCM-SHA384 first, and its
/// SHA-384 key schedule has no hardware help in ring (SHA-256 has SHA-NI):
/// on the bench machine SHA-512 compression alone was 7 % of sluice's CPU in
/// a full-handshake run, and AES-128 needs 10 rounds per block to AES-256's
/// 14 for every record after. All three TLS 1.3 suites and the ECDHE-AEAD
/// TLS 1.2 suites stay on offer.
fn server_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite::*;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..ring::default_provider()
    }
}

/// A server config offering h2 and http/1.1 by ALPN.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(server_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption keeps reconnect storms cheap: stateless tickets (keys
    // rotated by rustls every 6 h) plus a session cache larger than the
    // default 256 entries for clients that resume by ID.
    config.ticketer = ring::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(32 * 1024);
    Ok(Arc::new(config))
}

/// The client config toward a route's `https://` backends: verification
/// against `backend_ca` or the system roots, and a client certificate when
/// `backend_cert`/`backend_key` are set (mTLS). SNI comes from the backend URL.
pub fn backend_client_config(
    route: &BackendTls,
    file: &Path,
) -> Result<Arc<ClientConfig>, ConfigError> {
    let roots = match &route.ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(&ca.value)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    ca.error(
                        file,
                        format!("cannot load CA bundle {}: {e}", ca.value.display()),
                    )
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ca.error(
                    file,
                    format!("no usable CA certificate in {}", ca.value.display()),
                ));
            }
            roots
        }
        None => system_roots().clone(),
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots);
    let mut config = match (&route.cert, &route.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(&cert.value)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    cert.error(
                        file,
                        format!(
                            "cannot load client certificate {}: {e}",
                            cert.value.display()
                        ),
                    )
                })?;
            let private = PrivateKeyDer::from_pem_file(&key.value).map_err(|e| {
                key.error(
                    file,
                    format!("cannot load client key {}: {e}", key.value.display()),
                )
            })?;
            builder.with_client_auth_cert(chain, private).map_err(|e| {
                key.error(
                    file,
                    format!("client key does not fit the certificate: {e}"),
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The system's roots, read once per process.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: std::sync::OnceLock<RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        // A single unparsable system certificate must not take the proxy down.
        let (added, _) =
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        tracing::debug!(added, "system root certificates loaded");
        roots
    })
}
