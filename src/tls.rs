//! TLS material: the server config for the listeners (certificate chain and
//! key from PEM files, ALPN) and the client config for `https://` backends.
//! Errors while loading name the config file, line and key, like every other
//! config error, because operators fix them in the same place.

use std::sync::Arc;

use rustls::crypto::ring;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, ConfigError};

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

/// A server config offering h2 and http/1.1 by ALPN.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client config for `https://` backends: the system's roots, HTTP/1.1.
pub fn backend_client_config() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A single unparsable system cert must not take the proxy down.
        let _ = roots.add(cert);
    }
    client_config_with_roots(roots)
}

pub fn client_config_with_roots(roots: RootCertStore) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
