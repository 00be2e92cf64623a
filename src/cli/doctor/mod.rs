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
use crate::cli::output::outln;
use crate::config::Settings;
use crate::connection::Conn;
use crate::definition;
use crate::store::inspect::{self, StreamInfo};
use clap::Args;
use serde::Serialize;
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
    let examined = match connect(&settings).await {
        Ok((_client, mut conn)) => examine(&mut conn, &settings, &sagas, &mut report).await,
        Err(message) => Err(message),
    };
    if let Err(message) = examined {
        eprintln!("sagaflow doctor: {message}");
        return ExitCode::from(3);
    }
    report.status = report.worst();
    if args.json {
        outln!(
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
            Err(e) if $crate::cli::doctor::unreachable(&e) => {
                return Err(format!("lost Redis: {e}"))
            }
            Err(e) => {
                $report.add(
                    $section,
                    $crate::cli::doctor::Level::Fail,
                    $subject,
                    format!("cannot be read: {e}"),
                );
                $report.fix(
                    "on NOPERM: give the user of this URL the commands doctor runs (docs/operations.md, Checking a deployment)".into(),
                );
                None
            }
        }
    };
}

mod sagas;
mod streams;

async fn examine(
    conn: &mut Conn,
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

    streams::readers(conn, settings, report, catalog.as_ref()).await?;
    sagas::findings(conn, settings, report, &live, catalog.as_ref()).await
}

const SECTIONS: [&str; 5] = ["daemons", "definitions", "streams", "dead letters", "sagas"];

fn print_text(report: &Report) {
    outln!(
        "sagaflow doctor: {} (definitions: {})",
        report.redis,
        report.sagas
    );
    for section in SECTIONS {
        outln!("\n{section}");
        for f in report.findings.iter().filter(|f| f.section == section) {
            outln!("  {:<5} {}: {}", f.level.label(), f.subject, f.message);
            if let Some(fix) = &f.fix {
                outln!("        fix: {fix}");
            }
        }
    }
    let count = |level| report.findings.iter().filter(|f| f.level == level).count();
    outln!(
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
