//! Counts of the commands a runner did not answer, and why: for operators
//! embedding the runner and for tests. Each is also logged as it happens.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one runner, shared with whoever asked for them with
/// [`super::Handlers::stats`].
#[derive(Debug, Default)]
pub struct HandlerStats {
    refused: AtomicU64,
    malformed: AtomicU64,
    unwritable: AtomicU64,
    dead_lettered: AtomicU64,
    dead_letter_failed: AtomicU64,
}

/// What [`HandlerStats`] counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Commands whose `reply_stream` is no reply stream of the daemon's.
    pub refused: u64,
    /// Entries that are no command: not fields, a field missing or invalid.
    pub malformed: u64,
    /// Commands whose replies Redis refused for good (a key of another type).
    pub unwritable: u64,
    /// Commands of the three kinds above copied to the dead-letter stream.
    pub dead_lettered: u64,
    /// Commands of those kinds acknowledged without a copy, because Redis
    /// refused the dead-letter write for good too.
    pub dead_letter_failed: u64,
}

/// Why a command is given up on.
#[derive(Clone, Copy, Debug)]
pub(super) enum GaveUp {
    Refused,
    Malformed,
    Unwritable,
}

impl HandlerStats {
    pub fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            refused: get(&self.refused),
            malformed: get(&self.malformed),
            unwritable: get(&self.unwritable),
            dead_lettered: get(&self.dead_lettered),
            dead_letter_failed: get(&self.dead_letter_failed),
        }
    }

    pub(super) fn gave_up(&self, why: GaveUp) {
        let counter = match why {
            GaveUp::Refused => &self.refused,
            GaveUp::Malformed => &self.malformed,
            GaveUp::Unwritable => &self.unwritable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn dead_lettered(&self, written: bool) {
        let counter = if written {
            &self.dead_lettered
        } else {
            &self.dead_letter_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
