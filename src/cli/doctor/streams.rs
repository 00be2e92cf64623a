//! Who reads each stream the definitions name, and what was dead-lettered.

use super::{count, more, seconds, Level, Report, StreamReport};
use super::{IDLE_MS, MAX_CONSUMERS, MAX_GROUPS, MAX_STREAMS, NAME_BYTES};
use crate::config::Settings;
use crate::connection::Conn;
use crate::definition::Catalog;
use crate::store::inspect::{self, StreamInfo, StreamLimits};

/// The trigger and command streams with their groups, then the
/// dead-letter streams: the daemons' and those of the groups found.
pub(super) async fn readers(
    conn: &mut Conn,
    settings: &Settings,
    report: &mut Report,
    catalog: Option<&Catalog>,
) -> Result<(), String> {
    // The streams the definitions name, and who reads them.
    let triggers = match catalog {
        Some(catalog) => crate::engine::trigger_streams(settings, catalog),
        None => vec![settings.trigger_stream.clone()],
    };
    let commands: Vec<String> = catalog
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

    Ok(())
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
