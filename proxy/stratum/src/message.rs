//! Stratum V1 messages: one JSON object per line.
//!
//! Requests from miners are decoded into [`Request`]; anything malformed is a [`MessageError`]
//! naming the field, which the server answers with code 20 (or closes on non-JSON). Server
//! lines are written by the `*_line` builders, which echo the request id exactly as received
//! (numbers, strings, `null`).

use crate::error::StratumError;
use crate::target::Difficulty;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt::Write as _;

/// Why a line is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("invalid {field}: expected {expected}")]
    Invalid {
        field: &'static str,
        expected: &'static str,
    },
}

impl MessageError {
    pub fn invalid(field: &'static str, expected: &'static str) -> Self {
        MessageError::Invalid { field, expected }
    }
}

/// A decoded line: a request/notification (has `method`) or a response (has `result`/`error`).
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The id as raw JSON text (`4`, `"auth"`, `null`), echoed back unchanged.
    pub id: Cow<'a, str>,
    pub method: Option<Cow<'a, str>>,
    pub params: Option<&'a RawValue>,
    pub result: Option<&'a RawValue>,
    pub error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    pub fn parse(line: &'a [u8]) -> Result<Self, MessageError> {
        let raw: RawEnvelope<'a> =
            serde_json::from_slice(line).map_err(|e| MessageError::Json(e.to_string()))?;
        let id = match raw.id {
            Some(id) => {
                let text = id.get();
                // Ids are numbers, strings or null; an object or array id is not echoed back.
                if text.starts_with('{') || text.starts_with('[') {
                    return Err(MessageError::invalid("id", "a number, string or null"));
                }
                Cow::Borrowed(text)
            }
            None => Cow::Borrowed("null"),
        };
        Ok(Envelope {
            id,
            method: raw.method,
            params: raw.params,
            result: raw.result,
            error: raw.error,
        })
    }

    /// The id as an integer when it is one (upstream responses use our numeric ids).
    pub fn id_u64(&self) -> Option<u64> {
        self.id.parse().ok()
    }

    pub fn params_value(&self) -> Result<Value, MessageError> {
        match self.params {
            None => Ok(Value::Array(Vec::new())),
            Some(p) => serde_json::from_str(p.get()).map_err(|e| MessageError::Json(e.to_string())),
        }
    }
}

/// A `mining.submit`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submit {
    pub worker: String,
    pub job_id: String,
    pub extranonce2: Vec<u8>,
    pub ntime: u32,
    pub nonce: u32,
    /// The 6th parameter (BIP310 version rolling), when present.
    pub version_bits: Option<u32>,
}

/// BIP310 `mining.configure` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Configure {
    pub extensions: Vec<String>,
    pub version_rolling_mask: Option<u32>,
    pub version_rolling_min_bit_count: Option<u32>,
    pub minimum_difficulty: Option<Difficulty>,
}

/// What a miner may ask.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe {
        user_agent: Option<String>,
        session_id: Option<String>,
    },
    Authorize {
        username: String,
        password: String,
    },
    Submit(Submit),
    Configure(Configure),
    SuggestDifficulty(Difficulty),
    SuggestTarget,
    ExtranonceSubscribe,
    GetVersion,
    Ping,
    GetTransactions,
    /// Known to the protocol but not served (answered with an error, never dropped).
    Unknown(String),
}

impl Request {
    /// Decode a request from its method and params.
    pub fn decode(method: &str, params: Option<&RawValue>) -> Result<Request, MessageError> {
        let params_str = params.map(|p| p.get()).unwrap_or("[]");
        Ok(match method {
            "mining.submit" => Request::Submit(decode_submit(params_str)?),
            "mining.subscribe" => {
                let p = array(params_str)?;
                Request::Subscribe {
                    user_agent: opt_string(p.first(), "user_agent")?,
                    session_id: opt_string(p.get(1), "session_id")?,
                }
            }
            "mining.authorize" => {
                let p = array(params_str)?;
                let username = opt_string(p.first(), "username")?
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| MessageError::invalid("username", "a non-empty string"))?;
                if username.len() > 255 {
                    return Err(MessageError::invalid("username", "at most 255 bytes"));
                }
                let password = opt_string(p.get(1), "password")?.unwrap_or_default();
                Request::Authorize { username, password }
            }
            "mining.configure" => Request::Configure(decode_configure(params_str)?),
            "mining.suggest_difficulty" => {
                let p = array(params_str)?;
                let d = p
                    .first()
                    .ok_or_else(|| MessageError::invalid("difficulty", "a number"))?;
                Request::SuggestDifficulty(
                    Difficulty::from_json(d)
                        .map_err(|_| MessageError::invalid("difficulty", "a positive number"))?,
                )
            }
            "mining.suggest_target" => Request::SuggestTarget,
            "mining.extranonce.subscribe" => Request::ExtranonceSubscribe,
            "mining.get_version" | "client.get_version" => Request::GetVersion,
            "mining.ping" => Request::Ping,
            "mining.get_transactions" => Request::GetTransactions,
            other => Request::Unknown(other.to_string()),
        })
    }
}

