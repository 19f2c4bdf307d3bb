//! Method dispatch: each Stratum request a miner sends, answered into the output buffer
//! (subscribe, authorize, configure and the small methods; submits go to [`super::submit`]).

use crate::events::{ConnectionEvent, Event};
use crate::upstream::work::Work;
use loka_config::Mode;
use loka_stratum::StratumError;
use loka_stratum::message::{Configure, Envelope, Request, error_line, result_line};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime};

use super::{Authorized, Close, MAX_WORKERS_PER_CONNECTION, SERVER_VERSION, Session};

impl Session {
    /// Handle one line from the miner.
    pub(super) async fn handle_line(&mut self, line: &[u8]) {
        let stats = &self.shared.stats;
        stats.messages_received.fetch_add(1, Relaxed);
        stats
            .bytes_received
            .fetch_add(line.len() as u64 + 1, Relaxed);
        let env = match Envelope::parse(line) {
            Ok(env) => env,
            Err(e) => {
                self.shared.stats.protocol_errors.fetch_add(1, Relaxed);
                tracing::info!(conn = self.id, peer = %self.peer, error = %e, "non-JSON input; closing connection");
                self.close = Some(Close::Protocol(e.to_string()));
                return;
            }
        };
        let id = env.id.to_string();
        let Some(method) = env.method.as_deref() else {
            // A response to something we asked (e.g. client.get_version): nothing to do.
            return;
        };
        let request = match Request::decode(method, env.params) {
            Ok(r) => r,
            Err(e) => {
                self.shared.stats.protocol_errors.fetch_add(1, Relaxed);
                let result = if method == "mining.submit" {
                    "false"
                } else {
                    "null"
                };
                if method == "mining.submit" {
                    self.shared.stats.shares_submitted.fetch_add(1, Relaxed);
                    self.shared
                        .stats
                        .rejected(loka_stratum::error::ErrorCode::Other);
                }
                self.out
                    .extend(error_line(&id, result, &StratumError::other(e.to_string())));
                return;
            }
        };
        match request {
            Request::Submit(s) => {
                let started = Instant::now();
                let recorded = {
                    let span = tracing::debug_span!("submit", worker = %s.worker, job = %s.job_id);
                    let _in = span.enter();
                    self.on_submit(&id, s)
                };
                recorded.await;
                let elapsed = started.elapsed().as_secs_f64();
                self.shared.stats.submit_latency.observe(elapsed);
            }
            Request::Subscribe {
                user_agent,
                session_id,
                // Boxed, as is configure: the handshake's futures take no room in the
                // session's future for the rest of its life.
            } => Box::pin(self.on_subscribe(&id, user_agent, session_id)).await,
            Request::Authorize { username, .. } => self.on_authorize(&id, username),
            Request::Configure(c) => Box::pin(self.on_configure(&id, c)).await,
            Request::SuggestDifficulty(d) => {
                self.out.extend(result_line(&id, "true"));
                if let Some(v) = self.vardiff.as_mut() {
                    let d = v.set(d, Instant::now());
                    self.change_difficulty(d);
                    self.update_wants();
                }
            }
            Request::SuggestTarget => self.out.extend(result_line(&id, "true")),
            Request::ExtranonceSubscribe => {
                self.extranonce_subscribed = true;
                self.out.extend(result_line(&id, "true"));
            }
            Request::GetVersion => self
                .out
                .extend(result_line(&id, &format!("\"{SERVER_VERSION}\""))),
            Request::Ping => self.out.extend(result_line(&id, "\"pong\"")),
            Request::GetTransactions => self.out.extend(error_line(
                &id,
                "null",
                &StratumError::other("mining.get_transactions is not supported"),
            )),
            Request::Unknown(m) => self.out.extend(error_line(
                &id,
                "null",
                &StratumError::other(format!("Method not found: {m}")),
            )),
        }
    }

    pub(super) async fn on_subscribe(
        &mut self,
        id: &str,
        user_agent: Option<String>,
        session_id: Option<String>,
    ) {
        if self.subscribed {
            self.out.extend(error_line(
                id,
                "null",
                &StratumError::other("Already subscribed"),
            ));
            return;
        }
        self.user_agent = user_agent.map(|u| u.chars().take(255).collect());
        self.ensure_upstream();
        let Some(work) = self.wait_for_work().await else {
            self.out.extend(error_line(
                id,
                "null",
                &StratumError::other("No upstream pool available"),
            ));
            self.shared.stats.protocol_errors.fetch_add(1, Relaxed);
            return;
        };
        if let Some(rx) = self.work_rx.as_mut() {
            rx.mark_unchanged();
        }
        if work.layout.fold {
            let prefix = self.shared.allocator.lock().allocate(session_id.as_deref());
            match prefix {
                Ok(p) => self.prefix = p,
                Err(e) => {
                    tracing::warn!(conn = self.id, error = %e, "cannot place miner");
                    self.out.extend(error_line(
                        id,
                        "null",
                        &StratumError::other("Proxy is full"),
                    ));
                    self.close = Some(Close::Protocol(e.to_string()));
                    return;
                }
            }
        }
        self.follow_pool_difficulty(work.upstream_difficulty);
        self.extranonce1 = work.layout.miner_extranonce1(&self.prefix);
        self.extranonce2_size = work.layout.miner_extranonce2_size;
        self.generation = work.generation;
        self.negotiate_mask(work.version_mask);
        let sid = if self.prefix.is_empty() {
            format!("{:08x}", self.id)
        } else {
            hex::encode(&self.prefix)
        };
        let result = json!([
            [["mining.set_difficulty", sid], ["mining.notify", sid]],
            hex::encode(&self.extranonce1),
            self.extranonce2_size
        ]);
        self.out.extend(result_line(id, &result.to_string()));
        // After the reply: the pool's mask may differ from the one a configure before the
        // pool was known had to promise.
        self.tell_mask();
        self.work_mask = Some(work.version_mask);
        self.subscribed = true;
        if self.ready() {
            self.schedule_first_work();
        }
    }

