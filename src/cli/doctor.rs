//! `sagaflow doctor`: one screen of what a deployment hides in Redis.
//! Which daemons are alive, who reads each stream the definitions name,
//! what was dead-lettered, which sagas wait for an operator or for a
//! daemon, and which definition versions are in use; each finding OK,
//! WARN or FAIL with a one-line fix.
//!
//! Everything it reads is bounded (the constants below) and named by the
//! settings, the definitions or what it read before: it never walks the
//! keyspace (no `KEYS`, no `SCAN`), so it is safe on a large production
//! Redis. Exit 0 without a FAIL, 1 with one, 3 when Redis cannot be reached.

use super::connect;
use super::run::RedisArgs;
use crate::config::Settings;
use crate::definition::{self, Catalog};
use crate::saga::Phase;
use crate::store::inspect::{self, StreamInfo, StreamLimits};
use crate::store::lease;
use clap::Args;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Streams inspected (trigger and command streams, then dead-letter
/// streams), each at most: more than a deployment defines, few enough for
/// one screen.
pub const MAX_STREAMS: usize = 64;
/// Consumer groups described per stream, at most.
pub const MAX_GROUPS: usize = 16;
/// Consumers described per group, at most.
pub const MAX_CONSUMERS: usize = 16;
/// Leases read, at most (those that run out last, the live ones first).
pub const MAX_LEASES: usize = 32;
/// Owners without a live lease looked at for orphaned sagas, at most.
pub const MAX_DEAD_OWNERS: usize = 32;
/// Entries of the events stream looked through for failed sagas, newest
/// first, 100 at a time inside Redis.
pub const EVENTS_LOOKED_AT: usize = 10_000;
/// Records of failed sagas read, at most.
pub const MAX_FAILED: usize = 100;
/// Records of running sagas read for the definition versions in use.
pub const MAX_RUNNING: usize = 200;
/// Longest name or reason kept from Redis, in bytes.
const NAME_BYTES: usize = 200;
/// A consumer that has not read for this long while entries wait is
/// taken for gone.
const IDLE_MS: u64 = 60_000;
/// Items named in one finding's line, at most.
const SHOWN: usize = 5;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow doctor
  sagaflow doctor --redis-url redis://redis:6379 --sagas /etc/sagaflow/sagas --json

Exit 0 when nothing FAILs, 1 otherwise, 3 when Redis cannot be reached.")]
pub struct DoctorArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The daemons' saga definitions (a directory or one file): their
    /// command and trigger streams are inspected [default: the `sagas_dir` setting].
    #[arg(long)]
    sagas: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
enum Level {
    #[default]
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Serialize)]
struct Finding {
    section: &'static str,
    level: Level,
    subject: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Debug, Serialize)]
struct StreamReport {
    stream: String,
    /// `trigger`, `commands` or `dead-letter`.
    role: &'static str,
    #[serde(flatten)]
    info: StreamInfo,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    /// The worst finding's level.
    status: Level,
    redis: String,
    sagas: String,
    now_ms: u64,
    leases: Vec<inspect::Lease>,
    streams: Vec<StreamReport>,
    findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, section: &'static str, level: Level, subject: &str, message: String) {
        self.findings.push(Finding {
            section,
            level,
            subject: subject.to_owned(),
            message,
            fix: None,
        });
    }

    fn fix(&mut self, hint: String) {
        if let Some(last) = self.findings.last_mut() {
            last.fix = Some(hint);
        }
    }

    fn worst(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok)
    }
}

