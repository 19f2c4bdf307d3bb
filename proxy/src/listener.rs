//! The Stratum listeners: accept miners on TCP, and on the TLS port when one is set, under
//! the connection limits, and run one session task each; the API's WebSocket `/stratum`
//! hands its admitted connections to [`run_session`] too. On drain they stop accepting;
//! sessions tell miners to reconnect.

use crate::context::Shared;
use crate::events::{ConnectionEvent, Event};
use crate::registry::Admission;
use crate::session::{Output, Session};
use crate::stats::Transport;
use crate::tls::{CertificateFiles, MinerFailure};
use loka_config::Backoff;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// Accept miners on the plain port until drained; returns when the listener is closed.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    accept_loop(listener, shared, handle).await
}

/// Accept miners on the TLS port until drained: each connection's handshake runs in its
/// own task, under the connection limits like a plain one, and has `handshake_timeout`.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    shared: Arc<Shared>,
) {
    accept_loop(listener, shared, move |stream, peer, shared, admission| {
        handle_tls(
            stream,
            peer,
            acceptor.clone(),
            handshake_timeout,
            shared,
            admission,
        )
    })
    .await
}

async fn accept_loop<F, T>(listener: TcpListener, shared: Arc<Shared>, task: T)
where
    T: Fn(TcpStream, SocketAddr, Arc<Shared>, Admission) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    // EMFILE and friends: wait a little instead of spinning.
    let backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
    let mut failures = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.drain.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                failures = 0;
                x
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                failures += 1;
                tokio::time::sleep(backoff.delay(failures)).await;
                continue;
            }
        };
        let Ok(admission) = shared.admit(peer) else {
            continue;
        };
        shared
            .tracker
            .spawn(task(stream, peer, shared.clone(), admission));
    }
    tracing::info!("stopped accepting miners");
}

// Plain functions returning `async move` blocks, here and below: an `async fn` keeps each
// argument twice in its future (as given and as a local), in every miner's task.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its future"
)]
fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    admission: Admission,
) -> impl Future<Output = ()> {
    async move {
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        // The aggregate upstream's jobs are written to this socket by the fan-out too.
        let out = match &shared.lanes {
            Some(lanes) => Output::Lane(lanes.register(w)),
            None => Output::Stream(w),
        };
        run_session(r, out, peer, shared, Transport::Tcp).await;
        // Held until the session ends: its slot under the connection limits.
        drop(admission);
    }
}

/// A TLS record starts with this byte (a handshake record: the ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its future"
)]
fn handle_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    limit: Duration,
    shared: Arc<Shared>,
    admission: Admission,
) -> impl Future<Output = ()> {
    async move {
        let _ = stream.set_nodelay(true);
        // Boxed, in a statement of its own (so no temporary of it stays in this task's
        // future): rustls' handshake state is larger than the whole session and is needed
        // only until the handshake ends.
        let handshake = Box::pin(tokio::time::timeout(limit, async move {
            // Plain Stratum (a JSON line) to this port is told apart before rustls sees it.
            let mut first = [0u8; 1];
            match stream.peek(&mut first).await {
                Ok(0) | Err(_) => return Err(MinerFailure::Closed),
                Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
                    // Take what it sent (a subscribe line or so): a socket closed with unread
                    // data resets the connection instead of ending it.
                    let mut sink = [0u8; 2048];
                    let _ = stream.try_read(&mut sink);
                    return Err(MinerFailure::PlainText);
                }
                Ok(_) => {}
            }
            acceptor
                .accept(stream)
                .await
                .map_err(|e| MinerFailure::of(&e))
        }));
        // In a block of its own: the handshake's result holds the whole TLS stream, and a
        // binding of it would keep that room in this task's future while the session runs.
        let halves = {
            let outcome = handshake.await;
            match outcome {
                Ok(Ok(stream)) => Ok(tokio::io::split(stream)),
                Ok(Err(why)) => Err(why),
                Err(_) => Err(MinerFailure::Timeout),
            }
        };
        let tls = &shared.stats.tls;
        match halves {
            Ok((r, w)) => {
                tls.miner_handshakes.fetch_add(1, Relaxed);
                run_session(r, Output::Stream(w), peer, shared.clone(), Transport::Tls).await;
            }
            Err(why) => {
                tls.miner_failed(why);
                tracing::info!(%peer, reason = why.as_str(), "TLS handshake failed; connection closed");
            }
        }
        drop(admission);
    }
}