fn array(params: &str) -> Result<Vec<Value>, MessageError> {
    match serde_json::from_str::<Value>(params) {
        Ok(Value::Array(a)) => Ok(a),
        Ok(Value::Null) => Ok(Vec::new()),
        _ => Err(MessageError::invalid("params", "an array")),
    }
}

fn opt_string(v: Option<&Value>, field: &'static str) -> Result<Option<String>, MessageError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(MessageError::invalid(field, "a string")),
    }
}

/// Parse hex (`"1a2b3c4d"`, with or without `0x`) as a big-endian u32, as Stratum writes
/// ntime, nonce, version and nbits.
pub fn hex_u32(s: &str, field: &'static str) -> Result<u32, MessageError> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(MessageError::invalid(field, "up to 8 hex digits"));
    }
    u32::from_str_radix(s, 16).map_err(|_| MessageError::invalid(field, "hex"))
}

fn decode_submit(params: &str) -> Result<Submit, MessageError> {
    let p: Vec<Cow<'_, str>> = serde_json::from_str(params)
        .map_err(|_| MessageError::invalid("params", "an array of 5 or 6 strings"))?;
    if p.len() < 5 || p.len() > 6 {
        return Err(MessageError::invalid("params", "5 or 6 parameters"));
    }
    let extranonce2 = hex::decode(p[2].as_ref())
        .ok()
        .filter(|b| !b.is_empty() && b.len() <= 32)
        .ok_or_else(|| MessageError::invalid("extranonce2", "hex bytes"))?;
    if p[1].is_empty() || p[1].len() > 64 {
        return Err(MessageError::invalid("job_id", "1 to 64 characters"));
    }
    if p[3].len() != 8 {
        return Err(MessageError::invalid("ntime", "8 hex digits"));
    }
    if p[4].len() != 8 {
        return Err(MessageError::invalid("nonce", "8 hex digits"));
    }
    Ok(Submit {
        worker: p[0].to_string(),
        job_id: p[1].to_string(),
        extranonce2,
        ntime: hex_u32(&p[3], "ntime")?,
        nonce: hex_u32(&p[4], "nonce")?,
        version_bits: match p.get(5) {
            Some(v) => Some(hex_u32(v, "version_bits")?),
            None => None,
        },
    })
}

fn decode_configure(params: &str) -> Result<Configure, MessageError> {
    let p = array(params)?;
    let extensions = match p.first() {
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| e.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| MessageError::invalid("extensions", "an array of strings"))?,
        _ => return Err(MessageError::invalid("extensions", "an array of strings")),
    };
    let empty = serde_json::Map::new();
    let opts = match p.get(1) {
        Some(Value::Object(o)) => o,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(MessageError::invalid("extension params", "an object")),
    };
    let mut c = Configure {
        extensions,
        ..Configure::default()
    };
    if let Some(m) = opts.get("version-rolling.mask") {
        let s = m
            .as_str()
            .ok_or_else(|| MessageError::invalid("version-rolling.mask", "hex"))?;
        c.version_rolling_mask = Some(hex_u32(s, "version-rolling.mask")?);
    }
    if let Some(n) = opts.get("version-rolling.min-bit-count") {
        c.version_rolling_min_bit_count = Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    MessageError::invalid("version-rolling.min-bit-count", "an integer")
                })?,
        );
    }
    if let Some(v) = opts.get("minimum-difficulty.value") {
        c.minimum_difficulty =
            Some(Difficulty::from_json(v).map_err(|_| {
                MessageError::invalid("minimum-difficulty.value", "a positive number")
            })?);
    }
    Ok(c)
}

