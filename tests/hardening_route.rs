//! Contract (v2) "Routing sees what the backend sees" (issue 12, items 2, 4
//! and 9): routes match the normalized path (percent-encoded unreserved
//! characters decoded, dot-segments removed), so per-route policy cannot be
//! dodged by spelling; a path above `/`, `%2F` or `%00` is 400; the backend
//! gets the normalized path and the query unchanged; Host matches without
//! case, trailing dot or port. IPv4-mapped peers on a dual-stack `[::]`
//! listener are their IPv4 address for `trusted_proxies`, limits and
//! `X-Forwarded-For`. From an untrusted peer, `Forwarded`, `X-Real-IP`,
//! `X-Forwarded-Port` and `X-Forwarded-Prefix` never reach a backend.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::net::TcpStream;

/// Route 0: `/admin`, only https://good.example; route 1: anything, any origin.
async fn admin_and_catch_all() -> (Sluice, RawBackend, RawBackend) {
    let admin = RawBackend::start(good_101).await;
    let rest = RawBackend::start(good_101).await;
    let s = Sluice::start(
        "",
        &format!(
            "[[route]]\npath = \"/admin\"\nbackends = [\"{}\"]\n\
             [route.websocket]\nallowed_origins = [\"https://good.example\"]\n\
             [[route]]\nbackends = [\"{}\"]\n\
             [route.websocket]\nallowed_origins = [\"*\"]\n",
            admin.addr, rest.addr
        ),
    )
    .await;
    (s, admin, rest)
}

async fn upgrade_status(s: &Sluice, host: &str, path: &str, extra: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    raw_request(&mut tcp, &upgrade_request(host, path, extra)).await
}

// ------------------------------------------------------------ item 2

#[tokio::test]
async fn encoded_and_dotted_spellings_of_a_route_path_get_that_routes_origin_policy() {
    let (s, admin, rest) = admin_and_catch_all().await;
    let host = s.plain_addr.to_string();
    let evil = "Origin: https://evil.example\r\n";
    // The control: the plain spelling is 403, another path is 101.
    assert_eq!(upgrade_status(&s, &host, "/admin", evil).await.0, 403);
    assert_eq!(upgrade_status(&s, &host, "/public", evil).await.0, 101);
    assert_eq!(rest.connections(), 1);
    for path in [
        "/%61dmin",
        "/x/../admin",
        "/./admin",
        "/%61dmin/chat",
        "/x/./../admin/",
    ] {
        let (status, head) = upgrade_status(&s, &host, path, evil).await;
        assert_eq!(
            status, 403,
            "{path} from https://evil.example must meet route 0 (/admin, strict origins): {head}"
        );
    }
    assert_eq!(
        admin.connections(),
        0,
        "a refused origin reached /admin's backend"
    );
    assert_eq!(
        rest.connections(),
        1,
        "a spelling of /admin reached the catch-all"
    );
    // The allowed origin still gets through on an encoded spelling, to
    // route 0's backend.
    let (status, head) =
        upgrade_status(&s, &host, "/%61dmin", "Origin: https://good.example\r\n").await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(admin.connections(), 1);
}

