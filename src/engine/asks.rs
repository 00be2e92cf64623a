//! Asking on a saga's behalf for what it waits for besides replies (see
//! [`crate::saga::Ask`]): the lock its step takes next, the signal its
//! `wait` step waits for. The saga's task asks as soon as the saga starts
//! waiting, then again and again, less and less often (every
//! [`ASK_EVERY_MAX`] at the least), until the wait ends: asking is
//! idempotent, so a daemon that takes the saga over, or one that lost an
//! answer, simply asks again. Nothing is pushed to the saga: a lock let go
//! of, or a signal kept, is found by the next ask.

use super::Shared;
use crate::definition::SagaDefinition;
use crate::protocol::locks::LockEntry;
use crate::saga::{Ask, Event, LockAnswer, LockOutcome, SagaState};
use crate::store::keys::Keys;
use crate::store::locks::{self, Acquired, LockError};
use crate::store::signals;
use std::time::Duration;

/// The first time a wait is asked about again.
pub(super) const ASK_EVERY_MIN: Duration = Duration::from_millis(100);
/// The longest between two asks while a saga waits: how long at most a
/// lock let go of, or a signal kept, goes unseen by a saga waiting for it
/// on another daemon.
pub(super) const ASK_EVERY_MAX: Duration = Duration::from_secs(1);

/// The next pause between asks, after `last`.
pub(super) fn next_pause(last: Duration) -> Duration {
    (last * 2).clamp(ASK_EVERY_MIN, ASK_EVERY_MAX)
}

/// Asks about every wait of the saga; returns the events to apply. A
/// failure to reach Redis is logged and left for the next ask.
pub(super) async fn ask(shared: &Shared, def: &SagaDefinition, state: &SagaState) -> Vec<Event> {
    let asks = state.asks();
    let keys = Keys::of(&shared.settings);
    let mut conn = shared.conn.clone();
    let mut events = Vec::new();
    let mut signals_read = None;
    for ask in asks {
        match ask {
            Ask::Lock { name, step } => {
                let Some(wait) = state.work.steps.get(&step).and_then(|w| w.locking.as_ref())
                else {
                    continue;
                };
                let since_ms = wait.since_ms;
                let who = LockEntry {
                    saga_id: state.saga_id.to_string(),
                    saga: state.saga.clone(),
                    step: (def.steps.get(step)).map_or_else(String::new, |s| s.name.clone()),
                    since_ms,
                };
                // The step's locks in order: the next is asked for only
                // once the one before is held.
                debug_assert_eq!(wait.pending.first(), Some(&name));
                for name in &wait.pending {
                    let outcome = match locks::acquire(&mut conn, &keys, name, &who).await {
                        Ok(Acquired::Held) => LockOutcome::Held,
                        Ok(Acquired::Queued { ahead, holder }) => LockOutcome::Queued {
                            ahead,
                            holder: holder.map(|h| h.saga_id),
                        },
                        Err(e @ (LockError::Full { .. } | LockError::WrongType { .. })) => {
                            LockOutcome::Refused(e.to_string())
                        }
                        Err(LockError::Redis(e)) => {
                            tracing::warn!(lock = %name, error = %e, "cannot ask for a lock; asking again soon");
                            break;
                        }
                    };
                    let held = outcome == LockOutcome::Held;
                    let name = name.clone();
                    events.push(Event::Lock(LockAnswer { name, outcome }));
                    if !held {
                        break;
                    }
                }
            }
            Ask::Signal { name } => {
                if signals_read.is_none() {
                    let saga_id = state.saga_id.as_str();
                    match signals::kept(&mut conn, &keys, saga_id).await {
                        Ok(kept) => signals_read = Some(kept),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the saga's signals; reading again soon");
                            continue;
                        }
                    }
                }
                let kept = signals_read.as_ref().expect("read above");
                if let Some(signal) = kept.iter().find(|s| s.name == name) {
                    events.push(Event::Signal(signal.clone()));
                }
            }
        }
    }
    events
}
