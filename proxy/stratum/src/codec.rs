//! Newline framing. A line is one JSON message; a line longer than the limit is an error (the
//! connection is closed), never a reason to buffer without bound.

use bytes::{Buf, Bytes, BytesMut};

/// Why a stream of bytes is not a stream of Stratum lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line exceeds {limit} bytes")]
    TooLong { limit: usize },
    #[error("TLS handshake on a plain Stratum port")]
    Tls,
    #[error("binary data where a JSON line was expected")]
    Binary,
}

/// Splits a byte stream into lines of at most `max_len` bytes (without the terminator).
/// `\r\n` is accepted; empty lines are skipped.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    max_len: usize,
    /// How far the buffer was already searched for `\n`, so a slow sender costs O(n), not O(n²).
    scanned: usize,
    first: bool,
}

impl LineDecoder {
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            scanned: 0,
            first: true,
        }
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The next complete line, `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, LineError> {
        loop {
            if self.first && !buf.is_empty() {
                // A TLS record starts 0x16 0x03; JSON never starts with a control byte.
                match buf[0] {
                    0x16 => return Err(LineError::Tls),
                    b if b < 0x09 || (b > 0x0d && b < 0x20) => return Err(LineError::Binary),
                    _ => self.first = false,
                }
            }
            let Some(pos) = buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = buf.len();
                if buf.len() > self.max_len {
                    return Err(LineError::TooLong {
                        limit: self.max_len,
                    });
                }
                return Ok(None);
            };
            let end = self.scanned + pos;
            self.scanned = 0;
            if end > self.max_len {
                return Err(LineError::TooLong {
                    limit: self.max_len,
                });
            }
            let mut line = buf.split_to(end + 1).freeze();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(line));
        }
    }

    /// What remains when the peer closed: a final unterminated line, if any.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, LineError> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            buf.advance(buf.len());
            return Ok(None);
        }
        let line = buf.split().freeze();
        self.scanned = 0;
        Ok(Some(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_keeps_the_rest() {
        let mut d = LineDecoder::new(64);
        let mut buf = BytesMut::from(&b"{\"a\":1}\r\n\n{\"b\":2}\n{\"c\""[..]);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap(), &b"{\"a\":1}"[..]);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap(), &b"{\"b\":2}"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b":3}\n");
        assert_eq!(d.decode(&mut buf).unwrap().unwrap(), &b"{\"c\":3}"[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_long_lines_with_and_without_terminator() {
        let mut d = LineDecoder::new(8);
        let mut buf = BytesMut::from(&b"{\"a\":12345}\n"[..]);
        assert_eq!(d.decode(&mut buf), Err(LineError::TooLong { limit: 8 }));
        let mut d = LineDecoder::new(8);
        let mut buf = BytesMut::from(&b"{\"a\":12345"[..]);
        assert_eq!(d.decode(&mut buf), Err(LineError::TooLong { limit: 8 }));
    }

    #[test]
    fn recognises_tls_and_binary_openings() {
        let mut d = LineDecoder::new(64);
        let mut buf = BytesMut::from(&[0x16u8, 0x03, 0x01, 0x02, 0x00][..]);
        assert_eq!(d.decode(&mut buf), Err(LineError::Tls));
        let mut d = LineDecoder::new(64);
        let mut buf = BytesMut::from(&[0x00u8, 0x01][..]);
        assert_eq!(d.decode(&mut buf), Err(LineError::Binary));
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let input = b"{\"id\":1}\n{\"id\":2}\n";
        let mut d = LineDecoder::new(64);
        let mut buf = BytesMut::new();
        let mut lines = Vec::new();
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(l) = d.decode(&mut buf).unwrap() {
                lines.push(l);
            }
        }
        assert_eq!(
            lines,
            vec![
                Bytes::from_static(b"{\"id\":1}"),
                Bytes::from_static(b"{\"id\":2}")
            ]
        );
    }
}