/// `{"id":<id>,"result":<result>,"error":null}\n`; `result` is raw JSON.
pub fn result_line(id: &str, result: &str) -> Vec<u8> {
    let mut s = String::with_capacity(40 + id.len() + result.len());
    let _ = writeln!(s, "{{\"id\":{id},\"result\":{result},\"error\":null}}");
    s.into_bytes()
}

/// `{"id":<id>,"result":null,"error":[code,"message",null]}\n`. Rejected submits carry
/// `"result":false` (what miners and pools send); pass `result = "false"` there.
pub fn error_line(id: &str, result: &str, err: &StratumError) -> Vec<u8> {
    let msg = serde_json::to_string(&err.message).unwrap_or_else(|_| "\"error\"".into());
    let mut s = String::with_capacity(60 + id.len() + msg.len());
    let _ = writeln!(
        s,
        "{{\"id\":{id},\"result\":{result},\"error\":[{},{msg},null]}}",
        err.code.code()
    );
    s.into_bytes()
}

/// A server notification or request: `{"id":<id>,"method":"…","params":<params>}\n`.
pub fn method_line(id: &str, method: &str, params: &Value) -> Vec<u8> {
    let mut s = format!("{{\"id\":{id},\"method\":\"{method}\",\"params\":");
    s.push_str(&params.to_string());
    s.push_str("}\n");
    s.into_bytes()
}

/// `mining.set_difficulty` with the difficulty as an exact JSON number.
pub fn set_difficulty_line(d: &Difficulty) -> Vec<u8> {
    format!(
        "{{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[{}]}}\n",
        d.to_json_number()
    )
    .into_bytes()
}

/// `mining.suggest_difficulty` as a client asks it of a pool, the difficulty an exact number.
pub fn suggest_difficulty_line(id: u64, d: &Difficulty) -> Vec<u8> {
    format!(
        "{{\"id\":{id},\"method\":\"mining.suggest_difficulty\",\"params\":[{}]}}\n",
        d.to_json_number()
    )
    .into_bytes()
}

