//! On a cluster, the relay workers: one per partition, each relaying its
//! partition's outbox ([`crate::store::relay`]) as soon as a transition of
//! this daemon wrote to it, and every [`SWEEP_EVERY`] whatever is older
//! than that (left by a daemon that died between a write and its relay, or
//! by a relay that failed). On one Redis there is nothing to relay: a
//! transition makes its writes itself.

use super::{pause, Shared};
use crate::retry::Outage;
use crate::store::keys::{Keys, Partition, PARTITIONS};
use crate::store::relay::{self, RELAY_BATCH};
use crate::telemetry::metrics;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How often every partition's outbox is looked at for entries that the
/// daemons that wrote them did not relay.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Asks the relay worker of a partition to run now; remembers which of the
/// streams relayed into were found to be streams.
pub(crate) struct Relays {
    wake: Vec<Notify>,
    /// Checked once each ([`crate::store::transition::check_streams`]):
    /// names fixed by the catalog and the settings, so a few.
    streams: Mutex<HashSet<String>>,
}

impl Relays {
    pub fn new() -> Self {
        Self {
            wake: (0..PARTITIONS).map(|_| Notify::new()).collect(),
            streams: Mutex::default(),
        }
    }

    /// Of `streams`, those not found to be streams yet.
    pub fn unchecked(&self, mut streams: Vec<String>) -> Vec<String> {
        let known = self.streams.lock().expect("streams lock");
        streams.retain(|s| !known.contains(s));
        streams
    }

    pub fn found_streams(&self, streams: Vec<String>) {
        self.streams.lock().expect("streams lock").extend(streams);
    }

    pub fn poke(&self, p: Partition) {
        self.wake[usize::from(p.index())].notify_one();
    }
}

/// Starts one relay worker per partition.
pub(super) fn start(shared: &Arc<Shared>) {
    for p in Partition::all() {
        shared.tracker.spawn(run(shared.clone(), p));
    }
}

async fn run(shared: Arc<Shared>, p: Partition) {
    let Some(relays) = shared.relays.as_ref() else {
        return;
    };
    let keys = Keys::of(&shared.settings);
    let mut conn = shared.conn.clone();
    let outage = Outage::new(format!("relaying the outbox of partition {}", p.index()))
        .metered(metrics::redis_meter("relay"));
    let wake = &relays.wake[usize::from(p.index())];
    loop {
        let swept = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = wake.notified() => false,
            _ = tokio::time::sleep(SWEEP_EVERY) => true,
        };
        // A sweep leaves the newest entries to the daemons that wrote them.
        let older_than = swept.then(|| {
            shared
                .now_ms()
                .saturating_sub(SWEEP_EVERY.as_millis() as u64)
        });
        loop {
            let replicas = shared.settings.wait_replicas;
            match relay::relay(&mut conn, &keys, p, replicas, older_than).await {
                Ok(done) => {
                    outage.recovered();
                    for (entry, reason) in &done.refused {
                        tracing::error!(partition = p.index(), %entry, %reason, "an outbox entry cannot be relayed; removed");
                        metrics::dead_lettered("relay");
                    }
                    if done.unconfirmed {
                        tracing::warn!(
                            partition = p.index(),
                            replicas,
                            "replicas did not confirm the outbox in time; relayed later"
                        );
                        if !pause(&shared.shutdown, SWEEP_EVERY).await {
                            return;
                        }
                        continue;
                    }
                    if done.entries < RELAY_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    outage.failed(&e);
                    if !pause(&shared.shutdown, Duration::from_millis(200)).await {
                        return;
                    }
                }
            }
        }
    }
}