pub async fn run(args: DoctorArgs) -> ExitCode {
    let settings = match args.redis.settings() {
        Ok(s) => s,
        Err(message) => {
            eprintln!("sagaflow doctor: {message}");
            return ExitCode::FAILURE;
        }
    };
    let sagas = args.sagas.unwrap_or_else(|| settings.sagas_dir.clone());
    let mut report = Report {
        redis: crate::config::redacted(&settings.redis_url),
        sagas: sagas.display().to_string(),
        ..Report::default()
    };
    let examined = match connect(&settings.redis_url).await {
        Ok((_client, mut conn)) => examine(&mut conn, &settings, &sagas, &mut report).await,
        Err(message) => Err(message),
    };
    if let Err(message) = examined {
        eprintln!("sagaflow doctor: {message}");
        return ExitCode::from(3);
    }
    report.status = report.worst();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serializes")
        );
    } else {
        print_text(&report);
    }
    match report.worst() {
        Level::Fail => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

/// A Redis error that means Redis cannot be reached (exit 3), rather than
/// a refusal of one read (a FAIL finding).
fn unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Runs a read; a refusal becomes a FAIL finding and `None`, a lost
/// connection the error that ends the run.
macro_rules! read {
    ($report:expr, $section:expr, $subject:expr, $fut:expr) => {
        match $fut.await {
            Ok(v) => Some(v),
            Err(e) if unreachable(&e) => return Err(format!("lost Redis: {e}")),
            Err(e) => {
                $report.add(
                    $section,
                    Level::Fail,
                    $subject,
                    format!("cannot be read: {e}"),
                );
                $report.fix(
                    "the user of this URL needs read access (sagaflow acl, role viewer)".into(),
                );
                None
            }
        }
    };
}

async fn examine(
    conn: &mut MultiplexedConnection,
    settings: &Settings,
    sagas: &std::path::Path,
    report: &mut Report,
) -> Result<(), String> {
    // The definitions.
    let catalog = match definition::load_dir(sagas) {
        Ok(catalog) => {
            let names = catalog.names().join(", ");
            let n = catalog.len();
            report.add(
                "definitions",
                Level::Ok,
                &report.sagas.clone(),
                format!("{n} loaded: {names}"),
            );
            Some(catalog)
        }
        Err(errors) => {
            let first = errors
                .0
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            let n = errors.0.len();
            let subject = report.sagas.clone();
            report.add(
                "definitions",
                Level::Fail,
                &subject,
                format!("do not load: {n} problem(s), the first: {first}"),
            );
            report.fix(format!(
                "sagaflow validate {subject}; or give the daemons' directory with --sagas"
            ));
            None
        }
    };

    // The daemons.
    let Some(leases) = read!(
        report,
        "daemons",
        "leases",
        inspect::leases(conn, settings, MAX_LEASES)
    ) else {
        return Ok(());
    };
    let now = leases.now_ms;
    report.now_ms = now;
    let live: Vec<&inspect::Lease> = leases
        .leases
        .iter()
        .filter(|l| l.expires_at_ms > now)
        .collect();
    let mut live_text = Vec::new();
    for lease in live.iter().take(SHOWN) {
        let held = read!(
            report,
            "daemons",
            &lease.owner,
            inspect::owned(conn, settings, &lease.owner, 0)
        )
        .map_or(0, |(n, _)| n);
        let left = seconds(lease.expires_at_ms - now);
        live_text.push(format!("{} (lease {left} left, {held} sagas)", lease.owner));
    }
    if live.is_empty() {
        let ran_out = match leases.total {
            0 => String::new(),
            n => format!(" ({})", count(n, "lease ran out", "leases ran out")),
        };
        report.add(
            "daemons",
            Level::Fail,
            "daemons",
            format!("no daemon is alive{ran_out}"),
        );
        report.fix("start `sagaflow run` against this Redis; it takes starts and sagas over once its lease is registered".into());
    } else {
        let more = more(live.len(), SHOWN);
        report.add(
            "daemons",
            Level::Ok,
            "daemons",
            format!("{} alive: {}{more}", live.len(), live_text.join(", ")),
        );
    }
    report.leases = leases.leases.clone();

    // The streams the definitions name, and who reads them.
    let triggers = match &catalog {
        Some(catalog) => crate::engine::trigger_streams(settings, catalog),
        None => vec![settings.trigger_stream.clone()],
    };
    let commands: Vec<String> = catalog
        .as_ref()
        .map(Catalog::command_streams)
        .unwrap_or_default()
        .into_iter()
        .map(|(stream, _)| stream)
        .collect();
    let limits = StreamLimits {
        groups: MAX_GROUPS,
        consumers: MAX_CONSUMERS,
        bytes: NAME_BYTES,
    };
    let mut handler_groups = Vec::new();
    let all: Vec<(&String, &'static str)> = triggers
        .iter()
        .map(|s| (s, "trigger"))
        .chain(commands.iter().map(|s| (s, "commands")))
        .collect();
    if all.len() > MAX_STREAMS {
        let n = all.len() - MAX_STREAMS;
        report.add(
            "streams",
            Level::Warn,
            "streams",
            format!("{n} more streams not inspected (at most {MAX_STREAMS})"),
        );
    }
    for (stream, role) in all.into_iter().take(MAX_STREAMS) {
        let Some(info) = read!(
            report,
            "streams",
            stream,
            inspect::stream(conn, stream, limits)
        ) else {
            continue;
        };
        if role == "trigger" {
            trigger_finding(report, settings, stream, &info);
        } else {
            command_finding(report, stream, &info);
            handler_groups.extend(info.groups.iter().map(|g| g.name.clone()));
        }
        report.streams.push(StreamReport {
            stream: stream.clone(),
            role,
            info,
        });
    }

    // Dead letters.
    handler_groups.sort();
    handler_groups.dedup();
    let dead_letters: Vec<String> = std::iter::once(settings.dead_letter_stream.clone())
        .chain(
            handler_groups
                .iter()
                .map(|g| crate::handler::dead_letter_key(g)),
        )
        .take(MAX_STREAMS)
        .collect();
    let limits = StreamLimits {
        groups: 0,
        consumers: 0,
        bytes: NAME_BYTES,
    };
    for stream in &dead_letters {
        let Some(info) = read!(
            report,
            "dead letters",
            stream,
            inspect::stream(conn, stream, limits)
        ) else {
            continue;
        };
        match (info.kind.as_str(), info.length) {
            ("stream", n) if n > 0 => {
                let reason = info.last_reason.as_deref().unwrap_or("(no reason)");
                report.add(
                    "dead letters",
                    Level::Warn,
                    stream,
                    format!("{}; the last: {reason}", count(n, "entry", "entries")),
                );
                report.fix(format!("XREVRANGE {stream} + - COUNT 10 (each entry has the reason and a bounded copy); once handled: XTRIM {stream} MAXLEN 0"));
            }
            ("stream" | "none", _) => report.add("dead letters", Level::Ok, stream, "empty".into()),
            (kind, _) => {
                report.add(
                    "dead letters",
                    Level::Fail,
                    stream,
                    format!("holds a {kind}, not a stream: nothing can be dead-lettered"),
                );
                report.fix(format!("rename or delete the key `{stream}`"));
            }
        }
        report.streams.push(StreamReport {
            stream: stream.clone(),
            role: "dead-letter",
            info,
        });
    }

    // Sagas an operator or a daemon must see to.
    sagas_findings(conn, settings, report, &live, catalog.as_ref()).await
}

fn trigger_finding(report: &mut Report, settings: &Settings, stream: &str, info: &StreamInfo) {
    let subject = format!("{stream} (trigger)");
    if !matches!(info.kind.as_str(), "stream" | "none") {
        report.add(
            "streams",
            Level::Fail,
            &subject,
            format!(
                "holds a {}, not a stream: no start can be written there",
                info.kind
            ),
        );
        report.fix(format!("rename or delete the key `{stream}`"));
        return;
    }
    let group = &settings.trigger_group;
    match info.groups.iter().find(|g| &g.name == group) {
        None => {
            report.add("streams", Level::Fail, &subject, format!("the daemons' group `{group}` does not read it: starts written there wait ({} entries)", info.length));
            report.fix("start `sagaflow run` with these settings: it creates the group".into());
        }
        Some(g) => {
            let (level, summary) = group_summary(g);
            report.add("streams", level, &subject, summary);
            if level != Level::Ok {
                report.fix("are the daemons alive and reading? look at their logs".into());
            }
        }
    }
}

fn command_finding(report: &mut Report, stream: &str, info: &StreamInfo) {
    if !matches!(info.kind.as_str(), "stream" | "none") {
        report.add(
            "streams",
            Level::Fail,
            stream,
            format!(
                "holds a {}, not a stream: no command can be sent there",
                info.kind
            ),
        );
        report.fix(format!(
            "rename or delete the key `{stream}`; the sagas that failed on it can then be retried"
        ));
        return;
    }
    if info.group_count == 0 {
        report.add("streams", Level::Fail, stream, format!("no consumer group reads `{stream}`: its commands ({} so far) wait unread until their step times out", info.length));
        report.fix(format!("start the handlers of `{stream}` (sagaflow handlers, or your service); a group created at `$` misses the commands sent before: XGROUP CREATE {stream} <group> 0 MKSTREAM"));
        return;
    }
    let mut level = Level::Ok;
    let mut parts = Vec::new();
    for g in &info.groups {
        let (l, summary) = group_summary(g);
        level = level.max(l);
        parts.push(summary);
    }
    let more = more(info.group_count as usize, info.groups.len());
    report.add(
        "streams",
        level,
        stream,
        format!("{}{more}", parts.join("; ")),
    );
    if level != Level::Ok {
        report.fix(format!(
            "start (or look at) the handlers of these groups: XINFO CONSUMERS {stream} <group>"
        ));
    }
}

/// A group's line, and whether anything seems wrong with it: entries wait
/// and no consumer has read for a while, or there is none to read them.
/// A group no consumer has read yet, with nothing waiting, is fine: Redis
/// knows a consumer once something was delivered to it.
fn group_summary(g: &inspect::GroupInfo) -> (Level, String) {
    let lag = g.lag.map_or("unknown".to_owned(), |l| l.to_string());
    let waiting = g.lag.unwrap_or(1) > 0 || g.pending > 0;
    let freshest = g.consumers.iter().map(|c| c.idle_ms).min();
    let mut text = format!(
        "group {}: {}, lag {lag}, {} pending",
        g.name,
        count(g.consumer_count, "consumer", "consumers"),
        g.pending
    );
    let level = match freshest {
        None if waiting => {
            text.push_str(", and no consumer to read them");
            Level::Warn
        }
        Some(idle) if waiting && idle > IDLE_MS => {
            text.push_str(&format!(", its consumers idle for {}", seconds(idle)));
            Level::Warn
        }
        _ => Level::Ok,
    };
    (level, text)
}

async fn sagas_findings(
    conn: &mut MultiplexedConnection,
    settings: &Settings,
    report: &mut Report,
    live: &[&inspect::Lease],
    catalog: Option<&Catalog>,
) -> Result<(), String> {
    // Orphans: sagas held under an owner whose lease ran out.
    let mut running_ids: Vec<String> = Vec::new();
    let dead = read!(
        report,
        "sagas",
        "orphans",
        lease::dead_owners(conn, settings, MAX_DEAD_OWNERS)
    )
    .map(|(_, owners)| owners)
    .unwrap_or_default();
    let mut orphans = 0;
    let mut examples = Vec::new();
    for owner in &dead {
        if let Some((n, ids)) = read!(
            report,
            "sagas",
            owner,
            inspect::owned(conn, settings, owner, SHOWN)
        ) {
            orphans += n;
            examples.extend(ids.iter().map(|id| format!("{id} (of {owner})")));
            running_ids.extend(ids);
        }
    }
    if orphans == 0 {
        report.add(
            "sagas",
            Level::Ok,
            "orphaned",
            "none: every running saga has a live daemon".into(),
        );
    } else {
        let level = if live.is_empty() {
            Level::Fail
        } else {
            Level::Warn
        };
        let shown: Vec<_> = examples.iter().take(SHOWN).cloned().collect();
        report.add(
            "sagas",
            level,
            "orphaned",
            format!(
                "{orphans} running saga(s) held by daemons whose lease ran out: {}",
                shown.join(", ")
            ),
        );
        report.fix(if live.is_empty() {
            "start `sagaflow run`: it claims them and carries them on".into()
        } else {
            format!("a live daemon claims them within takeover_every ({}); if they stay, look at its log", seconds(settings.takeover_every.as_millis() as u64))
        });
    }

    // Stuck: failed lately and not given up.
    let failed = read!(
        report,
        "sagas",
        "stuck",
        inspect::recent_failures(conn, settings, EVENTS_LOOKED_AT, MAX_FAILED)
    )
    .unwrap_or_default();
    let mut stuck = Vec::new();
    for id in &failed {
        if let Ok(Some(record)) = crate::operator::read(conn, settings, id).await {
            let s = &record.state;
            if s.phase == Phase::Failed && !s.abandoned {
                let at = s
                    .failure
                    .as_ref()
                    .map_or(String::new(), |f| format!(", at {}", f.step));
                stuck.push(format!("{id} ({}{at})", s.saga));
            }
        }
    }
    if stuck.is_empty() {
        report.add(
            "sagas",
            Level::Ok,
            "stuck",
            format!("none among the last {EVENTS_LOOKED_AT} events"),
        );
    } else {
        let more = more(stuck.len(), SHOWN);
        let shown: Vec<_> = stuck.iter().take(SHOWN).cloned().collect();
        report.add(
            "sagas",
            Level::Fail,
            "stuck",
            format!(
                "{} failed saga(s) wait for an operator: {}{more}",
                stuck.len(),
                shown.join(", ")
            ),
        );
        report.fix("sagaflow status <saga id>; mend the cause, then sagaflow retry <saga id> (or skip, abandon); sagaflow list --state stuck lists them all".into());
    }

    // Definition versions in use, from a sample of running sagas.
    for lease in live {
        let room = MAX_RUNNING.saturating_sub(running_ids.len());
        if room == 0 {
            break;
        }
        if let Some((_, ids)) = read!(
            report,
            "definitions",
            &lease.owner,
            inspect::owned(conn, settings, &lease.owner, room)
        ) {
            running_ids.extend(ids);
        }
    }
    running_ids.truncate(MAX_RUNNING);
    let mut in_use: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for id in &running_ids {
        if let Ok(Some(record)) = crate::operator::read(conn, settings, id).await {
            let s = record.state;
            *in_use
                .entry(s.saga)
                .or_default()
                .entry(s.definition_version)
                .or_default() += 1;
        }
    }
    let mut names: Vec<String> = in_use.keys().cloned().collect();
    if let Some(catalog) = catalog {
        names.extend(catalog.names().iter().map(|n| n.to_string()));
    }
    names.sort();
    names.dedup();
    for name in names.iter().take(MAX_STREAMS) {
        let file = catalog.and_then(|c| c.get(name)).map(|d| d.version.clone());
        let versions = in_use.get(name.as_str()).cloned().unwrap_or_default();
        let mut text = match &file {
            Some(v) => format!("file version {}", short(v)),
            None => "not in the definitions given".to_owned(),
        };
        let running: Vec<String> = versions
            .iter()
            .map(|(v, n)| format!("{} x{n}", short(v)))
            .collect();
        if running.is_empty() {
            text.push_str(&format!(
                "; none running (of {} sampled)",
                running_ids.len()
            ));
        } else {
            text.push_str(&format!("; running: {}", running.join(", ")));
        }
        let mut level = Level::Ok;
        let mut fix = None;
        for (version, n) in &versions {
            if Some(version) == file.as_ref() || version.is_empty() {
                continue;
            }
            let kept = read!(
                report,
                "definitions",
                name,
                inspect::definition_kept(conn, settings, name, version)
            )
            .unwrap_or(true);
            if !kept {
                level = Level::Fail;
                text.push_str(&format!("; {n} on {}, which neither the files nor Redis hold: no daemon can resume them", short(version)));
                fix = Some(format!(
                    "put version {} of `{name}` back in the daemons' sagas directory",
                    short(version)
                ));
            }
        }
        if let Some(version) = &file {
            let kept = read!(
                report,
                "definitions",
                name,
                inspect::definition_kept(conn, settings, name, version)
            )
            .unwrap_or(true);
            if !kept && level == Level::Ok {
                level = Level::Warn;
                text.push_str("; no daemon has loaded this file version");
                fix = Some(
                    "roll the daemons to load it, or give --sagas the daemons' own directory"
                        .into(),
                );
            }
        }
        report.add("definitions", level, name, text);
        if let Some(fix) = fix {
            report.fix(fix);
        }
    }
    Ok(())
}

const SECTIONS: [&str; 5] = ["daemons", "definitions", "streams", "dead letters", "sagas"];

fn print_text(report: &Report) {
    println!(
        "sagaflow doctor: {} (definitions: {})",
        report.redis, report.sagas
    );
    for section in SECTIONS {
        println!("\n{section}");
        for f in report.findings.iter().filter(|f| f.section == section) {
            println!("  {:<5} {}: {}", f.level.label(), f.subject, f.message);
            if let Some(fix) = &f.fix {
                println!("        fix: {fix}");
            }
        }
    }
    let count = |level| report.findings.iter().filter(|f| f.level == level).count();
    println!(
        "\n{} FAIL, {} WARN, {} OK",
        count(Level::Fail),
        count(Level::Warn),
        count(Level::Ok)
    );
}

fn seconds(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
    }
}

fn short(version: &str) -> &str {
    version.get(..8).unwrap_or(version)
}

/// "1 entry", "2 entries".
fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn more(total: usize, shown: usize) -> String {
    if total > shown {
        format!(" (and {} more)", total - shown)
    } else {
        String::new()
    }
}
