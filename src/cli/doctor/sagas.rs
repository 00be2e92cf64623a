//! Sagas that wait for an operator or a daemon, and the definition
//! versions the running ones are on.

use super::{more, seconds, short, Level, Report};
use super::{EVENTS_LOOKED_AT, MAX_DEAD_OWNERS, MAX_FAILED, MAX_RUNNING, MAX_STREAMS, SHOWN};
use crate::config::Settings;
use crate::connection::Conn;
use crate::definition::Catalog;
use crate::saga::Phase;
use crate::store::inspect;
use crate::store::lease;
use std::collections::BTreeMap;

/// Orphaned and stuck sagas, then the definition versions in use.
pub(super) async fn findings(
    conn: &mut Conn,
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
            if matches!(s.phase, Phase::Failed(_)) && s.abandoned_by().is_none() {
                let at = s
                    .failure()
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
