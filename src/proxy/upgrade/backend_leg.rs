//! The backend leg of the WebSocket handshake, spoken directly on the
//! socket: one write of the request head, then the answer's head read into a
//! small buffer. sluice needs no HTTP client machinery here (no dispatcher
//! task, no request channel, no 8 KiB connection buffers): the answer is
//! either a 101, after which the socket is the tunnel, or a refusal, whose
//! (small) body is read whole and passed on as plain HTTP.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::backend::BackendError;

/// A response head larger than this is refused (hyper's default is similar).
const MAX_HEAD: usize = 64 * 1024;
/// Header lines in a response head.
const MAX_HEADERS: usize = 100;
/// A refusal is an error page; one larger than this is a broken backend.
const MAX_REFUSAL_BODY: usize = 1024 * 1024;
/// One line of the head, a chunk-size line or a trailer line. Without a cap
/// per line, a line that never ends would be buffered until the 1 MiB body
/// cap, which it is not counted against.
const MAX_LINE: usize = 4 * 1024;

/// The backend's answer to an upgrade request.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// After a 101: bytes the backend sent past its head, already tunnel
    /// data. After anything else: the whole body of the refusal.
    pub rest: Bytes,
}

/// `GET path HTTP/1.1` with `headers`, as one buffer for one write.
pub fn request_head(path: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends `head` and reads the answer (skipping interim 1xx answers other
/// than 101).
pub async fn exchange<S>(stream: &mut S, head: &[u8]) -> Result<Answer, BackendError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(head).await.map_err(BackendError::Io)?;
    stream.flush().await.map_err(BackendError::Io)?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some((status, headers)) = parse_head(&mut buf)? {
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            let rest = if status == StatusCode::SWITCHING_PROTOCOLS {
                buf.freeze()
            } else {
                read_body(stream, status, &headers, buf).await?
            };
            return Ok(Answer {
                status,
                headers,
                rest,
            });
        }
        if buf.len() >= MAX_HEAD {
            return Err(BackendError::Protocol("response head over 64 KiB"));
        }
        if unfinished_line(&buf) > MAX_LINE {
            return Err(BackendError::Protocol("response head line over 4 KiB"));
        }
        if stream.read_buf(&mut buf).await.map_err(BackendError::Io)? == 0 {
            return Err(BackendError::Protocol(
                "backend closed the connection before answering the upgrade",
            ));
        }
    }
}

/// A complete head at the start of `buf` is parsed and consumed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(StatusCode, HeaderMap)>, BackendError> {
    const INVALID: BackendError = BackendError::Protocol("invalid response to the upgrade request");
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(INVALID),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(INVALID)?;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| INVALID)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| INVALID)?;
        headers.append(name, value);
    }
    buf.advance(len);
    Ok(Some((status, headers)))
}

/// The body of a refusal, framed as RFC 9112 §6.3 says for a response to a
/// GET: none for 204/304, chunked, Content-Length, or up to the close.
async fn read_body<S>(
    stream: &mut S,
    status: StatusCode,
    headers: &HeaderMap,
    mut buf: BytesMut,
) -> Result<Bytes, BackendError>
where
    S: AsyncRead + Unpin,
{
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Bytes::new());
    }
    if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        let chunked = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return if chunked {
            read_chunked(stream, buf).await
        } else {
            read_to_close(stream, buf).await
        };
    }
    let Some(length) = content_length(headers)? else {
        return read_to_close(stream, buf).await;
    };
    if length > MAX_REFUSAL_BODY {
        return Err(BackendError::Protocol("refusal body over 1 MiB"));
    }
    fill(stream, &mut buf, length).await?;
    buf.truncate(length);
    Ok(buf.freeze())
}

/// The Content-Length, if any; several that disagree are an error.
fn content_length(headers: &HeaderMap) -> Result<Option<usize>, BackendError> {
    const BAD: BackendError = BackendError::Protocol("invalid Content-Length in the refusal");
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().map_err(|_| BAD)?.split(',') {
            let n: usize = part.trim().parse().map_err(|_| BAD)?;
            if length.is_some_and(|l| l != n) {
                return Err(BAD);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

async fn read_chunked<S>(stream: &mut S, mut buf: BytesMut) -> Result<Bytes, BackendError>
where
    S: AsyncRead + Unpin,
{
    const BAD: BackendError = BackendError::Protocol("invalid chunked body in the refusal");
    let mut body = BytesMut::new();
    loop {
        let (line, size) = loop {
            match httparse::parse_chunk_size(&buf) {
                Ok(httparse::Status::Complete((line, size))) => break (line, size),
                Ok(httparse::Status::Partial) if buf.len() > MAX_LINE => {
                    return Err(BackendError::Protocol(
                        "chunk-size line over 4 KiB in the refusal",
                    ))
                }
                Ok(httparse::Status::Partial) => more(stream, &mut buf).await?,
                Err(_) => return Err(BAD),
            }
        };
        let size = usize::try_from(size).map_err(|_| BAD)?;
        if body.len().saturating_add(size) > MAX_REFUSAL_BODY {
            return Err(BackendError::Protocol("refusal body over 1 MiB"));
        }
        buf.advance(line);
        if size == 0 {
            break;
        }
        fill(stream, &mut buf, size + 2).await?;
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(BAD);
        }
        buf.advance(size + 2);
    }
    // Trailer lines until the empty line; their content is not passed on.
    loop {
        let end = loop {
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            if buf.len() > MAX_LINE {
                return Err(BackendError::Protocol(
                    "trailer line over 4 KiB in the refusal",
                ));
            }
            more(stream, &mut buf).await?;
        };
        buf.advance(end + 2);
        if end == 0 {
            return Ok(body.freeze());
        }
    }
}

async fn read_to_close<S>(stream: &mut S, mut buf: BytesMut) -> Result<Bytes, BackendError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if buf.len() > MAX_REFUSAL_BODY {
            return Err(BackendError::Protocol("refusal body over 1 MiB"));
        }
        if stream.read_buf(&mut buf).await.map_err(BackendError::Io)? == 0 {
            return Ok(buf.freeze());
        }
    }
}

