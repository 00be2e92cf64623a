//! What a saga waits for besides its commands' replies: the semantic locks
//! a step takes before it starts, and the signal a `wait` step waits for.
//!
//! **Locks.** A step with `locks:` renders every lock name (once per
//! branch of a fan-out), sorts them and takes them one after the other,
//! before any of its units starts: every saga takes the locks of a step in
//! the same order, so two sagas taking the same locks in one step never
//! wait for each other in a circle. The daemon asks for the first lock
//! still to take and hands the answer in ([`LockAnswer`]); a lock the saga
//! holds already (from an earlier step) is not asked again. A step that
//! has not taken its locks by its `lock_timeout` fails (its saga unwinds
//! as for any failed step). The saga holds every lock it took until it
//! completed, finished compensating, or was abandoned by an operator: the
//! transition that ends it lets go of them all ([`Effect::Unlock`]). A saga
//! that failed with a compensation stuck keeps them: what it holds may be
//! in any state until an operator has looked.
//!
//! **Signals.** A `wait` step's unit waits for its signal until its
//! `timeout`; the daemon hands in the signals kept for the saga
//! ([`KeptSignal`]). The step completes with the signal's payload as its
//! result; a signal that reached Redis after the deadline is late and the
//! timeout wins.

use super::{payload, Effect, Ignored, Machine};
use crate::definition::template::Context;
use crate::protocol::locks::{check_lock_name, MAX_LOCKS_PER_SAGA};
use crate::protocol::signal::KeptSignal;
use crate::protocol::{EventType, Json, UnixMillis};
use crate::saga::state::{HeldLock, LockWait, Phase, SignalWait, StepWork, Unit, UnitState};
use serde_json::Value;

/// The answer to a saga asking for a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockAnswer {
    pub name: String,
    pub outcome: LockOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// The saga holds the lock.
    Held,
    /// `ahead` sagas are before it; `holder` (a saga id) holds the lock.
    Queued {
        ahead: usize,
        holder: Option<String>,
    },
    /// It can never have it: the queue is full, or the key is not a lock.
    Refused(String),
}

