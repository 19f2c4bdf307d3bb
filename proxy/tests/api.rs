//! The HTTP API over real HTTP and WebSocket against a running proxy with hashing miners.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use loka_config::{Config, EndpointLimit, Mode};
use loka_proxy::runtime::ProxyHandle;
use loka_sim::miner::{MinerConfig, MinerHandle, SimMiner};
use loka_sim::pool::MockPool;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct horse battery staple";

fn api_config(pools: &[std::net::SocketAddr]) -> Config {
    let mut cfg = config(pools, Mode::Aggregate);
    cfg.api.enabled = true;
    cfg.api.bind_address = "127.0.0.1".into();
    cfg.api.port = 0;
    cfg.admin.password_hash = loka_proxy::api::auth::hash_password(PASSWORD);
    cfg.metrics.stream_interval = Duration::from_millis(200);
    cfg
}

struct Fixture {
    pool: MockPool,
    proxy: ProxyHandle,
    base: String,
    http: reqwest::Client,
    miners: Vec<MinerHandle>,
}

async fn fixture_with(f: impl FnOnce(&mut Config)) -> Fixture {
    let pool = pool().await;
    let mut cfg = api_config(&[pool.addr()]);
    f(&mut cfg);
    let proxy = proxy(cfg).await;
    let base = format!("http://{}", proxy.api_addr.unwrap());
    Fixture {
        pool,
        proxy,
        base,
        http: reqwest::Client::new(),
        miners: Vec::new(),
    }
}

