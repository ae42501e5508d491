//! Read buffers for the relay. A direction takes one when its sender has
//! bytes ready and gives it back when the sender goes quiet, so an idle
//! tunnel holds no buffer at all; spare buffers shared by all tunnels are
//! kept (a bounded number) so a busy proxy does not go back to the allocator
//! for every read.

use std::sync::Mutex;

use bytes::Bytes;

/// Bytes read from a socket in one go. 16 KiB holds one full TLS record.
pub const BUF_LEN: usize = 16 * 1024;
/// A direction waiting with a partial frame header or Close frame held (at
/// most 131 bytes) keeps them in a buffer this small, not a read buffer, so
/// a peer that sends one byte of a header and stops pins almost nothing.
/// Streams that cannot signal readiness (WebSocket over h2) also wait with
/// one of these.
pub const SMALL_BUF_LEN: usize = 256;
/// The read size for a direction whose last read filled its buffer: bulk
/// transfers then cost a quarter of the system calls per byte.
pub const BIG_BUF_LEN: usize = 64 * 1024;

/// Spare buffers kept: 256 × 16 KiB + 32 × 64 KiB = 6 MiB at most.
const MAX_SPARE: usize = 256;
const MAX_SPARE_BIG: usize = 32;
type Spares = Mutex<Vec<Box<[u8]>>>;
static SPARE: Spares = Mutex::new(Vec::new());
static SPARE_BIG: Spares = Mutex::new(Vec::new());

fn class(len: usize) -> Option<(&'static Spares, usize)> {
    match len {
        BUF_LEN => Some((&SPARE, MAX_SPARE)),
        BIG_BUF_LEN => Some((&SPARE_BIG, MAX_SPARE_BIG)),
        _ => None,
    }
}

/// A buffer of `len` bytes: a spare one for `BUF_LEN` and `BIG_BUF_LEN`.
pub fn take(len: usize) -> Box<[u8]> {
    let spare =
        class(len).and_then(|(spare, _)| spare.lock().unwrap_or_else(|e| e.into_inner()).pop());
    spare.unwrap_or_else(|| vec![0u8; len].into_boxed_slice())
}

/// Gives a buffer back: kept as a spare if there is room and it is of a
/// spare size, freed otherwise.
pub fn give(buf: Box<[u8]>) {
    let Some((spare, max)) = class(buf.len()) else {
        return;
    };
    let mut spare = spare.lock().unwrap_or_else(|e| e.into_inner());
    if spare.len() < max {
        spare.push(buf);
    }
}

/// Bytes read before the relay started (hyper's read-ahead after the
/// handshake), in a read buffer of their own.
#[derive(Debug)]
pub struct Pending {
    pub buf: Option<Box<[u8]>>,
    pub len: usize,
}

impl From<Bytes> for Pending {
    fn from(pre: Bytes) -> Pending {
        let buf = (!pre.is_empty()).then(|| {
            let mut buf = if pre.len() <= BUF_LEN {
                take(BUF_LEN)
            } else {
                vec![0u8; pre.len()].into_boxed_slice()
            };
            buf[..pre.len()].copy_from_slice(&pre);
            buf
        });
        Pending {
            buf,
            len: pre.len(),
        }
    }
}
