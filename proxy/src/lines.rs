//! Reading Stratum lines from a socket with a bounded buffer.

use bytes::{Bytes, BytesMut};
use loka_stratum::codec::{LineDecoder, LineError};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, ReadBuf};

/// Why reading lines stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Line(#[from] LineError),
}

/// A line reader that holds no buffer while its connection is idle: a read lands in a
/// scratch buffer on the stack and is copied into one of its own size, from which the lines
/// are cut (each keeps its bytes for as long as it lives), and a buffer the lines have
/// emptied is let go. Only a partial line keeps a buffer between reads, refused once it
/// passes the line limit.
pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: LineDecoder,
}

/// What one read may bring into an empty reader (a burst of submits; more is read on).
const SCRATCH: usize = 4096;

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
            if self.buf.is_empty() {
                // Idle: keep nothing (an emptied buffer still holds its allocation).
                self.buf = BytesMut::new();
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
            if n == 0 {
                return Ok(self.decoder.decode_eof(&mut self.buf)?);
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH];
        let mut read = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        let got = read.filled();
        // Into the buffer `next_line` let go of (allocated at this size), or after a partial
        // line, which the decoder refuses once it passes the line limit.
        self.buf.extend_from_slice(got);
        Poll::Ready(Ok(got.len()))
    }

    /// A complete line already buffered, without reading the socket (lets a caller handle a
    /// pipelined burst before writing its replies in one go).
    pub fn next_buffered(&mut self) -> Result<Option<Bytes>, ReadError> {
        Ok(self.decoder.decode(&mut self.buf)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn lines_across_reads_and_bursts_and_an_idle_reader_holds_no_buffer() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut r = LineReader::new(rx, 100);
        // A line split over two reads, then a pipelined burst with CRLF.
        tx.write_all(b"{\"id\":1,").await.unwrap();
        assert!(
            r.next_line().now_or_never().is_none(),
            "half a line is not a line"
        );
        tx.write_all(b"\"a\":2}\n{\"id\":2}\r\n{\"id\":3}\n")
            .await
            .unwrap();
        assert_eq!(
            &r.next_line().await.unwrap().unwrap()[..],
            br#"{"id":1,"a":2}"#
        );
        assert_eq!(&r.next_buffered().unwrap().unwrap()[..], br#"{"id":2}"#);
        let last = r.next_buffered().unwrap().unwrap();
        assert_eq!(&last[..], br#"{"id":3}"#);
        assert!(r.next_buffered().unwrap().is_none());
        // Waiting for the next line, the reader keeps no part of what it read: the last line
        // handed out is then the only holder of those bytes.
        assert!(!last.is_unique());
        assert!(r.next_line().now_or_never().is_none());
        assert!(last.is_unique());
        // A burst larger than one read arrives whole.
        let burst: Vec<u8> = (0..400)
            .flat_map(|i| format!("{{\"id\":{i}}}\n").into_bytes())
            .collect();
        assert!(burst.len() > SCRATCH);
        tx.write_all(&burst).await.unwrap();
        for i in 0..400 {
            let line = r.next_line().await.unwrap().unwrap();
            assert_eq!(line, format!("{{\"id\":{i}}}").into_bytes());
        }
        // The last line without its newline comes at the end of the stream.
        tx.write_all(b"{\"id\":\"last\"}").await.unwrap();
        drop(tx);
        assert_eq!(
            &r.next_line().await.unwrap().unwrap()[..],
            br#"{"id":"last"}"#
        );
        assert!(r.next_line().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_line_past_the_limit_is_refused_across_reads() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut r = LineReader::new(rx, 100);
        tx.write_all(&[b'x'; 60]).await.unwrap();
        assert!(r.next_line().now_or_never().is_none());
        tx.write_all(&[b'x'; 60]).await.unwrap();
        let err = r.next_line().await.unwrap_err();
        assert!(
            matches!(err, ReadError::Line(LineError::TooLong { limit: 100 })),
            "{err}"
        );
    }
}
