//! `/metrics/prometheus` (prometheus-client, encoded at scrape time from the live counters)
//! and `/metrics/json` (counters, gauges, histograms).
//!
//! Per-worker series are labelled by worker and pool, behind `metrics.per_worker_labels`
//! and capped at `metrics.max_worker_series` (the rest are summed as `worker_name="_other"`);
//! nothing is ever labelled by IP.

use super::ApiState;
use crate::stats::HistogramSnapshot;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

type Labels = Vec<(String, String)>;
/// (name, help, series) of one metric family.
pub type Family<T> = (&'static str, &'static str, Vec<(Labels, T)>);

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every series of one scrape, as plain numbers.
pub struct Snapshot {
    pub counters: Vec<Family<u64>>,
    pub gauges: Vec<Family<f64>>,
    pub histograms: Vec<(&'static str, &'static str, Labels, HistogramSnapshot)>,
}

pub fn snapshot(st: &ApiState) -> Snapshot {
    let s = &st.shared.stats;
    let cfg = st.shared.config();
    let pool = st
        .shared
        .upstream
        .as_ref()
        .and_then(|u| {
            u.status
                .detail
                .lock()
                .active_pool
                .as_deref()
                .map(str::to_string)
        })
        .or_else(|| st.shared.first_pool_name().map(|p| p.to_string()))
        .unwrap_or_default();
    let p = pool.as_str();
    let mut counters = vec![
        (
            "loka_stratum_connections",
            "Total number of connections",
            vec![(
                labels(&[("pool_name", p)]),
                s.connections_total.load(Relaxed),
            )],
        ),
        (
            "loka_stratum_connections_refused",
            "Connections refused by limits",
            vec![(vec![], s.connections_refused.load(Relaxed))],
        ),
        (
            "loka_stratum_workers_refused",
            "Authorizations refused: the connection already carries its most workers",
            vec![(vec![], s.workers_refused.load(Relaxed))],
        ),
        (
            "loka_stratum_workers_evicted",
            "Idle workers forgotten from memory (their history stays in the store)",
            vec![(vec![], s.workers_evicted.load(Relaxed))],
        ),
        (
            "loka_stratum_block_candidates",
            "Shares that met the network target",
            vec![(vec![], s.block_candidates.load(Relaxed))],
        ),
        (
            "loka_stratum_shares_forwarded",
            "Shares forwarded upstream (met the pool target)",
            vec![(vec![], s.shares_forwarded.load(Relaxed))],
        ),
        (
            "loka_stratum_jobs_distributed",
            "mining.notify messages sent to miners",
            vec![(vec![], s.jobs_distributed.load(Relaxed))],
        ),
        (
            "loka_stratum_protocol_errors",
            "Malformed or refused miner input",
            vec![(vec![], s.protocol_errors.load(Relaxed))],
        ),
        (
            "loka_stratum_events_dropped",
            "Events the storage queue could not take (connection events while full; any after the writer stopped)",
            vec![(vec![], s.events_dropped.load(Relaxed))],
        ),
        (
            "loka_stratum_events_waited",
            "Share events that found the storage queue full and waited for room",
            vec![(vec![], s.events_waited.load(Relaxed))],
        ),
        (
            "loka_stratum_shares_unstored",
            "Valid shares answered with an error because they could not be made durable",
            vec![(vec![], s.shares_unstored.load(Relaxed))],
        ),
        (
            "loka_stratum_messages_received",
            "Stratum messages received from miners",
            vec![(vec![], s.messages_received.load(Relaxed))],
        ),
        (
            "loka_stratum_connections_by_transport",
            "Miner connections opened, by transport (tcp, tls, websocket)",
            s.connections_by_transport()
                .map(|(t, n)| (labels(&[("transport", t.as_str())]), n))
                .collect(),
        ),
        (
            "loka_stratum_tls_handshakes",
            "TLS handshakes completed, with miners on the TLS port and with pools",
            vec![
                (
                    labels(&[("side", "miner")]),
                    s.tls.miner_handshakes.load(Relaxed),
                ),
                (
                    labels(&[("side", "pool")]),
                    s.tls.pool_handshakes.load(Relaxed),
                ),
            ],
        ),
        (
            "loka_stratum_tls_handshake_failures",
            "TLS handshakes that failed, by side and reason",
            s.tls
                .miner_failures()
                .map(|(r, n)| (labels(&[("side", "miner"), ("reason", r.as_str())]), n))
                .chain(
                    s.tls
                        .pool_failures()
                        .map(|(r, n)| (labels(&[("side", "pool"), ("reason", r.as_str())]), n)),
                )
                .collect(),
        ),
        (
            "loka_stratum_tls_certificate_reloads",
            "Listener certificate files read anew: loaded (now in force) or refused (the one in force stayed)",
            vec![
                (
                    labels(&[("result", "loaded")]),
                    s.tls.certificate_reloads.load(Relaxed),
                ),
                (
                    labels(&[("result", "refused")]),
                    s.tls.certificate_reload_errors.load(Relaxed),
                ),
            ],
        ),
        (
            "loka_stratum_tls_on_plain_port",
            "Connections to the plain Stratum port that began a TLS handshake (closed)",
            vec![(vec![], s.tls.tls_on_plain_port.load(Relaxed))],
        ),
    ];
    use loka_stratum::error::ErrorCode::*;
    counters.push((
        "loka_stratum_share_rejects",
        "Rejected shares by reason",
        [
            Other,
            JobNotFound,
            Duplicate,
            LowDifficulty,
            Unauthorized,
            NotSubscribed,
        ]
        .into_iter()
        .map(|c| (labels(&[("reason", c.reason())]), s.rejects(c)))
        .collect(),
    ));
    // Per worker (capped), or one `_all` series.
    let mut per_worker: [Vec<(Labels, u64)>; 3] = Default::default();
    let mut workers = s.workers();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    let cap = if cfg.metrics.per_worker_labels {
        cfg.metrics.max_worker_series
    } else {
        0
    };
    let mut other = [0u64; 3];
    for (i, w) in workers.iter().enumerate() {
        let v = [
            w.submitted.load(Relaxed),
            w.accepted.load(Relaxed),
            w.rejected.load(Relaxed),
        ];
        if i < cap {
            for k in 0..3 {
                per_worker[k].push((labels(&[("worker_name", &w.name), ("pool_name", p)]), v[k]));
            }
        } else {
            for k in 0..3 {
                other[k] += v[k];
            }
        }
    }
    if workers.len() > cap {
        let name = if cap == 0 { "_all" } else { "_other" };
        for k in 0..3 {
            per_worker[k].push((labels(&[("worker_name", name), ("pool_name", p)]), other[k]));
        }
    }
    let [submitted, accepted, rejected] = per_worker;
    counters.push((
        "loka_stratum_shares_submitted",
        "Total shares submitted",
        submitted,
    ));
    counters.push((
        "loka_stratum_shares_accepted",
        "Shares accepted by local validation",
        accepted,
    ));
    counters.push((
        "loka_stratum_shares_rejected",
        "Shares rejected by local validation",
        rejected,
    ));
    let mut gauges = vec![
        (
            "loka_stratum_connections_active",
            "Currently active connections",
            vec![(
                labels(&[("pool_name", p)]),
                s.connections_current.load(Relaxed) as f64,
            )],
        ),
        (
            "loka_stratum_connections_peak",
            "Most connections held at once",
            vec![(vec![], s.connections_peak.load(Relaxed) as f64)],
        ),
        (
            "loka_stratum_tls_certificate_expiry_timestamp_seconds",
            "When the TLS port's certificate in force expires (its notAfter), Unix seconds; 0 without a TLS port",
            vec![(vec![], s.tls.certificate_not_after.load(Relaxed) as f64)],
        ),
    ];
    let rates = st.sampler.latest.read();
    gauges.push((
        "loka_stratum_memory_usage_bytes",
        "Resident memory of the proxy",
        vec![(vec![], rates.memory_bytes as f64)],
    ));
    gauges.push((
        "loka_stratum_cpu_usage_percent",
        "CPU used by the proxy (100 = one core)",
        vec![(vec![], rates.cpu_percent)],
    ));
    gauges.push((
        "loka_stratum_hashrate_hs",
        "Estimated hashrate from accepted difficulty",
        super::sampler::WINDOWS
            .iter()
            .enumerate()
            .map(|(i, (w, _))| (labels(&[("window", w)]), rates.total_hashrate(i)))
            .collect(),
    ));
    drop(rates);
    if let Some(u) = &st.shared.upstream {
        let connected = u.status.connected.load(Relaxed);
        let active = u.status.detail.lock().active_pool.clone();
        let pools = st.shared.pools();
        gauges.push((
            "loka_stratum_upstream_connected",
            "1 when the proxy's upstream session is on this pool",
            pools
                .iter()
                .map(|pl| {
                    let on = connected && active.as_deref() == Some(&*pl.name);
                    (
                        labels(&[("pool_name", &pl.name)]),
                        if on { 1.0 } else { 0.0 },
                    )
                })
                .collect(),
        ));
        counters.push((
            "loka_stratum_upstream_failovers",
            "Upstream pool switches",
            vec![(vec![], u.status.failovers.load(Relaxed))],
        ));
        counters.push((
            "loka_stratum_upstream_failures",
            "Upstream connection attempts and sessions that failed, by reason",
            u.status
                .failures()
                .map(|(kind, n)| (labels(&[("reason", kind.as_str())]), n))
                .collect(),
        ));
        counters.push((
            "loka_stratum_upstream_difficulty_suggestions",
            "Requests sent to the pool for a higher difficulty, with mining.suggest_difficulty",
            vec![(vec![], u.status.difficulty_suggestions.load(Relaxed))],
        ));
        counters.push((
            "loka_stratum_upstream_jobs",
            "Jobs received from the upstream pool",
            vec![(vec![], u.status.jobs_received.load(Relaxed))],
        ));
        counters.push((
            "loka_stratum_upstream_submits",
            "Shares sent upstream by outcome",
            vec![
                (
                    labels(&[("result", "sent")]),
                    u.status.submits_sent.load(Relaxed),
                ),
                (
                    labels(&[("result", "accepted")]),
                    u.status.submits_accepted.load(Relaxed),
                ),
                (
                    labels(&[("result", "rejected")]),
                    u.status.submits_rejected.load(Relaxed),
                ),
                (
                    labels(&[("result", "stale")]),
                    u.status.submits_stale.load(Relaxed),
                ),
                (
                    labels(&[("result", "lost")]),
                    u.status.submits_lost.load(Relaxed),
                ),
            ],
        ));
    }
    if let Some(store) = st.store.get() {
        gauges.push((
            "loka_stratum_store_queue_depth",
            "Share events waiting for the database",
            vec![(vec![], store.queue_depth() as f64)],
        ));
        gauges.push((
            "loka_stratum_store_spool_bytes",
            "Bytes of share events held in the local spool",
            vec![(vec![], store.spool_bytes() as f64)],
        ));
        gauges.push((
            "loka_stratum_store_ready",
            "1 when share storage is usable",
            vec![(vec![], if store.ready() { 1.0 } else { 0.0 })],
        ));
    }
    let histograms = vec![
        (
            "loka_stratum_response_time_seconds",
            "Response time histogram",
            labels(&[("method", "mining.submit")]),
            s.submit_latency.snapshot(),
        ),
        (
            "loka_stratum_share_difficulty",
            "Difficulty of accepted shares",
            vec![],
            s.share_difficulty.snapshot(),
        ),
        (
            "loka_stratum_notify_delay_seconds",
            "From a pool job arriving to its notify written to a miner (fan-out)",
            vec![],
            s.notify_delay.snapshot(),
        ),
    ];
    Snapshot {
        counters,
        gauges,
        histograms,
    }
}

