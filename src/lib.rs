//! sagaflow: a saga orchestrator daemon over Redis Streams.
//!
//! A starter adds an entry to a trigger stream; the daemon runs the saga it
//! names, step by step, by sending commands to the handlers' streams and
//! reading their replies, and undoes completed steps in reverse order when a
//! step fails for good. Every transition goes to the `saga:events` stream.
//!
//! ```text
//!   starters ──XADD──▶ mission:start ──XREADGROUP──▶ ┌──────────────────────┐
//!                                                    │ daemon (engine)      │
//!   handlers ◀──XREADGROUP── <step>:commands ◀─XADD──│  one task per saga,  │
//!       │                                            │  saga::apply decides │
//!       └──XADD──▶ saga:replies:<node> ──XREAD──────▶│  store writes state, │
//!                                                    │  commands and events │
//!                  saga:events ◀──XADD───────────────│  in one script       │
//!                                                    └──────────────────────┘
//! ```
//!
//! Modules, each using only those listed after it:
//! - [`cli`]: one module per subcommand; `main` only calls [`cli::main`].
//! - [`engine`]: the daemon's driver, the only part that talks to Redis for
//!   sagas: intake of starts, saga tasks, the reply reader, atomic writes.
//! - [`handler`]: the handler SDK and the simulated mission services; it
//!   shares only [`protocol`], [`streams`] and [`retry`] with the daemon.
//! - [`store`]: the Lua scripts that change sagas, leases and streams
//!   atomically, and bounded reads; the only code that knows the scripts.
//! - [`saga`]: the saga rules as a pure state machine (no IO, no clock).
//! - [`definition`]: saga YAML, its checks with `file:line:column`, templates.
//! - [`config`]: every default setting in one place.
//! - [`streams`]: Redis Streams plumbing shared by both sides.
//! - [`connection`]: connections to one Redis or a Redis Cluster, alike.
//! - [`retry`]: the one retry policy for Redis calls, on both sides: which
//!   errors may pass, capped jittered backoff, one log line per outage.
//! - [`protocol`]: the wire contract's fields, ids and entries.

pub mod cli;
pub mod config;
pub mod connection;
pub mod definition;
pub mod engine;
pub mod handler;
pub mod http;
pub mod local_redis;
pub mod operator;
pub mod protocol;
pub mod retry;
pub mod saga;
pub mod store;
pub mod streams;
pub mod telemetry;
