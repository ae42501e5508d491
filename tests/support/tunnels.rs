//! Helpers for the tests of how tunnels end (pings, spread drains, backend
//! removal): a WebSocket backend that records every message it gets, a raw
//! backend whose socket the test drives, and frame checks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{find, frame_bytes, good_101, read_frame, within, RawFrame};

/// One connection's messages as a tungstenite server read them (Ping, Pong
/// and Close included), with when each arrived.
pub type Received = Arc<Mutex<Vec<(Instant, Message)>>>;

/// A WebSocket backend (tungstenite: it answers Pings by itself) that
/// echoes data messages and records everything it receives, per connection.
pub struct RecordingWs {
    pub addr: SocketAddr,
    pub conns: Arc<Mutex<Vec<Received>>>,
}

impl RecordingWs {
    pub async fn start() -> RecordingWs {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Received>>> = Arc::default();
        let all = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let received = Received::default();
                all.lock().unwrap().push(received.clone());
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let (mut tx, mut rx) = ws.split();
                    while let Some(Ok(msg)) = rx.next().await {
                        received.lock().unwrap().push((Instant::now(), msg.clone()));
                        if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        RecordingWs { addr, conns }
    }

    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// What connection `i` received so far.
    pub fn received(&self, i: usize) -> Vec<(Instant, Message)> {
        self.conns.lock().unwrap()[i].lock().unwrap().clone()
    }

    /// The close code connection `i` received, and when, once it has.
    pub async fn close_of(&self, i: usize) -> (Instant, u16) {
        within("the backend's Close", async {
            loop {
                let got = self.received(i).into_iter().find_map(|(at, m)| match m {
                    Message::Close(Some(f)) => Some((at, u16::from(f.code))),
                    _ => None,
                });
                if let Some(got) = got {
                    return got;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

/// A backend whose upgraded sockets the test drives itself: each accepted
/// connection gets a good 101 and is handed over.
pub async fn raw_ws_backend() -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while find(&head, b"\r\n\r\n").is_none() {
                    if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                if tcp.write_all(&good_101(&head)).await.is_ok() {
                    let _ = tx.send(tcp);
                }
            });
        }
    });
    (addr, rx)
}

/// Reads frames until a data frame or Close arrives, answering Pings (with
/// a Pong masked as `mask` says) on the way. Returns the frame and how many
/// Pings were answered.
pub async fn next_non_ping<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    mask: Option<[u8; 4]>,
) -> (Option<RawFrame>, usize) {
    let mut pings = 0;
    loop {
        let f = read_frame(s).await;
        match f {
            Some(f) if f.opcode == 9 => {
                pings += 1;
                s.write_all(&frame_bytes(true, 0, 10, mask, &f.payload))
                    .await
                    .unwrap();
            }
            other => return (other, pings),
        }
    }
}

/// The p-quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Reloads `s` in-process with a config written like [`super::Sluice::start`]
/// writes it (same listeners, so they are kept): `server_extra` in
/// `[server]`, then `rest`.
pub async fn reload(s: &mut super::Sluice, server_extra: &str, rest: &str) {
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nlisten_plain = [\"127.0.0.1:0\"]\n{server_extra}\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n{rest}",
        s.cert.cert_path.display(),
        s.cert.key_path.display()
    );
    let path = s.cert.dir.join("sluice.toml");
    std::fs::write(&path, toml).unwrap();
    s.running
        .reload(&path)
        .await
        .unwrap_or_else(|e| panic!("reload refused: {e}"));
}
