//! Per-client-IP rate limiting (GCRA via `governor`), one limiter per configured endpoint
//! pattern plus the default; every answer carries `X-RateLimit-Limit/Remaining/Reset/Window`,
//! and a refusal is a 429 with the API's JSON error body.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use loka_config::RateLimitConfig;
use serde_json::json;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Keyed =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

struct Bucket {
    pattern: String,
    limit: u32,
    window: Duration,
    limiter: Keyed,
}

impl Bucket {
    fn new(pattern: String, limit: u32, window: Duration) -> Self {
        let limit = limit.max(1);
        let period = (window / limit).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(limit).expect("limit ≥ 1"));
        Self {
            pattern,
            limit,
            window,
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self.pattern.strip_suffix("/*") {
            Some(prefix) => path == prefix || path.starts_with(&format!("{prefix}/")),
            None => path == self.pattern,
        }
    }
}

pub struct Limits {
    enabled: bool,
    endpoints: Vec<Bucket>,
    default: Bucket,
}

/// The outcome for one request: headers to add, or a refusal.
pub enum Decision {
    Allow(HeaderMap),
    Refuse(Response),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Limits {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        // Longest pattern first, so `/admin/stats` beats `/admin/*`.
        let mut endpoints: Vec<Bucket> = cfg
            .endpoints
            .iter()
            .map(|(p, l)| Bucket::new(p.clone(), l.limit, l.window))
            .collect();
        endpoints.sort_by_key(|b| std::cmp::Reverse(b.pattern.len()));
        Self {
            enabled: cfg.enabled,
            endpoints,
            default: Bucket::new("*".into(), cfg.per_ip_limit, cfg.window_size),
        }
    }

    pub fn check(&self, ip: IpAddr, path: &str) -> Decision {
        if !self.enabled {
            return Decision::Allow(HeaderMap::new());
        }
        let bucket = self
            .endpoints
            .iter()
            .find(|b| b.matches(path))
            .unwrap_or(&self.default);
        let per_token = bucket.window / bucket.limit;
        match bucket.limiter.check_key(&ip) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = per_token * (bucket.limit - remaining.min(bucket.limit));
                let mut h = HeaderMap::new();
                header(&mut h, "x-ratelimit-limit", bucket.limit.into());
                header(&mut h, "x-ratelimit-remaining", remaining.into());
                header(
                    &mut h,
                    "x-ratelimit-reset",
                    unix_now() + refill.as_secs().max(1),
                );
                header(&mut h, "x-ratelimit-window", bucket.window.as_secs());
                Decision::Allow(h)
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry = wait.as_secs().max(1);
                let body = json!({
                    "error": "Rate limit exceeded",
                    "code": "RATE_LIMIT_EXCEEDED",
                    "limit": bucket.limit,
                    "window": bucket.window.as_secs(),
                    "retry_after": retry,
                });
                let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                let h = resp.headers_mut();
                header(h, "x-ratelimit-limit", bucket.limit.into());
                header(h, "x-ratelimit-remaining", 0);
                header(h, "x-ratelimit-reset", unix_now() + retry);
                header(h, "x-ratelimit-window", bucket.window.as_secs());
                header(h, "retry-after", retry);
                Decision::Refuse(resp)
            }
        }
    }

    /// Forget idle clients (called periodically so the key stores do not grow forever).
    pub fn prune(&self) {
        self.default.limiter.retain_recent();
        for b in &self.endpoints {
            b.limiter.retain_recent();
        }
    }
}

fn header(h: &mut HeaderMap, name: &'static str, v: u64) {
    h.insert(name, HeaderValue::from(v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use loka_config::EndpointLimit;

    #[test]
    fn endpoint_limits_and_prefixes() {
        let mut cfg = RateLimitConfig::default();
        cfg.endpoints.insert(
            "/health".into(),
            EndpointLimit {
                limit: 2,
                window: Duration::from_secs(60),
            },
        );
        let l = Limits::new(&cfg);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for expect_remaining in [1u64, 0] {
            let Decision::Allow(h) = l.check(ip, "/health") else {
                panic!("refused early")
            };
            assert_eq!(h["x-ratelimit-limit"], "2");
            assert_eq!(
                h["x-ratelimit-remaining"],
                expect_remaining.to_string().as_str()
            );
            assert_eq!(h["x-ratelimit-window"], "60");
        }
        let Decision::Refuse(r) = l.check(ip, "/health") else {
            panic!("not refused")
        };
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        // Another IP and another endpoint are unaffected.
        assert!(matches!(
            l.check("10.0.0.2".parse().unwrap(), "/health"),
            Decision::Allow(_)
        ));
        let Decision::Allow(h) = l.check(ip, "/admin/stats") else {
            panic!()
        };
        assert_eq!(h["x-ratelimit-limit"], "100");
        let Decision::Allow(h) = l.check(ip, "/stats") else {
            panic!()
        };
        assert_eq!(h["x-ratelimit-limit"], "1000");
    }
}
