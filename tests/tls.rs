//! The TLS listeners' cipher-suite choice: the server's order (AES-128-GCM
//! first, as Mozilla recommends), whatever order the client lists; every
//! suite stays available to clients that offer only it.

mod support;

use std::sync::Arc;

use rustls::crypto::ring::cipher_suite;
use rustls::pki_types::ServerName;
use rustls::CipherSuite;
use support::*;
use tokio::net::TcpStream;

/// The suite negotiated by a client offering `suites` in that order.
async fn negotiated(s: &Sluice, suites: Vec<rustls::SupportedCipherSuite>) -> CipherSuite {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.cert.der.clone()).unwrap();
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::ring::default_provider()
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
}

#[tokio::test]
async fn the_server_prefers_aes_128_gcm_over_the_clients_first_choice() {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    // rustls clients, like browsers' TLS stacks, list AES-256-GCM first.
    let client_default = rustls::crypto::ring::default_provider().cipher_suites;
    assert_eq!(
        client_default[0].suite(),
        CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    assert_eq!(
        negotiated(&s, client_default).await,
        CipherSuite::TLS13_AES_128_GCM_SHA256
    );
}

#[tokio::test]
async fn a_client_offering_one_suite_gets_it() {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    for suite in [
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        assert_eq!(negotiated(&s, vec![suite]).await, suite.suite());
    }
}
