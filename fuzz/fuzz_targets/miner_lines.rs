//! Miner side: bytes as they come off a socket, in chunks of any size, through the line
//! framing and message decoding. Nothing may panic, no line may pass the limit, and every
//! reply the proxy would build from what it decoded (the id echoed back) is one valid JSON
//! line.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use loka_stratum::StratumError;
use loka_stratum::codec::LineDecoder;
use loka_stratum::message::{Envelope, Request, error_line, result_line};

const MAX_LINE: usize = 512;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = LineDecoder::new(MAX_LINE);
    let mut buf = BytesMut::new();
    for part in stream.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(line)) => judge(&line),
                Ok(None) => break,
                // The proxy closes the connection here.
                Err(_) => return,
            }
        }
    }
    if let Ok(Some(line)) = decoder.decode_eof(&mut buf) {
        judge(&line);
    }
});

fn judge(line: &[u8]) {
    assert!(line.len() <= MAX_LINE, "line of {} bytes", line.len());
    let Ok(env) = Envelope::parse(line) else {
        return;
    };
    let id = env.id.to_string();
    for reply in [
        result_line(&id, "true"),
        error_line(&id, "null", &StratumError::other("x")),
    ] {
        let text = reply.strip_suffix(b"\n").expect("a reply ends its line");
        assert!(!text.contains(&b'\n'), "one line");
        // Syntax only: an id echoed back may be a number no f64 holds (`4e51615`), which
        // JSON allows and the miner that sent it can read.
        let _: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_slice(text).expect("a reply is one JSON object");
    }
    if let Some(method) = env.method.as_deref() {
        let _ = Request::decode(method, env.params);
    }
}
