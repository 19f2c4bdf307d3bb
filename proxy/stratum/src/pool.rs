//! What a pool sends a Stratum client: each line decoded into a [`PoolMessage`], or a
//! [`PoolLineError`] naming what was wrong. Pure, so the proxy's upstream side only does IO.

use crate::error::StratumError;
use crate::job::Job;
use crate::message::{Envelope, MessageError, decode_error, hex_u32};
use crate::target::Difficulty;
use serde_json::Value;

/// The longest extranonce2 size a pool may set (bytes).
pub const MAX_EXTRANONCE2_SIZE: u64 = 32;

/// What a pool line means to a client.
#[derive(Debug, Clone)]
pub enum PoolMessage {
    Job(Box<Job>),
    Difficulty(Difficulty),
    Extranonce {
        extranonce1: Vec<u8>,
        extranonce2_size: usize,
    },
    VersionMask(u32),
    /// `client.reconnect [host, port, wait]`: reconnect, to another host or port when given
    /// (each optional), after `wait` seconds.
    Reconnect {
        host: Option<String>,
        port: Option<u16>,
        wait_secs: u64,
    },
    /// `mining.ping`: answer `"pong"` with this id (raw JSON).
    Ping {
        id: String,
    },
    /// `client.get_version`: answer with the client's version, with this id (raw JSON).
    GetVersion {
        id: String,
    },
    /// `client.show_message`: a text for the people running the miners.
    ShowMessage(String),
    Response {
        id: u64,
        result: Result<Value, StratumError>,
    },
    /// A response with an id we never use, or a method we do not act on.
    Nothing,
}

/// Why a pool line could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolLineError {
    #[error("pool sent a bad line: {0}")]
    Line(#[from] MessageError),
    #[error("pool {method}: {reason}")]
    Params {
        method: &'static str,
        reason: String,
    },
}

fn params(method: &'static str, reason: impl Into<String>) -> PoolLineError {
    PoolLineError::Params {
        method,
        reason: reason.into(),
    }
}

/// A host name or address a pool may send us to: letters, digits, `.`, `-`, `:` (IPv6),
/// `_`, at most 253 characters.
fn valid_host(h: &str) -> bool {
    h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
}

/// The `(extranonce1, extranonce2_size)` of a `mining.subscribe` result.
/// The version-rolling mask a pool granted in its `mining.configure` result; 0 when it
/// granted none (refused, absent, or a mask that is not hex).
pub fn granted_mask(result: &Value) -> u32 {
    if result.get("version-rolling").and_then(Value::as_bool) != Some(true) {
        return 0;
    }
    result
        .get("version-rolling.mask")
        .and_then(Value::as_str)
        .and_then(|m| hex_u32(m, "version-rolling.mask").ok())
        .unwrap_or(0)
}

pub fn parse_subscribe(v: &Value) -> Result<(Vec<u8>, usize), PoolLineError> {
    let bad = |reason: &str| params("mining.subscribe", reason);
    let a = v.as_array().ok_or_else(|| bad("result is not an array"))?;
    let en1 = a
        .get(1)
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| bad("result has no hex extranonce1"))?;
    let size = a
        .get(2)
        .and_then(Value::as_u64)
        .filter(|s| (1..=MAX_EXTRANONCE2_SIZE).contains(s))
        .ok_or_else(|| bad("result has no extranonce2_size in 1..=32"))?;
    Ok((en1, size as usize))
}

