//! Contract (v2) "Behind a load balancer, and across hosts", PROXY
//! protocol: from a `server.proxy_protocol` peer the header's source is the
//! client for every rule (X-Forwarded-For, per-IP limits, logs); v2 LOCAL
//! is the peer itself; the header may come in pieces; a malformed header,
//! or none within `handshake_timeout`, closes the connection with no backend
//! contacted; a peer outside the list that sends one gets 400 (plain) or a
//! failed TLS handshake. `send_proxy_protocol` puts the client's header in
//! front of every backend connection.
//!
//! The interop tests run Debian's haproxy (`mode tcp`, `send-proxy-v2` and
//! `send-proxy`) in front of sluice on loopback; clients connect from
//! 127.0.0.2 so their address differs from haproxy's 127.0.0.1.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ppp::v2::{Builder, Command as PpCommand, Protocol, Version};
use ppp::{HeaderResult, PartialResult};
use support::hostile::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const BALANCER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const SLACK: Duration = Duration::from_millis(1500);

// ------------------------------------------------------------ helpers

/// Debian's haproxy in the foreground with `config`, killed on drop.
struct Haproxy {
    child: Child,
    _dir: PathBuf,
}

impl Haproxy {
    /// One `listen` per `(port, target, server options)`, `mode tcp`.
    async fn start(listens: &[(u16, SocketAddr, &str)]) -> Haproxy {
        let bin = "/usr/sbin/haproxy";
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: install it with `apt-get install -y haproxy` (scripts/test.sh does)"
        );
        let mut config = String::from(
            "global\n    maxconn 200\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n",
        );
        for (i, (port, target, options)) in listens.iter().enumerate() {
            config.push_str(&format!(
                "listen l{i}\n    bind 127.0.0.1:{port}\n    server s{i} {target} {options}\n"
            ));
        }
        let (dir, path) = write_config(&config);
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut h = Haproxy { child, _dir: dir };
        // Listening once every port accepts.
        let t = Instant::now();
        for (port, _, _) in listens {
            while TcpStream::connect(("127.0.0.1", *port)).await.is_err() {
                if let Some(status) = h.child.try_wait().unwrap() {
                    panic!("haproxy exited: {status}\n{config}");
                }
                assert!(t.elapsed() < WAIT, "haproxy did not listen on {port}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn v2(src: &str, dst: &str) -> Vec<u8> {
    let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    Builder::with_addresses(
        Version::Two | PpCommand::Proxy,
        Protocol::Stream,
        (src, dst),
    )
    .build()
    .unwrap()
}

fn v2_local() -> Vec<u8> {
    Builder::new(Version::Two | PpCommand::Local, 0)
        .build()
        .unwrap()
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: chat.test\r\n\r\n";

/// Sends `bytes` (the header and a request) and returns the
/// X-Forwarded-For the backend (an HttpEcho) saw.
async fn forwarded_for<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
) -> String {
    let (status, head) = raw_request(s, bytes).await;
    assert_eq!(status, 200, "{head}");
    let body = String::from_utf8(read_body(s, &head).await).unwrap();
    head_value(&body, "x-forwarded-for").unwrap_or_else(|| panic!("no X-Forwarded-For in {body}"))
}

async fn behind(server_extra: &str) -> (Sluice, HttpEcho, EchoWs) {
    let http = HttpEcho::start().await;
    let ws = EchoWs::start().await;
    let s = Sluice::start(
        &format!("proxy_protocol = [\"127.0.0.1\"]\nadmin = \"127.0.0.1:0\"\n{server_extra}"),
        &format!(
            "[[route]]\npath = \"/ws\"\nbackends = [\"{}\"]\n[[route]]\nbackends = [\"{}\"]\n",
            ws.addr, http.addr
        ),
    )
    .await;
    (s, http, ws)
}

async fn closes(s: &Sluice, reason: &str, at_least: f64) {
    wait_metric(
        s.running.admin_addr().unwrap(),
        "sluice_client_connections_closed_total",
        &[("reason", reason)],
        Duration::from_secs(3),
        reason,
        |v| v.unwrap_or(0.0) >= at_least,
    )
    .await;
}

// ------------------------------------------------------------ haproxy

#[tokio::test]
async fn haproxy_send_proxy_v2_and_v1_carry_the_client_address_plain_tls_and_websocket() {
    let (s, http, ws) = behind("").await;
    let ports = [free_port(), free_port(), free_port()];
    let _haproxy = Haproxy::start(&[
        (ports[0], s.plain_addr, "send-proxy-v2"),
        (ports[1], s.tls_addr, "send-proxy-v2"),
        (ports[2], s.plain_addr, "send-proxy"),
    ])
    .await;
    let via = |i: usize| SocketAddr::new(BALANCER, ports[i]);

    // Plain, v2.
    let mut tcp = connect_from(CLIENT, via(0)).await.unwrap();
    assert_eq!(forwarded_for(&mut tcp, GET).await, "127.0.0.2");
    // A second request on the same connection keeps the client.
    assert_eq!(forwarded_for(&mut tcp, GET).await, "127.0.0.2");

    // TLS, v2: the header comes before the ClientHello.
    let tcp = connect_from(CLIENT, via(1)).await.unwrap();
    let mut tls = tls_over(tcp, s.cert.client_config()).await.unwrap();
    let get_tls = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_eq!(forwarded_for(&mut tls, get_tls).await, "127.0.0.2");

    // Plain, v1.
    let mut tcp = connect_from(CLIENT, via(2)).await.unwrap();
    assert_eq!(forwarded_for(&mut tcp, GET).await, "127.0.0.2");

    // A WebSocket tunnel through haproxy (v2) to sluice.
    let tcp = connect_from(CLIENT, via(0)).await.unwrap();
    let url = format!("ws://{}/ws", via(0));
    let (mut socket, _) = within(
        "ws through haproxy",
        tokio_tungstenite::client_async(url, tcp),
    )
    .await
    .unwrap();
    echo_once(&mut socket, Message::text("through haproxy")).await;
    let seen = ws.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.get("x-forwarded-for").unwrap(), "127.0.0.2");
    assert!(http.requests() >= 4);
}

// ------------------------------------------------------------ raw TCP in

#[tokio::test]
async fn a_header_in_pieces_is_read_whole_and_the_bytes_after_it_are_kept() {
    let (s, _http, _ws) = behind("").await;
    let pause = || tokio::time::sleep(Duration::from_millis(60));

    // v2 in three pieces, the last with the whole request behind it.
    let header = v2("10.1.2.3:5555", "192.0.2.1:80");
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    for piece in [&header[..5], &header[5..14]] {
        tcp.write_all(piece).await.unwrap();
        pause().await;
    }
    let mut rest = header[14..].to_vec();
    rest.extend_from_slice(GET);
    assert_eq!(forwarded_for(&mut tcp, &rest).await, "10.1.2.3");

    // v1 cut inside the line, just after a space, and before its LF.
    let line = b"PROXY TCP6 2001:db8::5 2001:db8::1 40000 443\r\n";
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    for piece in [&line[..3], &line[3..11], &line[11..45]] {
        tcp.write_all(piece).await.unwrap();
        pause().await;
    }
    let mut rest = line[45..].to_vec();
    rest.extend_from_slice(GET);
    assert_eq!(forwarded_for(&mut tcp, &rest).await, "2001:db8::5");

    // The header and the request in one segment.
    let mut both = b"PROXY TCP4 10.4.5.6 192.0.2.1 5555 80\r\n".to_vec();
    both.extend_from_slice(GET);
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    assert_eq!(forwarded_for(&mut tcp, &both).await, "10.4.5.6");

    // TLS: the header, then the handshake on the same connection.
    let mut tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    tcp.write_all(&v2("10.7.7.7:1", "192.0.2.1:443"))
        .await
        .unwrap();
    let mut tls = tls_over(tcp, s.cert.client_config()).await.unwrap();
    let get_tls = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_eq!(forwarded_for(&mut tls, get_tls).await, "10.7.7.7");
}

#[tokio::test]
async fn a_v2_local_header_means_the_peer_itself_and_tlvs_are_ignored() {
    let (s, _http, _ws) = behind("").await;
    let mut bytes = v2_local();
    bytes.extend_from_slice(GET);
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    assert_eq!(forwarded_for(&mut tcp, &bytes).await, "127.0.0.1");

    // A PROXY header with TLVs (ALPN, authority, a vendor's 0xEA, and a
    // nonsense length inside the TLV area) is read for its addresses alone.
    let src: SocketAddr = "10.2.2.2:7".parse().unwrap();
    let dst: SocketAddr = "192.0.2.1:443".parse().unwrap();
    let mut bytes = Builder::with_addresses(
        Version::Two | PpCommand::Proxy,
        Protocol::Stream,
        (src, dst),
    )
    .write_tlv(0x01, b"h2")
    .unwrap()
    .write_tlv(0x02, b"chat.example.com")
    .unwrap()
    .write_tlv(0xEA, &[0x01, 0xff, 0xff, 0x00])
    .unwrap()
    .build()
    .unwrap();
    bytes.extend_from_slice(GET);
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    assert_eq!(forwarded_for(&mut tcp, &bytes).await, "10.2.2.2");
}

#[tokio::test]
async fn a_malformed_header_closes_the_connection_without_a_backend() {
    let (s, http, ws) = behind("").await;
    let bad: [&[u8]; 5] = [
        b"PROXY TCP4 10.0.0.300 192.0.2.1 5555 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PROXY TCP4 10.0.0.3 192.0.2.1 70000 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PROXY TCP4 2001:db8::1 192.0.2.1 1 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        // No header at all: the request itself.
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        // v2 signature with version 3.
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c\x0a\x00\x00\x01\x0a\x00\x00\x02\x00\x01\x00\x02",
    ];
    for bytes in bad {
        let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let what = format!("{:?}", String::from_utf8_lossy(bytes));
        assert_closed_within(&mut tcp, SLACK, &what).await;
    }
    closes(&s, "proxy_header_invalid", bad.len() as f64).await;
    assert_eq!(
        http.connections() + ws.connections(),
        0,
        "no backend contacted"
    );
}

#[tokio::test]
async fn no_header_within_handshake_timeout_closes_the_connection() {
    let (s, http, _ws) = behind("handshake_timeout = \"1s\"").await;
    let mut silent = TcpStream::connect(s.plain_addr).await.unwrap();
    let mut partial = TcpStream::connect(s.plain_addr).await.unwrap();
    partial.write_all(b"PROXY TCP4 10.0.0.1 ").await.unwrap();
    let mut partial_v2 = TcpStream::connect(s.tls_addr).await.unwrap();
    partial_v2
        .write_all(&v2("10.0.0.1:1", "10.0.0.2:2")[..20])
        .await
        .unwrap();
    let limit = Duration::from_secs(1) + SLACK;
    assert_closed_within(&mut silent, limit, "no bytes").await;
    assert_closed_within(&mut partial, limit, "part of a v1 header").await;
    assert_closed_within(&mut partial_v2, limit, "part of a v2 header (TLS listener)").await;
    closes(&s, "proxy_header_timeout", 3.0).await;
    // Hanging up before a complete header is counted apart.
    drop(TcpStream::connect(s.plain_addr).await.unwrap());
    closes(&s, "proxy_header_missing", 1.0).await;
    assert_eq!(http.connections(), 0);
}

#[tokio::test]
async fn a_peer_outside_the_list_that_sends_a_header_gets_400_or_a_failed_handshake() {
    let (s, http, _ws) = behind("").await;
    let v1 = b"PROXY TCP4 10.0.0.1 192.0.2.1 5555 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut with_v2 = v2("10.0.0.1:5555", "192.0.2.1:80");
    with_v2.extend_from_slice(GET);
    for bytes in [&v1[..], &with_v2[..]] {
        let mut tcp = connect_from(CLIENT, s.plain_addr).await.unwrap();
        let (status, head) = raw_request(&mut tcp, bytes).await;
        assert_eq!(status, 400, "{head}");
    }
    // TLS: the header is not a ClientHello.
    let mut tcp = connect_from(CLIENT, s.tls_addr).await.unwrap();
    tcp.write_all(&v2("10.0.0.1:5555", "192.0.2.1:443"))
        .await
        .unwrap();
    assert!(tls_over(tcp, s.cert.client_config()).await.is_err());
    closes(&s, "tls_failed", 1.0).await;
    // Without a header the same peer is served as itself.
    let mut tcp = connect_from(CLIENT, s.plain_addr).await.unwrap();
    assert_eq!(forwarded_for(&mut tcp, GET).await, "127.0.0.2");
    assert_eq!(http.requests(), 1);
}

#[tokio::test]
async fn per_ip_connection_caps_count_the_carried_client_not_the_balancer() {
    let (s, _http, _ws) = behind("max_client_connections_per_ip = 2").await;
    let from = |ip: &str| {
        let mut b = format!("PROXY TCP4 {ip} 192.0.2.1 5555 80\r\n").into_bytes();
        b.extend_from_slice(GET);
        b
    };
    // Two connections of 10.0.0.1 and one of 10.0.0.2, all from the
    // balancer's one address: every one is served and stays open.
    let mut open = Vec::new();
    for ip in ["10.0.0.1", "10.0.0.1", "10.0.0.2"] {
        let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
        assert_eq!(forwarded_for(&mut tcp, &from(ip)).await, ip);
        open.push(tcp);
    }
    // A third of 10.0.0.1 is over its cap: closed before any request.
    let mut third = TcpStream::connect(s.plain_addr).await.unwrap();
    third.write_all(&from("10.0.0.1")).await.unwrap();
    assert_closed_within(&mut third, SLACK, "third connection of 10.0.0.1").await;
    closes(&s, "per_ip_cap", 1.0).await;
    // 10.0.0.2 still has room.
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    assert_eq!(forwarded_for(&mut tcp, &from("10.0.0.2")).await, "10.0.0.2");
}

#[tokio::test]
async fn tunnel_caps_and_handshake_rates_count_the_carried_client() {
    let ws = EchoWs::start().await;
    let s = Sluice::start(
        "proxy_protocol = [\"127.0.0.1\"]",
        &format!(
            "[[route]]\nbackends = [\"{}\"]\n[route.limits]\nmax_connections_per_ip = 1\n\
             handshakes_per_second = 1\nhandshake_burst = 2\n",
            ws.addr
        ),
    )
    .await;
    let upgrade_from = |ip: &str| {
        let mut b = format!("PROXY TCP4 {ip} 192.0.2.1 5555 80\r\n").into_bytes();
        b.extend_from_slice(&upgrade_request("a", "/ws", ""));
        b
    };
    let mut tunnels = Vec::new();
    let mut statuses = Vec::new();
    for ip in ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1"] {
        let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
        let (status, _) = raw_request(&mut tcp, &upgrade_from(ip)).await;
        statuses.push(status);
        tunnels.push(tcp);
    }
    // 10.0.0.1: one tunnel, then its cap (429), then its burst of two
    // handshakes is spent (429); 10.0.0.2 has its own budget.
    assert_eq!(statuses, [101, 429, 101, 429]);
    assert_eq!(ws.connections(), 2);
}

// ------------------------------------------------------------ out

/// One backend connection as the PROXY-reading backend saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// The header's source and destination (`None`: LOCAL/UNKNOWN).
    addresses: Option<(SocketAddr, SocketAddr)>,
    version: u8,
    /// The request heads that followed it.
    heads: Vec<String>,
}

