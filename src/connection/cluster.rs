//! A Redis Cluster connection that cannot hang: every call is answered
//! within a deadline, and a connection that lets one pass is made anew.
//!
//! redis-rs (1.8) drives a cluster connection from one task that, while it
//! refreshes its map of the slots, polls none of the requests and repairs
//! under way; a refresh was seen waiting forever for the lock of the table
//! of node connections, which one of those held or was next in line for.
//! Every call on that connection then hangs, without an error: about once
//! in ten when a master is killed while commands are under way, at random.
//! The stuck connection's task is left behind (it cannot be stopped from
//! outside), one per such failure. A call also has no deadline of its
//! own there (the response timeout of a cluster connection bounds each try
//! on one node, not the retries around them). So each call here is bounded
//! by [`DEADLINE_FACTOR`] response timeouts, and the first call to miss its
//! deadline makes a new connection, which every clone uses from then on.
//!
//! A new connection starts from the nodes the cluster listed when the last
//! one was made, and the address first given: the node first given may be
//! the very master that was killed.

use super::CONNECT_TIMEOUT;
use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A call gets this many response timeouts in all, its retries included:
/// one try that times out on a node, and room for redis-rs to follow the
/// cluster to the node that serves the slot now.
const DEADLINE_FACTOR: u32 = 2;

/// Nodes remembered to make a connection anew from: a cluster lists each
/// master and replica, so a few dozen at most in practice; the bound keeps
/// a huge cluster's list from growing what a connection holds.
const SEEDS_MAX: usize = 64;

/// A connection to a Redis Cluster; clones share it, and share its
/// replacement when it is made anew.
#[derive(Clone)]
pub struct ClusterConn {
    inner: Arc<Inner>,
}

struct Inner {
    /// The address the connection was first made from; `None` for one
    /// made elsewhere (see [`ClusterConn::from`]), which is never made anew.
    first: Option<ConnectionInfo>,
    /// The nodes the cluster listed when the connection was last made.
    nodes: Mutex<Vec<ConnectionInfo>>,
    response_timeout: Duration,
    deadline: Duration,
    /// The connection in use, and how many times it was made anew.
    current: Mutex<(u64, ClusterConnection)>,
    /// Held while a connection is made anew: one at a time.
    remaking: tokio::sync::Mutex<()>,
}

impl ClusterConn {
    /// Connects through `seed`, each try on a node answered within
    /// `response_timeout`.
    pub async fn connect(seed: &ConnectionInfo, response_timeout: Duration) -> RedisResult<Self> {
        let conn = make(std::slice::from_ref(seed), response_timeout).await?;
        let this = Self {
            inner: Arc::new(Inner {
                first: Some(seed.clone()),
                nodes: Mutex::new(Vec::new()),
                response_timeout,
                deadline: response_timeout * DEADLINE_FACTOR,
                current: Mutex::new((0, conn.clone())),
                remaking: tokio::sync::Mutex::new(()),
            }),
        };
        this.learn_nodes(conn).await;
        Ok(this)
    }

    /// Sends `cmd` where `routing` says.
    pub async fn route_command(&self, cmd: Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        let (made, mut conn) = self.current();
        self.bounded(made, async move { conn.route_command(cmd, routing).await })
            .await
    }

    /// How many times the connection was made anew.
    pub fn remade(&self) -> u64 {
        self.current().0
    }

    fn current(&self) -> (u64, ClusterConnection) {
        let current = self.inner.current.lock().expect("cluster connection lock");
        (current.0, current.1.clone())
    }

