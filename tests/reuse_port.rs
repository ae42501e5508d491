//! `server.reuse_port`: several sluice processes on one host share a port.
//! Two real servers bind the same address; the kernel spreads connections
//! over both. Without the key the second bind fails, as it should.

use std::net::SocketAddr;

use sluice::config::Config;
use sluice::daemon::Running;
use sluice::shared::{Shared, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP backend that answers every request with `body` and closes.
async fn backend(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

async fn start(
    listen: SocketAddr,
    reuse_port: bool,
    backend: SocketAddr,
) -> std::io::Result<Running> {
    let toml = format!(
        "[server]\nlisten_plain = [\"{listen}\"]\nreuse_port = {reuse_port}\n\
         [[route]]\nbackends = [\"{backend}\"]\n"
    );
    let config = Config::parse(&toml, std::path::Path::new("reuse.toml")).unwrap();
    Running::start(Shared::new(Snapshot::build(config).unwrap())).await
}

/// The body of one `GET /` through `addr`.
async fn get(addr: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply.rsplit("\r\n\r\n").next().unwrap().to_owned()
}

#[tokio::test]
async fn two_instances_with_reuse_port_share_one_port() {
    let (a, b) = (backend("A").await, backend("B").await);
    let first = start("127.0.0.1:0".parse().unwrap(), true, a)
        .await
        .unwrap();
    let addr = first.plain_addrs()[0];
    let second = start(addr, true, b)
        .await
        .expect("a second bind with reuse_port");
    assert_eq!(second.plain_addrs()[0], addr);

    // The kernel hashes each connection's addresses to one of the two; 64
    // connections all landing on one has odds of 2^-63.
    let mut seen = std::collections::HashMap::new();
    for _ in 0..64 {
        *seen.entry(get(addr).await).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both instances answer: {seen:?}");
    drop((first, second));
}

#[tokio::test]
async fn without_reuse_port_a_second_instance_cannot_bind() {
    let a = backend("A").await;
    let first = start("127.0.0.1:0".parse().unwrap(), false, a)
        .await
        .unwrap();
    let addr = first.plain_addrs()[0];
    let Err(err) = start(addr, false, a).await else {
        panic!("a second bind without reuse_port succeeded");
    };
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
