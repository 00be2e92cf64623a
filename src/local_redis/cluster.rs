//! [`LocalCluster`]: redis-server children in cluster mode, made one cluster
//! by `redis-cli --cluster create` (or by hand below the three masters it
//! requires), each killed when dropped.

use super::probe::{ask, cluster_nodes, wait_until_healthy, NodeView, POLL, SLOTS};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The longest one node may take to answer PING after it was started.
const NODE_START_WAIT: Duration = Duration::from_secs(10);
/// The longest `redis-cli --cluster create` may run: it waits about a second
/// for the nodes to meet, more on a loaded machine.
const CREATE_WAIT: Duration = Duration::from_secs(30);
/// The longest a new cluster may take to be healthy ([`super::wait_healthy`]) once
/// created: the nodes gossip the slots and each replica copies its master,
/// which takes about a second on loopback.
const READY_WAIT: Duration = Duration::from_secs(20);
/// Tries with fresh ports when a node exits at start-up, because the ports
/// found free can be taken by another process before redis-server binds them.
const NODE_TRIES: usize = 3;

/// What [`LocalCluster::start`] builds.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Masters, which share the slots equally; at least 1 (one master
    /// serves every slot).
    pub masters: usize,
    /// Whether each master gets one replica, to fail over to.
    pub replicas: bool,
    /// `cluster-node-timeout`: how long a node may not answer before the
    /// others take it for failed. A failover takes about twice this.
    pub node_timeout: Duration,
    /// Arguments of every node after the defaults (later ones win in
    /// redis-server), such as `--appendonly yes`.
    pub extra: Vec<String>,
}

impl Default for ClusterOptions {
    /// Three masters without replicas, the smallest cluster `redis-cli`
    /// creates, with Redis's own node timeout.
    fn default() -> Self {
        Self {
            masters: 3,
            replicas: false,
            node_timeout: Duration::from_secs(15),
            extra: Vec::new(),
        }
    }
}

/// Why a [`LocalCluster`] could not be started or asked.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error(
        "{program} is not installed. Install it (Debian/Ubuntu: \
         `sudo apt-get install {package}`; macOS: `brew install redis`), \
         or pass the URL of a running Redis"
    )]
    NotInstalled {
        program: &'static str,
        package: &'static str,
    },
    #[error("a cluster needs at least one master")]
    NoMasters,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the cluster node on port {port} exited at start-up ({status}); its log ends:\n{log}")]
    NodeExited {
        port: u16,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("the cluster node on port {port} did not answer within {within:?}")]
    NodeSilent { port: u16, within: Duration },
    #[error("`redis-cli --cluster create` failed ({status}):\n{output}")]
    Create { status: String, output: String },
    #[error("the cluster was not healthy within {within:?}: {last}")]
    NotHealthy { within: Duration, last: String },
    #[error("every node of the cluster was killed")]
    AllKilled,
    #[error("no node of this cluster listens on port {0}")]
    UnknownNode(u16),
    #[error("127.0.0.1:{port} answered `{command}` with {reason}")]
    Answer {
        port: u16,
        command: &'static str,
        reason: String,
    },
}

/// One node of a [`LocalCluster`], as it was started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub port: u16,
    /// The cluster bus port (`cluster-port`), chosen free like `port`.
    pub bus_port: u16,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
    /// Its cluster node id (`CLUSTER MYID`).
    pub id: String,
    /// For a replica, the port of the master it was created to copy; a
    /// failover changes roles, which [`LocalCluster::view`] tells.
    pub replica_of: Option<u16>,
    pub pid: u32,
}

/// A private Redis Cluster of `redis-server` children on free loopback
/// ports, with their data in a temp dir, every child killed when dropped.
pub struct LocalCluster {
    nodes: Vec<ClusterNode>,
    /// Parallel to `nodes`; `None` once killed.
    children: Vec<Option<Child>>,
    dir: PathBuf,
}

