//! Newline-delimited JSON framing shared by the simulators.

use std::io;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Longest line accepted by default (the proxy uses the same limit).
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

/// Reads `\n`-terminated lines with a length limit. Cancel-safe: a partially read line is
/// kept in the reader if the `next_line` future is dropped.
pub struct LineReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    max: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, DEFAULT_MAX_LINE)
    }

    pub fn with_limit(inner: R, max: usize) -> Self {
        Self::with_limit_and_capacity(inner, max, 8 * 1024)
    }

    /// Like [`Self::with_limit`] with a chosen read-buffer size (small for many sockets).
    pub fn with_limit_and_capacity(inner: R, max: usize, capacity: usize) -> Self {
        Self {
            inner: BufReader::with_capacity(capacity.max(64), inner),
            buf: Vec::new(),
            max,
            eof: false,
        }
    }

    /// Next line without its terminator (`\r\n` or `\n`). `Ok(None)` at end of stream.
    /// Over-long lines and invalid UTF-8 are `InvalidData` errors.
    pub async fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return self.take_line().map(Some);
            }
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                self.eof = true;
                continue;
            }
            match avail.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.buf.extend_from_slice(&avail[..i]);
                    self.inner.consume(i + 1);
                    if self.buf.len() > self.max {
                        self.buf.clear();
                        return Err(too_long(self.max));
                    }
                    return self.take_line().map(Some);
                }
                None => {
                    let n = avail.len();
                    self.buf.extend_from_slice(avail);
                    self.inner.consume(n);
                    if self.buf.len() > self.max {
                        self.buf.clear();
                        return Err(too_long(self.max));
                    }
                }
            }
        }
    }

    fn take_line(&mut self) -> io::Result<String> {
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
    }
}

fn too_long(max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("line longer than {max} bytes"),
    )
}

/// Canonical key for matching a JSON-RPC id (numbers, strings and null alike).
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

/// A request line (with trailing newline).
pub fn request_line(id: &Value, method: &str, params: Value) -> String {
    let mut s = json!({"id": id, "method": method, "params": params}).to_string();
    s.push('\n');
    s
}

/// A notification line (`id: null`), with trailing newline.
pub fn notification_line(method: &str, params: Value) -> String {
    let mut s = json!({"id": null, "method": method, "params": params}).to_string();
    s.push('\n');
    s
}

/// A successful response line.
pub fn result_line(id: &Value, result: Value) -> String {
    let mut s = json!({"id": id, "result": result, "error": null}).to_string();
    s.push('\n');
    s
}

/// An error response line: `error = [code, message, null]`.
pub fn error_line(id: &Value, code: i64, message: &str) -> String {
    let mut s = json!({"id": id, "result": null, "error": [code, message, null]}).to_string();
    s.push('\n');
    s
}

/// Stratum error code of a response's `error` member (`[code, msg, data]` or
/// `{"code": ..}`), if any.
pub fn error_code(error: &Value) -> Option<i64> {
    match error {
        Value::Null => None,
        Value::Array(a) => a.first().and_then(Value::as_i64).or(Some(20)),
        Value::Object(o) => o.get("code").and_then(Value::as_i64).or(Some(20)),
        _ => Some(20),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn line_reader_limits_and_splits() {
        let data: &[u8] = b"a\r\nbb\n\ncc";
        let mut r = LineReader::new(data);
        assert_eq!(r.next_line().await.unwrap().as_deref(), Some("a"));
        assert_eq!(r.next_line().await.unwrap().as_deref(), Some("bb"));
        assert_eq!(r.next_line().await.unwrap().as_deref(), Some(""));
        assert_eq!(r.next_line().await.unwrap().as_deref(), Some("cc"));
        assert_eq!(r.next_line().await.unwrap(), None);

        let long = [b'x'; 100];
        let mut r = LineReader::with_limit(&long[..], 10);
        assert!(r.next_line().await.is_err());

        let bad: &[u8] = b"\xff\xfe\n";
        let mut r = LineReader::new(bad);
        assert!(r.next_line().await.is_err());
    }

    #[test]
    fn error_codes() {
        assert_eq!(error_code(&json!([23, "low", null])), Some(23));
        assert_eq!(error_code(&Value::Null), None);
        assert_eq!(error_code(&json!({"code": 21})), Some(21));
        assert_eq!(error_code(&json!("boom")), Some(20));
    }
}
