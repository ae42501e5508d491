//! A real Redis (Debian's `redis-server`) for the `[cluster]` tests, on a
//! free loopback port, persistence off, killed on drop; and a client to look
//! at what sluice keeps in it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::hostile::free_port;
use super::TestCert;

const INSTALL: &str =
    "redis-server is not installed: apt-get install -y redis-server (scripts/test.sh installs it)";

/// `redis-server` on `127.0.0.1:port`.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts on a free port and waits until it answers PING.
    pub async fn start() -> RedisServer {
        RedisServer::start_on(free_port()).await
    }

    /// Starts on `port` (a restart of a killed one), and waits for PING.
    pub async fn start_on(port: u16) -> RedisServer {
        let bin = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| panic!("{INSTALL}"));
        let dir = TestCert::new().dir;
        let child = Command::new(bin)
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL} ({e})"));
        let server = RedisServer { port, child, dir };
        let t = Instant::now();
        loop {
            if let Ok(Ok(pong)) = tokio::time::timeout(
                Duration::from_millis(500),
                server.query::<String>(&["PING"]),
            )
            .await
            {
                assert_eq!(pong, "PONG");
                return server;
            }
            assert!(
                t.elapsed() < super::WAIT,
                "redis-server on port {port} did not answer PING"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One command on a fresh connection.
    pub async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await
    }

    /// Calls of `command` so far (`INFO commandstats`), e.g. "evalsha".
    pub async fn calls(&self, command: &str) -> u64 {
        let info: String = self.query(&["INFO", "commandstats"]).await.unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
