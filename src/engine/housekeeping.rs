//! Keeping Redis bounded, in a task of its own: consumers of daemons long
//! gone are forgotten, the command, event, control, signals and trigger streams lose
//! their entries older than the retention or beyond their caps, each
//! partition's indexes and fence lose what outlived the retention, the
//! owners found in the partitions are registered so that their sagas are
//! claimed if no live lease holds them, and the pending entries are
//! measured. Its failures are its own: they are
//! logged and counted, and never delay a lease renewal or a saga. It
//! decides what is due and with what bounds; the store does each job
//! ([`crate::store::maintain`], [`crate::store::groups`]).

use super::{pause, Shared};
use crate::retry::Outage;
use crate::store::groups::{self, Unfinished};
use crate::store::keys::{Keys, Partition};
use crate::store::{lease, maintain};
use crate::streams::StreamId;
use crate::telemetry::metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the housekeeping looks at what is due.
const TICK: Duration = Duration::from_secs(1);

/// How often trigger streams and the control stream are trimmed: often,
/// since outside writers may add thousands a second and only a trim caps
/// those streams; a trim under the cap costs a few short commands.
const TRIGGER_TRIM_EVERY: Duration = Duration::from_secs(1);

pub(super) async fn run(shared: Arc<Shared>) {
    let mut conn = shared.conn.clone();
    let mut cleaned_at = Instant::now();
    let mut trimmed_at: Option<Instant> = None;
    let mut triggers_trimmed_at: Option<Instant> = None;
    let mut reported_at: Option<Instant> = None;
    let mut registered_at: Option<Instant> = None;
    let outage = Outage::new("keeping Redis tidy (trimming, clean-up)")
        .metered(metrics::redis_meter("housekeeping"));
    while pause(&shared.shutdown, TICK).await {
        // Each job runs when it is due, whatever became of the others: a
        // stream replaced by another kind of key fails its own trim, not
        // the whole round. A failed job waits for its next turn.
        let mut outcome = Ok(());
        let mut note = |result: redis::RedisResult<()>| {
            if outcome.is_ok() {
                outcome = result;
            }
        };
        if registered_at.is_none_or(|at| at.elapsed() >= REGISTER_EVERY) {
            let result = register_unknown_owners(&shared, &mut conn).await;
            if result.is_ok() {
                registered_at = Some(Instant::now());
            }
            note(result);
        }
        if triggers_trimmed_at.is_none_or(|at| at.elapsed() >= TRIGGER_TRIM_EVERY) {
            note(trim_triggers(&shared, &mut conn).await);
            note(trim_control(&shared, &mut conn).await);
            note(trim_signals(&shared, &mut conn).await);
            triggers_trimmed_at = Some(Instant::now());
        }
        if trimmed_at.is_none_or(|at| at.elapsed() >= trim_every(&shared.settings)) {
            note(trim_streams(&shared).await);
            note(trim_partitions(&shared, &mut conn).await);
            trimmed_at = Some(Instant::now());
        }
        if cleaned_at.elapsed() >= CLEAN_EVERY {
            note(forget_idle_consumers(&shared).await);
            cleaned_at = Instant::now();
        }
        if reported_at.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
            note(report_pending(&shared).await);
            reported_at = Some(Instant::now());
        }
        outage.record(&outcome);
    }
}

/// Registers every owner that has had sagas in a partition but that the
/// registry of owners does not know (removed by hand, or given up half-way
/// through a claim), so that the takeover claims their sagas if no live
/// lease holds them. Done once per start, one partition at a time, from
/// each partition's registry: never a scan of the keyspace.
async fn register_unknown_owners(
    shared: &Shared,
    conn: &mut crate::connection::Conn,
) -> redis::RedisResult<()> {
    for p in Partition::all() {
        lease::register_owners_of(conn, &shared.settings, p).await?;
        if shared.shutdown.is_cancelled() {
            break;
        }
    }
    Ok(())
}

/// Forgets, in every partition, the ended sagas whose records expired and
/// the claims older than the retention.
async fn trim_partitions(
    shared: &Shared,
    conn: &mut crate::connection::Conn,
) -> redis::RedisResult<()> {
    let keys = Keys::of(&shared.settings);
    let before = shared
        .now_ms()
        .saturating_sub(shared.settings.retention.as_millis() as u64);
    for p in Partition::all() {
        maintain::trim_partition(conn, &keys, p, before).await?;
    }
    Ok(())
}

/// Trims each trigger stream by age and by count, keeping every start the
/// daemon group has not finished with.
async fn trim_triggers(
    shared: &Shared,
    conn: &mut crate::connection::Conn,
) -> redis::RedisResult<()> {
    let settings = &shared.settings;
    let below_age = cut(shared.now_ms(), settings.stream_retention);
    // Every stream is trimmed even if one fails; the first failure is told.
    let mut outcome = Ok(());
    for stream in super::trigger_streams(settings, &shared.catalog) {
        let trimmed = async {
            let group = &settings.trigger_group;
            let Unfinished::From(unfinished) =
                groups::oldest_unfinished(conn, &stream, group).await?
            else {
                return Ok(0);
            };
            let maxlen = settings.triggers_maxlen;
            maintain::trim_trigger(conn, &stream, below_age, unfinished, maxlen).await
        }
        .await;
        match trimmed {
            Ok(removed) if removed > 0 => {
                tracing::debug!(%stream, removed, "trigger stream trimmed")
            }
            Ok(_) => {}
            Err(e) if outcome.is_ok() => outcome = Err(e),
            Err(_) => {}
        }
    }
    outcome
}

