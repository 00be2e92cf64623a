//! The Redis a test runs against, one server or a cluster, behind one
//! interface: the engine, recovery and operator suites write each test once
//! against [`Backend`] and run it on both ([`on_both!`]).

use super::{must, RedisCluster, RedisServer};
use sagaflow::connection::{Client, Conn, RedisMode};
use std::time::Duration;

/// What the shared fixtures need of a Redis: where it is, and connections
/// to it that route each command to the node serving its key.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// A URL the daemon, the handlers and the CLI are given: on a cluster,
    /// one node, through which the others are found.
    fn url(&self) -> String;

    fn mode(&self) -> RedisMode;

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a Redis URL")
    }

    /// A connection for short commands.
    async fn any_conn(&self) -> Conn {
        let client = must("a client", Client::resolve(self.client(), self.mode())).await;
        must("a connection", client.commands(Duration::from_secs(5))).await
    }

    /// A connection whose response timeout allows reads blocking `block`.
    async fn blocking_any_conn(&self, block: Duration) -> Conn {
        let client = must("a client", Client::resolve(self.client(), self.mode())).await;
        must("a connection", client.blocking(block)).await
    }
}

impl Backend for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }

    fn mode(&self) -> RedisMode {
        RedisMode::Single
    }
}

impl Backend for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }

    fn mode(&self) -> RedisMode {
        RedisMode::Cluster
    }
}

/// One server, or three masters with a replica each.
pub enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    pub fn single() -> Self {
        Self::Single(RedisServer::start())
    }

    pub fn cluster() -> Self {
        Self::Cluster(RedisCluster::start())
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A connection for short commands (see [`Backend::any_conn`]).
    pub async fn conn(&self) -> Conn {
        self.any_conn().await
    }

    /// A connection for blocking reads (see [`Backend::blocking_any_conn`]).
    pub async fn blocking_conn(&self, block: Duration) -> Conn {
        self.blocking_any_conn(block).await
    }
}

impl Backend for Redis {
    fn url(&self) -> String {
        match self {
            Self::Single(server) => Backend::url(server),
            Self::Cluster(cluster) => Backend::url(cluster),
        }
    }

    fn mode(&self) -> RedisMode {
        match self {
            Self::Single(server) => server.mode(),
            Self::Cluster(cluster) => cluster.mode(),
        }
    }
}

/// Declares each named test twice, as `single::<name>` on one Redis and as
/// `cluster::<name>` on a cluster of three masters and three replicas; each
/// calls `<name>(redis)`, an `async fn` taking a [`Redis`]. A test runs on
/// a runtime of two threads unless its name follows its own attribute:
/// `on_both!(a, #[tokio::test] b)`.
#[macro_export]
macro_rules! on_both {
    (@norm [$($done:tt)*] #[$runtime:meta] $test:ident $(, $($rest:tt)*)?) => {
        $crate::on_both!(@norm [$($done)* [#[$runtime]] $test] $($($rest)*)?);
    };
    (@norm [$($done:tt)*] $test:ident $(, $($rest:tt)*)?) => {
        $crate::on_both!(@norm [$($done)*
            [#[tokio::test(flavor = "multi_thread", worker_threads = 2)]] $test] $($($rest)*)?);
    };
    (@norm [$($done:tt)*]) => {
        mod single {
            $crate::on_both!(@emit single [$($done)*]);
        }
        mod cluster {
            $crate::on_both!(@emit cluster [$($done)*]);
        }
    };
    (@emit $redis:ident [$([$($runtime:tt)+] $test:ident)*]) => {
        $(
            $($runtime)+
            async fn $test() {
                super::$test($crate::common::Redis::$redis()).await
            }
        )*
    };
    ($($tests:tt)+) => {
        $crate::on_both!(@norm [] $($tests)+);
    };
}
