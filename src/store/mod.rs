//! The saga store: the Lua scripts that change sagas, leases and streams
//! atomically, each in its own file under `scripts/` with its keys and
//! named arguments documented at its top, and the typed calls that run
//! them. Everything two daemons compare in time is decided here on
//! Redis's clock (`TIME` inside the scripts), never on a host's.
//!
//! - [`lease`]: leases of owner tokens, their renewal, and the claims that
//!   move sagas from a dead owner to a live one.
//! - [`transition`]: the one atomic, fenced write of a saga transition.
//! - [`read`]: bounded reads of streams: at most a given number of entries,
//!   each at most a given size (larger ones never leave Redis whole).
//! - [`maintain`]: dead-lettering and trimming of the streams.
//! - [`groups`]: consumer groups of the shared streams: creation, pending
//!   entries, consumers long gone.
//! - [`keys`]: where everything lives: partitions and key names.
//! - [`sagas`]: records by id (decoded or as stored), sagas by phase from
//!   the indexes.
//! - [`idempotency`]: the idempotency keys of starts.
//! - [`definitions`]: the texts of the definitions' versions sagas run on.
//! - [`control`]: the nonces of operators' requests carried out.
//! - [`locks`]: semantic locks: who holds a business key, who waits.
//! - [`signals`]: signals kept for sagas until a `wait` step takes them.
//! - [`holds`]: saga names paused, and the starts held meanwhile.
//! - [`relay`]: on a cluster, the relay of the partitions' outboxes.
//! - [`inspect`]: bounded reads for an operator's view (`sagaflow doctor`).
//!
//! The daemon ([`crate::engine`]) names no key, sends no command to one,
//! and decodes no record: it calls these functions, each saying what it
//! bounds and returning what it found as a type of its own.

pub mod control;
pub mod definitions;
pub mod groups;
pub mod holds;
pub mod idempotency;
pub mod inspect;
pub mod keys;
pub mod lease;
pub mod locks;
pub mod maintain;
pub mod read;
pub mod relay;
pub mod sagas;
mod scripts;
pub mod signals;
pub mod transition;

pub use transition::{EntryRef, Fence, Ownership, Transition, WriteError, Written};

/// Unix ms from Redis's `TIME` reply of a script, which is a Lua number.
fn millis(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
