//! Simulated mission services (resources, routing, exploration, mapping),
//! built on the handler runner, with switches for injecting failures,
//! hangs and slow work, so that every saga path can be shown and tested
//! without robots. What each command returns is in [`super::mission`].

use super::mission::{
    abort_exploration, allocate_resources, cancel_route, discard_maps, integrate_maps,
    perform_exploration, plan_route, release_resources,
};
use super::{Context, HandlerError, HandlerResult, Handlers, RunError};
use crate::connection::RedisMode;
use crate::protocol::{Command, CommandKind};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const RESOURCES_STREAM: &str = "resources:commands";
pub const ROUTING_STREAM: &str = "routing:commands";
pub const EXPLORATION_STREAM: &str = "exploration:commands";
pub const MAPPING_STREAM: &str = "mapping:commands";

/// Switches for the simulated services.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulationOptions {
    /// The action whose `step` (or `event_type`) equals this replies
    /// `failed` with `retryable=false`.
    pub fail_step: Option<String>,
    /// Probability in [0, 1] that any action fails with `retryable=true`.
    pub fail_rate: f64,
    /// The action whose `step` (or `event_type`) equals this never replies
    /// after `start`, so the daemon sees a timeout.
    pub hang_step: Option<String>,
    /// Simulated work per command, with a `progress` reply half-way.
    pub work_ms: u64,
    /// The compensation whose `step` (or `event_type`) equals this replies
    /// `failed` with `retryable=false`.
    pub fail_compensation: Option<String>,
    /// Consumer group of the simulated services.
    pub group: String,
    /// Commands handled at once, over all the services.
    pub max_in_flight: usize,
    /// How long final replies are remembered for deduplication.
    pub record_ttl: std::time::Duration,
    /// The daemon's `reply_stream_prefix`: replies go only to streams under it.
    pub reply_stream_prefix: String,
    /// One Redis or a cluster (see [`Handlers::redis_mode`]).
    pub redis_mode: RedisMode,
}

impl Default for SimulationOptions {
    fn default() -> Self {
        Self {
            fail_step: None,
            fail_rate: 0.0,
            hang_step: None,
            work_ms: 0,
            fail_compensation: None,
            group: "sagaflow-sim".to_owned(),
            max_in_flight: super::runner::DEFAULT_MAX_IN_FLIGHT,
            record_ttl: super::runner::DEFAULT_RECORD_TTL,
            reply_stream_prefix: super::DEFAULT_REPLY_STREAM_PREFIX.to_owned(),
            redis_mode: RedisMode::Auto,
        }
    }
}

/// Runs the simulated services until `shutdown` is cancelled.
pub async fn run_simulated_handlers(
    client: redis::Client,
    opts: SimulationOptions,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    simulated_handlers(client, opts).run(shutdown).await
}

/// The simulated services as a runner, to tune further before running.
pub fn simulated_handlers(client: redis::Client, opts: SimulationOptions) -> Handlers {
    let routes: [(&str, &str, Compute); 8] = [
        (RESOURCES_STREAM, "allocate_resources", allocate_resources),
        (RESOURCES_STREAM, "release_resources", release_resources),
        (ROUTING_STREAM, "plan_route", plan_route),
        (ROUTING_STREAM, "cancel_route", cancel_route),
        (
            EXPLORATION_STREAM,
            "perform_exploration",
            perform_exploration,
        ),
        (EXPLORATION_STREAM, "abort_exploration", abort_exploration),
        (MAPPING_STREAM, "integrate_maps", integrate_maps),
        (MAPPING_STREAM, "discard_maps", discard_maps),
    ];
    let opts = Arc::new(opts);
    routes.into_iter().fold(
        Handlers::new(client, opts.group.clone())
            .max_in_flight(opts.max_in_flight)
            .record_ttl(opts.record_ttl)
            .reply_stream_prefix(opts.reply_stream_prefix.clone())
            .redis_mode(opts.redis_mode),
        |handlers, (stream, event_type, compute)| {
            let opts = opts.clone();
            handlers.on(stream, event_type, move |cmd: Command, ctx: Context| {
                let opts = opts.clone();
                async move { simulate(&opts, &cmd, &ctx, compute).await }
            })
        },
    )
}

/// The result of one simulated command, from its payload.
type Compute = fn(&Value) -> Value;

