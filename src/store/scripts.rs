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
script!(LEASE_CHECK, "clock.lua", "lease_check.lua");
script!(LEASE_FORGET, "clock.lua", "lease_forget.lua");
script!(PARTITION_FENCE, "clock.lua", "partition_fence.lua");
script!(PARTITION_CLAIM, "partition_claim.lua");
script!(SAGA_CLAIM, "saga_claim.lua");
script!(TRANSITION, "clock.lua", "writes.lua", "transition.lua");
script!(RELAY, "writes.lua", "relay.lua");
script!(DEAD_LETTER, "dead_letter.lua");
script!(TRIM_TRIGGER, "trim_trigger.lua");
script!(READ_GROUP, "shrink.lua", "read_group.lua");
script!(READ_STREAMS, "shrink.lua", "read_streams.lua");
script!(CLAIM_GROUP, "shrink.lua", "claim_group.lua");
script!(LAST_ID, "last_id.lua");
script!(RELEASE_KEY, "release_key.lua");
script!(LOCK_ACQUIRE, "lock_acquire.lua");
script!(SIGNAL_ACCEPT, "signal_accept.lua");
script!(HOLD_STARTS, "hold_starts.lua");
script!(HOLD_SET, "hold_set.lua");
script!(HOLD_RELEASE, "held.lua", "hold_release.lua");
script!(READ_HELD, "shrink.lua", "read_held.lua");

/// A script that only reads, run with `EVALSHA_RO`: Redis then asks only
/// for read access to its keys, so a user allowed to read them (an
/// operator) may run it, and refuses any write inside it.
pub(super) struct ReadOnly {
    code: &'static str,
    script: LazyLock<Script>,
}

macro_rules! read_only {
    ($name:ident, $($file:literal),+) => {
        pub(super) static $name: ReadOnly = ReadOnly {
            code: concat!($(include_str!(concat!("scripts/", $file))),+),
            script: LazyLock::new(|| Script::new(concat!($(include_str!(concat!("scripts/", $file))),+))),
        };
    };
}

impl ReadOnly {
    /// Runs the script by its hash, loading it once if Redis does not
    /// know it.
    pub(super) async fn run<T: redis::FromRedisValue, C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        keys: &[&str],
        args: &[String],
    ) -> redis::RedisResult<T> {
        let call = || {
            let mut cmd = redis::cmd("EVALSHA_RO");
            cmd.arg(self.script.get_hash())
                .arg(keys.len())
                .arg(keys)
                .arg(args);
            cmd
        };
        match call().query_async(conn).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(self.code)
                    .query_async::<String>(conn)
                    .await?;
                call().query_async(conn).await
            }
            other => other,
        }
    }
}

read_only!(LEASE_DEAD, "clock.lua", "lease_dead.lua");
read_only!(INSPECT_STREAM, "inspect_stream.lua");
read_only!(RECENT_FAILURES, "recent_failures.lua");
