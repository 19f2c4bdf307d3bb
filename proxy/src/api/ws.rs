//! Streams: `/metrics/stream` (WebSocket) and `/metrics/events` (SSE) send periodic metric
//! snapshots; `/events/connections` relays connection, authorization, share and block events
//! caused by miners; `/admin/console` takes admin commands; `/stratum` is Stratum over
//! WebSocket, one JSON message per frame, served by the same session code as TCP.

use super::ApiState;
use super::error::ApiError;
use crate::clock::now_rfc3339;
use crate::events::{ConnectionEvent, Event};
use crate::registry::{Admission, Refusal};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::Stream;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::broadcast::error::RecvError;

fn metrics_message(st: &ApiState) -> Value {
    let r = st.sampler.latest.read();
    let latency = st.shared.stats.submit_latency.snapshot();
    json!({
        "connections_active": st.shared.stats.connections_current.load(Relaxed),
        "shares_per_second": r.shares_per_sec,
        "response_time_ms": latency.mean() * 1000.0,
        "memory_usage_mb": (r.memory_bytes as f64 / 1048576.0 * 10.0).round() / 10.0,
        "cpu_percent": (r.cpu_percent * 10.0).round() / 10.0,
    })
}

pub async fn metrics_stream(State(st): State<Arc<ApiState>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        let mut tick = tokio::time::interval(st.shared.config().metrics.stream_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let msg = json!({"timestamp": now_rfc3339(), "metrics": metrics_message(&st)});
                    if socket.send(Message::Text(msg.to_string().into())).await.is_err() { break }
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    _ => {}
                },
                _ = st.draining.cancelled() => break,
            }
        }
    })
}

