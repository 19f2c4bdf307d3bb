//! Reading Stratum lines from a socket with a bounded buffer.

use bytes::{Bytes, BytesMut};
use loka_stratum::codec::{LineDecoder, LineError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why reading lines stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Line(#[from] LineError),
}

/// A line reader whose buffer starts small (idle miners cost little memory) and never grows
/// beyond the line limit.
pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: LineDecoder,
}

const INITIAL_CAPACITY: usize = 512;

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max_line: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            decoder: LineDecoder::new(max_line),
        }
    }

    /// The next line, or `None` at a clean end of stream.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(line) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(line));
            }
            if self.buf.capacity() - self.buf.len() < 128 {
                let want = (self.buf.len() * 2).clamp(INITIAL_CAPACITY, self.decoder.max_len() + 2);
                self.buf.reserve(want - self.buf.len().min(want));
            }
            if self.buf.is_empty() && self.buf.capacity() > 4 * INITIAL_CAPACITY {
                // A burst is over: give the big buffer back.
                self.buf = BytesMut::with_capacity(INITIAL_CAPACITY);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Ok(self.decoder.decode_eof(&mut self.buf)?);
            }
        }
    }

    /// A complete line already buffered, without reading the socket (lets a caller handle a
    /// pipelined burst before writing its replies in one go).
    pub fn next_buffered(&mut self) -> Result<Option<Bytes>, ReadError> {
        Ok(self.decoder.decode(&mut self.buf)?)
    }
}
