//! One type for "a TCP stream, maybe wrapped in TLS", so that hyper's upgrade
//! downcast has a single concrete type to look for on each side and the relay
//! is monomorphised once per side rather than once per listener kind.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A plain or TLS stream over TCP. The TLS state is boxed: it is large, and
/// cleartext tunnels should not pay for it.
#[derive(Debug)]
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

/// What a client connected with.
pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<Corked>>;
/// What sluice connected to a backend with.
pub type BackendStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

/// `AsyncRead` and `AsyncWrite` for a two-variant stream enum, by handing
/// each call to the stream the variant holds.
macro_rules! delegate_io {
    ($name:ident, $a:ident, $b:ident) => {
        impl<X: AsyncRead + AsyncWrite + Unpin> AsyncRead for $name<X> {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::$a(s) => Pin::new(s).poll_read(cx, buf),
                    $name::$b(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }

        impl<X: AsyncRead + AsyncWrite + Unpin> AsyncWrite for $name<X> {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::$a(s) => Pin::new(s).poll_write(cx, buf),
                    $name::$b(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::$a(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $name::$b(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $name::$a(s) => s.is_write_vectored(),
                    $name::$b(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::$a(s) => Pin::new(s).poll_flush(cx),
                    $name::$b(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::$a(s) => Pin::new(s).poll_shutdown(cx),
                    $name::$b(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_io!(MaybeTls, Plain, Tls);

/// The TCP stream under a server-side TLS session. While corked (during the
/// handshake) it holds back what rustls writes until a read has to wait for
/// the client; once uncorked, what is still held goes out in front of the
/// next write. What that buys: the TLS 1.3 session tickets rustls queues as
/// the handshake completes leave in the same segment as the first response
/// (the 101, or the h2 SETTINGS): one `writev` and one TCP segment per full
/// handshake instead of two (and one wake-up fewer for the client).
///
/// The client never waits for what is held: during the handshake it goes
/// before sluice waits, and after a TLS 1.3 handshake it is only tickets
/// (before 1.3 the server's last flight ends the handshake, so the acceptor
/// drains it at once). What is still held when the stream is dropped (an
/// alert after a failed handshake) is written then, without waiting.
#[derive(Debug)]
pub struct Corked {
    tcp: TcpStream,
    held: Vec<u8>,
    corked: bool,
}

/// The most a corked stream holds before a write waits for the socket
/// (rustls writes a few KiB per handshake flight).
const CORK_LIMIT: usize = 64 * 1024;

impl Corked {
    pub fn new(tcp: TcpStream) -> Self {
        Corked {
            tcp,
            held: Vec::new(),
            corked: true,
        }
    }

    /// The handshake is done: what is held goes in front of the next write.
    pub fn uncork(&mut self) {
        self.corked = false;
    }

    /// Writes out what is held now.
    pub async fn drain(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_held(cx, &[]).map_ok(|_| ())
    }

    /// Writes what is held, with `then` behind it in the same `writev`, until
    /// nothing is held; returns how much of `then` went too (counting only
    /// bytes that reached the socket, so a flush after it has nothing of the
    /// caller's left to push). The buffer is freed once it is all gone, so an
    /// established connection carries no capacity for it.
    fn poll_write_held(
        &mut self,
        cx: &mut Context<'_>,
        then: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        while !self.held.is_empty() {
            let mut iov = [io::IoSlice::new(&[]); 8];
            iov[0] = io::IoSlice::new(&self.held);
            let k = then.len().min(iov.len() - 1);
            iov[1..=k].copy_from_slice(&then[..k]);
            let n = ready!(Pin::new(&mut self.tcp).poll_write_vectored(cx, &iov[..=k]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < self.held.len() {
                self.held.drain(..n);
                continue;
            }
            let of_then = n - self.held.len();
            self.held = Vec::new();
            return Poll::Ready(Ok(of_then));
        }
        Poll::Ready(Ok(0))
    }
}

impl Drop for Corked {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let _ = self.tcp.try_write(&self.held);
        }
    }
}

impl AsyncRead for Corked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if read.is_pending() && this.corked && !this.held.is_empty() {
            // The handshake is about to wait for the client, which is
            // waiting for what is held.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        read
    }
}

impl AsyncWrite for Corked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.corked {
            let went = ready!(this.poll_write_held(cx, bufs))?;
            if went > 0 {
                return Poll::Ready(Ok(went));
            }
            return Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        }
        if this.held.len() >= CORK_LIMIT {
            ready!(this.poll_drain(cx))?;
        }
        let n = bufs.iter().map(|b| b.len()).sum();
        this.held.reserve(n);
        for b in bufs {
            this.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Does not push what is held: after the handshake that is tickets only,
    /// which go with the next write (hyper flushes while a request's
    /// backend connect is still under way).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// A stream the relay can wait on without holding a read buffer.
pub trait Peer: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ready when a read is likely to return data (or EOF/error). Spurious
    /// readiness is allowed: the relay then reads `Pending` and waits again.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// False when `poll_read_ready` cannot wait (it is always ready): the
    /// relay then keeps its buffer and waits in `poll_read` instead.
    fn has_readiness(&self) -> bool {
        true
    }
}

/// Access to the TCP socket under a TLS stream.
pub trait OverTcp {
    fn tcp(&self) -> &TcpStream;
}

impl OverTcp for tokio_rustls::server::TlsStream<Corked> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

impl OverTcp for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + OverTcp> Peer for MaybeTls<T> {
    /// For TLS this is the socket's readiness. That is sound because the relay
    /// reads again at once after a read that filled its buffer (rustls may
    /// hold more plaintext), and only waits after a short read, which means
    /// rustls had no plaintext left.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            MaybeTls::Plain(s) => s.poll_read_ready(cx),
            MaybeTls::Tls(s) => s.tcp().poll_read_ready(cx),
        }
    }
}

/// Streams with no readiness of their own (an h2 stream behind hyper's
/// `Upgraded`): always "ready", so the relay holds its buffer while waiting.
impl Peer for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn has_readiness(&self) -> bool {
        false
    }
}

/// A client's stream as the relay gets it after an upgrade: the connection
/// itself (plain or TLS), or one h2 stream of a connection (RFC 8441). One
/// type for both keeps the relay to a single instance. (The backend side is
/// always a `BackendStream`: sluice speaks HTTP/1.1 upgrades to backends.)
#[derive(Debug)]
pub enum Tunneled<S> {
    Socket(S),
    H2(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>),
}

delegate_io!(Tunneled, Socket, H2);

impl<S: Peer> Peer for Tunneled<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Tunneled::Socket(s) => s.poll_read_ready(cx),
            Tunneled::H2(s) => s.poll_read_ready(cx),
        }
    }

    fn has_readiness(&self) -> bool {
        match self {
            Tunneled::Socket(s) => s.has_readiness(),
            Tunneled::H2(s) => s.has_readiness(),
        }
    }
}