async fn simulate(
    opts: &SimulationOptions,
    cmd: &Command,
    ctx: &Context,
    compute: Compute,
) -> HandlerResult {
    let named = |name: &Option<String>| {
        name.as_deref()
            .is_some_and(|n| n == cmd.step || n == cmd.event_type)
    };
    if cmd.kind == CommandKind::Action && named(&opts.hang_step) {
        return Err(HandlerError::Unanswered(format!(
            "simulated hang of {}",
            cmd.event_type
        )));
    }
    let half = Duration::from_millis(opts.work_ms / 2);
    sleep_unless_zero(half).await;
    // Always one progress reply, so that the stages show even without work.
    ctx.progress(50.0).await;
    sleep_unless_zero(Duration::from_millis(opts.work_ms) - half).await;
    match injected_failure(opts, cmd, random_unit()) {
        Some(error) => Err(error),
        None => Ok(compute(&cmd.payload)),
    }
}

async fn sleep_unless_zero(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// The failure the options inject into `cmd`, given a roll in [0, 1).
pub fn injected_failure(
    opts: &SimulationOptions,
    cmd: &Command,
    roll: f64,
) -> Option<HandlerError> {
    let named = |name: &Option<String>| {
        name.as_deref()
            .is_some_and(|n| n == cmd.step || n == cmd.event_type)
    };
    match cmd.kind {
        CommandKind::Action if named(&opts.fail_step) => Some(HandlerError::Fatal(format!(
            "simulated failure of {}",
            cmd.event_type
        ))),
        CommandKind::Action if fails_at_random(opts.fail_rate, roll) => {
            Some(HandlerError::Retryable(format!(
                "simulated transient failure of {} (fail rate {})",
                cmd.event_type, opts.fail_rate
            )))
        }
        CommandKind::Compensation if named(&opts.fail_compensation) => Some(HandlerError::Fatal(
            format!("simulated failure of {}", cmd.event_type),
        )),
        _ => None,
    }
}

/// True when a roll in [0, 1) falls under `rate`, itself clamped to [0, 1]
/// (a rate that is not a number never fails).
pub fn fails_at_random(rate: f64, roll: f64) -> bool {
    let rate = if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    };
    roll < rate
}

/// A uniform number in [0, 1) from the 48 leading bits of a UUID4, which
/// are all random (the version and variant bits come after them).
pub fn random_unit() -> f64 {
    let (high, _) = uuid::Uuid::new_v4().as_u64_pair();
    (high >> 16) as f64 / (1u64 << 48) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CorrelationId, RequestId, SagaId, SpanId, TraceId, TraceParent};
    use serde_json::json;

    fn command(event_type: &str, step: &str, kind: CommandKind) -> Command {
        Command {
            correlation_id: CorrelationId::from_trusted("c-1"),
            saga_id: SagaId::generate(),
            request_id: RequestId::generate(),
            traceparent: TraceParent::new(TraceId::generate(), SpanId::generate()),
            event_type: event_type.into(),
            step: step.into(),
            kind,
            attempt: 1,
            reply_stream: "replies".into(),
            payload: json!({}),
            deadline_ms: u64::MAX,
            timestamp: 0,
            ack_timeout_ms: None,
            heartbeat_timeout_ms: None,
            branch: None,
        }
    }

    #[test]
    fn fail_rate_is_bounded() {
        assert!(!fails_at_random(0.0, 0.0));
        assert!(fails_at_random(1.0, 0.999_999));
        assert!(fails_at_random(7.0, 0.5));
        assert!(!fails_at_random(-1.0, 0.0));
        assert!(!fails_at_random(f64::NAN, 0.0));
        assert!(fails_at_random(0.3, 0.29) && !fails_at_random(0.3, 0.3));
        for _ in 0..1000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r), "{r}");
        }
    }

    #[test]
    fn failures_are_injected_where_asked() {
        let opts = SimulationOptions {
            fail_step: Some("plan_route".into()),
            fail_compensation: Some("allocate_resources".into()),
            ..Default::default()
        };
        let plan = command("plan_route", "plan_route", CommandKind::Action);
        assert_eq!(
            injected_failure(&opts, &plan, 0.9),
            Some(HandlerError::Fatal(
                "simulated failure of plan_route".into()
            ))
        );
        let release = command(
            "release_resources",
            "allocate_resources",
            CommandKind::Compensation,
        );
        assert!(matches!(
            injected_failure(&opts, &release, 0.9),
            Some(HandlerError::Fatal(_))
        ));
        let alloc = command(
            "allocate_resources",
            "allocate_resources",
            CommandKind::Action,
        );
        assert_eq!(injected_failure(&opts, &alloc, 0.0), None);

        let flaky = SimulationOptions {
            fail_rate: 0.5,
            ..Default::default()
        };
        assert!(matches!(
            injected_failure(&flaky, &alloc, 0.1),
            Some(HandlerError::Retryable(_))
        ));
        assert_eq!(injected_failure(&flaky, &alloc, 0.6), None);
        // Compensations never fail at random: they must be able to finish.
        assert_eq!(injected_failure(&flaky, &release, 0.1), None);
    }
}
