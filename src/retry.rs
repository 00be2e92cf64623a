//! The one retry policy for Redis calls, shared by the daemon and the handler
//! SDK: which failures may pass ([`is_permanent`] says which never will), how
//! long to wait between tries ([`Policy`], [`Backoff`]: doubling from a first
//! delay up to a cap, with jitter), and how a run of failures is told
//! ([`Outage`]: one line when it starts, one when it ends, not one per try).
//! [`retry`] puts them together for one call.
//!
//! It knows nothing of sagas, handlers or metrics: the daemon passes its
//! counters in ([`Meter`]).

use redis::{RedisError, RedisResult};
use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Error codes after which the same call may succeed later: the server is
/// busy, loading, failing over, out of memory (trimming and expiry free it),
/// or refuses this client (an ACL or a password an operator can fix). A
/// refusal keeps everything waiting rather than throwing work away.
const TRANSIENT_CODES: [&str; 15] = [
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "MOVED",
    "ASK",
    "OOM",
    "NOREPLICAS",
    "MISCONF",
    "NOAUTH",
    "NOPERM",
    "NOSCRIPT",
    "WRONGPASS",
];

/// True when a failed call can never succeed as it is, so retrying it only
/// holds up the work behind it: the server refused the call itself (a key
/// of the wrong type, a script error, an argument Redis rejects), or the
/// reply cannot be read as what the call expects. Connection failures,
/// timeouts and the codes of a server that is busy, failing over or full
/// are transient.
pub fn is_permanent(e: &RedisError) -> bool {
    use redis::ErrorKind;
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        return false;
    }
    if let Some(code) = e.code() {
        if TRANSIENT_CODES.contains(&code) {
            return false;
        }
        // A server at its client limit says so under the generic code.
        if code == "ERR"
            && e.detail()
                .is_some_and(|d| d.contains("max number of clients"))
        {
            return false;
        }
        return true;
    }
    matches!(
        e.kind(),
        ErrorKind::UnexpectedReturnType | ErrorKind::Client | ErrorKind::Extension
    )
}

/// Gives up on nothing: for connecting, where what refuses a connection (a
/// password, an ACL, a server still loading) is mended outside, and a
/// process started before its Redis waits for it.
fn never(_: &RedisError) -> bool {
    false
}

/// How one kind of Redis call is retried: the wait after its first failure,
/// the longest wait (each failure doubles the wait up to it), and which
/// errors end the retrying. The caps differ by who waits and how many of
/// them there are; each named policy says why.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// The wait after the first failure of a run.
    pub first: Duration,
    /// The longest wait between two tries: a Redis that comes back is used
    /// again within this long.
    pub cap: Duration,
    /// Errors after which [`retry`] stops and returns [`Tried::Refused`].
    pub gives_up_on: fn(&RedisError) -> bool,
}

impl Policy {
    /// The daemon's short calls a saga waits on: transition writes,
    /// idempotency claims, dead-lettering a start, reading a record back.
    /// A first retry after 50 ms hides a failover's blip; the 2 s cap keeps
    /// the thousands of sagas that wait on one outage from flooding the
    /// Redis that comes back, while none waits much longer than it was away.
    pub const WRITES: Policy = Policy {
        first: Duration::from_millis(50),
        cap: Duration::from_secs(2),
        gives_up_on: is_permanent,
    };

    /// Reaching Redis again: the daemon's connection at its start and the
    /// connections of its blocking readers (starts, replies, operators'
    /// requests), one per reader, not one per saga. The cap is short on
    /// purpose (1 s): a daemon that waits longer than Redis is away only
    /// adds to the outage, and a reply read late holds its saga's timeout.
    /// Connecting gives up on nothing.
    pub const RECONNECT: Policy = Policy {
        first: Duration::from_millis(100),
        cap: Duration::from_secs(1),
        gives_up_on: never,
    };

    /// The handler SDK's calls: replies, records, acknowledgements, reads of
    /// command streams. Handler processes are many (every service, every
    /// replica) and a late reply only costs its command's time, so they back
    /// off further, to 5 s, than the daemon does.
    pub const HANDLER: Policy = Policy {
        first: Duration::from_millis(100),
        cap: Duration::from_secs(5),
        gives_up_on: is_permanent,
    };
}

/// The waits between the tries of one call (or one loop): the first delay
/// of its [`Policy`], doubled at each failure up to the cap, back to the
/// first after a success. Each wait is jittered down by up to half (it lies
/// within `[nominal / 2, nominal]`), so that the many tasks an outage stops
/// together do not retry together; the cap stays the longest wait.
#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    /// The wait before jitter after the last failure; `None` before the
    /// first failure of a run.
    nominal: Option<Duration>,
    /// State of the jitter's generator (splitmix64).
    rng: u64,
}