#[derive(Debug)]
struct Scrape(Arc<ApiState>);

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = snapshot(&self.0);
        for (name, help, series) in &snap.counters {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (l, v) in series {
                ConstCounter::new(*v).encode(m.encode_family(l)?)?;
            }
        }
        for (name, help, series) in &snap.gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (l, v) in series {
                ConstGauge::new(*v).encode(m.encode_family(l)?)?;
            }
        }
        for (name, help, l, h) in &snap.histograms {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            m.encode_family(l)?
                .encode_histogram::<Labels>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

pub async fn prometheus(State(st): State<Arc<ApiState>>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(st)));
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => super::error::ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "METRICS_ENCODING",
            "Could not encode metrics",
        )
        .into_response(),
    }
}

fn key(l: &Labels) -> String {
    l.iter()
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn json(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let snap = snapshot(&st);
    let mut counters = Map::new();
    for (name, _, series) in snap.counters {
        let full = format!("{name}_total");
        if series.len() == 1 && series[0].0.is_empty() {
            counters.insert(full, json!(series[0].1));
        } else {
            counters.insert(
                full,
                Value::Object(series.iter().map(|(l, v)| (key(l), json!(v))).collect()),
            );
        }
    }
    let mut gauges = Map::new();
    for (name, _, series) in snap.gauges {
        if series.len() == 1 && series[0].0.is_empty() {
            gauges.insert(name.to_string(), json!(series[0].1));
        } else {
            gauges.insert(
                name.to_string(),
                Value::Object(series.iter().map(|(l, v)| (key(l), json!(v))).collect()),
            );
        }
    }
    let mut histograms = Map::new();
    for (name, _, l, h) in snap.histograms {
        let mut cumulative = 0;
        let buckets: Map<String, Value> = h
            .buckets
            .iter()
            .filter(|(b, _)| b.is_finite())
            .map(|(b, n)| {
                cumulative += n;
                (format!("{b}"), json!(cumulative))
            })
            .collect();
        let body = json!({"count": h.count, "sum": h.sum, "buckets": buckets});
        let k = if l.is_empty() {
            "all".to_string()
        } else {
            key(&l)
        };
        histograms.insert(name.to_string(), json!({ k: body }));
    }
    Json(json!({"counters": counters, "gauges": gauges, "histograms": histograms}))
}
