//! Connections to Redis, one server or a Redis Cluster, behind one type.
//!
//! [`Client`] says where Redis is and how it is deployed; [`Conn`] is a
//! connection to it that every caller uses alike (it implements redis-rs's
//! `ConnectionLike`). On a cluster each command goes to the master of its
//! keys' slot, and a command or script whose keys span slots is refused
//! (`CROSSSLOT`), which is why the store keeps every key one transition
//! touches under one hash tag (see [`crate::store::keys`]).
//!
//! Which one it is comes from the `redis_mode` setting: `single`, `cluster`,
//! or `auto` (the default), which asks the server (`CLUSTER INFO`, which a
//! server without cluster support refuses) once at start-up. A server that
//! does not let the user run `CLUSTER INFO` is taken for a single Redis:
//! set `redis_mode: cluster` for such a user on a cluster.

mod cluster;

pub use cluster::ClusterConn;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, Pipeline, RedisFuture, RedisResult, Value,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The number of slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The cluster slot of a key, as Redis Cluster computes it: CRC16
/// (XMODEM) of its hash tag, modulo the number of slots.
pub fn slot(key: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key).as_bytes()) % SLOTS
}

/// The part of a key Redis Cluster hashes: the text between the first `{`
/// and the first `}` after it when not empty, else the whole key.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// How Redis is deployed, as the `redis_mode` setting says it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisMode {
    /// Asked of the server at start-up.
    #[default]
    Auto,
    /// One server (a Sentinel-managed primary too): every key on it.
    Single,
    /// A Redis Cluster, reached through any of its nodes.
    Cluster,
}

impl RedisMode {
    pub fn parse(v: &str) -> Result<Self, String> {
        match v.trim() {
            "auto" => Ok(Self::Auto),
            "single" => Ok(Self::Single),
            "cluster" => Ok(Self::Cluster),
            other => Err(format!(
                "`{other}` is no Redis mode; use auto, single or cluster"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Single => "single",
            Self::Cluster => "cluster",
        }
    }
}

/// The longest a connection attempt to one node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where Redis is, resolved to one server or a cluster.
#[derive(Clone)]
pub enum Client {
    Single(Box<redis::Client>),
    /// A cluster, reached first through this node.
    Cluster(Box<ConnectionInfo>),
}

impl Client {
    /// A client for `client`'s server, asking it (for [`RedisMode::Auto`])
    /// whether it is a cluster node. Fails when the server cannot be
    /// reached (for `auto`) or the cluster client cannot be made.
    pub async fn resolve(client: redis::Client, mode: RedisMode) -> RedisResult<Self> {
        let cluster = match mode {
            RedisMode::Single => false,
            RedisMode::Cluster => true,
            RedisMode::Auto => is_cluster_node(&client).await?,
        };
        if !cluster {
            return Ok(Self::Single(Box::new(client)));
        }
        let seed = client.get_connection_info().clone();
        // Built once to find a bad address now rather than at each connection.
        ClusterClientBuilder::new(vec![seed.clone()])
            .connection_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Self::Cluster(Box::new(seed)))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A shared, reconnecting connection for short commands, each answered
    /// within `response_timeout`.
    pub async fn commands(&self, response_timeout: Duration) -> RedisResult<Conn> {
        match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                Ok(Conn::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            Self::Cluster(seed) => cluster_connection(seed, response_timeout).await,
        }
    }

    /// A connection for one blocking read loop. redis-rs gives async
    /// connections a 500 ms response timeout by default; a `BLOCK` longer
    /// than that would fail client-side while staying live on the server,
    /// so blocking readers get their own connection with a timeout well
    /// above their `BLOCK`.
    pub async fn blocking(&self, block: Duration) -> RedisResult<Conn> {
        let timeout = block + Duration::from_secs(5);
        match self {
            Self::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(timeout));
                Ok(Conn::Multiplexed(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Self::Cluster(seed) => cluster_connection(seed, timeout).await,
        }
    }
}

async fn cluster_connection(seed: &ConnectionInfo, timeout: Duration) -> RedisResult<Conn> {
    Ok(Conn::Cluster(ClusterConn::connect(seed, timeout).await?))
}

/// Whether the server behind `client` runs with `cluster-enabled yes`. A
/// server that refuses `CLUSTER INFO` to this user counts as a single
/// Redis.
async fn is_cluster_node(client: &redis::Client) -> RedisResult<bool> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    match redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async::<String>(&mut conn)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("NOPERM") => Ok(false),
        // "ERR This instance has cluster support disabled".
        Err(e) if e.to_string().contains("cluster support disabled") => Ok(false),
        Err(e) => Err(e),
    }
}

/// A connection to Redis, to one server or to a cluster.
#[derive(Clone)]
pub enum Conn {
    /// Reconnecting, for short commands.
    Single(ConnectionManager),
    /// For a blocking read loop, remade by its owner after an error.
    Multiplexed(redis::aio::MultiplexedConnection),
    /// Bounded and made anew when it stops answering (see [`ClusterConn`]).
    Cluster(ClusterConn),
}

impl Conn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs commands whose replies are not needed, each given with the key
    /// it names: in one pipeline on one Redis; on a cluster, one pipeline
    /// per slot (a pipeline cannot span slots there).
    pub async fn run_all(&mut self, cmds: Vec<(String, Cmd)>) -> RedisResult<()> {
        let mut pipes: Vec<(u16, Pipeline)> = Vec::new();
        let cluster = self.is_cluster();
        for (key, cmd) in cmds {
            let at = if cluster { slot(&key) } else { 0 };
            let pipe = match pipes.iter_mut().find(|(s, _)| *s == at) {
                Some((_, pipe)) => pipe,
                None => {
                    pipes.push((at, Pipeline::new()));
                    &mut pipes.last_mut().expect("just pushed").1
                }
            };
            pipe.add_command(cmd).ignore();
        }
        for (_, pipe) in pipes {
            pipe.query_async::<()>(self).await?;
        }
        Ok(())
    }

