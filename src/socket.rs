//! Options sluice sets on its own TCP sockets, beyond `TCP_NODELAY`.
//!
//! `server.reuse_port` binds listeners with `SO_REUSEPORT`: several sluice
//! processes on one host (same user) can then listen on the same address and
//! the kernel spreads new connections over them by a hash of the addresses.
//! Off by default, so that a second instance started by mistake fails with
//! "address in use" instead of silently taking half the traffic.
//!
//! `server.tcp_congestion` picks the congestion control of every socket
//! sluice owns, toward clients and toward backends. Unset, sockets keep the
//! system's algorithm, with one exception: when that algorithm paces (BBR),
//! a socket whose peer is on loopback gets `cubic` instead (`reno` where
//! this process may not use cubic, see [`NON_PACING`]). BBR paces in the
//! kernel when the qdisc is not `fq`, and every paced send arms a
//! high-resolution timer, which on a virtual machine is a costly exit.
//! Pacing shapes a flow for the queues of a network path; loopback has
//! none, so there it only burns CPU: compare the row "bulk ws: proxy CPU
//! ms/MiB" of bench/results/2026-11-24-defaults.md (BBR on every socket) with
//! bench/results/2026-11-24-s3-5rounds.md (cubic on loopback); bench/README.md
//! explains the runs. Sockets to other hosts keep BBR, which is what it is for.

use std::io;

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Connections the kernel queues for a listener before sluice accepts them.
const BACKLOG: u32 = 4096;

/// A listening socket on `addr` (`SO_REUSEADDR` always, so a restart does
/// not wait for old connections in TIME_WAIT; `SO_REUSEPORT` on request).
pub fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Sets the congestion control of `tcp` to the configured algorithm, or on
/// loopback to a non-pacing one (see the module doc). `peer` is the remote
/// address when the caller knows it; otherwise it is asked for only when it
/// matters. Failure is not fatal: the socket works either way.
pub fn set_congestion(tcp: &TcpStream, configured: Option<&str>, peer: Option<IpAddr>) {
    let algorithm = match configured {
        Some(a) => a,
        None => {
            let Some(a) = loopback_algorithm() else {
                return;
            };
            let peer = peer.or_else(|| tcp.peer_addr().ok().map(|p| p.ip()));
            if !peer.is_some_and(|ip| ip.to_canonical().is_loopback()) {
                return;
            }
            a
        }
    };
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_congestion(algorithm.as_bytes()) {
        tracing::debug!(algorithm, error = %e, "could not set tcp_congestion");
    }
}

/// The algorithm for loopback sockets when none is configured: if the
/// system's default paces, the first of [`NON_PACING`] this process may use;
/// else none. Read once: it is a property of the host. The default is what a
/// fresh socket gets (`TCP_CONGESTION`), not `/proc/sys/net/ipv4/...`, which
/// the systemd unit's `ProcSubset=pid` hides.
fn loopback_algorithm() -> Option<&'static str> {
    static CHOICE: OnceLock<Option<&'static str>> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        let paces = socket.tcp_congestion().ok()?.starts_with(b"bbr");
        if !paces {
            return None;
        }
        NON_PACING.into_iter().find(|a| check_congestion(a).is_ok())
    })
}

/// Built into every distribution kernel; neither paces. `cubic` first, as
/// Linux's usual default. But with the default set to bbr, the kernel's
/// `net.ipv4.tcp_allowed_congestion_control` is "reno bbr" unless an admin
/// adds cubic, so a process without `CAP_NET_ADMIN` (the systemd unit) may
/// use only `reno`, which is always allowed.
const NON_PACING: [&str; 2] = ["cubic", "reno"];

/// Whether this process may use `algorithm`, tried on a fresh socket, with
/// what to do about it when it may not.
pub fn check_congestion(algorithm: &str) -> Result<(), String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("cannot open a socket to check it: {e}"))?;
    match socket.set_tcp_congestion(algorithm.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "\"{algorithm}\" is not available on this kernel (see \
             /proc/sys/net/ipv4/tcp_available_congestion_control)"
        )),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
            "\"{algorithm}\" is not permitted for this process: it is not in \
             net.ipv4.tcp_allowed_congestion_control and sluice lacks CAP_NET_ADMIN"
        )),
        Err(e) => Err(format!("\"{algorithm}\" cannot be set: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one algorithm every Linux kernel has and every process may use.
    const RENO: &str = "reno";

    #[tokio::test]
    async fn the_configured_algorithm_is_on_the_socket() {
        let (_listener, tcp) = loopback_socket().await;
        set_congestion(&tcp, Some(RENO), None);
        assert_eq!(algorithm_of(&tcp), RENO);
    }

    /// A connected socket on loopback (and the listener it came through).
    async fn loopback_socket() -> (TcpListener, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener, tcp)
    }

    fn algorithm_of(tcp: &TcpStream) -> String {
        let got = socket2::SockRef::from(tcp).tcp_congestion().unwrap();
        String::from_utf8_lossy(&got)
            .trim_end_matches('\0')
            .to_owned()
    }

    #[tokio::test]
    async fn unconfigured_loopback_sockets_do_not_pace() {
        let (_listener, tcp) = loopback_socket().await;
        let system = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap();
        let system = system.trim();
        // Both ways of learning the peer: given, and asked of the socket.
        for peer in [Some(IpAddr::from([127, 0, 0, 1])), None] {
            set_congestion(&tcp, None, peer);
            let got = algorithm_of(&tcp);
            if system.starts_with("bbr") {
                assert_eq!(Some(got.as_str()), loopback_algorithm());
                assert!(NON_PACING.contains(&got.as_str()), "{got}");
            } else {
                assert_eq!(got, system, "a non-pacing system default is left alone");
            }
        }
    }

    #[tokio::test]
    async fn unconfigured_sockets_to_other_hosts_keep_the_system_algorithm() {
        let (_listener, tcp) = loopback_socket().await;
        let before = algorithm_of(&tcp);
        // Told the peer is elsewhere (as for a client from the network).
        set_congestion(&tcp, None, Some(IpAddr::from([192, 0, 2, 7])));
        assert_eq!(algorithm_of(&tcp), before);
    }

    #[test]
    fn reno_passes_the_check_and_a_made_up_name_fails_it() {
        assert_eq!(check_congestion(RENO), Ok(()));
        let err = check_congestion("warp-drive").unwrap_err();
        assert!(err.contains("not available on this kernel"), "{err}");
    }
}