/// A backend that requires a PROXY header (parsed with ppp), then answers
/// requests with 200 and an upgrade with 101.
async fn proxy_backend() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (entry, used) = loop {
                    let n = tcp.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let parsed = HeaderResult::parse(&buf);
                    if parsed.is_incomplete() {
                        continue;
                    }
                    break match parsed {
                        HeaderResult::V1(Ok(h)) => {
                            let a = match h.addresses {
                                ppp::v1::Addresses::Tcp4(a) => Some((
                                    SocketAddr::new(a.source_address.into(), a.source_port),
                                    SocketAddr::new(
                                        a.destination_address.into(),
                                        a.destination_port,
                                    ),
                                )),
                                ppp::v1::Addresses::Tcp6(a) => Some((
                                    SocketAddr::new(a.source_address.into(), a.source_port),
                                    SocketAddr::new(
                                        a.destination_address.into(),
                                        a.destination_port,
                                    ),
                                )),
                                ppp::v1::Addresses::Unknown => None,
                            };
                            (
                                Seen {
                                    addresses: a,
                                    version: 1,
                                    heads: vec![],
                                },
                                h.header.len(),
                            )
                        }
                        HeaderResult::V2(Ok(h)) => {
                            let a = match (h.command, h.addresses) {
                                (PpCommand::Proxy, ppp::v2::Addresses::IPv4(a)) => Some((
                                    SocketAddr::new(a.source_address.into(), a.source_port),
                                    SocketAddr::new(
                                        a.destination_address.into(),
                                        a.destination_port,
                                    ),
                                )),
                                _ => None,
                            };
                            (
                                Seen {
                                    addresses: a,
                                    version: 2,
                                    heads: vec![],
                                },
                                h.len(),
                            )
                        }
                        other => panic!("backend got no valid PROXY header: {other:?} in {buf:?}"),
                    };
                };
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(entry);
                    log.len() - 1
                };
                buf.drain(..used);
                loop {
                    while let Some(end) = find(&buf, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                        buf.drain(..end + 4);
                        log.lock().unwrap()[index].heads.push(head.clone());
                        let reply = if head_value(&head, "upgrade").is_some() {
                            good_101(&head)
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
                        };
                        if tcp.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                    let n = tcp.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn send_proxy_protocol_puts_the_clients_header_first_on_every_backend_connection() {
    let (backend, seen) = proxy_backend().await;
    let s = Sluice::start(
        "proxy_protocol = [\"127.0.0.1\"]",
        &format!(
            "[[route]]\npath = \"/one\"\nbackends = [\"{backend}\"]\nsend_proxy_protocol = \"v1\"\n\
             [[route]]\nbackends = [\"{backend}\"]\nsend_proxy_protocol = \"v2\"\n"
        ),
    )
    .await;
    let ok = |(status, head): (u16, String)| assert_eq!(status, 200, "{head}");

    // Two requests on one client connection: two backend connections (a
    // connection that carries one client's header serves no other request),
    // each beginning with the client's address.
    let mut tcp = connect_from(CLIENT, s.plain_addr).await.unwrap();
    let client = tcp.local_addr().unwrap();
    for _ in 0..2 {
        let (status, head) = raw_request(&mut tcp, b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n").await;
        ok((status, head.clone()));
        read_body(&mut tcp, &head).await;
    }
    ok(raw_request(&mut tcp, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n").await);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        for (i, version) in [(0, 2), (1, 2), (2, 1)] {
            assert_eq!(seen[i].version, version);
            assert_eq!(
                seen[i].addresses,
                Some((client, s.plain_addr)),
                "{:?}",
                seen[i]
            );
            assert_eq!(seen[i].heads.len(), 1);
        }
        assert!(seen[0].heads[0].starts_with("GET /two "));
    }

    // A WebSocket upgrade: the header, then the upgrade request.
    let mut tcp = connect_from(CLIENT, s.plain_addr).await.unwrap();
    let client = tcp.local_addr().unwrap();
    let (status, head) = raw_request(&mut tcp, &upgrade_request("a", "/ws", "")).await;
    assert_eq!(status, 101, "{head}");
    {
        let seen = seen.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(
            (last.version, last.addresses),
            (2, Some((client, s.plain_addr)))
        );
        assert!(last.heads[0].starts_with("GET /ws "), "{last:?}");
    }

    // Behind a balancer: what the balancer said is passed on.
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let mut bytes = v2("10.9.8.7:4321", "192.0.2.10:443");
    bytes.extend_from_slice(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
    ok(raw_request(&mut tcp, &bytes).await);
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(
        (last.version, last.addresses),
        (
            1,
            Some((
                "10.9.8.7:4321".parse().unwrap(),
                "192.0.2.10:443".parse().unwrap()
            ))
        )
    );
}

#[tokio::test]
async fn health_checks_on_a_send_proxy_protocol_route_send_a_local_header() {
    let (backend, seen) = proxy_backend().await;
    let _s = Sluice::start(
        "",
        &format!(
            "[[route]]\nbackends = [\"{backend}\"]\nsend_proxy_protocol = \"v2\"\n\
             health_check = {{ path = \"/health\", interval = \"100ms\" }}\n"
        ),
    )
    .await;
    let t = Instant::now();
    loop {
        if let Some(check) = seen.lock().unwrap().iter().find(|s| !s.heads.is_empty()) {
            assert_eq!((check.version, check.addresses), (2, None), "{check:?}");
            assert!(check.heads[0].starts_with("GET /health "));
            break;
        }
        assert!(t.elapsed() < WAIT, "no health check reached the backend");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------ the binary

#[tokio::test]
async fn the_binary_logs_one_line_for_a_bad_header_and_keeps_serving() {
    let http = HttpEcho::start().await;
    let (_dir, path) = write_config(&format!(
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\nproxy_protocol = [\"127.0.0.1/32\"]\n\
         [[route]]\nbackends = [\"{}\"]\n",
        http.addr
    ));
    let proc = Proc::start(&path, None);
    let addr = proc.addr("listening").await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 10.0.0.1 10.0.0.2 99999 80\r\n")
        .await
        .unwrap();
    assert_closed_within(&mut tcp, SLACK, "invalid port").await;
    let line = proc.wait_line("connection closed: PROXY header", 1).await;
    assert!(
        line.contains("proxy_header_invalid") && line.contains("peer=127.0.0.1"),
        "{line}"
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut bytes = b"PROXY TCP4 10.3.3.3 10.0.0.2 4000 80\r\n".to_vec();
    bytes.extend_from_slice(GET);
    assert_eq!(forwarded_for(&mut tcp, &bytes).await, "10.3.3.3");
    // The access log names the carried client.
    let line = proc.wait_line("request", 1).await;
    assert!(line.contains("peer=10.3.3.3:4000"), "{line}");
    assert_eq!(http.connections(), 1);
}