/// Bytes after the last line end: the line still being received.
fn unfinished_line(buf: &[u8]) -> usize {
    buf.iter()
        .rposition(|&b| b == b'\n')
        .map_or(buf.len(), |i| buf.len() - i - 1)
}

/// Reads until `buf` holds at least `want` bytes.
async fn fill<S>(stream: &mut S, buf: &mut BytesMut, want: usize) -> Result<(), BackendError>
where
    S: AsyncRead + Unpin,
{
    buf.reserve(want.saturating_sub(buf.len()));
    while buf.len() < want {
        more(stream, buf).await?;
    }
    Ok(())
}

async fn more<S>(stream: &mut S, buf: &mut BytesMut) -> Result<(), BackendError>
where
    S: AsyncRead + Unpin,
{
    if stream.read_buf(buf).await.map_err(BackendError::Io)? == 0 {
        return Err(BackendError::Protocol(
            "backend closed the connection in the middle of its answer",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `exchange` against a real loopback peer that answers `reply`.
    async fn answer_to(reply: &'static [u8]) -> Result<Answer, BackendError> {
        answer_and_stream(reply).await.map(|(answer, _)| answer)
    }

    async fn answer_and_stream(
        reply: &'static [u8],
    ) -> Result<(Answer, tokio::net::TcpStream), BackendError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if tcp.read(&mut b).await.unwrap() == 0 {
                    return;
                }
                head.push(b[0]);
            }
            // Dribbled in small pieces, so every partial path is taken.
            for piece in reply.chunks(7) {
                tcp.write_all(piece).await.unwrap();
                tcp.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example"));
        let answer = exchange(&mut tcp, &request_head("/chat?x=1", &headers)).await?;
        Ok((answer, tcp))
    }

    #[tokio::test]
    async fn a_101_keeps_the_bytes_after_the_head_as_tunnel_data() {
        let (a, mut tcp) = answer_and_stream(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
        )
        .await
        .unwrap();
        assert_eq!(a.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(a.headers[header::UPGRADE], "websocket");
        // What came with the head is kept; the rest is still on the socket.
        let mut tunnel = a.rest.to_vec();
        while tunnel.len() < 4 {
            let mut b = [0u8; 4];
            let n = tcp.read(&mut b).await.unwrap();
            assert!(n > 0, "tunnel bytes lost: {tunnel:?}");
            tunnel.extend_from_slice(&b[..n]);
        }
        assert_eq!(&tunnel[..], b"\x81\x02hi");
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let a = answer_to(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 OK\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(a.status, StatusCode::SWITCHING_PROTOCOLS);
    }

    #[tokio::test]
    async fn refusal_bodies_are_read_by_their_framing() {
        let a = answer_to(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
            .await
            .unwrap();
        assert_eq!((a.status.as_u16(), &a.rest[..]), (403, &b"nope"[..]));
        let a = answer_to(
            b"HTTP/1.1 401 No\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!((a.status.as_u16(), &a.rest[..]), (401, &b"abcde"[..]));
        let a = answer_to(b"HTTP/1.1 404 Gone\r\n\r\nuntil close")
            .await
            .unwrap();
        assert_eq!((a.status.as_u16(), &a.rest[..]), (404, &b"until close"[..]));
        let a = answer_to(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
        assert!(a.rest.is_empty());
    }

    #[tokio::test]
    async fn broken_answers_are_protocol_errors() {
        for reply in [
            &b"HTTP/1.1 101 Switching"[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 403 No\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 403 No\r\nContent-Length: 1, 2\r\n\r\nx",
            b"HTTP/1.1 403 No\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let result = answer_to(reply).await;
            assert!(
                matches!(result, Err(BackendError::Protocol(_))),
                "{:?}: {result:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[tokio::test]
    async fn endless_lines_are_cut_at_4_kib() {
        let endless = |prefix: &str| -> &'static [u8] {
            let mut reply = prefix.as_bytes().to_vec();
            reply.resize(reply.len() + 8 * 1024, b'a');
            Box::leak(reply.into_boxed_slice())
        };
        let cases = [
            (
                endless("HTTP/1.1 403 No\r\nTransfer-Encoding: chunked\r\n\r\n1;"),
                "chunk-size line over 4 KiB in the refusal",
            ),
            (
                endless("HTTP/1.1 403 No\r\nX-Long: "),
                "response head line over 4 KiB",
            ),
            (
                endless("HTTP/1.1 403 No\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: "),
                "trailer line over 4 KiB in the refusal",
            ),
        ];
        for (reply, why) in cases {
            match answer_to(reply).await {
                Err(BackendError::Protocol(got)) => assert_eq!(got, why),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_request_head_is_one_line_per_header_value() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("h"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        assert_eq!(
            String::from_utf8(request_head("/p", &headers)).unwrap(),
            "GET /p HTTP/1.1\r\nhost: h\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }
}
