//! The daemon's settings, with every default in one place, and how they
//! are layered: built-in defaults, then the configuration file, then
//! `SAGAFLOW_*` environment variables, then command-line flags
//! ([`layers`]).

pub mod layers;
mod redis_url;

pub use redis_url::{client, redacted, InvalidRedisUrl, RedisUrl, MASK};

use std::path::PathBuf;
use std::time::Duration;

/// Everything the daemon needs to know besides the saga definitions. Its
/// `Debug` shows the Redis URL [`redacted`].
#[derive(Clone)]
pub struct Settings {
    pub redis_url: String,
    /// One server, a cluster, or asked of the server at start-up.
    pub redis_mode: crate::connection::RedisMode,
    /// On a cluster: the replicas each master must have passed a
    /// transition's record (and each relayed write) to before it is relayed
    /// (and removed from the outbox), with `WAIT`: what makes a failover
    /// lose no saga and double no write. 0 waits for none.
    pub wait_replicas: usize,
    pub sagas_dir: PathBuf,
    /// Names this daemon instance: its trigger consumer, and the start of
    /// its owner tokens and reply streams.
    pub node_id: String,
    /// Trigger stream read even when no definition binds it, for starts
    /// that name their saga.
    pub trigger_stream: String,
    pub trigger_group: String,
    pub events_stream: String,
    /// Where operators' requests about sagas (cancel, retry, skip,
    /// abandon) are written; every daemon reads it.
    pub control_stream: String,
    /// Where signals for sagas' `wait` steps are written (`sagaflow
    /// signal`, the HTTP API, any service allowed to); every daemon reads
    /// it through the daemons' consumer group (`trigger_group`).
    pub signals_stream: String,
    /// Approximate cap on the events stream (`XADD MAXLEN ~`).
    pub events_maxlen: usize,
    /// Cap on each trigger stream, by count: starts the daemon group has
    /// finished with are trimmed beyond it (and by age, see
    /// `stream_retention`); starts not finished with never are.
    pub triggers_maxlen: usize,
    /// Approximate cap on the control stream of operators' requests.
    pub control_maxlen: usize,
    /// Cap on the signals stream, by count: on write by `sagaflow signal`
    /// and the HTTP API (`MAXLEN ~`), and by the daemons' housekeeping,
    /// which never trims a signal the daemon group has not finished with.
    pub signals_maxlen: usize,
    /// Reply streams are `<prefix><node_id>`.
    pub reply_stream_prefix: String,
    /// Every key the store keeps begins with it (see
    /// [`crate::store::keys`]).
    pub saga_key_prefix: String,
    /// How long a saga's record outlives its end.
    pub retention: Duration,
    /// How long a start's idempotency key is remembered.
    pub idempotency_retention: Duration,
    /// How long a reply stream outlives the last daemon that read it (at
    /// least a minute: a live daemon renews it every few seconds).
    pub reply_retention: Duration,
    /// How long entries of the command, event and trigger streams are
    /// kept. A command stream keeps its entries at least a little past the
    /// longest timeout of the commands sent to it, and a start not yet
    /// taken by this daemon group is never trimmed.
    pub stream_retention: Duration,
    /// Approximate cap on each command stream (`XADD MAXLEN ~`): a bound on
    /// memory when handlers are down; commands beyond it are lost and their
    /// attempts time out.
    pub commands_maxlen: usize,
    /// Deliveries after which a start that never gets processed is moved to
    /// the dead-letter stream.
    pub max_deliveries: u64,
    pub dead_letter_stream: String,
    /// Sagas driven at once by this daemon; starts wait beyond it. Each
    /// in-flight saga costs a few KiB and one idle task.
    pub max_in_flight: usize,
    /// Entries taken per read of the trigger and reply streams.
    pub read_batch: usize,
    /// `BLOCK` of the blocking reads: short enough that a stop is prompt.
    pub block: Duration,
    pub redis_response_timeout: Duration,
    /// How long a stop waits for in-flight writes before giving up.
    pub shutdown_grace: Duration,
    /// How long a daemon's lease on its sagas lasts without renewal. A
    /// daemon that dies has its sagas taken over by another within about
    /// this long; it renews every third of it.
    pub lease_ttl: Duration,
    /// How often a daemon looks for daemons whose lease ran out.
    pub takeover_every: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `none` for
    /// nowhere.
    pub http_addr: String,
    /// `json`, `pretty`, or `auto` (pretty on a terminal, json otherwise).
    pub log_format: String,
    /// The daemons: every operator's key (`name:secret,...`); requests not
    /// signed with one of them are refused.
    pub operator_keys: crate::protocol::control::OperatorKeys,
    /// The operator commands: the key this operator signs requests with
    /// (`name:secret`).
    pub operator_key: Option<crate::protocol::control::OperatorKey>,
    /// The HTTP API's bearer tokens, as digests (`name:read|write:<sha256
    /// hex>,...`; `sagaflow api-token` makes one).
    pub api_tokens: crate::http::access::ApiTokens,
    /// Who may read through the HTTP API: `token` (a read or write token)
    /// or `open` (anyone reaching `http_addr`).
    pub api_read: crate::http::access::ReadAccess,
    /// The link to a saga's trace the dashboard shows: a URL with
    /// `{trace_id}` in it (Grafana Tempo's explore view, say); empty for
    /// no link.
    pub trace_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_mode: crate::connection::RedisMode::Auto,
            wait_replicas: 0,
            sagas_dir: PathBuf::from("sagas"),
            node_id: crate::protocol::ids::new_uuid_hex(),
            trigger_stream: "mission:start".into(),
            trigger_group: "sagaflow".into(),
            events_stream: "saga:events".into(),
            control_stream: "saga:control".into(),
            signals_stream: "saga:signals".into(),
            events_maxlen: 100_000,
            triggers_maxlen: 100_000,
            control_maxlen: 10_000,
            signals_maxlen: 100_000,
            reply_stream_prefix: "saga:replies:".into(),
            saga_key_prefix: "saga:".into(),
            retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_retention: Duration::from_secs(24 * 3600),
            reply_retention: Duration::from_secs(15 * 60),
            commands_maxlen: 100_000,
            stream_retention: Duration::from_secs(24 * 3600),
            max_deliveries: 5,
            dead_letter_stream: "saga:dead-letter".into(),
            max_in_flight: 10_000,
            read_batch: 256,
            block: Duration::from_secs(1),
            redis_response_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(10),
            takeover_every: Duration::from_secs(1),
            http_addr: "127.0.0.1:9464".into(),
            log_format: "auto".into(),
            operator_keys: Default::default(),
            operator_key: None,
            api_tokens: Default::default(),
            api_read: Default::default(),
            trace_url: String::new(),
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("Settings");
        for (key, value) in layers::shown(self) {
            out.field(key, &value);
        }
        out.finish()
    }
}

impl Settings {
    /// The reply stream of one owner token (`<node_id>.<epoch>`): each
    /// period of a daemon's ownership has its own, so that a daemon never
    /// trims replies that another, which took its former sagas over, has
    /// yet to read.
    pub fn reply_stream(&self, owner: &str) -> String {
        format!("{}{owner}", self.reply_stream_prefix)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_print_no_password() {
        let settings = super::Settings {
            redis_url: "unix:///r.sock?pass=s3cret".into(),
            ..super::Settings::default()
        };
        let debug = format!("{settings:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("unix:///r.sock?pass=***"), "{debug}");
        assert!(debug.contains("lease_ttl"), "{debug}");
    }
}
