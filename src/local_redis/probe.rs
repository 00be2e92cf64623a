//! Questions to the nodes of a Redis Cluster, each on a fresh bounded
//! connection: how one node sees the cluster, and whether all are healthy.

use super::LocalClusterError;
use std::time::{Duration, Instant};

/// The slots of a Redis Cluster: every one must be served for `cluster_state:ok`.
pub const SLOTS: u16 = 16384;
/// How often a node is asked again while waiting.
pub(super) const POLL: Duration = Duration::from_millis(50);
/// Each question to one node: it is on loopback and answers at once, or it is dead.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// One line of `CLUSTER NODES`: a node as another node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Flagged `fail` or `fail?` by the node asked.
    pub failed: bool,
    /// For a replica, the id of its master.
    pub master_id: Option<String>,
    pub slots: Vec<std::ops::RangeInclusive<u16>>,
}

impl NodeView {
    pub fn slot_count(&self) -> usize {
        self.slots.iter().map(|r| r.len()).sum()
    }
}

/// Waits, at most `within`, until the nodes on `ports` all say the cluster
/// is healthy: `cluster_state:ok`, every slot served by a master that is
/// one of `ports` and not flagged failed, and each replica's link to its
/// master up. After a master is killed, the others take it for failed after
/// `cluster-node-timeout` and its replica is promoted: this returns then.
pub fn wait_healthy(ports: &[u16], within: Duration) -> Result<(), LocalClusterError> {
    wait_until_healthy(ports, within, || Ok(()))
}

pub(super) fn wait_until_healthy(
    ports: &[u16],
    within: Duration,
    mut alive: impl FnMut() -> Result<(), LocalClusterError>,
) -> Result<(), LocalClusterError> {
    let deadline = Instant::now() + within;
    loop {
        alive()?;
        let unhealthy = ports.iter().find_map(|&port| match health(port, ports) {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        });
        let Some(last) = unhealthy else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(LocalClusterError::NotHealthy { within, last });
        }
        std::thread::sleep(POLL);
    }
}

/// Whether the node on `port` sees a healthy cluster of the nodes on `live`.
fn health(port: u16, live: &[u16]) -> Result<(), LocalClusterError> {
    let unhealthy = |command, reason: String| {
        Err(LocalClusterError::Answer {
            port,
            command,
            reason,
        })
    };
    let info: String = ask(port, "CLUSTER INFO", redis::cmd("CLUSTER").arg("INFO"))?;
    if !has_line(&info, "cluster_state:ok") {
        let state = info.lines().find(|l| l.starts_with("cluster_state:"));
        let state = state.unwrap_or("no cluster_state").trim().to_owned();
        return unhealthy("CLUSTER INFO", state);
    }
    let view = cluster_nodes(port)?;
    let serving = |v: &&NodeView| v.master && !v.failed && live.contains(&v.port);
    let served: usize = view.iter().filter(serving).map(NodeView::slot_count).sum();
    if served != usize::from(SLOTS) {
        let reason = format!("{served} of {SLOTS} slots served by live masters");
        return unhealthy("CLUSTER NODES", reason);
    }
    // Every master of these clusters serves slots: one that serves none is a
    // replica this node does not know as one yet.
    let unknown = view
        .iter()
        .find(|v| v.master && live.contains(&v.port) && v.slot_count() == 0);
    if let Some(v) = unknown {
        let reason = format!("node {} is not yet known as a replica", v.port);
        return unhealthy("CLUSTER NODES", reason);
    }
    let info = redis::cmd("INFO").arg("replication").clone();
    let replication: String = ask(port, "INFO replication", &info)?;
    if has_line(&replication, "role:slave") && !has_line(&replication, "master_link_status:up") {
        let reason = "a replica whose link to its master is down".to_owned();
        return unhealthy("INFO replication", reason);
    }
    Ok(())
}

/// Whether an `INFO`-like text has this line (its lines end in `\r\n`).
fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.trim() == line)
}

/// `CLUSTER NODES` of the node on `port`, parsed.
pub fn cluster_nodes(port: u16) -> Result<Vec<NodeView>, LocalClusterError> {
    let text: String = ask(port, "CLUSTER NODES", redis::cmd("CLUSTER").arg("NODES"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            parse_node_line(line).ok_or_else(|| LocalClusterError::Answer {
                port,
                command: "CLUSTER NODES",
                reason: format!("a line not understood: {line}"),
            })
        })
        .collect()
}

/// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`;
/// slots are `n`, `a-b`, or `[n->-id]` while migrating (skipped).
fn parse_node_line(line: &str) -> Option<NodeView> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (id, addr, flags, master) = (
        fields.first()?,
        fields.get(1)?,
        fields.get(2)?,
        fields.get(3)?,
    );
    let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
    let flags: Vec<&str> = flags.split(',').collect();
    let mut slots = Vec::new();
    for slot in fields.iter().skip(8).filter(|s| !s.starts_with('[')) {
        let (a, b) = slot.split_once('-').unwrap_or((slot, slot));
        slots.push(a.parse().ok()?..=b.parse().ok()?);
    }
    Some(NodeView {
        id: (*id).to_owned(),
        port,
        master: flags.contains(&"master"),
        failed: flags.contains(&"fail") || flags.contains(&"fail?"),
        master_id: (*master != "-").then(|| (*master).to_owned()),
        slots,
    })
}

/// One command to the node on `port`, on a fresh connection bounded by [`ASK_TIMEOUT`].
pub(super) fn ask<T: redis::FromRedisValue>(
    port: u16,
    command: &'static str,
    cmd: &redis::Cmd,
) -> Result<T, LocalClusterError> {
    let answer = |reason: String| LocalClusterError::Answer {
        port,
        command,
        reason,
    };
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .map_err(|e| answer(e.to_string()))?;
    let mut conn = client
        .get_connection_with_timeout(ASK_TIMEOUT)
        .map_err(|e| answer(e.to_string()))?;
    conn.set_read_timeout(Some(ASK_TIMEOUT))
        .map_err(|e| answer(e.to_string()))?;
    conn.set_write_timeout(Some(ASK_TIMEOUT))
        .map_err(|e| answer(e.to_string()))?;
    cmd.query(&mut conn).map_err(|e| answer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_with_slots_and_a_migrating_one() {
        let line = "07c3 127.0.0.1:30004@31004 myself,master - 0 1426238317239 4 connected \
                    0-5460 5462 [5461->-e7d1eecce]";
        let view = parse_node_line(line).unwrap();
        assert_eq!(view.port, 30004);
        assert!(view.master && !view.failed);
        assert_eq!(view.master_id, None);
        assert_eq!(view.slots, vec![0..=5460, 5462..=5462]);
        assert_eq!(view.slot_count(), 5462);
    }

    #[test]
    fn a_failed_master_and_a_replica() {
        let failed = "67ed 127.0.0.1:30002@31002 master,fail - 1426238316232 0 2 disconnected";
        let view = parse_node_line(failed).unwrap();
        assert!(view.master && view.failed && view.slots.is_empty());
        let replica = "292f 127.0.0.1:30005@31005 slave 67ed 0 1426238316232 5 connected";
        let view = parse_node_line(replica).unwrap();
        assert!(!view.master && !view.failed);
        assert_eq!(view.master_id.as_deref(), Some("67ed"));
    }

    #[test]
    fn a_line_cut_short_is_not_understood() {
        assert_eq!(parse_node_line("07c3 127.0.0.1:30004@31004"), None);
        assert_eq!(
            parse_node_line("07c3 nowhere master - 0 0 1 connected"),
            None
        );
    }
}
