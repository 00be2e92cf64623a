//! The saga rules as a pure state machine: an event in (a start, a reply, a
//! timer firing), effects out (send a command, emit an audit event, arm a
//! timer, persist, finish). No Redis, no clock, no Tokio here: time comes in
//! with each event and ids come from an [`IdSource`], so every rule is a
//! plain unit test.

mod backoff;
mod ids;
mod machine;
mod state;

pub use backoff::retry_delay;
pub use ids::{IdSource, RandomIds};
pub use machine::{
    apply, park, start, Action, Effect, Event, Ignored, LockAnswer, LockOutcome, OperatorRequest,
    SagaInit, Transition,
};
pub use state::{
    Ask, Clock, Exchange, Failed, Failure, Halt, HeldLock, LockWait, Parked, Phase, SagaState,
    SignalWait, StepWork, Unit, UnitState, Waiting, Work,
};

#[cfg(test)]
mod tests;
