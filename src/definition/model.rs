//! The checked saga model that the rest of the daemon runs on.

use super::template::Template;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Per-attempt timeout of a step that names none.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `wait` step waits for its signal when it names no
/// `timeout`.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a step waits for its locks when it names no `lock_timeout`.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(600);
/// Cap on retry delays when a policy names no `max_delay`.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);
/// A step without `retry` is tried once: retrying an action is a choice the
/// saga's author makes, knowing whether its handler deduplicates.
pub const DEFAULT_STEP_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 1,
    backoff: Backoff::Exponential,
    initial_delay: Duration::from_millis(100),
    max_delay: DEFAULT_MAX_DELAY,
};
/// A compensation without `retry` is tried five times: undoing must be
/// tried hard, since a saga whose undo fails needs an operator.
pub const DEFAULT_COMPENSATION_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    backoff: Backoff::Exponential,
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(5),
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    Exponential,
    Linear,
    Fixed,
}

/// Where a command's replies go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyMode {
    /// The daemon's one reply stream: replies are told apart by `request_id`.
    #[default]
    Shared,
    /// A stream of its own per command (`<daemon reply stream>:<request_id>`),
    /// as the original system did: for handlers that reply without
    /// `request_id`, a late reply to an earlier attempt then cannot be taken
    /// for the reply to the current one.
    PerRequest,
}

/// The two optional clocks of an attempt beside its completion timeout
/// (`timeout`): each ends the attempt as timed out when it runs out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clocks {
    /// No reply at all (`start`, or any other) within this time of the
    /// command being sent: nobody took the command.
    pub ack: Option<Duration>,
    /// No reply within this time of the last one (or of the command, before
    /// any): the handler is gone. `progress` and `heartbeat` replies keep it
    /// from running out.
    pub heartbeat: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, at least 1.
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CompensationDefinition {
    pub command: String,
    pub stream: String,
    pub timeout: Duration,
    pub clocks: Clocks,
    pub retry: RetryPolicy,
    pub input: Option<Template>,
    pub replies: ReplyMode,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StepDefinition {
    pub name: String,
    pub stream: String,
    /// The `event_type` of its commands.
    pub command: String,
    pub timeout: Duration,
    pub clocks: Clocks,
    pub retry: RetryPolicy,
    pub input: Option<Template>,
    pub replies: ReplyMode,
    pub compensation: Option<CompensationDefinition>,
    /// Indexes of the steps that must have completed before this one
    /// starts (`after:`). Without `after:`, the step listed just before it
    /// (none for the first step), so that a list of steps is a sequence.
    pub after: Vec<usize>,
    /// Set when the step runs once per element of a list (`for_each:`).
    pub for_each: Option<ForEach>,
    /// The semantic locks it takes before it starts (`locks:`), one
    /// template per lock name; each is rendered once per branch of a
    /// fan-out.
    pub locks: Vec<Template>,
    /// The longest it waits for its locks before it fails.
    pub lock_timeout: Duration,
    /// Set on a `wait` step: the name of the signal it waits for. Such a
    /// step sends no command (its `stream` and `command` are empty); it
    /// completes with the signal's payload as its result, or fails when
    /// `timeout` runs out first.
    pub wait: Option<String>,
}

/// The most branches one fan-out may have: a longer list fails its step
/// for good, with an error naming the length and this cap. Every branch
/// is part of its saga's record, which each transition writes whole, so
/// the cap keeps records (and the cost of each write) bounded: a fan-out of
/// 5,000 branches, 100 at once, runs in about 4 s on one Redis (the test
/// `engine_fan_out` with 5,000 branches, release build). A list taken from a reply holds at most
/// `MAX_JSON_VALUES` values anyway.
pub const MAX_BRANCHES: usize = 5_000;

/// How a fan-out step takes its list and runs its branches.
#[derive(Clone, Debug, PartialEq)]
pub struct ForEach {
    /// The list: `${input.<path>}` or `${steps.<step>.result.<path>}` of a
    /// step that has completed whenever this one starts.
    pub items: super::template::Expr,
    /// At most this many branches under way at once (at least 1); all of
    /// them when unset.
    pub max_concurrency: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SagaDefinition {
    pub name: String,
    pub trigger: Option<String>,
    pub steps: Vec<StepDefinition>,
    /// The file it was loaded from, for messages.
    pub source: PathBuf,
    /// The file's text, kept so that sagas started on this version can be
    /// finished on it after the file changes.
    pub text: Arc<str>,
    /// A hash of `text`: the version a running saga is pinned to.
    pub version: String,
}

/// The version of a definition's text: a name-based UUID of the text, as
/// 32 hex digits.
pub fn content_version(text: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2f0d_64c1_8e3b_4a57_b1c9_6e2a_d507_93f8);
    uuid::Uuid::new_v5(&NAMESPACE, text.as_bytes())
        .simple()
        .to_string()
}

impl SagaDefinition {
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// The steps that wait for step `index` (name it in their `after`).
    pub fn dependents(&self, index: usize) -> impl Iterator<Item = usize> + '_ {
        let waits = move |(i, s): (usize, &StepDefinition)| s.after.contains(&index).then_some(i);
        self.steps.iter().enumerate().filter_map(waits)
    }

    /// Every step that step `index` waits for, directly (its `after`) or
    /// through the steps it waits for, in the order of the file: the steps
    /// that have completed whenever it starts, whose results its templates
    /// may read. Never `index` itself (a definition that loads has no
    /// cycle).
    pub fn ancestors(&self, index: usize) -> Vec<usize> {
        ancestors(self.steps.len(), index, |i| &self.steps[i].after)
    }
}

/// The steps that step `index` (of `count`) waits for, directly or not,
/// ascending, given each step's `after`. Ends on a cycle too, whose steps
/// are then their own ancestors.
pub(super) fn ancestors<'a>(
    count: usize,
    index: usize,
    after: impl Fn(usize) -> &'a [usize],
) -> Vec<usize> {
    let mut seen = vec![false; count];
    let mut todo: Vec<usize> = after(index).to_vec();
    while let Some(i) = todo.pop() {
        if !std::mem::replace(&mut seen[i], true) {
            todo.extend_from_slice(after(i));
        }
    }
    (0..count).filter(|&i| seen[i]).collect()
}