impl LocalCluster {
    /// Starts the nodes, creates the cluster (`redis-cli --cluster create`
    /// from three masters on, which refuses fewer; `CLUSTER ADDSLOTSRANGE`,
    /// `MEET` and `REPLICATE` below that) and waits until it is healthy.
    /// Bounded: each node answers within 10 s, creation takes at most 30 s,
    /// and health comes within 20 s more. It takes about 2 s on loopback,
    /// most of it the 2 s a new master waits before it says
    /// `cluster_state:ok` (Redis's `CLUSTER_WRITABLE_DELAY`).
    pub fn start(options: &ClusterOptions) -> Result<Self, LocalClusterError> {
        if options.masters == 0 {
            return Err(LocalClusterError::NoMasters);
        }
        let count = options.masters * if options.replicas { 2 } else { 1 };
        let dir = unique_dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| io(format!("cannot create {}", dir.display()), e))?;
        let mut me = Self {
            nodes: Vec::new(),
            children: Vec::new(),
            dir,
        };
        for _ in 0..count {
            let (node, child) = me.spawn_node(options)?;
            me.nodes.push(node);
            me.children.push(Some(child));
        }
        if options.masters >= 3 {
            me.create_with_cli(options)?;
        } else {
            me.create_by_hand(options.masters)?;
        }
        me.wait_ready(READY_WAIT)?;
        for i in 0..me.nodes.len() {
            let view = cluster_nodes(me.nodes[i].port)?;
            let master_id = view
                .iter()
                .find(|v| v.port == me.nodes[i].port)
                .and_then(|v| v.master_id.clone());
            me.nodes[i].replica_of =
                master_id.and_then(|id| me.nodes.iter().find(|n| n.id == id).map(|n| n.port));
        }
        Ok(me)
    }

    /// `redis://127.0.0.1:<port>` of each master as created that still runs.
    pub fn seeds(&self) -> Vec<String> {
        let running =
            |(n, c): &(&ClusterNode, &Option<Child>)| n.replica_of.is_none() && c.is_some();
        let nodes = self.nodes.iter().zip(&self.children);
        nodes.filter(running).map(|(n, _)| n.url.clone()).collect()
    }

    /// Every node, as started, killed ones too.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The ports of the nodes not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        let nodes = self.nodes.iter().zip(&self.children);
        nodes
            .filter(|(_, c)| c.is_some())
            .map(|(n, _)| n.port)
            .collect()
    }

    /// Kills the node on `port` with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self, port: u16) -> Result<(), LocalClusterError> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .ok_or(LocalClusterError::UnknownNode(port))?;
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// The cluster as the first live node sees it.
    pub fn view(&self) -> Result<Vec<NodeView>, LocalClusterError> {
        cluster_nodes(self.any_live()?)
    }

    /// The port of the master serving `slot`, as the first live node sees it.
    pub fn master_of_slot(&self, slot: u16) -> Result<u16, LocalClusterError> {
        let port = self.any_live()?;
        let view = cluster_nodes(port)?;
        let owner = view
            .iter()
            .find(|v| v.master && v.slots.iter().any(|r| r.contains(&slot)));
        owner
            .map(|v| v.port)
            .ok_or_else(|| LocalClusterError::Answer {
                port,
                command: "CLUSTER NODES",
                reason: format!("no master for slot {slot}"),
            })
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`), hash tags included.
    pub fn slot_of_key(&self, key: &str) -> Result<u16, LocalClusterError> {
        let port = self.any_live()?;
        ask(
            port,
            "CLUSTER KEYSLOT",
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
    }

    fn any_live(&self) -> Result<u16, LocalClusterError> {
        let live = self.live_ports();
        live.first().copied().ok_or(LocalClusterError::AllKilled)
    }

    /// Starts one node on free ports and waits until it answers PING,
    /// trying other ports when it exits at start-up.
    fn spawn_node(
        &self,
        options: &ClusterOptions,
    ) -> Result<(ClusterNode, Child), LocalClusterError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let [port, bus_port] = free_ports()?;
            let data = self.dir.join(port.to_string());
            std::fs::create_dir_all(&data)
                .map_err(|e| io(format!("cannot create {}", data.display()), e))?;
            // Its log, and what it says before it has one (a bad argument).
            let log = node_log(&self.dir, port);
            let out = std::fs::File::create(&log)
                .map_err(|e| io(format!("cannot create {}", log.display()), e))?;
            let err = out
                .try_clone()
                .map_err(|e| io("cannot share a file".into(), e))?;
            let mut child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port.to_string(),
                ])
                .arg("--cluster-config-file")
                .arg(self.dir.join(format!("nodes-{port}.conf")))
                .args([
                    "--cluster-node-timeout",
                    &options.node_timeout.as_millis().to_string(),
                ])
                // A replica copies its master at once rather than after the
                // default 5 s that wait for more replicas to share one copy.
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&data)
                .args(&options.extra)
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => LocalClusterError::NotInstalled {
                        program: "redis-server",
                        package: "redis-server",
                    },
                    _ => io("cannot start redis-server".into(), e),
                })?;
            let started = wait_pong(&mut child, port, &log)
                .and_then(|()| ask(port, "CLUSTER MYID", redis::cmd("CLUSTER").arg("MYID")));
            match started {
                Ok(id) => {
                    let node = ClusterNode {
                        port,
                        bus_port,
                        url: format!("redis://127.0.0.1:{port}"),
                        id,
                        replica_of: None,
                        pid: child.id(),
                    };
                    return Ok((node, child));
                }
                Err(LocalClusterError::NodeExited { .. }) if tries < NODE_TRIES => continue,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            }
        }
    }

    /// `redis-cli --cluster create`, its output kept in the temp dir for
    /// the error, bounded by [`CREATE_WAIT`].
    fn create_with_cli(&mut self, options: &ClusterOptions) -> Result<(), LocalClusterError> {
        let out_path = self.dir.join("create.log");
        let out = std::fs::File::create(&out_path)
            .map_err(|e| io(format!("cannot create {}", out_path.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| io("cannot share a file".into(), e))?;
        let mut cmd = std::process::Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        cmd.args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        if options.replicas {
            cmd.args(["--cluster-replicas", "1"]);
        }
        cmd.arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LocalClusterError::NotInstalled {
                program: "redis-cli",
                package: "redis-tools",
            },
            _ => io("cannot start redis-cli".into(), e),
        })?;
        let deadline = Instant::now() + CREATE_WAIT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => break status.to_string(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break format!("still running after {CREATE_WAIT:?}");
                }
                Err(e) => break e.to_string(),
            }
        };
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        Err(LocalClusterError::Create { status, output })
    }

    /// What `redis-cli` does, for fewer than three masters: slots in equal
    /// shares, one config epoch each, every node met, replica `i` copying
    /// master `i` once it knows it.
    fn create_by_hand(&mut self, masters: usize) -> Result<(), LocalClusterError> {
        let share = usize::from(SLOTS).div_ceil(masters);
        for (i, node) in self.nodes.iter().take(masters).enumerate() {
            let first = i * share;
            let last = (first + share).min(usize::from(SLOTS)) - 1;
            let add = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .clone();
            ask::<()>(node.port, "CLUSTER ADDSLOTSRANGE", &add)?;
            let epoch = redis::cmd("CLUSTER")
                .arg("SET-CONFIG-EPOCH")
                .arg(i + 1)
                .clone();
            ask::<()>(node.port, "CLUSTER SET-CONFIG-EPOCH", &epoch)?;
        }
        let first = self.nodes[0].port;
        for node in &self.nodes[1..] {
            let meet = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port)
                .arg(node.bus_port)
                .clone();
            ask::<()>(first, "CLUSTER MEET", &meet)?;
        }
        let deadline = Instant::now() + CREATE_WAIT;
        for i in masters..self.nodes.len() {
            let (replica, master) = (&self.nodes[i], &self.nodes[i - masters]);
            let replicate = redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(&master.id)
                .clone();
            // A replica refuses a master that gossip has not brought it yet.
            while let Err(e) = ask::<()>(replica.port, "CLUSTER REPLICATE", &replicate) {
                if Instant::now() >= deadline {
                    return Err(e);
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }

    /// [`wait_healthy`] over the live nodes, failing early when one exits.
    fn wait_ready(&mut self, within: Duration) -> Result<(), LocalClusterError> {
        let ports = self.live_ports();
        let (nodes, dir) = (&self.nodes, &self.dir);
        let children = &mut self.children;
        wait_until_healthy(&ports, within, || {
            for (node, child) in nodes.iter().zip(children.iter_mut()) {
                if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
                    let log = log_tail(&node_log(dir, node.port));
                    return Err(LocalClusterError::NodeExited {
                        port: node.port,
                        status,
                        log,
                    });
                }
            }
            Ok(())
        })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits, at most [`NODE_START_WAIT`], until the child on `port` answers PING.
fn wait_pong(child: &mut Child, port: u16, log: &Path) -> Result<(), LocalClusterError> {
    let deadline = Instant::now() + NODE_START_WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let log = log_tail(log);
            return Err(LocalClusterError::NodeExited { port, status, log });
        }
        if ask::<String>(port, "PING", &redis::cmd("PING")).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(LocalClusterError::NodeSilent {
        port,
        within: NODE_START_WAIT,
    })
}

/// Where a node writes its log.
fn node_log(dir: &Path, port: u16) -> PathBuf {
    dir.join(port.to_string()).join("redis.log")
}

/// The last lines of a node's log, which say why it stopped.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("({}: {e})", log.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// A node's port and bus port, both free and never Redis's default 6379:
/// three listeners held at once have distinct ports, at most one of them 6379.
fn free_ports() -> Result<[u16; 2], LocalClusterError> {
    let no_port = |e| io("cannot find a free port".into(), e);
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(std::net::TcpListener::bind("127.0.0.1:0").map_err(no_port)?);
    }
    let mut ports = Vec::new();
    for listener in &listeners {
        ports.push(listener.local_addr().map_err(no_port)?.port());
    }
    ports.retain(|&p| p != 6379);
    Ok([ports[0], ports[1]])
}

/// A temp dir of its own for each cluster of this process.
fn unique_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("sagaflow-cluster-{}-{n}", std::process::id()))
}

fn io(what: String, source: std::io::Error) -> LocalClusterError {
    LocalClusterError::Io { what, source }
}