    /// Waits until the writes made so far to the master that holds `key`
    /// reached `replicas` of its replicas, or every replica it has when it
    /// has fewer (a master whose replica was promoted away, until it gets
    /// a new one: no failover can lose what no replica could take over),
    /// for at most `timeout`; says whether they did.
    ///
    /// A `WAIT` holds up every command behind it on its connection, which
    /// all of a process's writes to that master share, until it is
    /// answered: one for a replica the master does not have would hold
    /// them for its whole timeout, every time. So once a master is found
    /// short of replicas, every wait asks first how many each master has
    /// (`ROLE`, which blocks nothing), and waits only for those, for
    /// [`SHORT_HANDED_FOR`] after a master was last found short.
    pub async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: usize,
        timeout: Duration,
    ) -> RedisResult<bool> {
        if short_handed_lately() {
            let connected = self.replicas_of(key).await?;
            if connected < replicas {
                note_short_handed();
            }
            let wanted = connected.min(replicas);
            if wanted == 0 {
                return Ok(true);
            }
            return Ok(self.wait_for(key, wanted, timeout).await? >= wanted);
        }
        let acked = self.wait_for(key, replicas, timeout).await?;
        if acked >= replicas {
            return Ok(true);
        }
        let connected = self.replicas_of(key).await?;
        if connected < replicas {
            note_short_handed();
        }
        Ok(acked >= connected.min(replicas))
    }

    /// `WAIT replicas timeout` on the master of `key`: how many replicas
    /// acknowledged the writes made so far on this connection.
    async fn wait_for(
        &mut self,
        key: &str,
        replicas: usize,
        timeout: Duration,
    ) -> RedisResult<usize> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self.on_master_of(key, wait).await
    }

    /// How many replicas are connected to the master of `key`.
    async fn replicas_of(&mut self, key: &str) -> RedisResult<usize> {
        // ROLE: ["master", offset, [[ip, port, offset], ...]].
        let role: Value = self.on_master_of(key, redis::cmd("ROLE")).await?;
        Ok(match &role {
            Value::Array(items) => match items.get(2) {
                Some(Value::Array(replicas)) => replicas.len(),
                _ => 0,
            },
            _ => 0,
        })
    }

    /// Runs a command without keys on the master that holds `key` (on one
    /// Redis, on it).
    async fn on_master_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: Cmd,
    ) -> RedisResult<T> {
        match self {
            Self::Cluster(conn) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let reply = conn.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(reply)?)
            }
            other => cmd.query_async(other).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Multiplexed(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Multiplexed(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How long after a master was last found with fewer replicas than a wait
/// asked for the waits ask each master first how many it has (see
/// [`Conn::wait_replicas`]): long enough that a master left without its
/// replica (until an operator gives it one) is asked again and again
/// without ever being waited on, short enough that the one round trip more
/// per wait stops soon after the cluster is whole again.
pub const SHORT_HANDED_FOR: Duration = Duration::from_secs(10);

/// When a master was last found short of replicas, in ms after
/// [`process_start`] plus one (0: never). One for the process: a hint of
/// which way to ask, not a fact the answer rests on, so a master of
/// another Redis found short costs at most one round trip more per wait.
static SHORT_HANDED_AT: AtomicU64 = AtomicU64::new(0);

fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn note_short_handed() {
    let now = process_start().elapsed().as_millis() as u64 + 1;
    SHORT_HANDED_AT.store(now, Ordering::Relaxed);
}

fn short_handed_lately() -> bool {
    let at = SHORT_HANDED_AT.load(Ordering::Relaxed);
    let now = process_start().elapsed().as_millis() as u64 + 1;
    at != 0 && now.saturating_sub(at) <= SHORT_HANDED_FOR.as_millis() as u64
}