#[tokio::test]
async fn host_matches_without_case_or_trailing_dot() {
    let chat = HttpEcho::start().await;
    let rest = HttpEcho::start().await;
    let s = Sluice::start(
        "",
        &format!(
            "[[route]]\nhost = \"chat.example.com\"\nbackends = [\"{}\"]\n\
             [[route]]\nbackends = [\"{}\"]\n",
            chat.addr, rest.addr
        ),
    )
    .await;
    let hosts = [
        "chat.example.com",
        "CHAT.example.com",
        "chat.example.com.",
        "Chat.Example.Com.:8080",
    ];
    for (i, host) in hosts.iter().enumerate() {
        let (status, body) = get(s.plain_addr, host, "/", "").await;
        assert_eq!(status, 200, "{host}: {body}");
        assert_eq!(
            chat.requests(),
            i + 1,
            "Host {host:?} did not match host = \"chat.example.com\""
        );
    }
    assert_eq!(rest.requests(), 0);
    // And for WebSocket upgrades (the route's policy is what matters).
    let ws_chat = RawBackend::start(good_101).await;
    let ws_rest = RawBackend::start(good_101).await;
    let s = Sluice::start(
        "",
        &format!(
            "[[route]]\nhost = \"chat.example.com\"\nbackends = [\"{}\"]\n\
             [route.websocket]\nallowed_origins = [\"https://good.example\"]\n\
             [[route]]\nbackends = [\"{}\"]\n[route.websocket]\nallowed_origins = [\"*\"]\n",
            ws_chat.addr, ws_rest.addr
        ),
    )
    .await;
    for host in ["chat.example.com.", "CHAT.EXAMPLE.COM"] {
        let (status, head) =
            upgrade_status(&s, host, "/", "Origin: https://evil.example\r\n").await;
        assert_eq!(status, 403, "Host {host:?} dodged the chat route: {head}");
    }
    assert_eq!((ws_chat.connections(), ws_rest.connections()), (0, 0));
}

#[tokio::test]
async fn paths_above_root_or_with_encoded_slash_or_nul_are_400() {
    let (s, admin, rest) = admin_and_catch_all().await;
    let host = s.plain_addr.to_string();
    let bad = [
        "/../admin",
        "/a/%2F..",
        "/a%2fb",
        "/a%2Fb",
        "/a%00b",
        "/a/../../admin",
    ];
    for path in bad {
        let (status, body) = get(s.plain_addr, "app.test", path, "").await;
        assert_eq!(status, 400, "GET {path}: {body}");
        let (status, head) =
            upgrade_status(&s, &host, path, "Origin: https://good.example\r\n").await;
        assert_eq!(status, 400, "upgrade {path}: {head}");
    }
    assert_eq!(
        (admin.connections(), rest.connections()),
        (0, 0),
        "a bad path reached a backend"
    );
}

#[tokio::test]
async fn the_backend_gets_the_normalized_path_and_the_unchanged_query() {
    let admin = HttpEcho::start().await;
    let rest = HttpEcho::start().await;
    let s = Sluice::start(
        "",
        &format!(
            "[[route]]\npath = \"/admin\"\nbackends = [\"{}\"]\n[[route]]\nbackends = [\"{}\"]\n",
            admin.addr, rest.addr
        ),
    )
    .await;
    let (status, body) = get(s.plain_addr, "app.test", "/%61dmin/./x?q=%2F&r=/../a", "").await;
    assert_eq!(status, 200, "{body}");
    let first = body.lines().next().unwrap_or("");
    assert_eq!(first, "GET /admin/x?q=%2F&r=/../a", "{body}");
    assert_eq!((admin.requests(), rest.requests()), (1, 0));
    // Unreserved characters only: a reserved one stays encoded.
    let (status, body) = get(s.plain_addr, "app.test", "/x/%7Euser/y/../%3Fz", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.lines().next().unwrap_or(""),
        "GET /x/~user/%3Fz",
        "{body}"
    );
}

// ------------------------------------------------------------ item 4

/// A dual-stack listener is needed; if this machine has no IPv6 the test
/// fails with this message rather than skipping.
fn require_dual_stack() {
    let l = std::net::TcpListener::bind("[::]:0").unwrap_or_else(|e| {
        panic!("this test needs IPv6 (a [::] listener) on the test machine: {e}")
    });
    let port = l.local_addr().unwrap().port();
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| {
        panic!("this test needs a dual-stack [::] listener (net.ipv6.bindv6only = 0): {e}")
    });
}

