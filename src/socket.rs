//! Options sluice sets on its own TCP sockets, beyond `TCP_NODELAY`.
//!
//! `server.reuse_port` binds listeners with `SO_REUSEPORT`: several sluice
//! processes on one host (same user) can then listen on the same address and
//! the kernel spreads new connections over them by a hash of the addresses.
//! Off by default, so that a second instance started by mistake fails with
//! "address in use" instead of silently taking half the traffic.
//!
//! `server.tcp_congestion` picks the congestion control of every socket
//! sluice owns, toward clients and toward backends. The reason it exists:
//! with BBR, which paces in the kernel when the qdisc is not `fq`, every send
//! arms a high-resolution timer, and on a virtual machine that is a costly
//! exit. Measured on the 2-core VM in bench/README.md, 4 tunnels echoing
//! 1 MiB messages cost sluice 1.46 ms of CPU per MiB with the system's BBR
//! and 0.95 ms with `reno`. Pacing buys nothing on loopback or a LAN, so an
//! operator whose backends are near may prefer a non-pacing algorithm; the
//! default leaves the system's choice alone.

use std::io;

use std::net::SocketAddr;

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

/// Sets the congestion control of `tcp`, if configured. Failure is not
/// fatal: the algorithm was checked at load, and the socket works either way.
pub fn set_congestion(tcp: &TcpStream, algorithm: Option<&str>) {
    if let Some(algorithm) = algorithm {
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_congestion(algorithm.as_bytes()) {
            tracing::debug!(algorithm, error = %e, "could not set tcp_congestion");
        }
    }
}

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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        set_congestion(&tcp, Some(RENO));
        let got = socket2::SockRef::from(&tcp).tcp_congestion().unwrap();
        assert_eq!(String::from_utf8_lossy(&got).trim_end_matches('\0'), RENO);
    }

    #[test]
    fn reno_passes_the_check_and_a_made_up_name_fails_it() {
        assert_eq!(check_congestion(RENO), Ok(()));
        let err = check_congestion("warp-drive").unwrap_err();
        assert!(err.contains("not available on this kernel"), "{err}");
    }
}
