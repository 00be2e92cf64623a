//! The scripts, loaded once: redis-rs runs each by its hash and loads it
//! the first time Redis does not know it.

use redis::Script;
use std::sync::LazyLock;

macro_rules! script {
    ($name:ident, $($file:literal),+) => {
        pub(super) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(concat!($(include_str!(concat!("scripts/", $file))),+)));
    };
}

script!(LEASE_REGISTER, "clock.lua", "lease_register.lua");
script!(LEASE_RENEW, "clock.lua", "lease_renew.lua");
script!(LEASE_RELEASE, "lease_release.lua");
script!(LEASE_DEAD, "clock.lua", "lease_dead.lua");
script!(LEASE_CLAIM, "clock.lua", "lease_claim.lua");
script!(SAGA_CLAIM, "clock.lua", "saga_claim.lua");
script!(TRANSITION, "clock.lua", "transition.lua");
script!(DEAD_LETTER, "dead_letter.lua");
script!(TRIM_TRIGGER, "trim_trigger.lua");
script!(READ_GROUP, "shrink.lua", "read_group.lua");
script!(READ_STREAMS, "shrink.lua", "read_streams.lua");
script!(CLAIM_GROUP, "shrink.lua", "claim_group.lua");
script!(LAST_ID, "last_id.lua");
script!(RELEASE_KEY, "release_key.lua");
script!(INSPECT_STREAM, "inspect_stream.lua");
script!(RECENT_FAILURES, "recent_failures.lua");
