//! Contract: the command line. `check` on good and bad files (one error line
//! naming file, line and key), `--version`, and `run` stopping on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn check(path: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_prints_the_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_accepts_the_shipped_example() {
    let (ok, stdout, stderr) = check(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/sluice.toml"
    )));
    assert!(ok, "{stderr}");
    assert!(stdout.to_lowercase().contains("config ok"));
}

#[test]
fn check_accepts_a_tls_config_with_real_certificates() {
    let cert = TestCert::new();
    let p = write(
        &cert.dir,
        "good.toml",
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[[route]]\nbackends = [\"127.0.0.1:9\"]\n",
    );
    let (ok, stdout, stderr) = check(&p);
    assert!(ok, "{stderr}");
    assert!(stdout.to_lowercase().contains("config ok"));
}

#[test]
fn check_rejects_bad_files_with_file_line_and_key() {
    let cert = TestCert::new();
    let base = "[server]\nlisten_plain = [\"127.0.0.1:0\"]\n";
    let route = "[[route]]\nbackends = [\"127.0.0.1:9\"]\n";
    let cases = [
        ("unknown key", format!("{base}listn = []\n{route}"), 3, "server.listn"),
        ("wrong type", format!("{base}{route}[route.websocket]\nmax_frame_bytes = \"1MB\"\n"), 6, "max_frame_bytes"),
        ("bad duration", format!("{base}idle_timeout = \"10 parsecs\"\n{route}"), 3, "idle_timeout"),
        ("unknown congestion control", format!("{base}tcp_congestion = \"warp-drive\"\n{route}"), 3, "server.tcp_congestion"),
        (
            "missing cert",
            format!("[server]\nlisten = [\"127.0.0.1:0\"]\n[tls]\ncert = \"nope.pem\"\nkey = \"key.pem\"\n{route}"),
            4,
            "tls.cert",
        ),
        (
            "missing key",
            format!("[server]\nlisten = [\"127.0.0.1:0\"]\n[tls]\ncert = \"cert.pem\"\nkey = \"missing-key.pem\"\n{route}"),
            5,
            "tls.key",
        ),
    ];
    for (what, text, line, key) in cases {
        let p = write(&cert.dir, "bad.toml", &text);
        let (ok, _, stderr) = check(&p);
        assert!(!ok, "{what}: accepted");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: one error line, got {stderr}");
        let expect = format!("bad.toml:{line}:");
        assert!(
            lines[0].contains(&expect),
            "{what}: {} lacks {expect}",
            lines[0]
        );
        assert!(lines[0].contains(key), "{what}: {} lacks {key}", lines[0]);
    }
}

#[test]
fn run_serves_until_sigterm_then_exits_0() {
    let backend_dir = TestCert::new();
    let p = write(
        &backend_dir.dir,
        "run.toml",
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\nshutdown_grace = \"2s\"\n[[route]]\nbackends = [\"127.0.0.1:9\"]\n",
    );
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&p)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let started = Instant::now();
    let addr = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if line.contains("listening") {
            let at = line.find("addr=").unwrap() + 5;
            break line[at..].split_whitespace().next().unwrap().to_owned();
        }
        assert!(started.elapsed() < WAIT, "no listening line");
    };
    // It serves: an unroutable backend gives 502, not a refused connection.
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");

    unsafe_kill(child.id(), 15);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

fn unsafe_kill(pid: u32, sig: i32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}