/// Decode one line from a pool.
pub fn decode_pool_line(line: &[u8]) -> Result<PoolMessage, PoolLineError> {
    let env = Envelope::parse(line)?;
    let Some(method) = env.method.as_deref() else {
        let Some(id) = env.id_u64() else {
            return Ok(PoolMessage::Nothing);
        };
        let result = match env.error.and_then(decode_error) {
            Some(e) => Err(e),
            None => Ok(env
                .result
                .and_then(|r| serde_json::from_str(r.get()).ok())
                .unwrap_or(Value::Null)),
        };
        return Ok(PoolMessage::Response { id, result });
    };
    let p = env.params_value()?;
    Ok(match method {
        "mining.notify" => PoolMessage::Job(Box::new(
            Job::from_notify_params(&p).map_err(|e| params("mining.notify", e.to_string()))?,
        )),
        "mining.set_difficulty" => {
            let d = p
                .get(0)
                .ok_or_else(|| params("mining.set_difficulty", "no value"))?;
            PoolMessage::Difficulty(
                Difficulty::from_json(d)
                    .map_err(|_| params("mining.set_difficulty", "not a positive number"))?,
            )
        }
        "mining.set_extranonce" => {
            let en1 = p
                .get(0)
                .and_then(Value::as_str)
                .and_then(|h| hex::decode(h).ok());
            let size = p
                .get(1)
                .and_then(Value::as_u64)
                .filter(|s| (1..=MAX_EXTRANONCE2_SIZE).contains(s));
            match (en1, size) {
                (Some(extranonce1), Some(size)) => PoolMessage::Extranonce {
                    extranonce1,
                    extranonce2_size: size as usize,
                },
                _ => {
                    return Err(params(
                        "mining.set_extranonce",
                        "expected [hex extranonce1, extranonce2_size in 1..=32]",
                    ));
                }
            }
        }
        "mining.set_version_mask" => PoolMessage::VersionMask(
            p.get(0)
                .and_then(Value::as_str)
                .and_then(|m| hex_u32(m, "mask").ok())
                .ok_or_else(|| params("mining.set_version_mask", "expected a hex mask"))?,
        ),
        "client.reconnect" => {
            let host = match p.get(0) {
                None | Some(Value::Null) => None,
                Some(Value::String(h)) if h.is_empty() => None,
                Some(Value::String(h)) if valid_host(h) => Some(h.clone()),
                Some(_) => return Err(params("client.reconnect", "host is not a host name")),
            };
            let port = match p.get(1) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(v) => Some(
                    v.as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|n| *n != 0)
                        .ok_or_else(|| params("client.reconnect", "port is not in 1..=65535"))?,
                ),
            };
            let wait_secs = p
                .get(2)
                .and_then(|v| {
                    v.as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                })
                .unwrap_or(0);
            PoolMessage::Reconnect {
                host,
                port,
                wait_secs,
            }
        }
        "mining.ping" => PoolMessage::Ping {
            id: env.id.to_string(),
        },
        "client.get_version" => PoolMessage::GetVersion {
            id: env.id.to_string(),
        },
        "client.show_message" => PoolMessage::ShowMessage(match p.get(0) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        }),
        _ => PoolMessage::Nothing,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_granted_mask_is_read_from_a_configure_result_or_zero() {
        use serde_json::json;
        let granted = json!({"version-rolling": true, "version-rolling.mask": "0000e000"});
        assert_eq!(granted_mask(&granted), 0x0000_e000);
        assert_eq!(granted_mask(&json!({"version-rolling": false})), 0);
        assert_eq!(granted_mask(&json!({"version-rolling": true})), 0);
        let bad = json!({"version-rolling": true, "version-rolling.mask": "+1fffe000"});
        assert_eq!(granted_mask(&bad), 0);
        assert_eq!(granted_mask(&json!(null)), 0);
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_pool_lines() {
        assert!(matches!(
            decode_pool_line(br#"{"id":null,"method":"mining.set_difficulty","params":[0.5]}"#).unwrap(),
            PoolMessage::Difficulty(d) if d.to_string() == "0.5"
        ));
        let e = decode_pool_line(br#"{"id":null,"method":"mining.set_difficulty","params":[0]}"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pool mining.set_difficulty: not a positive number"
        );
        assert!(matches!(
            decode_pool_line(br#"{"id":12,"result":null,"error":[23,"Low difficulty share",null]}"#).unwrap(),
            PoolMessage::Response { id: 12, result: Err(e) } if e.code == crate::error::ErrorCode::LowDifficulty
        ));
        assert!(matches!(
            decode_pool_line(br#"{"id":12,"result":true,"error":null}"#).unwrap(),
            PoolMessage::Response {
                id: 12,
                result: Ok(Value::Bool(true))
            }
        ));
        assert!(matches!(
            decode_pool_line(
                br#"{"id":null,"method":"mining.set_extranonce","params":["abcd",6]}"#
            )
            .unwrap(),
            PoolMessage::Extranonce {
                extranonce2_size: 6,
                ..
            }
        ));
        assert!(matches!(
            decode_pool_line(br#"{"id":"p","method":"mining.ping"}"#).unwrap(),
            PoolMessage::Ping { id } if id == "\"p\""
        ));
        assert!(matches!(
            decode_pool_line(
                br#"{"id":null,"method":"client.show_message","params":["Maintenance at 12:00"]}"#
            )
            .unwrap(),
            PoolMessage::ShowMessage(m) if m == "Maintenance at 12:00"
        ));
        assert!(matches!(
            decode_pool_line(br#"{"id":null,"method":"client.reconnect","params":[]}"#).unwrap(),
            PoolMessage::Reconnect {
                host: None,
                port: None,
                wait_secs: 0
            }
        ));
        assert!(matches!(
            decode_pool_line(br#"{"id":null,"method":"client.reconnect","params":["eu.pool.example","3334",5]}"#).unwrap(),
            PoolMessage::Reconnect { host: Some(h), port: Some(3334), wait_secs: 5 } if h == "eu.pool.example"
        ));
        for bad in [
            r#"{"id":null,"method":"client.reconnect","params":["evil host/x",3333]}"#,
            r#"{"id":null,"method":"client.reconnect","params":["a.example",70000]}"#,
            r#"{"id":null,"method":"client.reconnect","params":["a.example",0]}"#,
        ] {
            let e = decode_pool_line(bad.as_bytes()).unwrap_err();
            assert!(e.to_string().starts_with("pool client.reconnect: "), "{e}");
        }
        assert!(matches!(
            decode_pool_line(b"garbage").unwrap_err(),
            PoolLineError::Line(_)
        ));
        assert_eq!(
            parse_subscribe(&json!([[], "0a0b", 8])).unwrap(),
            (vec![10, 11], 8)
        );
        assert!(parse_subscribe(&json!([[], "zz", 8])).is_err());
        assert!(parse_subscribe(&json!([[], "0a", 33])).is_err());
    }
}