    /// `call`, made on the connection of generation `made`, if it is
    /// answered within the deadline; else a timeout, once the connection is
    /// made anew (or found made anew by another call).
    async fn bounded<T>(
        &self,
        made: u64,
        call: impl Future<Output = RedisResult<T>>,
    ) -> RedisResult<T> {
        match tokio::time::timeout(self.inner.deadline, call).await {
            Ok(answer) => answer,
            Err(_) => {
                self.remake(made).await;
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer from the Redis Cluster within {:?}",
                        self.inner.deadline
                    ),
                )))
            }
        }
    }

    /// Makes a new connection in place of the one of generation `made`,
    /// unless another call did already. A connection that cannot be made
    /// now is tried again by the next call to miss its deadline.
    async fn remake(&self, made: u64) {
        let Some(first) = &self.inner.first else {
            return;
        };
        let _one = self.inner.remaking.lock().await;
        if self.current().0 != made {
            return;
        }
        let mut seeds = self.inner.nodes.lock().expect("seeds lock").clone();
        seeds.push(first.clone());
        // Each seed gets its connection timeout, then a try of its own.
        let made_anew = tokio::time::timeout(
            CONNECT_TIMEOUT + self.inner.deadline,
            make(&seeds, self.inner.response_timeout),
        )
        .await;
        match made_anew {
            Ok(Ok(conn)) => {
                *self.inner.current.lock().expect("cluster connection lock") =
                    (made + 1, conn.clone());
                tracing::warn!(
                    deadline = ?self.inner.deadline,
                    "a Redis Cluster connection let a call go unanswered past its deadline; it was made anew"
                );
                self.learn_nodes(conn).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a Redis Cluster connection that stopped answering cannot be made anew yet")
            }
            Err(_) => {
                tracing::warn!("a Redis Cluster connection that stopped answering cannot be made anew yet: no answer in time")
            }
        }
    }

    /// Remembers the nodes the cluster lists (`CLUSTER SLOTS`), to make a
    /// connection anew from; keeps the former list if they cannot be had.
    async fn learn_nodes(&self, mut conn: ClusterConnection) {
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let listed = tokio::time::timeout(
            self.inner.deadline,
            conn.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), routing),
        )
        .await;
        let Ok(Ok(slots)) = listed else {
            return;
        };
        let Some(first) = &self.inner.first else {
            return;
        };
        let nodes = listed_nodes(&slots, first);
        if !nodes.is_empty() {
            *self.inner.nodes.lock().expect("seeds lock") = nodes;
        }
    }
}

/// A new cluster connection from `seeds` (any that answers will do).
async fn make(
    seeds: &[ConnectionInfo],
    response_timeout: Duration,
) -> RedisResult<ClusterConnection> {
    let client = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .build()?;
    let config = ClusterConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(response_timeout);
    client.get_async_connection_with_config(config).await
}

/// The nodes of a `CLUSTER SLOTS` answer (`[[start, end, [host, port, id,
/// ...], ...], ...]`), each as `like` but for its address, at most
/// [`SEEDS_MAX`].
fn listed_nodes(slots: &Value, like: &ConnectionInfo) -> Vec<ConnectionInfo> {
    let mut nodes: Vec<ConnectionInfo> = Vec::new();
    let Value::Array(ranges) = slots else {
        return nodes;
    };
    for range in ranges {
        let Value::Array(items) = range else { continue };
        for node in items.iter().skip(2) {
            let Value::Array(fields) = node else { continue };
            let host = match fields.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let port = match fields.get(1) {
                Some(Value::Int(p)) => u16::try_from(*p).ok(),
                _ => None,
            };
            let (Some(port), false) = (port, host.is_empty()) else {
                continue;
            };
            let addr = match like.addr() {
                ConnectionAddr::Tcp(..) => ConnectionAddr::Tcp(host, port),
                ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                // A cluster reached over a socket file lists no such node.
                ConnectionAddr::Unix(_) => continue,
                // Any address kind redis-rs may add later: not guessed at.
                #[allow(unreachable_patterns)]
                _ => continue,
            };
            if nodes.len() < SEEDS_MAX && !nodes.iter().any(|n| *n.addr() == addr) {
                nodes.push(like.clone().set_addr(addr));
            }
        }
    }
    nodes
}

/// The response timeout a connection made elsewhere is taken to have: the
/// one redis-rs and the daemon's settings default to.
const WRAPPED_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

impl From<ClusterConnection> for ClusterConn {
    /// A connection made elsewhere, bounded like the others but never made
    /// anew (where it was made from is not known).
    fn from(conn: ClusterConnection) -> Self {
        Self {
            inner: Arc::new(Inner {
                first: None,
                nodes: Mutex::new(Vec::new()),
                response_timeout: WRAPPED_RESPONSE_TIMEOUT,
                deadline: WRAPPED_RESPONSE_TIMEOUT * DEADLINE_FACTOR,
                current: Mutex::new((0, conn)),
                remaking: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let (made, mut conn) = self.current();
        Box::pin(async move {
            self.bounded(made, async move { conn.req_packed_command(cmd).await })
                .await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let (made, mut conn) = self.current();
        Box::pin(async move {
            let call = async move { conn.req_packed_commands(pipeline, offset, count).await };
            self.bounded(made, call).await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_nodes_listed_are_remembered_once_each() {
        let node =
            |host: &str, port: i64| Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]);
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.1", 7000),
                node("", 7002),
            ]),
        ]);
        let like =
            redis::IntoConnectionInfo::into_connection_info("redis://seed:1").expect("an address");
        let nodes = listed_nodes(&slots, &like);
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:7000", "10.0.0.2:7001"]);
    }
}
