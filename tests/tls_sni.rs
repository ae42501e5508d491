//! Many sites on one listener: `[[tls.certificate]]` entries chosen by SNI
//! (exact over wildcard, the default for an unknown or missing SNI), 421 for
//! an h2 request whose host belongs to another certificate, and the
//! certificate checks `sluice check` makes (expired, mismatched key, expiring
//! soon) plus the expiry gauge.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice::config::Config;
use sluice::daemon::Running;
use sluice::shared::{Shared, Snapshot};
use support::*;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const DAY: Duration = Duration::from_secs(86_400);

/// A self-signed certificate for `names`, written as `NAME.pem` and
/// `NAME-key.pem` in `dir`, valid until `not_after` (far future by default).
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn make_cert(dir: &Path, file: &str, names: &[&str], not_after: Option<SystemTime>) -> Cert {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    if let Some(t) = not_after {
        params.not_before = (t - 30 * DAY).into();
        params.not_after = t.into();
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}-key.pem")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Cert {
        cert: cert_path,
        key: key_path,
        der: CertificateDer::from(cert.der().to_vec()),
    }
}

fn temp_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-sni-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// default (localhost), chat.example.com, *.example.com.
struct Sites {
    dir: PathBuf,
    default: Cert,
    chat: Cert,
    wildcard: Cert,
}

impl Sites {
    fn new() -> Sites {
        let dir = temp_dir();
        Sites {
            default: make_cert(&dir, "default", &["localhost"], None),
            chat: make_cert(&dir, "chat", &["chat.example.com"], None),
            wildcard: make_cert(&dir, "wildcard", &["*.example.com"], None),
            dir,
        }
    }