impl Fixture {
    fn mine(&mut self, names: &[&str]) {
        for n in names {
            self.miners.push(SimMiner::spawn(MinerConfig {
                hashrate: Some(50_000.0),
                ..MinerConfig::new(self.proxy.stratum_addr, *n)
            }));
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn token(&self, role: &str) -> String {
        let r = self
            .http
            .post(format!("{}/auth/token", self.base))
            .json(&json!({"username": "admin", "password": PASSWORD, "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
        v["token"].as_str().unwrap().to_string()
    }

    /// Poll an endpoint until `pred` holds (the sampler updates once a second).
    async fn wait_get(&self, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, v) = self.get(path).await;
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: condition not met; last {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

fn has_keys(v: &Value, want: &[&str]) {
    for k in want {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
}

#[tokio::test]
async fn health_endpoints_answer_in_their_json_shapes() {
    let mut f = fixture_with(|_| {}).await;
    f.mine(&["alice.rig1"]);
    f.miners[0]
        .wait_for(|s| s.accepted >= 2, WAIT)
        .await
        .unwrap();

    let (code, h) = f.get("/health").await;
    assert_eq!(code, 200, "{h}");
    has_keys(
        &h,
        &[
            "status",
            "uptime",
            "version",
            "build",
            "timestamp",
            "connections",
            "services",
            "performance",
            "pools",
        ],
    );
    assert_eq!(h["status"], "healthy");
    assert_eq!(
        keys(&h["connections"]),
        ["active", "max", "total", "utilization"]
    );
    assert_eq!(h["connections"]["active"], 1);
    assert_eq!(
        keys(&h["services"]),
        ["database", "metrics", "monitoring", "pool_connection"]
    );
    assert_eq!(
        keys(&h["performance"]),
        [
            "cpu_usage_percent",
            "memory_usage_bytes",
            "memory_usage_mb",
            "threads_active",
            "threads_total"
        ]
    );
    has_keys(
        &h["pools"][0],
        &["name", "host", "status", "latency_ms", "last_job"],
    );
    assert_eq!(h["pools"][0]["status"], "connected");
    assert_eq!(h["pools"][0]["host"], f.pool.addr().to_string());

    let (code, r) = f.get("/ready").await;
    assert_eq!((code, &r["ready"]), (200, &json!(true)));
    assert_eq!(
        r["services"],
        json!({"database": "ready", "pool_connection": "ready"})
    );
    let (_, l) = f.get("/live").await;
    assert_eq!(l["alive"], true);
    assert_eq!(l["pid"], std::process::id());
    let (_, p) = f.get("/health/pool").await;
    assert_eq!(p["status"], "healthy");
    has_keys(
        &p["pools"][0],
        &[
            "name",
            "host",
            "connected",
            "last_message",
            "latency_ms",
            "jobs_received",
            "shares_submitted",
        ],
    );
    assert!(p["pools"][0]["jobs_received"].as_u64().unwrap() >= 1);
    let (_, s) = f.get("/health/system").await;
    has_keys(&s["resources"], &["cpu", "memory", "disk", "network"]);
    assert!(s["resources"]["cpu"]["cores"].as_u64().unwrap() >= 1);
    assert_eq!(
        s["resources"]["cpu"]["load_avg"].as_array().unwrap().len(),
        3
    );
    assert!(s["resources"]["memory"]["total_mb"].as_u64().unwrap() > 0);
    assert!(
        s["resources"]["network"]["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "lo")
    );
    let (_, d) = f.get("/health/database").await;
    has_keys(
        &d,
        &[
            "status",
            "connection_pool",
            "query_performance",
            "migrations",
        ],
    );

    // The pool dies: /health and /ready say so with 503.
    f.pool.kill();
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, h) = f.get("/health").await;
        if code == 503 {
            assert_eq!(h["status"], "unhealthy");
            assert_eq!(h["services"]["pool_connection"], "unhealthy");
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.get("/ready").await.0, 503);
}

#[tokio::test]
async fn stats_and_workers_report_real_mining() {
    let mut f = fixture_with(|_| {}).await;
    f.mine(&["alice.rig1", "bob.rig1"]);
    for m in &f.miners {
        m.wait_for(|s| s.accepted >= 5, WAIT).await.unwrap();
    }
    let s = f
        .wait_get("/stats", |s| {
            s["mining"]["hashrate"]["estimated"]
                .as_str()
                .is_some_and(|h| !h.starts_with("0.0 "))
        })
        .await;
    assert_eq!(keys(&s), ["connections", "errors", "mining", "performance"]);
    has_keys(
        &s["connections"],
        &["current", "peak", "total", "rate", "by_pool"],
    );
    assert_eq!(s["connections"]["current"], 2);
    let shares = &s["mining"]["shares"];
    let accepted = shares["accepted"].as_u64().unwrap();
    assert!(accepted >= 10);
    assert!(shares["submitted"].as_u64().unwrap() >= accepted);
    assert_eq!(shares["rejected"], 0);
    assert_eq!(shares["acceptance_rate"], 100.0);
    has_keys(
        &s["mining"]["jobs"],
        &["distributed", "current_difficulty", "average_time"],
    );
    assert!(s["performance"]["response_time"]["p99"].as_f64().unwrap() > 0.0);
    has_keys(
        &s["errors"]["by_type"],
        &[
            "protocol_error",
            "auth_failed",
            "pool_error",
            "connection_error",
        ],
    );

    let w = f
        .wait_get("/stats/workers", |w| {
            w["workers"].as_array().is_some_and(|l| {
                l.iter()
                    .all(|x| x["hashrate_hs"]["1m"].as_f64().unwrap_or(0.0) > 0.0)
            })
        })
        .await;
    assert_eq!(w["total_workers"], 2);
    assert_eq!(w["active_workers"], 2);
    let alice = w["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "alice.rig1")
        .unwrap();
    has_keys(
        alice,
        &[
            "id",
            "pool",
            "connected_at",
            "last_activity",
            "shares",
            "hashrate",
            "difficulty",
            "status",
        ],
    );
    assert_eq!(alice["pool"], "pool0");
    assert_eq!(alice["status"], "active");
    assert_eq!(alice["difficulty"], 0.0000001);
    assert!(alice["shares"]["accepted"].as_u64().unwrap() >= 5);
    assert!(alice["hashrate"].as_str().unwrap().ends_with("H/s"));
    let (_, filtered) = f.get("/stats/workers?status=offline").await;
    assert_eq!(filtered["workers"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn prometheus_exposition_parses_and_json_has_counters_gauges_histograms() {
    let mut f = fixture_with(|_| {}).await;
    f.mine(&["alice.rig1"]);
    f.miners[0]
        .wait_for(|s| s.accepted >= 3, WAIT)
        .await
        .unwrap();
    let r = f
        .http
        .get(format!("{}/metrics/prometheus", f.base))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("text")
    );
    let text = r.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    let find = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    };
    match find(
        "loka_stratum_connections_total",
        Some(("pool_name", "pool0")),
    )
    .value
    {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => {
            assert_eq!(v, 1.0)
        }
        ref other => panic!("{other:?}"),
    }
    find(
        "loka_stratum_connections_active",
        Some(("pool_name", "pool0")),
    );
    find(
        "loka_stratum_shares_submitted_total",
        Some(("worker_name", "alice.rig1")),
    );
    find(
        "loka_stratum_upstream_connected",
        Some(("pool_name", "pool0")),
    );
    // A family without labels (`name{} 0`), which prometheus_parse passes over.
    assert!(
        loka_test_support::observability::exported_names(&text)
            .contains("loka_stratum_upstream_difficulty_suggestions_total"),
        "{text}"
    );
    for reason in ["connect", "handshake_timeout", "rejects", "no_job"] {
        find(
            "loka_stratum_upstream_failures_total",
            Some(("reason", reason)),
        );
    }
    assert!(
        text.contains(
            "loka_stratum_response_time_seconds_bucket{le=\"0.001\",method=\"mining.submit\"}"
        ) || text.contains(
            "loka_stratum_response_time_seconds_bucket{method=\"mining.submit\",le=\"0.001\"}"
        ),
        "{text}"
    );
    assert!(!text.contains("127.0.0.1"), "never label by IP");

    let (_, j) = f.get("/metrics/json").await;
    assert_eq!(keys(&j), ["counters", "gauges", "histograms"]);
    assert_eq!(j["counters"]["loka_stratum_connections_total"]["pool0"], 1);
    assert!(
        j["counters"]["loka_stratum_shares_submitted_total"]["alice.rig1,pool0"]
            .as_u64()
            .unwrap()
            >= 3
    );
    assert_eq!(j["gauges"]["loka_stratum_connections_active"]["pool0"], 1.0);
    assert!(j["gauges"]["loka_stratum_memory_usage_bytes"].is_number());
    let h = &j["histograms"]["loka_stratum_response_time_seconds"]["mining.submit"];
    assert!(h["count"].as_u64().unwrap() >= 3);
    assert!(h["buckets"]["0.001"].is_u64());
}

#[tokio::test]
async fn admin_auth_paths() {
    let f = fixture_with(|_| {}).await;
    let url = format!("{}/admin/stats", f.base);
    let r = f.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "AUTH_REQUIRED");
    let r = f
        .http
        .get(&url)
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "AUTH_INVALID_TOKEN"
    );
    let expired = f.proxy.api.as_ref().unwrap().auth.sign_expired("admin", 60);
    let r = f.http.get(&url).bearer_auth(expired).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let viewer = f.token("viewer").await;
    let r = f.http.get(&url).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "AUTH_FORBIDDEN"
    );
    let admin = f.token("admin").await;
    let r = f.http.get(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["mode"], "aggregate");
    assert_eq!(v["upstream"]["connected"], true);
    // Wrong password, malformed body.
    let r = f
        .http
        .post(format!("{}/auth/token", f.base))
        .json(&json!({"username": "admin", "password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "AUTH_INVALID_CREDENTIALS"
    );
    let r = f
        .http
        .post(format!("{}/auth/token", f.base))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // /config never shows secrets.
    let (_, c) = f.get("/config").await;
    assert_eq!(
        keys(&c["server"]),
        ["bind_address", "max_connections", "port"]
    );
    assert_eq!(c["pool"]["name"], "pool0");
    assert_eq!(c["features"]["auth_required"], true);
    let text = c.to_string();
    assert!(
        !text.contains("secret") && !text.contains("argon2"),
        "{text}"
    );
}

#[tokio::test]
async fn rate_limits_send_headers_and_429() {
    let f = fixture_with(|c| {
        c.rate_limiting.endpoints.insert(
            "/health".into(),
            EndpointLimit {
                limit: 3,
                window: Duration::from_secs(60),
            },
        );
    })
    .await;
    for remaining in ["2", "1", "0"] {
        let r = f
            .http
            .get(format!("{}/health", f.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-ratelimit-limit"], "3");
        assert_eq!(r.headers()["x-ratelimit-remaining"], remaining);
        assert_eq!(r.headers()["x-ratelimit-window"], "60");
        assert!(
            r.headers()["x-ratelimit-reset"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 1_700_000_000
        );
    }
    let r = f
        .http
        .get(format!("{}/health", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["error"], "Rate limit exceeded");
    assert_eq!(body["limit"], 3);
    assert_eq!(body["window"], 60);
    assert!(body["retry_after"].as_u64().unwrap() >= 1);
    // Other endpoints have their own budget.
    assert_eq!(f.get("/live").await.0, 200);
}

#[tokio::test]
async fn reload_rejects_a_bad_file_and_applies_a_good_one() {
    let backup = pool().await;
    let f = fixture_with(|_| {}).await;
    let dir = std::env::temp_dir().join(format!("loka-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    f.proxy.set_reload_source(loka_proxy::api::ReloadSource {
        path: path.clone(),
        overrides: Default::default(),
    });
    let admin = f.token("admin").await;
    let reload = || {
        f.http
            .post(format!("{}/config/reload", f.base))
            .bearer_auth(&admin)
            .send()
    };
    // No token → 401.
    assert_eq!(
        f.http
            .post(format!("{}/config/reload", f.base))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // A bad file: 422 with every reason, and the old config stays.
    std::fs::write(&path, "[server]\nport = 0\nbind_address = \"nowhere\"\n[vardiff]\nmin_difficulty = 5\nmax_difficulty = 1\n").unwrap();
    let r = reload().await.unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "CONFIG_INVALID");
    let errors = v["error"]["details"]["errors"].to_string();
    for needle in ["server.bind_address", "vardiff.min_difficulty", "pools"] {
        assert!(errors.contains(needle), "{needle} in {errors}");
    }
    assert_eq!(f.get("/health").await.1["pools"][0]["status"], "connected");
    // A good file that moves the proxy to another pool: it really switches.
    let mut next = api_config(&[backup.addr()]);
    next.admin.password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$YWJj".into();
    // A mode change needs a restart: reported, and not in force meanwhile.
    let mode = f.get("/config").await.1["mining"]["mode"].clone();
    assert_eq!(mode, "aggregate");
    next.mining.mode = loka_config::Mode::Passthrough;
    std::fs::write(&path, next.to_toml()).unwrap();
    let r = reload().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "success");
    assert!(v["applied"].as_array().unwrap().contains(&json!("pools")));
    for field in ["admin", "mining.mode"] {
        assert!(
            v["requires_restart"]
                .as_array()
                .unwrap()
                .contains(&json!(field)),
            "{field}: {v}"
        );
    }
    assert_eq!(f.get("/config").await.1["mining"]["mode"], mode);
    backup
        .wait_for(|p| p.connections_current == 1, WAIT)
        .await
        .unwrap();
    f.pool
        .wait_for(|p| p.connections_current == 0, WAIT)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

async fn ws(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The admin console of `f`'s proxy, logged in as admin.
async fn console(f: &Fixture) -> Ws {
    let token = f.token("admin").await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("{}/admin/console", f.base.replace("http://", "ws://")),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// Sends one console command and returns its answer.
async fn command(c: &mut Ws, command: Value) -> Value {
    c.send(Message::Text(command.to_string().into()))
        .await
        .unwrap();
    next_json(c).await
}

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn streams_carry_events_caused_by_miners() {
    let mut f = fixture_with(|_| {}).await;
    let wsbase = f.base.replace("http://", "ws://");
    let mut events = ws(&format!("{wsbase}/events/connections")).await;
    let mut metrics = ws(&format!("{wsbase}/metrics/stream")).await;
    f.mine(&["carol.rig1"]);
    let mut seen = std::collections::HashSet::new();
    while !(seen.contains("connection_established")
        && seen.contains("worker_authenticated")
        && seen.contains("share_submitted"))
    {
        let e = next_json(&mut events).await;
        let t = e["type"].as_str().unwrap().to_string();
        if t == "worker_authenticated" {
            assert_eq!(e["data"]["worker_name"], "carol.rig1");
            assert_eq!(e["data"]["pool"], "pool0");
        }
        if t == "share_submitted" {
            assert_eq!(e["data"]["result"], "accepted");
            assert_eq!(e["data"]["worker_name"], "carol.rig1");
            assert!(e["data"]["difficulty"].as_f64().unwrap() > 0.0);
        }
        seen.insert(t);
    }
    let m = next_json(&mut metrics).await;
    has_keys(&m, &["timestamp", "metrics"]);
    assert_eq!(
        keys(&m["metrics"]),
        [
            "connections_active",
            "cpu_percent",
            "memory_usage_mb",
            "response_time_ms",
            "shares_per_second"
        ]
    );
    // SSE
    let mut r = f
        .http
        .get(format!("{}/metrics/events", f.base))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut buf = String::new();
    while !buf.contains("\n\n") {
        let chunk = tokio::time::timeout(WAIT, r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = buf.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["connections_active"], 1);
    assert!(v["timestamp"].is_string());
}

#[tokio::test]
async fn admin_console_lists_disconnects_and_switches_pools() {
    let other = pool().await;
    let mut f = fixture_with(|_| {}).await;
    f.mine(&["dan.rig1"]);
    f.miners[0]
        .wait_for(|s| s.accepted >= 1, WAIT)
        .await
        .unwrap();
    let wsbase = f.base.replace("http://", "ws://");
    // No token: the upgrade is refused with 401.
    assert!(
        tokio_tungstenite::connect_async(format!("{wsbase}/admin/console"))
            .await
            .is_err()
    );
    let mut c = console(&f).await;
    let v = command(&mut c, json!({"command": "list_connections", "params": {}})).await;
    assert_eq!(v["ok"], true);
    assert_eq!(v["result"]["count"], 1);
    assert_eq!(
        v["result"]["connections"][0]["workers"],
        json!(["dan.rig1"])
    );
    let v = command(
        &mut c,
        json!({"command": "disconnect_worker", "params": {"worker_name": "dan.rig1"}}),
    )
    .await;
    assert_eq!(v["result"]["disconnected"], 1);
    f.miners[0]
        .wait_for(|s| s.disconnects >= 1, WAIT)
        .await
        .unwrap();
    let addr = other.addr();
    c.send(Message::Text(json!({"command": "update_pool_config", "params": {"pool_name": "pool0", "config": {"host": addr.ip().to_string(), "port": addr.port()}}}).to_string().into())).await.unwrap();
    let v = next_json(&mut c).await;
    assert_eq!(v["ok"], true, "{v}");
    other
        .wait_for(|p| p.connections_current == 1, WAIT)
        .await
        .unwrap();
    c.send(Message::Text(
        json!({"command": "reboot", "params": {}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut c).await["error"]["code"],
        "VALIDATION_UNKNOWN_COMMAND"
    );
    c.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(next_json(&mut c).await["ok"], false);
}

/// A worker on more connections than there used to be room for in the kick channel (64,
/// sent all at once): the console closes every one of them, not only the last 64.
#[tokio::test]
async fn disconnecting_a_worker_closes_every_connection_it_is_on() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    const N: usize = 80;
    let f = fixture_with(|_| {}).await;
    let mut conns = Vec::new();
    for _ in 0..N {
        let s = tokio::net::TcpStream::connect(f.proxy.stratum_addr)
            .await
            .unwrap();
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"dan.rig1\",\"x\"]}\n")
            .await
            .unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                let line = lines.next_line().await.unwrap().expect("open");
                let v: Value = serde_json::from_str(&line).unwrap();
                if v["id"] == 2 {
                    assert_eq!(v["result"], true, "{v}");
                    break;
                }
            }
        })
        .await
        .expect("authorized");
        conns.push((lines, w));
    }
    let mut c = console(&f).await;
    let v = command(
        &mut c,
        json!({"command": "disconnect_worker", "params": {"worker_name": "dan.rig1"}}),
    )
    .await;
    assert_eq!(v["result"]["disconnected"], N);
    let mut open = 0;
    for (mut lines, _w) in conns {
        let closed = tokio::time::timeout(WAIT, async {
            while let Ok(Some(_)) = lines.next_line().await {}
        })
        .await;
        open += usize::from(closed.is_err());
    }
    assert_eq!(open, 0, "connections the kick did not close");
}

#[tokio::test]
async fn stratum_over_websocket_mines_like_tcp() {
    let f = fixture_with(|_| {}).await;
    let wsbase = f.base.replace("http://", "ws://");
    let mut c = ws(&format!("{wsbase}/stratum")).await;
    let send = |v: Value| Message::Text(v.to_string().into());
    c.send(send(
        json!({"id": 1, "method": "mining.subscribe", "params": ["js-client/1.0"]}),
    ))
    .await
    .unwrap();
    let sub = next_json(&mut c).await;
    assert_eq!(sub["id"], 1);
    let en1 = hex::decode(sub["result"][1].as_str().unwrap()).unwrap();
    let en2_size = sub["result"][2].as_u64().unwrap() as usize;
    c.send(send(
        json!({"id": 2, "method": "mining.authorize", "params": ["erin.browser", ""]}),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut c).await["result"], true);
    assert_eq!(next_json(&mut c).await["method"], "mining.set_difficulty");
    let notify = next_json(&mut c).await;
    assert_eq!(notify["method"], "mining.notify");
    let job = loka_stratum::Job::from_notify_params(&notify["params"]).unwrap();
    let share = find_share(&job, &en1, en2_size, "0.0000001", true, 0);
    c.send(send(json!({"id": 3, "method": "mining.submit", "params": ["erin.browser", job.job_id, hex::encode(&share.extranonce2), format!("{:08x}", share.ntime), format!("{:08x}", share.nonce)]}))).await.unwrap();
    let r = next_json(&mut c).await;
    assert_eq!(r, json!({"id": 3, "result": true, "error": null}));
}

/// The status a refused WebSocket upgrade answered with.
async fn ws_refused(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("refused without an HTTP answer: {e}"),
        Ok(_) => panic!("admitted"),
    }
}

/// WebSocket `/stratum` miners are admitted like TCP ones: one `max_connections` for both,
/// the per-IP limit, nothing new while draining, and a drain that tells them to reconnect
/// and waits for them.
#[tokio::test]
async fn stratum_over_websocket_is_admitted_like_tcp() {
    let f = fixture_with(|c| c.server.max_connections = 1).await;
    let url = format!("{}/stratum", f.base.replace("http://", "ws://"));
    let refused = || {
        f.proxy
            .shared
            .stats
            .connections_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut tcp = loka_sim::client::StratumClient::connect(f.proxy.stratum_addr)
        .await
        .unwrap();
    tcp.subscribe("tcp/1.0", None).await.unwrap();
    assert_eq!(ws_refused(&url).await, 503);
    assert_eq!(refused(), 1);
    drop(tcp);
    // The TCP miner's slot comes free (its session ends a moment after the close).
    let deadline = Instant::now() + WAIT;
    let mut c = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((c, _)) => break c,
            Err(_) => assert!(Instant::now() < deadline, "slot never freed"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.send(Message::Text(
        json!({"id": 1, "method": "mining.subscribe", "params": ["ws/1.0"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut c).await["id"], 1);
    // Now the WebSocket miner holds the one slot: TCP is refused.
    let mut tcp = loka_sim::client::StratumClient::connect(f.proxy.stratum_addr)
        .await
        .unwrap();
    tcp.expect_closed().await.unwrap();
    let before = refused();
    // Draining: the WebSocket miner hears client.reconnect; nobody new gets in.
    f.proxy.shared.drain.cancel();
    loop {
        if next_json(&mut c).await["method"] == "client.reconnect" {
            break;
        }
    }
    assert_eq!(ws_refused(&url).await, 503);
    assert!(refused() > before);
    let Fixture { proxy, .. } = f;
    let report = proxy.drain(Duration::from_secs(5)).await;
    assert_eq!(report.sessions_left, 0);
}

/// WebSocket miners count against the per-IP limit like TCP ones.
#[tokio::test]
async fn stratum_over_websocket_counts_against_the_per_ip_limit() {
    let f = fixture_with(|c| c.server.max_connections_per_ip = 1).await;
    let url = format!("{}/stratum", f.base.replace("http://", "ws://"));
    let (_c, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(ws_refused(&url).await, 429);
    let mut tcp = loka_sim::client::StratumClient::connect(f.proxy.stratum_addr)
        .await
        .unwrap();
    tcp.expect_closed().await.unwrap();
}

/// Worker history comes from the share store: after a restart the proxy has no live worker,
/// yet `?window=` lists the stored one as offline and its history endpoint has its shares.
/// The first run acknowledges durably (SQLite), so every share the miner heard "accepted"
/// for is already stored when it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_history_is_read_from_the_store_across_a_restart() {
    let pool = pool().await;
    let start = proxy_with_store;

    let mut cfg = api_config(&[pool.addr()]);
    let dir = embedded_store(&mut cfg, "api-history");
    cfg.storage.acknowledge = loka_config::AckPolicy::Durable;
    let (proxy, store) = start(cfg.clone()).await;
    let miner = SimMiner::spawn(MinerConfig {
        hashrate: Some(50_000.0),
        ..MinerConfig::new(proxy.stratum_addr, "carol.rig1")
    });
    miner.wait_for(|s| s.accepted >= 8, WAIT).await.unwrap();
    miner.stop();
    let told = miner.stats().accepted;
    proxy.drain(Duration::from_secs(2)).await;
    let report = store.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.spool_bytes, 0, "{report:?}");

    let (proxy, store) = start(cfg).await;
    let f = Fixture {
        pool,
        base: format!("http://{}", proxy.api_addr.unwrap()),
        proxy,
        http: reqwest::Client::new(),
        miners: Vec::new(),
    };
    let (status, live) = f.get("/stats/workers").await;
    assert_eq!(status, 200);
    assert_eq!(live["total_workers"], 0, "{live}");

    let (status, all) = f.get("/stats/workers?window=1h").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total_workers"], 1, "{all}");
    let carol = &all["workers"][0];
    assert_eq!(carol["id"], "carol.rig1");
    assert_eq!(carol["status"], "offline");
    assert_eq!(carol["source"], "database");
    assert_eq!(carol["pool"], "pool0");
    let stored = carol["shares"]["accepted"].as_u64().unwrap();
    assert!(stored >= told, "told {told} accepted, stored {stored}");
    assert_eq!(carol["shares"]["rejected"], 0);
    assert!(carol["hashrate"].as_str().unwrap().ends_with("H/s"));
    let (_, active_only) = f.get("/stats/workers?window=1h&status=active").await;
    assert_eq!(active_only["workers"].as_array().unwrap().len(), 0);

    let (status, h) = f
        .get("/stats/workers/carol.rig1/history?window=1h&bucket=10m")
        .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["worker"], "carol.rig1");
    assert_eq!(h["bucket"], "10m");
    assert_eq!(h["shares"]["accepted"].as_u64().unwrap(), stored);
    let points = h["points"].as_array().unwrap();
    assert!(!points.is_empty());
    let summed: u64 = points.iter().map(|p| p["accepted"].as_u64().unwrap()).sum();
    assert_eq!(summed, stored);

    for bad in [
        "/stats/workers?window=soon",
        "/stats/workers/carol.rig1/history?window=0s",
        "/stats/workers/carol.rig1/history?window=1h&bucket=2h",
        "/stats/workers/carol.rig1/history?window=365d",
    ] {
        let (status, e) = f.get(bad).await;
        assert_eq!(status, 400, "{bad}: {e}");
        assert_eq!(e["error"]["code"], "VALIDATION_INVALID_PARAMETER", "{bad}");
    }
    f.proxy.drain(Duration::from_secs(1)).await;
    store.shutdown(Duration::from_secs(2)).await;

    // Without a store there is no history to read: said so, not an empty list.
    let f = fixture_with(|_| {}).await;
    let (status, e) = f.get("/stats/workers/carol.rig1/history").await;
    assert_eq!(status, 503);
    assert_eq!(e["error"]["code"], "DATABASE_DISABLED");
    let _ = std::fs::remove_dir_all(&dir);
}