pub async fn metrics_events(
    State(st): State<Arc<ApiState>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let period = st.shared.config().metrics.stream_interval;
    let stream = futures::stream::unfold(
        (st, tokio::time::interval(period)),
        |(st, mut tick)| async move {
            tick.tick().await;
            let mut m = metrics_message(&st);
            m["timestamp"] = json!(now_rfc3339());
            Some((Ok(SseEvent::default().data(m.to_string())), (st, tick)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// An event as `/events/connections` shows it.
pub fn event_json(e: &Event, pool: &str) -> Value {
    match e {
        Event::Connection(ConnectionEvent::Connected {
            connection_id,
            remote,
        }) => json!({
            "type": "connection_established", "timestamp": now_rfc3339(),
            "data": {"connection_id": format!("conn_{connection_id}"), "remote_addr": remote.ip().to_string(), "pool": pool},
        }),
        Event::Connection(ConnectionEvent::Authorized {
            connection_id,
            worker,
            ..
        }) => json!({
            "type": "worker_authenticated", "timestamp": now_rfc3339(),
            "data": {"connection_id": format!("conn_{connection_id}"), "worker_name": &**worker, "pool": pool},
        }),
        Event::Connection(ConnectionEvent::Disconnected {
            connection_id,
            worker,
            reason,
            ..
        }) => json!({
            "type": "connection_closed", "timestamp": now_rfc3339(),
            "data": {"connection_id": format!("conn_{connection_id}"), "worker_name": worker.as_deref(), "reason": reason, "pool": pool},
        }),
        Event::Share(s) => json!({
            "type": if s.block_candidate { "block_candidate" } else { "share_submitted" },
            "timestamp": now_rfc3339(),
            "data": {
                "worker_name": &*s.worker,
                "job_id": s.job_id,
                "result": if s.accepted { "accepted" } else { "rejected" },
                "reject_reason": s.reject_reason,
                "difficulty": s.difficulty.to_string().parse::<f64>().unwrap_or(0.0),
                "block_hash": s.block_hash,
            },
        }),
    }
}

pub async fn connection_events(State(st): State<Arc<ApiState>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        let mut rx = st.shared.api_events.subscribe();
        loop {
            tokio::select! {
                e = rx.recv() => {
                    let text = match e {
                        Ok(e) => {
                            let pool = match &e { Event::Share(s) => s.pool.to_string(), _ => st.shared.first_pool_name().map(|p| p.to_string()).unwrap_or_default() };
                            event_json(&e, &pool).to_string()
                        }
                        Err(RecvError::Lagged(n)) => json!({"type": "events_dropped", "timestamp": now_rfc3339(), "data": {"count": n}}).to_string(),
                        Err(RecvError::Closed) => break,
                    };
                    if socket.send(Message::Text(text.into())).await.is_err() { break }
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    _ => {}
                },
                _ = st.draining.cancelled() => break,
            }
        }
    })
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

#[derive(Deserialize)]
struct Command {
    command: String,
    #[serde(default)]
    params: Value,
}

pub async fn admin_console(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let claims = st.auth.require_admin(&headers, q.token.as_deref())?;
    Ok(ws
        .on_upgrade(move |mut socket| async move {
            tracing::info!(admin = %claims.sub, "admin console opened");
            while let Some(Ok(msg)) = socket.recv().await {
                let text = match msg {
                    Message::Text(t) => t.to_string(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let reply = match serde_json::from_str::<Command>(&text) {
                    Ok(c) => run_command(&st, &c.command, &c.params).await,
                    Err(e) => json!({"ok": false, "error": {"code": "VALIDATION_BAD_COMMAND", "message": format!("expected {{\"command\",\"params\"}}: {e}")}}),
                };
                if socket.send(Message::Text(reply.to_string().into())).await.is_err() {
                    break;
                }
            }
        })
        .into_response())
}

async fn run_command(st: &ApiState, command: &str, params: &Value) -> Value {
    let fail = |code: &str, message: String| json!({"command": command, "ok": false, "error": {"code": code, "message": message}});
    match command {
        "list_connections" => {
            let list = st.shared.registry.list();
            json!({"command": command, "ok": true, "result": {"count": list.len(), "connections": list}})
        }
        "disconnect_worker" => {
            let Some(name) = params.get("worker_name").and_then(Value::as_str) else {
                return fail(
                    "VALIDATION_MISSING_PARAM",
                    "params.worker_name is required".into(),
                );
            };
            let n = st.shared.registry.kick_worker(name);
            tracing::info!(worker = name, connections = n, "admin disconnected worker");
            json!({"command": command, "ok": true, "result": {"worker_name": name, "disconnected": n}})
        }
        "update_pool_config" => {
            let Some(name) = params.get("pool_name").and_then(Value::as_str) else {
                return fail(
                    "VALIDATION_MISSING_PARAM",
                    "params.pool_name is required".into(),
                );
            };
            let c = params.get("config").cloned().unwrap_or(Value::Null);
            let mut pools = st.shared.pools();
            let Some(p) = pools.iter_mut().find(|p| &*p.name == name) else {
                return fail("POOL_NOT_FOUND", format!("no pool named {name:?}"));
            };
            if let Some(h) = c.get("host") {
                match h
                    .as_str()
                    .filter(|h| !h.is_empty() && !h.contains(['/', ' ']))
                {
                    Some(h) => p.host = h.to_string(),
                    None => {
                        return fail(
                            "VALIDATION_BAD_PARAM",
                            "config.host must be a host name or address".into(),
                        );
                    }
                }
            }
            if let Some(port) = c.get("port") {
                match port.as_u64().filter(|p| (1..=65535).contains(p)) {
                    Some(v) => p.port = v as u16,
                    None => {
                        return fail(
                            "VALIDATION_BAD_PARAM",
                            "config.port must be 1..=65535".into(),
                        );
                    }
                }
            }
            if let Some(u) = c.get("username").and_then(Value::as_str) {
                p.username = u.to_string();
            }
            if let Some(pw) = c.get("password").and_then(Value::as_str) {
                p.password = pw.to_string();
            }
            let passthrough = st.shared.upstream.is_none();
            let shown: Vec<Value> = pools.iter().map(|p| json!({"name": &*p.name, "host": p.host, "port": p.port, "username": p.username})).collect();
            if let Err(e) = st.set_pools(pools).await {
                return fail("POOL_UNAVAILABLE", e.to_string());
            }
            tracing::info!(pool = name, "admin updated pool configuration");
            if passthrough {
                return json!({"command": command, "ok": true, "result": {"applied_to": "new passthrough connections"}});
            }
            json!({"command": command, "ok": true, "result": {"pools": shown}})
        }
        other => fail(
            "VALIDATION_UNKNOWN_COMMAND",
            format!(
                "unknown command {other:?} (list_connections, disconnect_worker, update_pool_config)"
            ),
        ),
    }
}

/// Stratum over WebSocket: frames in, lines to the session; session lines out, frames back.
pub async fn stratum(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    // Admitted like a TCP miner: the same connection limits, and not while draining.
    let admission = match st.shared.admit(peer) {
        Ok(a) => a,
        Err(refusal) => {
            let status = match refusal {
                Refusal::PerIp => StatusCode::TOO_MANY_REQUESTS,
                Refusal::Full | Refusal::Draining => StatusCode::SERVICE_UNAVAILABLE,
            };
            return ApiError::new(
                status,
                "CONNECTION_REFUSED",
                format!("Stratum connection refused: {refusal}"),
            )
            .into_response();
        }
    };
    let max_line = st.shared.config().server.max_line_bytes;
    ws.max_message_size(max_line)
        .on_upgrade(move |socket| bridge(st, peer, socket, admission))
}

async fn bridge(st: Arc<ApiState>, peer: SocketAddr, socket: WebSocket, admission: Admission) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (server_r, server_w) = tokio::io::split(server);
    let shared = st.shared.clone();
    // Tracked with the TCP sessions, so a drain waits for it too.
    let session = st.shared.tracker.spawn(async move {
        crate::listener::run_session(
            server_r,
            crate::session::Output::Stream(server_w),
            peer,
            shared,
            crate::stats::Transport::WebSocket,
        )
        .await;
        drop(admission);
    });
    let (client_r, mut client_w) = tokio::io::split(client);
    let (mut tx, mut rx) = socket.split();
    let inbound = async move {
        while let Some(Ok(msg)) = rx.next().await {
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                Message::Close(_) => break,
                _ => continue,
            };
            // One message per frame: a frame never smuggles extra lines in.
            let line = text.replace(['\n', '\r'], " ");
            if client_w.write_all(line.as_bytes()).await.is_err()
                || client_w.write_all(b"\n").await.is_err()
            {
                break;
            }
        }
        let _ = client_w.shutdown().await;
    };
    let outbound = async move {
        let mut lines = BufReader::new(client_r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(Message::Text(line.into())).await.is_err() {
                break;
            }
        }
        let _ = tx.close().await;
    };
    tokio::join!(inbound, outbound);
    let _ = session.await;
}
