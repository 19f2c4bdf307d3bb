//! The Stratum listener: accepts miners on TCP under the connection limits and runs one
//! session task each; the API's WebSocket `/stratum` hands its admitted connections to
//! [`run_session`] too. On drain it stops accepting; sessions tell miners to reconnect.

use crate::context::Shared;
use crate::events::{ConnectionEvent, Event};
use crate::registry::Admission;
use crate::session::Session;
use loka_config::Backoff;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// Accept miners until drained; returns when the listener is closed.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
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
            .spawn(handle(stream, peer, shared.clone(), admission));
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
        run_session(r, w, peer, shared).await;
        // Held until the session ends: its slot under the connection limits.
        drop(admission);
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
    w: W,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> impl Future<Output = ()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    async move {
        let id = shared.registry.open(peer, crate::clock::now_rfc3339());
        shared.stats.connection_opened();
        shared.emit(Event::Connection(ConnectionEvent::Connected {
            connection_id: id,
            remote: peer,
        }));
        let span = tracing::info_span!("connection", conn = id, peer = %peer);
        Session::new(id, peer, shared.clone())
            .run(r, w)
            .instrument(span)
            .await;
        shared.registry.close(id);
        shared.stats.connection_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A miner's connection is one task, allocated once with everything its future holds
    /// across an await: at 10,000 miners every byte here is 10 kB of memory. Submits are
    /// judged and recorded synchronously, what runs once (handshake, close) is boxed and one
    /// timer serves the idle deadline, the first work and the vardiff tick, so
    /// the future holds the session, its reader and the select over its inputs.
    #[tokio::test]
    async fn a_miners_task_stays_small() {
        let shared = Shared::for_tests();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let admission = shared.admit(peer).ok().unwrap();
        let task = handle(s, peer, shared.clone(), admission);
        let size = std::mem::size_of_val(&task);
        // 4,640 bytes before submits were made synchronous and the three timers one; 3,096
        // after; 1,856 once the session and the connection's arguments were held once each
        // (not as `async fn` arguments) and a passthrough verdict's outcome boxed.
        assert!(size <= 1_900, "a miner's task future is {size} bytes");
    }
}
