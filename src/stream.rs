//! One type for "a TCP stream, maybe wrapped in TLS", so that hyper's upgrade
//! downcast has a single concrete type to look for on each side and the relay
//! is monomorphised once per side rather than once per listener kind.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

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
pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;
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

impl OverTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
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
