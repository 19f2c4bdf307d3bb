//! Bad input and limits: junk, TLS on the plain port, oversized lines, floods, slow-loris,
//! connection limits, and draining on SIGTERM.

mod common;

use common::*;
use loka_config::Mode;
use loka_sim::client::StratumClient;
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A ClientHello as bfgminer sends it to a plain port before falling back.
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x31, 0x01, 0x00, 0x00, 0x2d, 0x03, 0x03, 0x5b, 0x90, 0x9d, 0x9b, 0x72,
    0x0b, 0xbc, 0x0c,
];

#[tokio::test]
async fn junk_closes_only_that_connection() {
    let pool = pool().await;
    let proxy = proxy(config(&[pool.addr()], Mode::Aggregate)).await;
    let mut healthy = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    healthy.subscribe("ok/1", None).await.unwrap();

    for junk in [
        CLIENT_HELLO,
        b"GET / HTTP/1.1\r\n\r\n".as_slice(),
        b"\x00\x01\x02garbage\n",
        b"{\"id\":1,\"method\":\n",
        b"[1,2,3]\n",
    ] {
        let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
        c.send_raw(junk).await.unwrap();
        c.expect_closed()
            .await
            .unwrap_or_else(|e| panic!("{junk:?}: {e}"));
    }
    // bfgminer then reconnects in plain Stratum and is served.
    let mut bfg = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    let r = bfg
        .request_with_id(
            json!("subscribe"),
            "mining.subscribe",
            json!(["bfgminer/5.5.0"]),
        )
        .await
        .unwrap();
    assert!(r.error.is_null());
    // Wrong types inside valid JSON get an error reply, not a close.
    let r = healthy
        .request("mining.suggest_difficulty", json!(["lots"]))
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(20));
    assert_eq!(
        healthy
            .request("mining.ping", json!([]))
            .await
            .unwrap()
            .result,
        json!("pong")
    );
    assert!(proxy.shared.stats.protocol_errors.load(Relaxed) >= 5);
}

#[tokio::test]
async fn oversized_lines_are_refused() {
    let pool = pool().await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.server.max_line_bytes = 1024;
    let proxy = proxy(cfg).await;
    // With a newline…
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    let long = format!(
        "{{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"{}\"]}}\n",
        "a".repeat(2000)
    );
    c.send_raw(long.as_bytes()).await.unwrap();
    c.expect_closed().await.unwrap();
    // …and without one (the buffer never grows past the limit).
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.send_raw(&vec![b'{'; 5000]).await.unwrap();
    c.expect_closed().await.unwrap();
}

#[tokio::test]
async fn ten_thousand_pipelined_lines_are_all_answered() {
    let pool = pool().await;
    let proxy = proxy(config(&[pool.addr()], Mode::Aggregate)).await;
    let mut s = TcpStream::connect(proxy.stratum_addr).await.unwrap();
    let mut flood = String::new();
    for i in 0..10_000 {
        flood.push_str(&format!(
            "{{\"id\":{i},\"method\":\"mining.ping\",\"params\":[]}}\n"
        ));
    }
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(flood.as_bytes()).await.unwrap();
    };
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + WAIT;
        while buf.iter().filter(|&&b| b == b'\n').count() < 10_000 {
            assert!(
                Instant::now() < deadline,
                "only {} replies",
                buf.iter().filter(|&&b| b == b'\n').count()
            );
            let n = tokio::time::timeout(WAIT, r.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
        buf
    };
    let ((), buf) = tokio::join!(write, read);
    let lines: Vec<serde_json::Value> = buf
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10_000);
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, v)| v["id"] == json!(i) && v["result"] == "pong")
    );
}

#[tokio::test]
async fn slow_loris_is_cut_off_at_the_handshake_timeout() {
    let pool = pool().await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.server.handshake_timeout = Duration::from_millis(800);
    let proxy = proxy(cfg).await;
    let mut s = TcpStream::connect(proxy.stratum_addr).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}"
        .iter()
        .cycle()
        .take(100)
    {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut one = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut one)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "still open after {:?}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "closed too early: {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn connection_limits_refuse_extra_miners() {
    let pool = pool().await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.server.max_connections_per_ip = 2;
    let proxy = proxy(cfg).await;
    let mut a = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    let mut b = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    a.subscribe("a", None).await.unwrap();
    b.subscribe("b", None).await.unwrap();
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.expect_closed().await.unwrap();
    assert_eq!(proxy.shared.stats.connections_refused.load(Relaxed), 1);
    drop(a);
    // A slot frees up when a miner leaves.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut d = StratumClient::connect(proxy.stratum_addr).await.unwrap();
        d.set_timeout(Duration::from_millis(300));
        if d.subscribe("d", None).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
    }

    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.server.max_connections = 1;
    let single = common::proxy(cfg).await;
    let mut a = StratumClient::connect(single.stratum_addr).await.unwrap();
    a.subscribe("a", None).await.unwrap();
    let mut b = StratumClient::connect(single.stratum_addr).await.unwrap();
    b.expect_closed().await.unwrap();
}

#[tokio::test]
async fn drain_tells_miners_to_reconnect_and_stops_accepting() {
    let pool = pool().await;
    let proxy = proxy(config(&[pool.addr()], Mode::Aggregate)).await;
    let addr = proxy.stratum_addr;
    let mut miners = Vec::new();
    for i in 0..5 {
        let mut c = StratumClient::connect(addr).await.unwrap();
        c.subscribe("cpuminer/2.5.1", None).await.unwrap();
        assert!(c.authorize(&format!("kim.rig{i}"), "x").await.unwrap());
        c.wait_notification("mining.notify").await.unwrap();
        miners.push(c);
    }
    let report = proxy.drain(Duration::from_secs(5)).await;
    assert_eq!(report.sessions_left, 0);
    assert!(report.elapsed < Duration::from_secs(5));
    for c in &mut miners {
        let n = c.wait_notification("client.reconnect").await.unwrap();
        assert_eq!(n.params, json!([]));
        c.expect_closed().await.unwrap();
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
}

#[tokio::test]
async fn idle_miners_are_closed() {
    let pool = pool().await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.server.idle_timeout = Duration::from_millis(500);
    let proxy = proxy(cfg).await;
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.subscribe("x", None).await.unwrap();
    assert!(c.authorize("lee.rig", "x").await.unwrap());
    c.expect_closed().await.unwrap();
}
