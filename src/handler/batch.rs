//! Commands sent together, to keys that may lie in different slots of a
//! Redis Cluster. This is the one place where the SDK tells one Redis from
//! a cluster when it writes.
//!
//! On one Redis a batch is one round trip: a `MULTI` for writes that must
//! be made all together ([`Batch::all_or_in_order`]), a plain pipeline for
//! commands grouped only to save round trips ([`Batch::pipelined`]). A
//! cluster refuses both when their keys span slots (`CROSSSLOT`), so there a
//! batch is cut into runs of consecutive commands on one slot, each run one
//! round trip (a `MULTI` of its own for writes), sent in the order the
//! commands were added, each once the one before it is written. The caller
//! orders the commands so that a crash between two runs leaves a state the
//! contract repairs (see `exchange.rs`: the record, then the replies, then
//! the acknowledgement).
//!
//! A batch remembers the runs written: sent again after a failure (a node
//! failing over, a connection lost), it resumes at the first run not
//! written, so a retry does not write the runs before it twice.

use crate::connection::Conn;
use redis::cluster_routing::Slot;
use redis::{Cmd, RedisResult, Value};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Commands to send together, each with the slot of the key a cluster
/// routes it by.
pub(super) struct Batch {
    commands: Vec<(Slot, Cmd)>,
    /// Writes that must all be made: sent as `MULTI` / `EXEC`.
    atomic: bool,
    /// Commands known to be written: a send resumes after them.
    sent: AtomicUsize,
}

impl Batch {
    /// Writes that must all be made: all or none in one `MULTI` on one
    /// Redis; on a cluster, in the order added, one run of a slot at a time.
    pub(super) fn all_or_in_order() -> Self {
        Self::new(true)
    }

    /// Commands grouped only to save round trips, with no promise that they
    /// are made together: one pipeline on one Redis, one per run on a
    /// cluster.
    pub(super) fn pipelined() -> Self {
        Self::new(false)
    }

    fn new(atomic: bool) -> Self {
        Self {
            commands: Vec::new(),
            atomic,
            sent: AtomicUsize::new(0),
        }
    }

    /// Adds `cmd`, which a cluster routes by `key`.
    pub(super) fn add(&mut self, key: &str, cmd: Cmd) -> &mut Self {
        self.commands.push((Slot::for_key(key), cmd));
        self
    }

    /// Sends what is not yet written; returns the replies of the commands
    /// sent by this call, in order. Stops at the first run that fails: the
    /// runs before it stay written, and the next call starts with it.
    pub(super) async fn send(&self, conn: &mut Conn) -> RedisResult<Vec<Value>> {
        let from = self.sent.load(Ordering::Acquire);
        let mut replies = Vec::with_capacity(self.commands.len() - from);
        for run in runs(&self.commands, from, conn.is_cluster()) {
            let mut pipe = redis::pipe();
            if self.atomic {
                pipe.atomic();
            }
            for (_, cmd) in &self.commands[run.clone()] {
                pipe.add_command(cmd.clone());
            }
            let values: Vec<Value> = pipe.query_async(conn).await?;
            replies.extend(values);
            self.sent.store(run.end, Ordering::Release);
        }
        Ok(replies)
    }
}

/// The round trips that send the commands from `from` on: one for all of
/// them on one Redis; on a cluster, one per run of consecutive commands on
/// one slot.
fn runs(commands: &[(Slot, Cmd)], from: usize, cluster: bool) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (i, (slot, _)) in commands.iter().enumerate().skip(from) {
        match runs.last_mut() {
            Some(run) if !cluster || commands[run.start].0 == *slot => run.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(keys: &[&str]) -> Batch {
        let mut batch = Batch::all_or_in_order();
        for key in keys {
            batch.add(key, redis::cmd("GET").arg(*key).clone());
        }
        batch
    }

    fn only(runs: Vec<Range<usize>>) -> Range<usize> {
        assert_eq!(runs.len(), 1, "{runs:?}");
        runs[0].clone()
    }

    #[test]
    fn consecutive_commands_on_one_slot_make_one_run() {
        // `{g}` tags share a slot; the command stream and the reply stream
        // hash to others.
        let keys = [
            "handler:{g}:done:r",
            "saga:replies:n.e",
            "saga:replies:n.e",
            "resources:commands",
            "handler:{g}:dead-letter",
        ];
        let b = batch(&keys);
        assert_eq!(runs(&b.commands, 0, true), [0..1, 1..3, 3..4, 4..5]);
        assert_eq!(runs(&b.commands, 2, true), [2..3, 3..4, 4..5]);
        assert!(runs(&b.commands, 5, true).is_empty());
        let tagged = batch(&["a{x}", "b{x}", "{x}c"]);
        assert_eq!(only(runs(&tagged.commands, 0, true)), 0..3);
    }

    #[test]
    fn on_one_redis_a_batch_is_one_round_trip() {
        let b = batch(&["handler:{g}:done:r", "saga:replies:n.e", "s:commands"]);
        assert_eq!(only(runs(&b.commands, 0, false)), 0..3);
        assert_eq!(only(runs(&b.commands, 1, false)), 1..3);
        assert!(runs(&b.commands, 3, false).is_empty());
    }
}