/// A pool's `[code, "message", data]` error (or any other shape) as a `StratumError`.
pub fn decode_error(raw: &RawValue) -> Option<StratumError> {
    let v: Value = serde_json::from_str(raw.get()).ok()?;
    match v {
        Value::Null => None,
        Value::Array(a) => {
            let code = a.first().and_then(Value::as_i64).unwrap_or(20);
            let message = a
                .get(1)
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string();
            Some(StratumError::new(
                crate::error::ErrorCode::from_code(code).unwrap_or(crate::error::ErrorCode::Other),
                message,
            ))
        }
        Value::Object(o) => Some(StratumError::other(
            o.get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string(),
        )),
        other => Some(StratumError::other(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn req(line: &str) -> Result<Request, MessageError> {
        let e = Envelope::parse(line.as_bytes())?;
        Request::decode(e.method.as_deref().unwrap(), e.params)
    }

    #[test]
    fn ids_are_echoed_verbatim() {
        for (line, id) in [
            (r#"{"id":4,"method":"mining.ping","params":[]}"#, "4"),
            (
                r#"{"id":"auth","method":"mining.ping","params":[]}"#,
                "\"auth\"",
            ),
            (r#"{"id":null,"method":"mining.ping","params":[]}"#, "null"),
            (r#"{"method":"mining.ping","params":[]}"#, "null"),
            (r#"{"id":0,"method":"mining.ping"}"#, "0"),
        ] {
            let e = Envelope::parse(line.as_bytes()).unwrap();
            assert_eq!(e.id, id);
            let out = String::from_utf8(result_line(&e.id, "\"pong\"")).unwrap();
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["id"], serde_json::from_str::<Value>(id).unwrap());
            assert_eq!(v["result"], "pong");
        }
        // Found by fuzzing: a number no f64 holds is valid JSON and is echoed as sent, in a
        // reply that is one JSON object (checked for syntax: serde's f64 cannot hold it).
        let e = Envelope::parse(br#"{"id":4e51615,"method":"mining.ping"}"#).unwrap();
        assert_eq!(e.id, "4e51615");
        let out = result_line(&e.id, "\"pong\"");
        let reply: std::collections::BTreeMap<String, Box<RawValue>> =
            serde_json::from_slice(out.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(reply["id"].get(), "4e51615");
        assert!(Envelope::parse(br#"{"id":{"a":1},"method":"x"}"#).is_err());
        assert!(Envelope::parse(b"not json").is_err());
        assert!(Envelope::parse(b"[1,2]").is_err());
    }

    #[test]
    fn submit_with_five_and_six_params() {
        let r = req(r#"{"id":4,"method":"mining.submit","params":["alice.rig1","1a","00000001","504e86ed","b2957c02"]}"#).unwrap();
        assert_eq!(
            r,
            Request::Submit(Submit {
                worker: "alice.rig1".into(),
                job_id: "1a".into(),
                extranonce2: vec![0, 0, 0, 1],
                ntime: 0x504e86ed,
                nonce: 0xb2957c02,
                version_bits: None
            })
        );
        let r = req(r#"{"id":4,"method":"mining.submit","params":["a","1a","00000001","504e86ed","b2957c02","00002000"]}"#).unwrap();
        let Request::Submit(s) = r else { panic!() };
        assert_eq!(s.version_bits, Some(0x2000));
    }

    #[test]
    fn bad_submits_name_the_field() {
        let cases = [
            (r#"["a","1","zz","504e86ed","b2957c02"]"#, "extranonce2"),
            (r#"["a","1","00","504e86","b2957c02"]"#, "ntime"),
            (r#"["a","1","00","504e86ed","b2957c0g"]"#, "nonce"),
            (r#"["a","1","00","504e86ed"]"#, "params"),
            (
                r#"["a","1","00","504e86ed","b2957c02","xyz"]"#,
                "version_bits",
            ),
            (r#"{"a":1}"#, "params"),
            (r#"["a",1,"00","504e86ed","b2957c02"]"#, "params"),
        ];
        for (params, field) in cases {
            let line = format!(r#"{{"id":1,"method":"mining.submit","params":{params}}}"#);
            match req(&line) {
                Err(MessageError::Invalid { field: f, .. }) => assert_eq!(f, field, "{params}"),
                other => panic!("{params}: {other:?}"),
            }
        }
    }

    #[test]
    fn configure_and_suggest() {
        let r = req(r#"{"id":1,"method":"mining.configure","params":[["version-rolling","minimum-difficulty","subscribe-extranonce"],{"version-rolling.mask":"ffffffff","version-rolling.min-bit-count":2,"minimum-difficulty.value":2048}]}"#).unwrap();
        let Request::Configure(c) = r else { panic!() };
        assert_eq!(c.extensions.len(), 3);
        assert_eq!(c.version_rolling_mask, Some(0xffffffff));
        assert_eq!(c.version_rolling_min_bit_count, Some(2));
        assert_eq!(c.minimum_difficulty.unwrap().to_string(), "2048");
        let r = req(r#"{"id":1,"method":"mining.suggest_difficulty","params":[0.001]}"#).unwrap();
        assert_eq!(r, Request::SuggestDifficulty("0.001".parse().unwrap()));
        assert!(req(r#"{"id":1,"method":"mining.suggest_difficulty","params":[-1]}"#).is_err());
        let r =
            req(r#"{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1","deadbeef"]}"#)
                .unwrap();
        assert_eq!(
            r,
            Request::Subscribe {
                user_agent: Some("cpuminer/2.5.1".into()),
                session_id: Some("deadbeef".into())
            }
        );
        assert!(matches!(
            req(r#"{"id":1,"method":"mining.subscribe"}"#).unwrap(),
            Request::Subscribe { .. }
        ));
        assert!(req(r#"{"id":1,"method":"mining.authorize","params":[""]}"#).is_err());
    }

    #[test]
    fn error_lines_carry_code_message_and_null() {
        let line = error_line("3", "false", &StratumError::low_difficulty());
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":3,"result":false,"error":[23,"Low difficulty share",null]})
        );
        assert!(line.ends_with(b"\n"));
        let raw: Box<RawValue> = serde_json::from_str(r#"[21,"Job not found",null]"#).unwrap();
        assert_eq!(decode_error(&raw).unwrap().code, ErrorCode::JobNotFound);
        let raw: Box<RawValue> = serde_json::from_str("null").unwrap();
        assert_eq!(decode_error(&raw), None);
    }

    #[test]
    fn set_difficulty_is_an_exact_number() {
        let line = set_difficulty_line(&"0.001".parse().unwrap());
        assert_eq!(
            line,
            b"{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[0.001]}\n"
        );
    }
}