/// Trims the signals stream by age and to `signals_maxlen`, as often as
/// the trigger streams and in the same way: anyone allowed to send signals
/// may write through an `XADD` that caps nothing, and a signal the daemon
/// group has not finished with is never trimmed.
async fn trim_signals(
    shared: &Shared,
    conn: &mut crate::connection::Conn,
) -> redis::RedisResult<()> {
    let settings = &shared.settings;
    let stream = &settings.signals_stream;
    let Unfinished::From(unfinished) =
        groups::oldest_unfinished(conn, stream, &settings.trigger_group).await?
    else {
        return Ok(());
    };
    let below_age = cut(shared.now_ms(), settings.stream_retention);
    let maxlen = settings.signals_maxlen;
    let removed = maintain::trim_trigger(conn, stream, below_age, unfinished, maxlen).await?;
    if removed > 0 {
        tracing::debug!(%stream, removed, "signals stream trimmed");
    }
    Ok(())
}

/// The first id of entries younger than `keep`, at `now`.
fn cut(now: u64, keep: Duration) -> StreamId {
    StreamId::at_ms(now.saturating_sub(keep.as_millis() as u64))
}

/// How often consumers of daemons long gone are removed from the trigger
/// groups.
const CLEAN_EVERY: Duration = Duration::from_secs(60);

/// How often the owners found in the partitions are registered, so that a
/// daemon that came back after its claims were forgotten (paused for longer
/// than the retention) and wrote sagas under its old token still has them
/// claimed: 64 small reads.
const REGISTER_EVERY: Duration = Duration::from_secs(600);

/// Removes from the trigger groups (and the signals group) the consumers (daemons) that hold no
/// pending entry and have not read for a hundred leases: each daemon started
/// with a fresh node id adds one, and they would pile up.
pub(super) async fn forget_idle_consumers(shared: &Shared) -> redis::RedisResult<()> {
    let mut conn = shared.conn.clone();
    let settings = &shared.settings;
    let idle_over = settings.lease_ttl.saturating_mul(100);
    let (group, keep) = (&settings.trigger_group, &settings.node_id);
    let mut streams = super::trigger_streams(settings, &shared.catalog);
    streams.push(settings.signals_stream.clone());
    for stream in streams {
        groups::forget_idle_consumers(&mut conn, &stream, group, keep, idle_over).await?;
    }
    Ok(())
}

/// How often the streams are trimmed: a quarter of the retention, between
/// a second and a minute.
fn trim_every(settings: &crate::config::Settings) -> Duration {
    (settings.stream_retention / 4).clamp(Duration::from_secs(1), CLEAN_EVERY)
}

/// A command stream keeps its entries this long past the longest timeout
/// of the commands sent to it, for clocks that differ between hosts: a
/// handler never misses a command that is still awaited.
const COMMAND_GRACE: Duration = Duration::from_secs(5);

/// How long a command stream keeps its entries, given the longest timeout
/// of the commands sent to it.
pub fn command_stream_keep(retention: Duration, longest_timeout: Duration) -> Duration {
    retention.max(longest_timeout + COMMAND_GRACE)
}

/// Trims the streams the daemon writes to entries younger than
/// `stream_retention` (`XTRIM MINID ~`, so a little more may stay). A
/// command stream keeps its commands until a little past their longest
/// timeout. Other daemons do the same: trimming twice is harmless.
pub(super) async fn trim_streams(shared: &Shared) -> redis::RedisResult<()> {
    let mut conn = shared.conn.clone();
    let settings = &shared.settings;
    let now = shared.now_ms();
    let below = cut(now, settings.stream_retention);
    let mut streams = vec![
        (settings.events_stream.clone(), below),
        (settings.control_stream.clone(), below),
    ];
    for (stream, longest) in shared.catalog.command_streams() {
        let keep = command_stream_keep(settings.stream_retention, longest);
        streams.push((stream, cut(now, keep)));
    }
    maintain::trim_by_age(&mut conn, &streams).await
}

/// Trims the control stream to its cap and its retention, as often as the
/// trigger streams: operators' requests may come through an `XADD` that
/// does not cap it, a million at once.
async fn trim_control(
    shared: &Shared,
    conn: &mut crate::connection::Conn,
) -> redis::RedisResult<()> {
    let settings = &shared.settings;
    let below = cut(shared.now_ms(), settings.stream_retention);
    maintain::trim_capped(
        conn,
        &settings.control_stream,
        settings.control_maxlen,
        below,
    )
    .await
}

/// How often the pending entries of the streams are measured.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Sets the pending-entries gauge of every consumer group on the trigger,
/// signals and command streams: the daemons' starts and signals under
/// way, and the commands handlers took and have not answered.
pub(super) async fn report_pending(shared: &Shared) -> redis::RedisResult<()> {
    let mut conn = shared.conn.clone();
    let mut streams = super::trigger_streams(&shared.settings, &shared.catalog);
    streams.push(shared.settings.signals_stream.clone());
    streams.extend(shared.catalog.command_streams().into_iter().map(|(s, _)| s));
    for stream in streams {
        // No stream yet, or a key of another kind: nothing to measure.
        if let Some(pending) = groups::pending_by_group(&mut conn, &stream).await? {
            metrics::pending_entries(&stream, &pending);
        }
    }
    Ok(())
}