    pub(super) fn on_authorize(&mut self, id: &str, username: String) {
        if self.workers.iter().any(|w| *w.name == *username) {
            self.out.extend(result_line(id, "true"));
            return;
        }
        if self.workers.len() >= MAX_WORKERS_PER_CONNECTION {
            self.shared.stats.workers_refused.fetch_add(1, Relaxed);
            self.out.extend(error_line(
                id,
                "false",
                &StratumError::other("Too many workers on one connection"),
            ));
            return;
        }
        let stats = self.shared.stats.worker_connected(&username);
        stats.touch();
        stats.set_difficulty(self.ledger.current().to_f64());
        let name: Arc<str> = Arc::from(username.as_str());
        let pool = self
            .work_rx
            .as_ref()
            .and_then(|rx| rx.borrow().as_ref().map(|w| w.pool.clone()))
            .unwrap_or_else(|| Arc::from(""));
        self.shared
            .emit(Event::Connection(ConnectionEvent::Authorized {
                at: SystemTime::now(),
                connection_id: self.id,
                worker: name.clone(),
                pool,
                user_agent: self.user_agent.clone(),
                remote: self.peer,
            }));
        self.shared
            .registry
            .authorized(self.id, &username, self.user_agent.as_deref());
        let first = self.workers.is_empty();
        self.workers.push(Authorized { name, stats });
        self.out.extend(result_line(id, "true"));
        if first && self.subscribed {
            self.schedule_first_work();
        }
    }

    /// Send the first work now, or after `server.first_work_delay`.
    pub(super) fn schedule_first_work(&mut self) {
        let delay = self.shared.config().server.first_work_delay;
        if delay.is_zero() {
            let work = self
                .work_rx
                .as_mut()
                .and_then(|rx| rx.borrow_and_update().clone());
            self.send_work(work.as_deref(), true);
        } else {
            self.first_work_at = Some(Instant::now() + delay);
        }
    }

    /// Passthrough: start this miner's own upstream session (once).
    pub(super) fn ensure_upstream(&mut self) {
        if self.upstream.is_some() {
            return;
        }
        let handle = crate::upstream::spawn(
            self.shared.upstream_settings(),
            self.shared.shutdown.child_token(),
        );
        self.work_rx = Some(handle.work.clone());
        self.messages = Some(handle.messages.subscribe());
        self.upstream = Some(handle);
    }

    /// The upstream's work, waiting for it (within the handshake time) while the proxy is
    /// still finding a pool, rather than refusing the miner.
    pub(super) async fn wait_for_work(&mut self) -> Option<Arc<Work>> {
        let wait = self.shared.config().server.handshake_timeout;
        let rx = self.work_rx.as_mut()?;
        match tokio::time::timeout(wait, rx.wait_for(|w| w.is_some())).await {
            Ok(Ok(w)) => w.clone(),
            _ => None,
        }
    }

    pub(super) async fn on_configure(&mut self, id: &str, c: Configure) {
        let mut result = serde_json::Map::new();
        for ext in &c.extensions {
            match ext.as_str() {
                "version-rolling" => {
                    self.requested_mask = Some(c.version_rolling_mask.unwrap_or(u32::MAX));
                    // Answer with what the pool granted: in passthrough this miner's own
                    // upstream session starts now. Only when no pool answers in time is the
                    // proxy's own mask offered, corrected by `mining.set_version_mask` later.
                    self.ensure_upstream();
                    let upstream_mask = match self.wait_for_work().await {
                        Some(w) => w.version_mask,
                        None => self.shared.version_mask,
                    };
                    self.negotiate_mask(upstream_mask);
                    self.mask_told = Some(self.version_mask);
                    result.insert(
                        "version-rolling".into(),
                        Value::Bool(self.version_mask != 0),
                    );
                    result.insert(
                        "version-rolling.mask".into(),
                        Value::String(format!("{:08x}", self.version_mask)),
                    );
                }
                "minimum-difficulty" => {
                    // Passthrough miners get the pool's difficulty; the proxy cannot promise.
                    let ok = match (c.minimum_difficulty, self.shared.mode) {
                        (Some(min), Mode::Aggregate) => {
                            // The pool's difficulty caps every miner, so a minimum above it
                            // cannot be promised (the miner is told so, and still capped).
                            let pool = match self.pool_difficulty {
                                Some(p) => Some(p),
                                None => self.wait_for_work().await.map(|w| w.upstream_difficulty),
                            };
                            let d = match self.vardiff.as_mut() {
                                Some(v) => {
                                    v.set_min(min);
                                    v.current()
                                }
                                None => {
                                    self.fixed = self.fixed.max(min);
                                    self.capped(self.fixed)
                                }
                            };
                            self.change_difficulty(d);
                            self.update_wants();
                            pool.is_none_or(|p| min <= p)
                        }
                        _ => false,
                    };
                    result.insert("minimum-difficulty".into(), Value::Bool(ok));
                }
                "subscribe-extranonce" => {
                    self.extranonce_subscribed = true;
                    result.insert("subscribe-extranonce".into(), Value::Bool(true));
                }
                other => {
                    result.insert(other.to_string(), Value::Bool(false));
                }
            }
        }
        self.out
            .extend(result_line(id, &Value::Object(result).to_string()));
    }
}
