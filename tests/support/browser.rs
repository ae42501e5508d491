//! Headless Chromium driven over the DevTools protocol: open a page, then
//! poll an expression until it has the expected value. Polling real time
//! (rather than `--virtual-time-budget`) waits for real network events such
//! as a WebSocket handshake on a fresh connection.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

pub struct Browser {
    child: Child,
    port: u16,
    profile: std::path::PathBuf,
}

/// The Chromium binary, if installed.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

impl Browser {
    pub fn launch(binary: &str, extra: &[&str]) -> Browser {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "sluice-chromium-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
                "--disable-quic",
                "--ignore-certificate-errors",
                "--remote-debugging-port=0",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = lines.next().expect("chromium exited").unwrap();
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Browser {
            child,
            port,
            profile,
        }
    }

    /// Opens `url` in a new tab and polls `expression` (a JS string value)
    /// until `done` accepts it or `limit` passes; returns the last value.
    pub async fn eval_until(
        &self,
        url: &str,
        expression: &str,
        limit: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let target = tokio::time::timeout(
            Duration::from_secs(10),
            self.http(&format!(
                "PUT /json/new?{url} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            )),
        )
        .await
        .expect("devtools answered /json/new");
        let ws_url = target
            .split("\"webSocketDebuggerUrl\": \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no debugger URL in {target}"))
            .to_owned();
        let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
            .await
            .unwrap_or_else(|e| panic!("devtools {ws_url}: {e}"));
        let started = Instant::now();
        let mut id = 0;
        let mut last = String::new();
        while started.elapsed() < limit {
            id += 1;
            let request = format!(
                r#"{{"id":{id},"method":"Runtime.evaluate","params":{{"expression":{},"returnByValue":true}}}}"#,
                json_string(expression)
            );
            ws.send(Message::Text(request)).await.unwrap();
            let needle = format!("\"id\":{id},");
            while let Ok(Some(Ok(Message::Text(reply)))) =
                tokio::time::timeout(Duration::from_secs(2), ws.next()).await
            {
                if reply.contains(&needle) {
                    last = reply
                        .split("\"value\":\"")
                        .nth(1)
                        .map(|v| unescape(v.split("\"}").next().unwrap_or("")))
                        .unwrap_or_default();
                    break;
                }
            }
            if done(&last) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    async fn http(&self, request: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        // DevTools keeps the connection open: read the head, then exactly
        // Content-Length bytes.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "devtools closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return body.to_owned();
                }
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn unescape(s: &str) -> String {
    s.replace("\\n", "\n")
        .replace("\\\"", "\"")
        .replace("\\\\", "\\")
}
