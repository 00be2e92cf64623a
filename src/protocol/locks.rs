//! Semantic locks: the business keys a step declares (`locks:`), held by
//! a saga from the moment its step may start until the saga completed or
//! finished compensating.

use serde::{Deserialize, Serialize};

/// Longest lock name, in bytes.
pub const MAX_LOCK_NAME_LEN: usize = 200;

/// Most sagas holding or waiting for one lock: past it, a saga asking for
/// the lock is refused, and its step fails (a queue that long is a
/// mistake, and each acquisition reads the whole queue).
pub const MAX_LOCK_QUEUE: usize = 1024;

/// Most locks one step may take (all its branches' together), and one
/// saga may hold: each is released by the saga's last transition, which
/// names them all.
pub const MAX_LOCKS_PER_SAGA: usize = 256;

/// A lock's name: 1 to [`MAX_LOCK_NAME_LEN`] bytes of letters, digits and
/// `: _ . - / @ = +`: no space, no brace (the name is the hash tag of the
/// lock's key), no control character.
pub fn check_lock_name(name: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b":_.-/@=+".contains(&b);
    if name.is_empty() || name.len() > MAX_LOCK_NAME_LEN || !name.bytes().all(ok) {
        return Err(format!(
            "lock name `{}` must be 1 to {MAX_LOCK_NAME_LEN} letters, digits or `: _ . - / @ = +`",
            super::limits::quote(name)
        ));
    }
    Ok(())
}

/// One saga in a lock's queue: the first holds the lock, the others wait,
/// in the order they asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEntry {
    pub saga_id: String,
    /// The saga's definition name.
    pub saga: String,
    /// The step that asked for the lock.
    pub step: String,
    /// When it asked (the asking daemon's clock, unix ms).
    pub since_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_are_checked() {
        assert!(check_lock_name("robot:7").is_ok());
        assert!(check_lock_name("area:north/3").is_ok());
        for bad in ["", "a b", "robot:{7}", "x\n", &"a".repeat(201)] {
            assert!(check_lock_name(bad).is_err(), "{bad:?}");
        }
    }
}