    fn tls_toml(&self) -> String {
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\
             [[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            self.default.cert.display(),
            self.default.key.display(),
            self.chat.cert.display(),
            self.chat.key.display(),
            self.wildcard.cert.display(),
            self.wildcard.key.display(),
        )
    }
}

async fn start(sites: &Sites, backend: std::net::SocketAddr) -> (Running, Arc<Shared>) {
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{}[[route]]\nbackends = [\"{backend}\"]\n",
        sites.tls_toml()
    );
    let config = Config::parse(&toml, &sites.dir.join("sluice.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let shared = Shared::new(Snapshot::build(config).unwrap());
    (Running::start(shared.clone()).await.unwrap(), shared)
}

/// Connects with `sni` (`None`: an IP, so no SNI is sent).
async fn connect(
    addr: std::net::SocketAddr,
    sni: Option<&str>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(any_certificate_client(alpn)).connect(name, tcp),
    )
    .await
    .unwrap()
}

async fn served_cert(addr: std::net::SocketAddr, sni: Option<&str>) -> Vec<u8> {
    let tls = connect(addr, sni, b"http/1.1").await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_the_default() {
    let backend = HttpEcho::start().await;
    let sites = Sites::new();
    let (running, _shared) = start(&sites, backend.addr).await;
    let addr = running.tls_addrs()[0];
    let cases: [(Option<&str>, &Cert); 6] = [
        (Some("chat.example.com"), &sites.chat),
        (Some("CHAT.Example.com"), &sites.chat),
        (Some("a.example.com"), &sites.wildcard),
        (Some("a.b.example.com"), &sites.default),
        (Some("unknown.test"), &sites.default),
        (None, &sites.default),
    ];
    for (sni, want) in cases {
        assert_eq!(
            served_cert(addr, sni).await,
            want.der.to_vec(),
            "SNI {sni:?} got the wrong certificate"
        );
    }
}

async fn h2_status(send: &mut h2::client::SendRequest<Bytes>, authority: &str) -> u16 {
    let req = Request::get(format!("https://{authority}/x"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    within("h2 response", resp).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn an_h2_request_for_another_certificates_host_is_misdirected() {
    let backend = HttpEcho::start().await;
    let sites = Sites::new();
    let (running, _shared) = start(&sites, backend.addr).await;
    let addr = running.tls_addrs()[0];
    let tls = connect(addr, Some("chat.example.com"), b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = within("h2 ready", send.ready()).await.unwrap();
    // Covered by the wildcard certificate, not by the one this connection got.
    assert_eq!(h2_status(&mut send, "other.example.com").await, 421);
    // The default certificate's host: also another certificate.
    assert_eq!(h2_status(&mut send, "localhost").await, 421);
    assert_eq!(h2_status(&mut send, "chat.example.com").await, 200);
    assert_eq!(h2_status(&mut send, "chat.example.com:443").await, 200);
    assert_eq!(backend.requests(), 2);

    // No SNI: the default certificate, which serves hosts no other
    // certificate claims (an IP, an unknown name) as well as its own.
    let tls = connect(addr, None, b"h2").await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = within("h2 ready", send.ready()).await.unwrap();
    assert_eq!(h2_status(&mut send, "localhost").await, 200);
    assert_eq!(h2_status(&mut send, &addr.to_string()).await, 200);
    assert_eq!(h2_status(&mut send, "chat.example.com").await, 421);
}

#[tokio::test]
async fn the_expiry_gauge_names_every_certificate_file() {
    let backend = HttpEcho::start().await;
    let sites = Sites::new();
    let (_running, shared) = start(&sites, backend.addr).await;
    let text = shared.metrics.encode();
    for c in [&sites.default, &sites.chat, &sites.wildcard] {
        let line = format!(
            "sluice_tls_certificate_expiry_seconds{{file=\"{}\"}} ",
            c.cert.display()
        );
        let value: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
            .parse()
            .unwrap();
        // rcgen's default notAfter is 4096-01-01.
        assert!(value > 4_000_000_000, "{value}");
    }
}

fn check_config(dir: &Path, tls: &str) -> (bool, String) {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n{tls}[[route]]\nbackends = [\"127.0.0.1:9\"]\n"
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn pair(key: &str, c: &Cert) -> String {
    format!(
        "{key}cert = \"{}\"\nkey = \"{}\"\n",
        c.cert.display(),
        c.key.display()
    )
}

#[test]
fn check_fails_on_an_expired_certificate_naming_the_file() {
    let dir = temp_dir();
    let good = make_cert(&dir, "good", &["localhost"], None);
    let old = make_cert(
        &dir,
        "old",
        &["old.example.com"],
        Some(SystemTime::now() - 3 * DAY),
    );
    let (ok, out) = check_config(
        &dir,
        &(pair("[tls]\n", &good) + &pair("[[tls.certificate]]\n", &old)),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("tls.certificate[0].cert"), "{out}");
    assert!(out.contains(&old.cert.display().to_string()), "{out}");
    assert!(out.contains("expired"), "{out}");
    assert!(out.contains("sluice.toml:7:"), "{out}");
}

#[test]
fn check_fails_on_a_key_that_does_not_match_its_certificate() {
    let dir = temp_dir();
    let a = make_cert(&dir, "a", &["a.example.com"], None);
    let b = make_cert(&dir, "b", &["b.example.com"], None);
    let mixed = format!(
        "[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
        a.cert.display(),
        b.key.display()
    );
    let (ok, out) = check_config(&dir, &mixed);
    assert!(!ok, "{out}");
    assert!(out.contains("tls.certificate[0].key"), "{out}");
    assert!(out.contains(&b.key.display().to_string()), "{out}");
    assert!(out.contains("does not match"), "{out}");
}

#[test]
fn check_warns_but_passes_on_a_certificate_expiring_within_14_days() {
    let dir = temp_dir();
    let soon = make_cert(
        &dir,
        "soon",
        &["soon.example.com"],
        Some(SystemTime::now() + 5 * DAY + Duration::from_secs(3600)),
    );
    // Only [[tls.certificate]]: the first one is the default.
    let (ok, out) = check_config(&dir, &pair("[[tls.certificate]]\n", &soon));
    assert!(ok, "{out}");
    assert!(out.contains("config ok"), "{out}");
    let warnings: Vec<_> = out.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    let warning = warnings[0];
    assert!(
        warning.contains("certificate expires within 14 days"),
        "{warning}"
    );
    assert!(
        warning.contains(&format!("file={}", soon.cert.display())),
        "{warning}"
    );
    assert!(warning.contains("days_left=5"), "{warning}");
}

#[test]
fn check_refuses_two_certificates_claiming_the_same_name() {
    let dir = temp_dir();
    let one = make_cert(&dir, "one", &["chat.example.com"], None);
    let two = make_cert(&dir, "two", &["chat.example.com", "x.example.com"], None);
    let (ok, out) = check_config(
        &dir,
        &(pair("[[tls.certificate]]\n", &one) + &pair("[[tls.certificate]]\n", &two)),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("tls.certificate[1].cert"), "{out}");
    assert!(out.contains(&one.cert.display().to_string()), "{out}");
    assert!(out.contains(&two.cert.display().to_string()), "{out}");
}

/// A reload runs the same checks: an expired certificate is refused and the
/// running certificates stay; a good reload swaps them for new handshakes,
/// and the expiry gauge follows (a file no longer configured disappears).
#[tokio::test]
async fn reload_refuses_an_expired_certificate_and_swaps_good_ones() {
    let backend = HttpEcho::start().await;
    let sites = Sites::new();
    let path = sites.dir.join("sluice.toml");
    let write = |tls: &str| {
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n{tls}[[route]]\nbackends = [\"{}\"]\n",
                backend.addr
            ),
        )
        .unwrap()
    };
    write(&(pair("[tls]\n", &sites.default) + &pair("[[tls.certificate]]\n", &sites.chat)));
    let shared = Shared::new(Snapshot::build(Config::load(&path).unwrap()).unwrap());
    let mut running = Running::start(shared.clone()).await.unwrap();
    let addr = running.tls_addrs()[0];
    assert_eq!(
        served_cert(addr, Some("chat.example.com")).await,
        sites.chat.der.to_vec()
    );

    let old = make_cert(
        &sites.dir,
        "old",
        &["old.example.com"],
        Some(SystemTime::now() - DAY),
    );
    write(
        &(pair("[tls]\n", &sites.default)
            + &pair("[[tls.certificate]]\n", &sites.chat)
            + &pair("[[tls.certificate]]\n", &old)),
    );
    let err = running.reload(&path).await.unwrap_err().to_string();
    assert!(err.contains("tls.certificate[1].cert"), "{err}");
    assert!(err.contains(&old.cert.display().to_string()), "{err}");
    assert_eq!(
        served_cert(addr, Some("chat.example.com")).await,
        sites.chat.der.to_vec()
    );

    write(&(pair("[tls]\n", &sites.default) + &pair("[[tls.certificate]]\n", &sites.wildcard)));
    running.reload(&path).await.unwrap();
    assert_eq!(
        served_cert(addr, Some("chat.example.com")).await,
        sites.wildcard.der.to_vec()
    );
    let metrics = shared.metrics.encode();
    let gauge = |c: &Cert| {
        format!(
            "sluice_tls_certificate_expiry_seconds{{file=\"{}\"}}",
            c.cert.display()
        )
    };
    assert!(metrics.contains(&gauge(&sites.wildcard)), "{metrics}");
    assert!(metrics.contains(&gauge(&sites.default)), "{metrics}");
    assert!(!metrics.contains(&gauge(&sites.chat)), "{metrics}");
}
