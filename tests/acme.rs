//! `[tls.acme]` against a real ACME server: Debian's `pebble` (Let's
//! Encrypt's test CA), with `pebble-challtestsrv` as its DNS, which answers
//! every name with 127.0.0.1. Pebble's validation is real: it connects to
//! sluice's own TLS listener (TLS-ALPN-01) or plain listener (HTTP-01) on
//! loopback, because its `tlsPort`/`httpPort` are set to sluice's ports.
//!
//! Relaxed for the test, and only these: pebble's DNS is the mock server
//! (no real DNS on loopback), its validation sleeps are off
//! (`PEBBLE_VA_NOSLEEP`), it rejects no valid nonces
//! (`PEBBLE_WFE_NONCEREJECT=0`; instant-acme retries badNonce anyway, this
//! keeps the timing steady), and its certificates live 30 s (so renewal is
//! seen within the test; sluice renews after two thirds of a short
//! certificate's life). sluice trusts pebble's directory TLS through
//! `directory_ca`, as an operator of a private ACME CA would.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use support::hostile::{free_port, write_config, Proc};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long pebble's certificates live in these tests.
const VALIDITY_S: u64 = 30;

/// pebble and its DNS, on free loopback ports, killed on drop.
struct Pebble {
    dir: PathBuf,
    directory: String,
    management: SocketAddr,
    /// pebble's own listener certificate: what `directory_ca` trusts.
    tls: TestCert,
    children: Vec<std::process::Child>,
}

