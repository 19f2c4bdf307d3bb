//! OTLP export at the wire: a local HTTP receiver stands in for the collector and must get
//! protobuf batches holding the proxy's connection, submit and upstream spans.

mod common;

use common::*;
use loka_config::Mode;
use loka_sim::miner::{MinerConfig, SimMiner};
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A minimal HTTP/1.1 server that records request bodies and answers 200.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                break;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    store
                        .lock()
                        .push((head.lines().next().unwrap_or("").to_string(), body));
                    buf.drain(..end + 4 + len);
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n").await;
                }
            });
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http() {
    let (collector, got) = receiver().await;
    let pool = pool().await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.telemetry.otlp_endpoint = format!("http://{collector}");
    cfg.logging.level = "warn".into();
    let guard = loka_proxy::telemetry::init(&cfg).unwrap();
    // Miners at the pool's difficulty: every share is forwarded (an upstream round trip).
    cfg.vardiff.initial_difficulty = "0.000001".parse().unwrap();
    let proxy = proxy(cfg).await;
    let m = SimMiner::spawn(MinerConfig {
        submit_limit: Some(5),
        ..MinerConfig::new(proxy.stratum_addr, "otel.rig")
    });
    m.wait_for(|s| s.accepted >= 5, WAIT).await.unwrap();
    m.stop();
    // The miner hears "accepted" after the proxy's own validation; an upstream_submit span
    // ends when the pool's answer arrives. Wait for all five answers before stopping, or
    // the spans may still be open when the provider flushes.
    let upstream = proxy.shared.upstream.clone().expect("aggregate mode");
    let answered = || {
        use std::sync::atomic::Ordering::Relaxed;
        upstream.status.submits_accepted.load(Relaxed)
            + upstream.status.submits_rejected.load(Relaxed)
    };
    loka_test_support::wait_until("the pool to answer every forwarded share", WAIT, || {
        answered() >= 5
    })
    .await;
    proxy.drain(std::time::Duration::from_secs(5)).await;
    // Shutting the provider down flushes the batch.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let requests = got.lock().clone();
    assert!(!requests.is_empty(), "no OTLP request arrived");
    assert!(
        requests
            .iter()
            .all(|(line, _)| line.starts_with("POST /v1/traces")),
        "{:?}",
        requests.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    let all: Vec<u8> = requests.into_iter().flat_map(|(_, b)| b).collect();
    let has = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    for span in [
        &b"connection"[..],
        b"submit",
        b"upstream_submit",
        b"loka-proxy",
    ] {
        assert!(
            has(span),
            "span {:?} not exported",
            String::from_utf8_lossy(span)
        );
    }
}
