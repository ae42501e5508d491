//! Contract: h2 over TLS (ALPN) is served, and WebSocket over h2 (RFC 8441
//! extended CONNECT) becomes an HTTP/1.1 upgrade to the backend, relayed by
//! the same frame-aware relay.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use rustls::pki_types::ServerName;
use support::*;
use tokio::net::TcpStream;

async fn h2_connect(s: &Sluice) -> h2::client::SendRequest<Bytes> {
    let mut cfg = (*s.cert.client_config()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(s.tls_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

#[tokio::test]
async fn plain_request_over_h2_is_proxied_to_an_http1_backend() {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let mut send = h2_connect(&s).await.ready().await.unwrap();
    let req = Request::get(format!("https://localhost:{}/over-h2", s.tls_addr.port()))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = within("h2 response", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = within("h2 body", body.data()).await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.starts_with("GET /over-h2"), "{text}");
    assert!(
        text.contains(&format!("host: localhost:{}", s.tls_addr.port())),
        "{text}"
    );
}

#[tokio::test]
async fn websocket_over_h2_extended_connect_echoes_through_the_relay() {
    let backend = EchoWs::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let send = h2_connect(&s).await;
    let mut send = within("h2 ready", send.ready()).await.unwrap();
    // The server's SETTINGS arrive asynchronously after the handshake.
    within("SETTINGS_ENABLE_CONNECT_PROTOCOL", async {
        while !send.is_extended_connect_protocol_enabled() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://localhost:{}/chat", s.tls_addr.port()))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    let resp = within("extended CONNECT response", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("sec-websocket-accept").is_none());

    // One masked text frame "hello over h2", then read the echo.
    stream
        .send_data(
            Bytes::from(frame_bytes(
                true,
                0,
                1,
                Some([9, 8, 7, 6]),
                b"hello over h2",
            )),
            false,
        )
        .unwrap();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while got.len() < 2 + 13 {
        let chunk = within("echo over h2", body.data())
            .await
            .expect("stream ended")
            .unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    let mut s2 = &got[..];
    let f = read_frame(&mut s2).await.unwrap();
    assert_eq!(
        (f.opcode, f.masked, f.payload.as_slice()),
        (1, false, &b"hello over h2"[..])
    );

    // The backend saw an ordinary HTTP/1.1 upgrade with a fresh key.
    let seen = backend.requests.lock().unwrap()[0].clone();
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["sec-websocket-version"], "13");
    assert!(seen.contains_key("sec-websocket-key"));
}

#[tokio::test]
async fn connect_without_protocol_over_h2_is_405() {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let mut send = h2_connect(&s).await.ready().await.unwrap();
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("example.com:443")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, false).unwrap();
    let resp = within("h2 CONNECT response", resp).await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn h2c_backend_gets_requests_over_http2() {
    // An HTTP/2-only (prior knowledge) backend that reports the version it saw.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!("{:?} {}", req.version(), req.uri().path());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
            });
        }
    });
    let s = Sluice::start("", &format!("[[route]]\nbackends = [\"h2c://{addr}\"]\n")).await;
    let mut tcp = TcpStream::connect(s.plain_addr).await.unwrap();
    let (status, head) =
        raw_request(&mut tcp, b"GET /via-h2c HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(status, 200, "{head}");
    let body = String::from_utf8(read_body(&mut tcp, &head).await).unwrap();
    assert_eq!(body, "HTTP/2.0 /via-h2c");
}

#[tokio::test]
async fn h2_host_header_that_differs_from_authority_is_400() {
    let backend = HttpEcho::start().await;
    let s = Sluice::to(backend.addr, "", "").await;
    let mut send = h2_connect(&s).await.ready().await.unwrap();
    let req = Request::get(format!("https://localhost:{}/", s.tls_addr.port()))
        .header("host", "evil.example")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = within("h2 response", resp).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(backend.connections(), 0);
}