impl Pebble {
    /// Validates against `http_port` (HTTP-01) and `tls_port` (TLS-ALPN-01).
    fn start(http_port: u16, tls_port: u16) -> Pebble {
        for bin in ["pebble", "pebble-challtestsrv"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {bin}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{bin} is missing: install Debian's package (apt-get install pebble), \
                 or run scripts/test.sh, which does"
            );
        }
        let tls = TestCert::new();
        let dir = tls.dir.clone();
        let (acme, management, dns) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": tls.cert_path,
                "privateKey": tls.key_path,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": VALIDITY_S,
            }
        });
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let dns_server = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        let p = Pebble {
            dir,
            directory: format!("https://127.0.0.1:{acme}/dir"),
            management: ([127, 0, 0, 1], management).into(),
            tls,
            children: vec![dns_server, pebble],
        };
        // Up when its listener takes connections.
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", acme)).is_err() {
            assert!(t.elapsed() < WAIT, "pebble did not start: {}", p.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// GET on pebble's management interface.
    async fn management_get(&self, path: &str) -> String {
        let tcp = TcpStream::connect(self.management).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.tls.client_config());
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        body.to_owned()
    }

    /// A client that trusts pebble's issuing root, and nothing else.
    async fn client(&self) -> Arc<rustls::ClientConfig> {
        let pem = self.management_get("/roots/0").await;
        let roots: Vec<CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        client_trusting(roots)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The serial of the certificate sluice serves for `name` at `addr`, over
/// a handshake that verifies it against `client`'s roots.
async fn served_serial(
    client: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    Ok(parsed.raw_serial_as_string())
}

/// Polls until sluice serves `name` a certificate `client` trusts (other
/// than `not`), up to `limit`.
async fn wait_for_certificate(
    client: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
    not: Option<&str>,
    limit: Duration,
    sluice: &Proc,
) -> String {
    let t = Instant::now();
    loop {
        match served_serial(client, addr, name).await {
            Ok(serial) if Some(serial.as_str()) != not => return serial,
            _ => {}
        }
        assert!(
            t.elapsed() < limit,
            "no {} certificate for {name} within {limit:?}; sluice log: {:#?}",
            if not.is_some() {
                "renewed"
            } else {
                "pebble-issued"
            },
            sluice.lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn acme_section(pebble: &Pebble, storage: &Path, domains: &str, challenge: &str) -> String {
    format!(
        "[tls.acme]\ndomains = [{domains}]\nemail = \"ops@sluice.test\"\n\
         directory = \"{}\"\ndirectory_ca = \"{}\"\nchallenge = \"{challenge}\"\nstorage = \"{}\"\n",
        pebble.directory,
        pebble.tls.cert_path.display(),
        storage.display()
    )
}

/// TLS-ALPN-01 on sluice's own TLS listener, with no certificate file at
/// all: pebble validates, issues, and sluice serves the certificate; the
/// account and certificate are stored; a renewal is swapped in while an
/// open tunnel stays; a restart serves the stored certificate with the CA
/// gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_renews_and_persists() {
    let backend = EchoWs::start().await;
    let tls_port = free_port();
    let pebble = Pebble::start(free_port(), tls_port);
    let storage = pebble.dir.join("acme");
    let body = format!(
        "[server]\nlisten = [\"127.0.0.1:{tls_port}\"]\n\n\
         [[route]]\nbackends = [\"{}\"]\n[route.websocket]\nallowed_origins = [\"*\"]\n\n[tls]\n{}",
        backend.addr,
        acme_section(&pebble, &storage, "\"chat.sluice.test\"", "tls-alpn-01")
    );
    let (_dir, config) = write_config(&body);
    let sluice = Proc::start(&config, None);
    sluice.wait_line("sluice ready", 1).await;
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let client = pebble.client().await;

    let first = wait_for_certificate(
        &client,
        addr,
        "chat.sluice.test",
        None,
        Duration::from_secs(60),
        &sluice,
    )
    .await;
    sluice
        .wait_line("ACME TLS-ALPN-01 validation answered", 1)
        .await;
    sluice.wait_line("ACME account created", 1).await;

    // Stored: the account (one per directory), the chain, and a key only
    // the owner reads.
    let names: Vec<String> = std::fs::read_dir(&storage)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("account-")), "{names:?}");
    assert!(
        names.contains(&"chat.sluice.test.pem".to_owned()),
        "{names:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(storage.join("chat.sluice.test-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");

    // A tunnel opened on the first certificate.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("chat.sluice.test").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://chat.sluice.test/", tls)
        .await
        .unwrap();
    echo_once(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text("before"),
    )
    .await;

    // Renewal: a new certificate for new handshakes, no reload.
    let second = wait_for_certificate(
        &client,
        addr,
        "chat.sluice.test",
        Some(&first),
        Duration::from_secs(VALIDITY_S + 30),
        &sluice,
    )
    .await;
    assert_ne!(first, second);
    assert!(!sluice
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("config reloaded")));
    echo_once(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text("after renewal"),
    )
    .await;
    drop(ws);

    // A restart with the CA gone serves the stored certificate at once.
    drop(sluice);
    drop(pebble);
    let sluice = Proc::start(&config, None);
    sluice.wait_line("sluice ready", 1).await;
    let served = served_serial(&client, addr, "chat.sluice.test")
        .await
        .expect("the stored certificate is served after a restart");
    assert_eq!(served, second);
}

/// HTTP-01 on the plain listener, beside a certificate file that stays the
/// default: the ACME name gets pebble's certificate, other names the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_on_the_plain_listener_beside_a_default_certificate() {
    let backend = HttpEcho::start().await;
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port);
    let storage = pebble.dir.join("acme");
    let default = TestCert::new();
    let body = format!(
        "[server]\nlisten = [\"127.0.0.1:{tls_port}\"]\nlisten_plain = [\"127.0.0.1:{http_port}\"]\n\n\
         [[route]]\nbackends = [\"{}\"]\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        backend.addr,
        default.cert_path.display(),
        default.key_path.display(),
        acme_section(&pebble, &storage, "\"api.sluice.test\"", "http-01")
    );
    let (_dir, config) = write_config(&body);
    let sluice = Proc::start(&config, None);
    sluice.wait_line("sluice ready", 1).await;
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let client = pebble.client().await;
    wait_for_certificate(
        &client,
        addr,
        "api.sluice.test",
        None,
        Duration::from_secs(60),
        &sluice,
    )
    .await;
    sluice
        .wait_line("ACME HTTP-01 validation answered", 1)
        .await;
    // Other names still get the file's certificate.
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(default.client_config())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the default certificate for other names");
    // An unknown token under the challenge path is an ordinary request.
    let plain: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let (status, _) = get(
        plain,
        "api.sluice.test",
        "/.well-known/acme-challenge/nope",
        "",
    )
    .await;
    assert_eq!(status, 200, "routed to the backend");
}