/// Read the listener's certificate files every `every` until shutdown: a new pair serves
/// the next handshakes (connected miners keep their sessions); one that does not load is
/// logged and counted, and the certificate in force stays.
pub async fn watch_certificate(certs: Arc<CertificateFiles>, every: Duration, shared: Arc<Shared>) {
    let tls = &shared.stats.tls;
    tls.certificate_not_after.store(certs.not_after(), Relaxed);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let files = certs.clone();
        let Ok(outcome) = tokio::task::spawn_blocking(move || files.reload()).await else {
            continue;
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                let not_after = certs.not_after();
                tls.certificate_reloads.fetch_add(1, Relaxed);
                tls.certificate_not_after.store(not_after, Relaxed);
                let until = u64::try_from(not_after)
                    .ok()
                    .and_then(|s| crate::clock::unix_ms_rfc3339(s.saturating_mul(1000)))
                    .unwrap_or_default();
                tracing::info!(%until, "TLS certificate reloaded; new handshakes use it");
            }
            Err(e) => {
                tls.certificate_reload_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "TLS certificate files refused; the one in force stays");
            }
        }
    }
}

/// Register a connection, run its session over any byte stream (TCP, or the WebSocket
/// bridge of the API's `/stratum`), and unregister it.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its future"
)]
pub fn run_session<R, W>(
    r: R,
    out: Output<W>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    transport: Transport,
) -> impl Future<Output = ()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    async move {
        // The session stops on its own token: the drain cancels it with every other, an
        // admin disconnect cancels it alone.
        let stop = shared.drain.child_token();
        let id = shared
            .registry
            .open(peer, crate::clock::now_rfc3339(), stop.clone());
        shared.stats.connection_opened(transport);
        shared.emit(Event::Connection(ConnectionEvent::Connected {
            connection_id: id,
            remote: peer,
        }));
        let span = tracing::debug_span!("connection", conn = id, peer = %peer);
        Session::new(id, peer, shared.clone())
            .run(r, out, stop)
            .instrument(span)
            .await;
        shared.registry.close(id);
        shared.stats.connection_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection accepted and admitted: the client's end, the server's, the peer.
    async fn accepted(shared: &Shared) -> (TcpStream, TcpStream, SocketAddr, Admission) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        let admission = shared.admit(peer).ok().unwrap();
        (client, server, peer, admission)
    }

    /// A miner's connection is one task, allocated once with everything its future holds
    /// across an await: at 10,000 miners every byte here is 10 kB of memory. Submits are
    /// judged and recorded synchronously, what runs once (handshake, close) is boxed and one
    /// timer serves the idle deadline, the first work and the vardiff tick, so
    /// the future holds the session, its reader and the select over its inputs.
    #[tokio::test]
    async fn a_miners_task_stays_small() {
        let shared = Shared::for_tests();
        let (_c, s, peer, admission) = accepted(&shared).await;
        let task = handle(s, peer, shared.clone(), admission);
        let size = std::mem::size_of_val(&task);
        // 4,640 bytes before submits were made synchronous and the three timers one; 3,096
        // after; 1,856 once the session and the connection's arguments were held once each
        // (not as `async fn` arguments) and a passthrough verdict's outcome boxed; 1,872 with
        // the upstream's mask a session follows, for the fan-out.
        assert!(size <= 1_900, "a miner's task future is {size} bytes");
    }

    /// A TLS miner's task is no larger than a plain one's: the handshake's state is boxed
    /// while it runs, and the TLS stream lives on the heap, shared by its two halves.
    #[tokio::test]
    async fn a_tls_miners_task_stays_small() {
        let shared = Shared::for_tests();
        let (_c, s, peer, admission) = accepted(&shared).await;
        let (cert, key) = crate::tls::self_signed_pair();
        let dir = std::env::temp_dir().join(format!("loka-task-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("c.pem"), cert).unwrap();
        std::fs::write(dir.join("k.pem"), key).unwrap();
        let files = CertificateFiles::load(&dir.join("c.pem"), &dir.join("k.pem")).unwrap();
        let acceptor = TlsAcceptor::from(crate::tls::server_config(Arc::new(files)).unwrap());
        let limit = Duration::from_secs(10);
        let task = handle_tls(s, peer, acceptor, limit, shared.clone(), admission);
        let size = std::mem::size_of_val(&task);
        let _ = std::fs::remove_dir_all(&dir);
        // 3,080 bytes while the handshake's result (the whole TLS stream) kept its room
        // beside the running session; the stream now lives on the heap, shared by the halves.
        // 1,888, then 1,912 when its write side became one of two outputs (the other the
        // fan-out's lane of a plain miner).
        assert!(size <= 1_920, "a TLS miner's task future is {size} bytes");
    }
}