/// An in-process sluice with only a cleartext listener on `[::]:0`.
async fn dual_stack(server_extra: &str, rest: &str) -> (sluice::daemon::Running, u16) {
    require_dual_stack();
    let dir = TestCert::new().dir;
    let toml = format!("[server]\nlisten_plain = [\"[::]:0\"]\n{server_extra}\n{rest}");
    let config = sluice::config::Config::parse(&toml, &dir.join("sluice.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let snapshot = sluice::shared::Snapshot::build(config).unwrap();
    let running = sluice::daemon::Running::start(sluice::shared::Shared::new(snapshot))
        .await
        .unwrap();
    let port = running.plain_addrs()[0].port();
    (running, port)
}

#[tokio::test]
async fn ipv4_mapped_peers_on_a_dual_stack_listener_are_trusted_as_ipv4() {
    let b = HttpEcho::start().await;
    let (_running, port) = dual_stack(
        "trusted_proxies = [\"127.0.0.1\"]",
        &format!("[[route]]\nbackends = [\"{}\"]\n", b.addr),
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, body) = get(addr, "app.test", "/", "X-Forwarded-For: 203.0.113.7\r\n").await;
    assert_eq!(status, 200, "{body}");
    let body = body.to_lowercase();
    assert!(
        !body.contains("::ffff:"),
        "an IPv4-mapped address reached the backend: {body}"
    );
    assert!(
        body.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "127.0.0.1 on a [::] listener is the trusted proxy: {body}"
    );
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_on_a_dual_stack_listener_have_their_own_limit_buckets() {
    let b = RawBackend::start(good_101).await;
    let (_running, port) = dual_stack(
        "trusted_proxies = [\"127.0.0.1\"]",
        &format!(
            "[limits]\nhandshakes_per_second = 1\nhandshake_burst = 1\n\
             [[route]]\nbackends = [\"{}\"]\n",
            b.addr
        ),
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let upgrade = |xff: &'static str| async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let (status, head) = raw_request(
            &mut tcp,
            &upgrade_request("app.test", "/", &format!("X-Forwarded-For: {xff}\r\n")),
        )
        .await;
        (status, head, tcp)
    };
    let (s1, h1, _t1) = upgrade("203.0.113.7").await;
    assert_eq!(s1, 101, "{h1}");
    let (s2, h2, _t2) = upgrade("203.0.113.8").await;
    assert_eq!(
        s2, 101,
        "a second client behind the trusted proxy shared the first one's bucket: {h2}"
    );
    // The limit itself works: the first client again, at once, is 429.
    let (s3, h3, _t3) = upgrade("203.0.113.7").await;
    assert_eq!(s3, 429, "{h3}");
}

// ------------------------------------------------------------ item 9

const SPOOFED: &str = "Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\n\
                       X-Real-IP: 6.6.6.6\r\n\
                       X-Forwarded-Port: 6666\r\n\
                       X-Forwarded-Prefix: /evil\r\n";
const SPOOFED_NAMES: [&str; 4] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
];

#[tokio::test]
async fn client_sent_forwarding_headers_from_an_untrusted_peer_do_not_reach_an_http_backend() {
    let b = HttpEcho::start().await;
    let s = Sluice::to(b.addr, "", "").await;
    let (status, body) = get(s.plain_addr, "app.test", "/h", SPOOFED).await;
    assert_eq!(status, 200, "{body}");
    let body = body.to_lowercase();
    for name in SPOOFED_NAMES {
        assert!(
            !body.lines().any(|l| l.starts_with(&format!("{name}:"))),
            "{name} from an untrusted peer reached the backend: {body}"
        );
    }
    assert!(
        !body.contains("6.6.6.6") && !body.contains("6666") && !body.contains("/evil"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
}

#[tokio::test]
async fn client_sent_forwarding_headers_from_an_untrusted_peer_do_not_reach_a_websocket_backend() {
    let b = EchoWs::start().await;
    let s = Sluice::to(b.addr, "", "").await;
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let (status, head) = raw_request(
        &mut tcp,
        &upgrade_request(&s.plain_addr.to_string(), "/", SPOOFED),
    )
    .await;
    assert_eq!(status, 101, "{head}");
    let seen = b.requests.lock().unwrap()[0].clone();
    for name in SPOOFED_NAMES {
        assert!(
            !seen.contains_key(name),
            "{name} from an untrusted peer reached the WebSocket backend: {seen:?}"
        );
    }
}