/// HTTP-01 on `http01_listen`, a listener of its own; a reload that keeps
/// `[tls.acme]` keeps the certificate and the one renewal task (the
/// challenge listener is not bound twice); `sluice check` says what is
/// stored and when it renews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_listen_a_reload_and_check() {
    let backend = HttpEcho::start().await;
    let (http01, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http01, tls_port);
    let storage = pebble.dir.join("acme");
    let body = format!(
        "[server]\nlisten = [\"127.0.0.1:{tls_port}\"]\n\n\
         [[route]]\nbackends = [\"{}\"]\n\n[tls]\n{}http01_listen = \"127.0.0.1:{http01}\"\n",
        backend.addr,
        acme_section(
            &pebble,
            &storage,
            "\"a.sluice.test\", \"b.sluice.test\"",
            "http-01"
        )
    );
    let (_dir, config) = write_config(&body);
    let check = Command::new(support::hostile::BIN)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("no certificate stored") && said.contains(&pebble.directory),
        "{said}"
    );

    let sluice = Proc::start(&config, None);
    sluice.wait_line("sluice ready", 1).await;
    sluice.wait_line("HTTP-01 challenge listener up", 1).await;
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let client = pebble.client().await;
    let serial = wait_for_certificate(
        &client,
        addr,
        "a.sluice.test",
        None,
        Duration::from_secs(60),
        &sluice,
    )
    .await;
    // One certificate for both names.
    assert_eq!(
        served_serial(&client, addr, "b.sluice.test").await.unwrap(),
        serial
    );
    assert_eq!(
        sluice
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("ACME HTTP-01 validation answered"))
            .count(),
        0,
        "validations went to http01_listen, not through the proxy's plain path"
    );

    sluice.signal("HUP");
    sluice.wait_line("config reloaded", 1).await;
    assert_eq!(
        served_serial(&client, addr, "a.sluice.test").await.unwrap(),
        serial
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ups = sluice
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("HTTP-01 challenge listener up"))
        .count();
    assert_eq!(ups, 1, "the reload kept the renewal task");

    let check = Command::new(support::hostile::BIN)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        said.contains("a.sluice.test.pem serves a.sluice.test, b.sluice.test"),
        "{said}"
    );
    assert!(said.contains("renewal in"), "{said}");
}

/// A directory that is down, and one that answers something that is not a
/// directory: one log line per attempt naming the URL; sluice serves what
/// it has (the default file) and fails the handshake for the ACME name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_directory_is_logged_and_nothing_stops() {
    let backend = HttpEcho::start().await;
    let pebble = Pebble::start(free_port(), free_port());
    let default = TestCert::new();
    for (directory, what) in [
        (format!("https://127.0.0.1:{}/dir", free_port()), "down"),
        (
            format!("https://127.0.0.1:{}/roots/0", pebble.management.port()),
            "garbage",
        ),
    ] {
        let tls_port = free_port();
        let storage = default.dir.join(format!("acme-{what}"));
        let body = format!(
            "[server]\nlisten = [\"127.0.0.1:{tls_port}\"]\n\n\
             [[route]]\nbackends = [\"{}\"]\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [tls.acme]\ndomains = [\"down.sluice.test\"]\ndirectory = \"{directory}\"\n\
             directory_ca = \"{}\"\nstorage = \"{}\"\n",
            backend.addr,
            default.cert_path.display(),
            default.key_path.display(),
            pebble.tls.cert_path.display(),
            storage.display()
        );
        let (_dir, config) = write_config(&body);
        let sluice = Proc::start(&config, None);
        sluice.wait_line("sluice ready", 1).await;
        let line = sluice.wait_line("ACME order failed", 1).await;
        assert!(line.contains(&directory), "{what}: {line}");
        let addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(default.client_config())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("the default certificate is still served");
        let tcp = TcpStream::connect(addr).await.unwrap();
        let refused = tokio_rustls::TlsConnector::from(any_certificate_client(b"http/1.1"))
            .connect(ServerName::try_from("down.sluice.test").unwrap(), tcp)
            .await;
        assert!(
            refused.is_err(),
            "{what}: no certificate yet for the ACME name: no handshake"
        );
    }
}

/// A name both a certificate file and `[tls.acme]` claim: `check` refuses
/// it, naming the line of `tls.acme.domains` and the file.
#[test]
fn a_name_claimed_by_a_file_and_acme_is_refused() {
    let file = TestCert::new();
    let body = format!(
        "[server]\nlisten = [\"127.0.0.1:8443\"]\n[[route]]\nbackends = [\"127.0.0.1:9\"]\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n[tls.acme]\ndomains = [\"localhost\"]\nstorage = \"{}\"\n",
        file.cert_path.display(),
        file.key_path.display(),
        file.dir.join("acme").display()
    );
    let (_dir, config) = write_config(&body);
    let out = Command::new(support::hostile::BIN)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(":9: tls.acme.domains: localhost is claimed by both")
            && err.contains(&file.cert_path.display().to_string()),
        "{err}"
    );
}

/// A `directory_ca` that cannot be read is a config error at its line, not
/// a failure at the first order.
#[test]
fn an_unreadable_directory_ca_is_a_config_error() {
    let dir = TestCert::new().dir;
    let body = format!(
        "[server]\nlisten = [\"127.0.0.1:8443\"]\n[[route]]\nbackends = [\"127.0.0.1:9\"]\n\
         [tls.acme]\ndomains = [\"a.sluice.test\"]\ndirectory_ca = \"{}\"\nstorage = \"{}\"\n",
        dir.join("missing.pem").display(),
        dir.join("acme").display()
    );
    let (_dir, config) = write_config(&body);
    let out = Command::new(support::hostile::BIN)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(":7: tls.acme.directory_ca: cannot load CA bundle"),
        "{err}"
    );
}