impl Machine<'_> {
    /// Starts a `wait` step: its one unit waits for signal `signal`.
    pub(super) fn begin_wait(&mut self, step: usize, signal: String) {
        let deadline_ms = self
            .now
            .saturating_add(super::ms(self.def.steps[step].timeout));
        self.st().work.steps.insert(
            step,
            StepWork {
                items: None,
                locking: None,
                units: Vec::new(),
            },
        );
        let wait = SignalWait {
            signal: signal.clone(),
            since_ms: self.now,
            deadline_ms,
        };
        self.set_unit(Unit::step(step), UnitState::Awaiting(wait));
        let started = payload::WaitStarted {
            signal,
            deadline_ms,
        };
        self.emit(EventType::StepStarted, Some(Unit::step(step)), &started);
    }

    /// Before step `step` starts: the locks it must take still, sorted.
    /// `Err` when a name cannot be rendered or is not a lock name, or when
    /// the saga would hold more than [`MAX_LOCKS_PER_SAGA`].
    pub(super) fn locks_to_take(&self, step: usize) -> Result<Vec<String>, String> {
        let def = &self.def.steps[step];
        let items: Vec<Option<(Value, usize)>> = match self.state.work.steps.get(&step) {
            Some(StepWork {
                items: Some(items), ..
            }) => (items.iter().enumerate())
                .map(|(i, item)| Some((item.value(), i)))
                .collect(),
            _ => vec![None],
        };
        let mut names = Vec::new();
        for item in &items {
            let ctx = Context {
                item: item.as_ref().map(|(v, i)| (v, *i)),
                ..self.context(false)
            };
            for template in &def.locks {
                let name = match template.render(&ctx, false) {
                    Ok(Value::String(name)) => name,
                    Ok(other) => format!("{other}"),
                    Err(e) => return Err(format!("cannot render a lock name: {e}")),
                };
                check_lock_name(&name)?;
                names.push(name);
            }
        }
        names.sort();
        names.dedup();
        names.retain(|n| !self.state.locks.contains_key(n));
        if names.len() + self.state.locks.len() > MAX_LOCKS_PER_SAGA {
            return Err(format!(
                "the saga would hold {} locks, more than the {MAX_LOCKS_PER_SAGA} one saga may",
                names.len() + self.state.locks.len()
            ));
        }
        Ok(names)
    }

    /// The step whose lock wait asks for `name` now.
    fn locking_step(&self, name: &str) -> Option<usize> {
        (self.state.work.steps.iter())
            .find(|(_, w)| {
                let first = w.locking.as_ref().and_then(|l| l.pending.first());
                first.is_some_and(|n| n == name)
            })
            .map(|(s, _)| *s)
    }

    fn lock_wait(&mut self, step: usize) -> &mut LockWait {
        let work = self.st().work.steps.get_mut(&step).expect("started");
        work.locking.as_mut().expect("locking")
    }

    pub(super) fn on_lock(&mut self, answer: LockAnswer) -> Result<(), Ignored> {
        let step = self.locking_step(&answer.name).ok_or(Ignored::NotAwaited)?;
        let name = answer.name;
        match answer.outcome {
            LockOutcome::Held => {
                let now = self.now;
                let wait = self.lock_wait(step);
                wait.pending.remove(0);
                wait.holder = None;
                wait.ahead = None;
                let waited_ms = now.saturating_sub(wait.since_ms);
                let held = HeldLock {
                    step: self.step_name(step).to_owned(),
                    since_ms: now,
                };
                self.st().locks.insert(name.clone(), held);
                let acquired = payload::LockAcquired {
                    lock: name,
                    waited_ms,
                };
                self.emit(EventType::LockAcquired, Some(Unit::step(step)), &acquired);
                self.advance();
            }
            LockOutcome::Queued { ahead, holder } => {
                let wait = self.state.work.steps[&step].locking.as_ref();
                let wait = wait.expect("locking");
                if wait.ahead == Some(ahead) && wait.holder == holder {
                    return Err(Ignored::NothingDue);
                }
                let timeout_ms = wait.deadline_ms.saturating_sub(self.now);
                let wait = self.lock_wait(step);
                wait.ahead = Some(ahead);
                wait.holder = holder.clone();
                let waiting = payload::LockWaiting {
                    lock: name,
                    holder,
                    ahead,
                    timeout_ms,
                };
                self.emit(EventType::LockWaiting, Some(Unit::step(step)), &waiting);
            }
            LockOutcome::Refused(why) => {
                let reason = format!("cannot take lock `{name}`: {why}");
                self.stop_lock_wait(step);
                self.fail_saga(Unit::step(step), reason.clone());
                self.emit_failed_to_build(Unit::step(step), 1, &reason);
                self.advance();
            }
        }
        Ok(())
    }

    /// A step's lock wait ends without the step starting: it leaves the
    /// queue of the lock it asked for (the locks it took stay held).
    pub(super) fn stop_lock_wait(&mut self, step: usize) {
        let work = self.st().work.steps.get_mut(&step).expect("started");
        if let Some(wait) = work.locking.take() {
            if let Some(asked) = wait.pending.into_iter().next() {
                self.effects.push(Effect::Unlock { locks: vec![asked] });
            }
        }
    }

    /// Every wait on the outside ends: the saga unwinds. Lock waits leave
    /// their queues; `wait` steps end without effect.
    pub(super) fn stop_waits(&mut self) {
        let locking: Vec<usize> = (self.state.work.steps.iter())
            .filter(|(_, w)| w.locking.is_some())
            .map(|(s, _)| *s)
            .collect();
        for step in locking {
            self.stop_lock_wait(step);
        }
        let awaiting: Vec<Unit> = (self.state.work.units())
            .filter(|(_, s)| matches!(s, UnitState::Awaiting(_)))
            .map(|(u, _)| u)
            .collect();
        for unit in awaiting {
            self.set_unit(
                unit,
                UnitState::Ended {
                    effect_unknown: false,
                },
            );
        }
    }

    /// Steps whose locks are all held, ready to start their units.
    pub(super) fn start_locked(&mut self) -> bool {
        let ready: Vec<usize> = (self.state.work.steps.iter())
            .filter(|(_, w)| w.locking.as_ref().is_some_and(|l| l.pending.is_empty()))
            .map(|(s, _)| *s)
            .collect();
        for &step in &ready {
            if let Some(work) = self.st().work.steps.get_mut(&step) {
                work.locking = None;
            }
            self.start_units(step);
        }
        !ready.is_empty()
    }

    /// Lock waits and `wait` steps whose time ran out: each fails its step.
    /// True if any did.
    pub(super) fn waits_due(&mut self) -> bool {
        let now = self.now;
        let locks: Vec<usize> = (self.state.work.steps.iter())
            .filter(|(_, w)| {
                (w.locking.as_ref()).is_some_and(|l| !l.pending.is_empty() && l.deadline_ms <= now)
            })
            .map(|(s, _)| *s)
            .collect();
        let signals: Vec<(Unit, SignalWait)> = (self.state.work.units())
            .filter_map(|(u, s)| match s {
                UnitState::Awaiting(w) if w.deadline_ms <= now => Some((u, w.clone())),
                _ => None,
            })
            .collect();
        for &step in &locks {
            let wait = self.state.work.steps[&step].locking.clone();
            let Some(wait) = wait else { continue };
            let timeout = self.def.steps[step].lock_timeout;
            let held_by = match &wait.holder {
                Some(h) => format!(": saga {h} holds it"),
                None => String::new(),
            };
            let reason = format!(
                "could not take lock `{}` within its lock_timeout of {}{held_by}",
                wait.pending[0],
                humantime::format_duration(timeout)
            );
            self.stop_lock_wait(step);
            self.fail_saga(Unit::step(step), reason.clone());
            self.emit_failed_to_build(Unit::step(step), 1, &reason);
        }
        for (unit, wait) in &signals {
            if self.unit_state(*unit) != Some(&UnitState::Awaiting(wait.clone())) {
                continue;
            }
            let waited = wait.deadline_ms.saturating_sub(wait.since_ms);
            let reason = format!(
                "no signal `{}` within its timeout of {}",
                wait.signal,
                humantime::format_duration(std::time::Duration::from_millis(waited))
            );
            self.set_unit(
                *unit,
                UnitState::Ended {
                    effect_unknown: false,
                },
            );
            self.fail_saga(*unit, reason.clone());
            self.emit_failed_to_build(*unit, 1, &reason);
        }
        let any = !locks.is_empty() || !signals.is_empty();
        if any {
            self.advance();
        }
        any
    }

    pub(super) fn on_signal(&mut self, signal: KeptSignal) -> Result<(), Ignored> {
        let waiting = (self.state.work.units()).find_map(|(u, s)| match s {
            UnitState::Awaiting(w) if w.signal == signal.name => Some((u, w.clone())),
            _ => None,
        });
        let (unit, wait) = waiting.ok_or(Ignored::NotAwaited)?;
        // While paused, no clock runs: late only if the deadline passed
        // before the pause.
        let stopped = self.state.paused.as_ref().map(|p| p.since_ms);
        let due = wait.deadline_ms;
        let late = |at: UnixMillis| at > due && stopped.is_none_or(|since| since > due);
        if late(signal.received_ms) {
            return Err(Ignored::Late);
        }
        let name = self.step_name(unit.step).to_owned();
        self.st().results.insert(name, Json::of(&signal.payload));
        self.set_unit(unit, UnitState::Completed { result: None });
        // Done like any completed unit: unwinding skips it (it undoes
        // nothing), and it no longer holds back the steps before it.
        self.st().work.done.push(unit);
        let last = self.state.phase == Phase::Running && self.all_steps_completed();
        if last {
            self.st().phase = Phase::Completed {
                ended_at_ms: self.now,
            };
        }
        let taken = payload::SignalTaken {
            signal: signal.name,
            signal_id: signal.signal_id,
            waited_ms: self.now.saturating_sub(wait.since_ms),
            by: signal.by,
            result: signal.payload,
        };
        self.emit(EventType::StepCompleted, Some(unit), &taken);
        if last {
            self.emit_saga_completed();
            return Ok(());
        }
        self.advance();
        Ok(())
    }

    /// At the end: a saga that completed, finished compensating or was
    /// abandoned lets go of every lock it holds, once.
    pub(super) fn release_locks(&mut self) {
        let releases = match &self.state.phase {
            Phase::Completed { .. } | Phase::Compensated { .. } => true,
            Phase::Failed(failed) => failed.abandoned_by.is_some(),
            Phase::Running | Phase::Compensating(_) => false,
        };
        if !releases || self.state.locks.is_empty() {
            return;
        }
        let locks: Vec<String> = std::mem::take(&mut self.st().locks).into_keys().collect();
        let unlock = Effect::Unlock {
            locks: locks.clone(),
        };
        self.emit(
            EventType::LocksReleased,
            None,
            &payload::LocksReleased { locks },
        );
        let released = self.effects.pop().expect("just emitted");
        // Before the saga's last event, so that `saga_completed` or
        // `saga_compensated` stays the last word on the saga.
        let ending = |e: &Effect| matches!(e, Effect::Emit(ev) if matches!(ev.event_type, EventType::SagaCompleted | EventType::SagaCompensated));
        let at = (self.effects.iter().rposition(ending)).unwrap_or(self.effects.len());
        self.effects.splice(at..at, [unlock, released]);
    }
}
