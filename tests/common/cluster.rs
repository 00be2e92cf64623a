//! A throwaway Redis Cluster for tests: three masters and a replica of
//! each, on free loopback ports, with their data in a temp dir, every node
//! killed when dropped. Built on the library's
//! [`sagaflow::local_redis::LocalCluster`], so that there is one way to
//! start a cluster.

use super::must;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use sagaflow::local_redis::{wait_healthy, ClusterOptions, LocalCluster};
use std::time::{Duration, Instant};

/// How long a node may not answer before the others take it for failed:
/// short, so that a failover takes about two seconds, yet long enough that
/// a node slowed by a busy machine is not failed over by mistake.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The longest a failover may take once a master is killed: the others
/// notice after [`NODE_TIMEOUT`], then its replica waits up to about a
/// second more before it asks to be promoted; 2 to 3 s in all on loopback,
/// and room here for a loaded machine.
pub const FAILOVER_WAIT: Duration = Duration::from_secs(20);

/// A master was killed and its replica serves its slots.
#[derive(Clone, Debug)]
pub struct Failover {
    /// The port of the master killed.
    pub killed: u16,
    /// The port of its replica, now the master of its slots.
    pub promoted: u16,
    /// From the kill until every live node said the cluster was healthy.
    pub took: Duration,
}

/// Three masters, each with a replica, every write persisted at once
/// (`appendonly yes`, `appendfsync always`).
pub struct RedisCluster {
    cluster: LocalCluster,
}

impl RedisCluster {
    /// Starts the nodes and waits until the cluster is healthy: every slot
    /// served, every replica in step with its master (bounded; see
    /// [`LocalCluster::start`]).
    pub fn start() -> Self {
        let options = ClusterOptions {
            masters: 3,
            replicas: true,
            node_timeout: NODE_TIMEOUT,
            extra: ["--appendonly", "yes", "--appendfsync", "always"]
                .map(String::from)
                .to_vec(),
        };
        let cluster = LocalCluster::start(&options).unwrap_or_else(|e| panic!("{e}"));
        Self { cluster }
    }

    /// `redis://127.0.0.1:<port>` of each master as started that still runs.
    pub fn seeds(&self) -> Vec<String> {
        self.cluster.seeds()
    }

    /// One seed.
    pub fn url(&self) -> String {
        self.seeds().remove(0)
    }

    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(self.seeds()).expect("a cluster client")
    }

    pub async fn conn(&self) -> ClusterConnection {
        let client = self.client();
        must("a cluster connection", client.get_async_connection()).await
    }

    /// The nodes and the processes behind them.
    pub fn local(&self) -> &LocalCluster {
        &self.cluster
    }

    /// The port of the master serving `slot` now.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.cluster
            .master_of_slot(slot)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The port of the master serving `key`'s slot now.
    pub fn master_for_key(&self, key: &str) -> u16 {
        let slot = self
            .cluster
            .slot_of_key(key)
            .unwrap_or_else(|e| panic!("{e}"));
        self.master_of_slot(slot)
    }

    /// A plain connection to one node, for what the cluster connection
    /// would route elsewhere (a read on a replica, `INFO`).
    pub async fn node_conn(&self, port: u16) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        must(
            "a node connection",
            client.get_multiplexed_async_connection(),
        )
        .await
    }

    /// Kills (SIGKILL) the master serving `key`, then waits, at most
    /// [`FAILOVER_WAIT`], until its replica serves its slots and every live
    /// node says the cluster is healthy. Async, and the wait runs off the
    /// runtime's threads, so that a daemon in this process keeps running
    /// through the failover.
    pub async fn kill_master_for_key(&mut self, key: &str) -> Failover {
        let killed = self.master_for_key(key);
        let view = self.cluster.view().unwrap_or_else(|e| panic!("{e}"));
        let killed_id = view.iter().find(|v| v.port == killed).map(|v| v.id.clone());
        let replicas: Vec<u16> = view
            .iter()
            .filter(|v| v.master_id.is_some() && v.master_id == killed_id && !v.failed)
            .map(|v| v.port)
            .collect();
        assert!(
            !replicas.is_empty(),
            "the master on {killed} has no replica"
        );
        let started = Instant::now();
        self.cluster.kill(killed).unwrap_or_else(|e| panic!("{e}"));
        let live = self.cluster.live_ports();
        let wait = tokio::task::spawn_blocking(move || wait_healthy(&live, FAILOVER_WAIT));
        let healthy = wait.await.expect("the wait's thread");
        healthy.unwrap_or_else(|e| panic!("no failover of the master on {killed}: {e}"));
        let took = started.elapsed();
        let promoted = self.master_for_key(key);
        assert!(
            replicas.contains(&promoted),
            "{key} is served by {promoted}, not by a replica of {killed} ({replicas:?})"
        );
        Failover {
            killed,
            promoted,
            took,
        }
    }
}
