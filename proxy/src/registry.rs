//! The live miner connections: admission under `server.max_connections` and the per-IP
//! limit, connection ids, what the admin console lists, and its "disconnect" kicks.
//! Touched at connect, authorize and close only, never on the share path.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Why a miner connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the proxy is draining")]
    Draining,
    #[error("server.max_connections reached")]
    Full,
    #[error("server.max_connections_per_ip reached")]
    PerIp,
}

/// A miner connection's place: its connection permit and per-IP slot, released on drop.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _ip: IpGuard,
}

/// What the admin console shows of a live connection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionInfo {
    pub connection_id: u64,
    pub remote_addr: SocketAddr,
    pub connected_at: String,
    pub user_agent: Option<String>,
    pub workers: Vec<String>,
}

/// A live connection: what the console shows, and the token its session stops on.
struct Live {
    info: ConnectionInfo,
    stop: CancellationToken,
}

pub struct Registry {
    connections: Mutex<HashMap<u64, Live>>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// `server.max_connections`, shared by the TCP listener and the WebSocket `/stratum`.
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
}

impl Registry {
    pub fn new(max_connections: u32) -> Arc<Self> {
        Arc::new(Self {
            connections: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max_connections as usize)),
            next_id: AtomicU64::new(1),
        })
    }

    /// A place for a connection from `ip`, within `server.max_connections` and
    /// `per_ip_limit` (0: no per-IP limit).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, per_ip_limit: u32) -> Result<Admission, Refusal> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Err(Refusal::Full);
        };
        let mut map = self.per_ip.lock();
        let n = map.entry(ip).or_insert(0);
        if per_ip_limit != 0 && *n >= per_ip_limit {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        Ok(Admission {
            _permit: permit,
            _ip: IpGuard {
                registry: self.clone(),
                ip,
            },
        })
    }

    /// List a new connection; returns its id. `stop` is the token its session stops on
    /// (a child of the drain token): an admin disconnect cancels it.
    pub fn open(&self, peer: SocketAddr, connected_at: String, stop: CancellationToken) -> u64 {
        let id = self.next_id.fetch_add(1, Relaxed);
        self.connections.lock().insert(
            id,
            Live {
                info: ConnectionInfo {
                    connection_id: id,
                    remote_addr: peer,
                    connected_at,
                    user_agent: None,
                    workers: Vec::new(),
                },
                stop,
            },
        );
        id
    }

    pub fn close(&self, id: u64) {
        self.connections.lock().remove(&id);
    }

    /// A worker authorized on connection `id`.
    pub fn authorized(&self, id: u64, worker: &str, user_agent: Option<&str>) {
        if let Some(c) = self.connections.lock().get_mut(&id) {
            c.info.workers.push(worker.to_string());
            c.info.user_agent = user_agent.map(str::to_string);
        }
    }

    /// Live connections, oldest first.
    pub fn list(&self) -> Vec<ConnectionInfo> {
        let mut list: Vec<_> = self
            .connections
            .lock()
            .values()
            .map(|c| c.info.clone())
            .collect();
        list.sort_by_key(|c| c.connection_id);
        list
    }

    /// Close every connection `worker` is authorized on; returns how many. Each session
    /// waits on its own token, so a kick wakes only the sessions it closes.
    pub fn kick_worker(&self, worker: &str) -> usize {
        let connections = self.connections.lock();
        let mut n = 0;
        for c in connections.values() {
            if c.info.workers.iter().any(|w| w == worker) {
                c.stop.cancel();
                n += 1;
            }
        }
        n
    }
}

/// Releases a per-IP slot when the connection ends.
struct IpGuard {
    registry: Arc<Registry>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut map = self.registry.per_ip.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_in_all_and_per_ip_and_given_back_on_drop() {
        let r = Registry::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = r.admit(a, 2).unwrap();
        let _a2 = r.admit(a, 2).unwrap();
        assert_eq!(r.admit(a, 2).err(), Some(Refusal::PerIp));
        let _b1 = r.admit(b, 2).unwrap();
        assert_eq!(r.admit(b, 2).err(), Some(Refusal::Full));
        drop(a1);
        assert!(
            r.admit(a, 2).is_ok(),
            "a dropped admission frees both places"
        );
        assert!(r.per_ip.lock().len() == 2);
    }

    #[test]
    fn a_kick_reaches_every_connection_of_the_worker_only() {
        let r = Registry::new(10);
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let stops: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
        let one = r.open(peer, String::new(), stops[0].clone());
        let two = r.open(peer, String::new(), stops[1].clone());
        let other = r.open(peer, String::new(), stops[2].clone());
        r.authorized(one, "farm.a", Some("cgminer"));
        r.authorized(two, "farm.a", None);
        r.authorized(other, "farm.b", None);
        assert_eq!(r.kick_worker("farm.a"), 2);
        let stopped: Vec<bool> = stops.iter().map(CancellationToken::is_cancelled).collect();
        assert_eq!(stopped, vec![true, true, false]);
        r.close(two);
        let ids: Vec<u64> = r.list().iter().map(|c| c.connection_id).collect();
        assert_eq!(ids, vec![one, other]);
    }
}
