//! The handler side of the wire contract: a small SDK for writing command
//! handlers in Rust, and the simulated mission handlers built on it.
//!
//! A handler is an async function of a [`Command`] and a [`Context`] that
//! returns the step's result or a [`HandlerError`]. The [`Handlers`] runner
//! does the rest of the contract: consumer groups, `start` / `progress` /
//! `completed` / `failed` replies with the handler's own span context,
//! deduplication on `request_id`, deadlines, acknowledgement, recovery of
//! entries a crashed instance left pending, and graceful shutdown. While a
//! handler runs a command that carries `heartbeat_timeout_ms`, the runner
//! sends `heartbeat` replies on its own, one every third of it (at most one
//! per [`MIN_HEARTBEAT_EVERY`]), so that a long handler is not taken for a
//! dead one.
//!
//! Commands are untrusted input. Replies go only to the daemon's reply
//! streams ([`ReplyStreams`], under [`Handlers::reply_stream_prefix`]), so
//! a forged `reply_stream` cannot make a handler write to another key.
//! `deadline_ms` is read on Redis's clock (`TIME`, see [`RESYNC_EVERY`]),
//! as the daemon writes it. A command that can never be answered
//! (malformed, a refused `reply_stream`, a write Redis refuses as such) is
//! logged, counted ([`Handlers::stats`]), copied in bounded form to
//! [`dead_letter_key`] and acknowledged, so it never holds up the others.
//! What a runner holds is bounded: [`runner::BATCH`] read entries per
//! stream, `max_in_flight` commands ([`runner::DEFAULT_MAX_IN_FLIGHT`]),
//! [`MAX_QUEUED_PROGRESS`] unwritten `progress` replies per command, and
//! dead-letter copies of at most [`dead_letter::MAX_COPY_BYTES`].
//!
//! It runs on one Redis or on a Redis Cluster ([`Handlers::redis_mode`]).
//! On one Redis the final reply, its record and the acknowledgement are one
//! `MULTI`; on a cluster, where they lie in different slots, they are
//! written in an order that keeps every command answered at least once:
//! the record, the replies, then the acknowledgement (see
//! `docs/protocol.md`, "The handler SDK's replies").
//!
//! ```no_run
//! # async fn demo(client: redis::Client, shutdown: tokio_util::sync::CancellationToken) {
//! use sagaflow::handler::{Context, HandlerError, Handlers};
//! use sagaflow::protocol::Command;
//!
//! async fn allocate(cmd: Command, ctx: Context) -> Result<serde_json::Value, HandlerError> {
//!     ctx.progress(50.0).await;
//!     Ok(serde_json::json!({"robot_ids": ["robot-1"], "area": cmd.payload["area"]}))
//! }
//!
//! Handlers::new(client, "my-service")
//!     .on("resources:commands", "allocate_resources", allocate)
//!     .run(shutdown)
//!     .await
//!     .unwrap();
//! # }
//! ```
//!
//! This module depends only on [`crate::protocol`], [`crate::streams`],
//! [`crate::connection`] (one Redis or a cluster, behind one connection
//! type), [`crate::retry`] (the retry policy for Redis calls it shares with
//! the daemon) and its spans in [`crate::telemetry`], never on the
//! orchestrator, so that it reads as a reference for handlers written in
//! any language.

mod batch;
mod clock;
pub mod dead_letter;
mod exchange;
pub mod mission;
mod outbox;
pub mod reply_stream;
pub mod runner;
pub mod simulated;
mod stats;

pub use clock::RESYNC_EVERY;
pub use dead_letter::dead_letter_key;
pub use exchange::{done_key, MIN_HEARTBEAT_EVERY};
pub use outbox::MAX_QUEUED_PROGRESS;
pub use reply_stream::{ReplyStreams, DEFAULT_REPLY_STREAM_PREFIX, MAX_REPLY_STREAM_BYTES};
pub use runner::Handlers;
pub use simulated::{run_simulated_handlers, simulated_handlers, SimulationOptions};
pub use stats::{Counts, HandlerStats};

use crate::protocol::{Command, ReplyStatus, TraceParent};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use tokio_util::sync::CancellationToken;

/// Why a handler did not produce a result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Replied as `failed` with `retryable=true`: the daemon may try again.
    #[error("{0}")]
    Retryable(String),
    /// Replied as `failed` with `retryable=false`: trying again cannot help.
    #[error("{0}")]
    Fatal(String),
    /// No final reply at all: the entry is neither acknowledged nor
    /// recorded, so the daemon sees a timeout. Meant for simulating lost
    /// work; the reason is only logged.
    #[error("left unanswered: {0}")]
    Unanswered(String),
}

/// Why the runner could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no handler is registered: call `Handlers::on` at least once")]
    NoHandlers,
    #[error("cannot set up the Redis connection: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    ReplyStreamPrefix(#[from] reply_stream::BadPrefix),
}

/// What a handler returns.
pub type HandlerResult = Result<Value, HandlerError>;

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// A command handler. Implemented for every
/// `Fn(Command, Context) -> impl Future<Output = HandlerResult>`.
pub trait Handle: Send + Sync + 'static {
    fn handle(&self, command: Command, ctx: Context) -> HandlerFuture;
}

impl<F, Fut> Handle for F
where
    F: Fn(Command, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn handle(&self, command: Command, ctx: Context) -> HandlerFuture {
        Box::pin(self(command, ctx))
    }
}

/// What a running handler can do besides returning: report progress and
/// notice shutdown.
#[derive(Clone)]
pub struct Context {
    command: std::sync::Arc<Command>,
    span: TraceParent,
    outbox: outbox::Outbox,
    shutdown: CancellationToken,
    clock: std::sync::Arc<clock::RedisClock>,
}

impl Context {
    pub(crate) fn new(
        command: std::sync::Arc<Command>,
        span: TraceParent,
        outbox: outbox::Outbox,
        shutdown: CancellationToken,
        clock: std::sync::Arc<clock::RedisClock>,
    ) -> Self {
        Self {
            command,
            span,
            outbox,
            shutdown,
            clock,
        }
    }

    /// The handler's own span context, as its replies carry it.
    pub fn span(&self) -> &TraceParent {
        &self.span
    }

    /// Cancelled when the runner is stopping. Long handlers may watch it;
    /// the runner waits for them either way.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Sends a `progress` reply (`percent` is clamped to 0..=100). It
    /// does not wait for the write: the reply is written in the background,
    /// or with the final reply if that comes first, and always ahead of it.
    /// Progress is optional in the contract, so a failed write is logged,
    /// not returned: it must not fail the work it reports on. At most
    /// [`MAX_QUEUED_PROGRESS`] wait to be written; past that the oldest
    /// waiting one is dropped.
    pub async fn progress(&self, percent: f64) {
        let percent = if percent.is_finite() {
            percent.clamp(0.0, 100.0)
        } else {
            0.0
        };
        let status = ReplyStatus::Progress {
            percent: Some(percent),
            details: Value::Null,
        };
        self.outbox.push(crate::protocol::reply::reply_fields(
            &self.command,
            &self.span,
            &status,
            self.clock.now_ms(),
        ));
    }
}