impl Backoff {
    /// A backoff whose jitter differs from every other one's.
    pub fn new(policy: Policy) -> Self {
        use std::hash::BuildHasher;
        // Random keys per process, a new pair per call: no dependency on a
        // random number crate for what need not be strong.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        Self::seeded(policy, seed)
    }

    /// A backoff whose jitter is the same at every run, for tests.
    pub fn seeded(policy: Policy, seed: u64) -> Self {
        Self {
            policy,
            nominal: None,
            rng: seed,
        }
    }

    /// The wait before the next try, after a failure.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = match self.nominal {
            None => self.policy.first,
            Some(last) => last.saturating_mul(2),
        }
        .min(self.policy.cap);
        self.nominal = Some(nominal);
        let spread = (nominal / 2).as_nanos() as u64;
        let off = match spread {
            0 => 0,
            spread => self.next_random() % (spread + 1),
        };
        nominal - Duration::from_nanos(off)
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.nominal = None;
    }

    /// Waits [`Backoff::next_delay`] unless `shutdown` comes first; false if
    /// it did.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Counters an [`Outage`] moves: `failed(label)` at every failed call,
/// `recovered(label)` when a run of failures ends. The daemon's metrics
/// give them (`crate::telemetry::metrics::redis_meter`); the handler SDK
/// counts nothing.
#[derive(Clone, Copy, Debug)]
pub struct Meter {
    pub label: &'static str,
    pub failed: fn(&'static str),
    pub recovered: fn(&'static str),
}

/// Whether one kind of call is failing, so that a run of failures is logged
/// once when it starts (`warn`, with its first error) and once when it ends
/// (`info`), and every failure in between only at `debug`. Shared, it tells
/// one outage once however many tasks wait on it (the daemon's saga writes).
#[derive(Debug)]
pub struct Outage {
    /// What fails, as a log line says it: "writing saga transitions".
    what: Cow<'static, str>,
    failing: AtomicBool,
    meter: Option<Meter>,
}

impl Outage {
    pub fn new(what: impl Into<Cow<'static, str>>) -> Self {
        Self {
            what: what.into(),
            failing: AtomicBool::new(false),
            meter: None,
        }
    }

    /// The same, counted on `meter`.
    pub fn metered(self, meter: Meter) -> Self {
        Self {
            meter: Some(meter),
            ..self
        }
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// A try failed for a reason that may pass.
    pub fn failed(&self, error: &dyn Display) {
        if let Some(m) = self.meter {
            (m.failed)(m.label);
        }
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "{} fails; retrying", self.what);
        } else {
            tracing::debug!(%error, "{} still fails", self.what);
        }
    }

    /// A call was refused for good: counted as a failed call, but it is no
    /// outage (its caller says what becomes of it).
    pub fn refused(&self) {
        if let Some(m) = self.meter {
            (m.failed)(m.label);
        }
    }

    /// A try succeeded: ends the run of failures, if any.
    pub fn recovered(&self) {
        // Read first: a shared outage sees every success, and most find
        // nothing to end.
        if self.is_failing() && self.failing.swap(false, Ordering::Relaxed) {
            if let Some(m) = self.meter {
                (m.recovered)(m.label);
            }
            tracing::info!("{} works again", self.what);
        }
    }

    /// One round of a loop that retries at its own pace (a lease renewal,
    /// a housekeeping round): [`Outage::recovered`] or [`Outage::failed`].
    pub fn record<T, E: Display>(&self, result: &Result<T, E>) {
        match result {
            Ok(_) => self.recovered(),
            Err(error) => self.failed(error),
        }
    }
}

/// How a retried call ended.
#[derive(Debug)]
pub enum Tried<T> {
    Done(T),
    /// Redis refused the call in a way the policy gives up on (for most,
    /// [`is_permanent`]): trying it again cannot help, and would hold up the
    /// work behind it.
    Refused(RedisError),
    /// Shutdown was requested while the call was still failing.
    Stopped,
}

/// Runs `op` until it succeeds or fails in a way `policy` gives up on,
/// waiting out the [`Backoff`] of `policy` after each other failure and
/// telling them to `outage`; stops trying when `shutdown` is cancelled
/// (never in the middle of a try).
pub async fn retry<T, F, Fut>(
    shutdown: &CancellationToken,
    policy: Policy,
    outage: &Outage,
    mut op: F,
) -> Tried<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        match op().await {
            Ok(value) => {
                outage.recovered();
                return Tried::Done(value);
            }
            Err(e) if (policy.gives_up_on)(&e) => {
                outage.refused();
                return Tried::Refused(e);
            }
            Err(e) => {
                outage.failed(&e);
                if !backoff.wait(shutdown).await {
                    return Tried::Stopped;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
