//! The TLS listeners' cipher-suite choice: the server's order (AES-128-GCM
//! first, as Mozilla recommends), whatever order the client lists; every
//! suite stays available to clients that offer only it. And the handshake's
//! writes: TLS 1.2 and 1.3 clients, full and resumed, get their answers, and
//! TLS 1.3 session tickets ride with the first response.

mod support;

use std::sync::Arc;

use rustls::crypto::ring::cipher_suite;
use rustls::pki_types::ServerName;
use rustls::CipherSuite;
use support::*;
use tokio::io::AsyncReadExt;
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

/// A client speaking only `versions`, keeping sessions for resumption.
fn resuming_client(
    s: &Sluice,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.cert.der.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Connects, sends one GET, reads the whole answer, and says whether the
/// handshake resumed a session.
async fn get_over(s: &Sluice, connector: &tokio_rustls::TlsConnector) -> rustls::HandshakeKind {
    let tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    let mut tls = within(
        "TLS handshake",
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap();
    let (status, head) = raw_request(
        &mut tls,
        b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    read_body(&mut tls, &head).await;
    tls.get_ref().1.handshake_kind().unwrap()
}

/// Two requests by one `version` client, each on a new connection: the
/// first handshake is full, the second resumes.
async fn full_then_resumed(version: &'static rustls::SupportedProtocolVersion) {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let client = resuming_client(&s, &[version]);
    assert_eq!(get_over(&s, &client).await, rustls::HandshakeKind::Full);
    assert_eq!(get_over(&s, &client).await, rustls::HandshakeKind::Resumed);
}

#[tokio::test]
async fn tls_1_2_clients_get_answers_on_full_and_resumed_handshakes() {
    // In TLS 1.2 the server's last flight ends the handshake and the client
    // waits for it before it sends its request: sluice must not hold it.
    full_then_resumed(&rustls::version::TLS12).await;
}

#[tokio::test]
async fn tls_1_3_session_tickets_reach_the_client_and_resume() {
    full_then_resumed(&rustls::version::TLS13).await;
}

#[tokio::test]
async fn tls_1_3_tickets_leave_with_the_first_response_not_before() {
    // Watched on the wire: after its Finished, the client sends nothing and
    // waits. Nothing may arrive (the tickets are held for the response), and
    // when the request goes, the tickets and the response come together.
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let client = resuming_client(&s, &[&rustls::version::TLS13]);
    let tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    let mut tls = client
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        tls.get_mut().0.peek(&mut byte),
    )
    .await;
    assert!(
        early.is_err(),
        "bytes arrived before any request: {early:?}"
    );
    let (status, head) = raw_request(
        &mut tls,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let body = read_body(&mut tls, &head).await;
    assert!(!body.is_empty());
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    // The tickets came: the same client resumes.
    assert_eq!(get_over(&s, &client).await, rustls::HandshakeKind::Resumed);
}

#[tokio::test]
async fn a_failed_handshake_still_tells_the_client_why() {
    // sluice's certificate is ECDSA; a TLS 1.2 client that offers only
    // RSA suites cannot be served. The alert that says so is written even
    // though the server's handshake writes are held back until it waits.
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.cert.der.clone()).unwrap();
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
        ..rustls::crypto::ring::default_provider()
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    let err = within(
        "the refusal",
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect_err("no suite in common");
    let alert = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert!(
        matches!(alert, Some(rustls::Error::AlertReceived(_))),
        "the client got {err:?}, not an alert"
    );
}

/// The key exchange group negotiated by an aws-lc-rs client offering
/// `groups` in that order.
async fn negotiated_group(
    s: &Sluice,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> rustls::NamedGroup {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.cert.der.clone()).unwrap();
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: groups,
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    let tls = within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap();
    tls.get_ref()
        .1
        .negotiated_key_exchange_group()
        .unwrap()
        .name()
}

/// Contract: TLS offers the hybrid post-quantum X25519MLKEM768 first, then
/// X25519 and P-256. A client that offers only the hybrid gets it, and so
/// does one that lists it first as browsers do; clients without it keep
/// X25519 or P-256. A client that lists X25519 first sends only that key
/// share, and rustls takes the share it has rather than cost a round trip
/// (HelloRetryRequest) to get the hybrid.
#[tokio::test]
async fn post_quantum_key_exchange_is_offered_first() {
    use rustls::crypto::aws_lc_rs::kx_group::{SECP256R1, X25519, X25519MLKEM768};
    use rustls::NamedGroup;
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    assert_eq!(
        negotiated_group(&s, vec![X25519MLKEM768]).await,
        NamedGroup::X25519MLKEM768
    );
    assert_eq!(
        negotiated_group(&s, vec![X25519MLKEM768, X25519, SECP256R1]).await,
        NamedGroup::X25519MLKEM768
    );
    assert_eq!(
        negotiated_group(&s, vec![X25519, X25519MLKEM768]).await,
        NamedGroup::X25519
    );
    assert_eq!(negotiated_group(&s, vec![X25519]).await, NamedGroup::X25519);
    assert_eq!(
        negotiated_group(&s, vec![SECP256R1]).await,
        NamedGroup::secp256r1
    );
}
