//! `sagaflow acl`: least privilege with Redis ACLs. Prints one
//! `ACL SETUSER` per piece of a deployment (the daemons, each handler
//! service, starters, signallers, operators, viewers), built from the saga definitions
//! and the layered settings, so that each piece can do what it must and
//! nothing else: a handler cannot start a saga or write an operator's
//! request, a starter cannot forge a reply, a viewer cannot write at all.
//!
//! A role is a list of commands and of key patterns (read, write or both),
//! plus, for handlers, selectors: a command is allowed when the root rules
//! or one selector allow it with every key it names. Nothing here talks to
//! Redis: an administrator reviews the output and applies it.

use super::output::outln;
use super::run::RedisArgs;
use crate::config::Settings;
use crate::definition::{self, Catalog};
use crate::handler::SimulationOptions;
use crate::store::keys::Keys;
use clap::{Args, ValueEnum};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Every command the daemon sends, directly or from its Lua scripts: Redis
/// checks each `redis.call` of a script against the calling user too.
///
/// When the daemon starts using a command that is not listed, its user is
/// refused it. `tests/acl_roles.rs` then fails and prints the server's
/// `ACL LOG`, whose entries name the command (`object`), the user, and
/// `context: lua` when a script was refused; the daemon's log says
/// `NOPERM this user has no permissions to run the '<command>' command`,
/// or, from a script, "The user executing the script can't run this
/// command". Add the command here, a subcommand as `name|sub`; a new kind
/// of key goes in [`daemon`].
const DAEMON_COMMANDS: &[&str] = &[
    // Connections, the clock, transactions, and scripts: redis-rs sends
    // EVALSHA, then SCRIPT LOAD when the server does not know the script.
    "ping",
    "time",
    "multi",
    "exec",
    "eval",
    "evalsha",
    "evalsha_ro",
    "script|load",
    // Finding out whether Redis is a cluster (`redis_mode: auto`) and, on a
    // cluster, its nodes; waiting for replicas (`wait_replicas`).
    "cluster|info",
    "cluster|slots",
    "cluster|shards",
    "wait",
    "xdel",
    // The trigger, command, reply, event, control and dead-letter streams.
    "xadd",
    "xack",
    "xautoclaim",
    "xgroup|create",
    "xgroup|delconsumer",
    "xinfo|consumers",
    "xinfo|groups",
    "xlen",
    "xpending",
    "xrange",
    "xrevrange",
    "xread",
    "xreadgroup",
    "xtrim",
    // Saga records, the partitions' indexes, owned sets and fences, leases,
    // pinned definitions, idempotency keys; scripts check the kind of every
    // key before they write, and housekeeping trims the indexes.
    "type",
    "ttl",
    "scard",
    "sismember",
    "zremrangebyscore",
    "zrevrange",
    "del",
    "expire",
    "persist",
    "get",
    "set",
    "hget",
    "hmget",
    "hset",
    // The signals kept for a saga: counted before one more is kept, read
    // whole when the saga asks for them.
    "hlen",
    "hgetall",
    "sadd",
    "srem",
    "smembers",
    "zadd",
    "zrem",
    "zscore",
    "zrangebyscore",
    // The HTTP API lists sagas a page at a time and counts them by phase.
    "zrevrangebyscore",
    "zcard",
    // Semantic locks, lists: asked for in a script (TYPE, LRANGE, RPUSH),
    // let go of in a transition's (TYPE, LRANGE, LREM), read by the API.
    "lrange",
    "rpush",
    "lrem",
    // Saga names paused: what is paused, each trigger stream's holds, and
    // the starts held (see src/store/holds.rs); HGETALL and HLEN above.
    "hsetnx",
    "hdel",
    "hexists",
    // Housekeeping trims each partition's indexes and fence; a claim moves
    // the sagas an owner's set holds and drops the set once empty; a
    // record is read with its time to live.
    "zremrangebyscore",
    "scard",
    "sismember",
    "ttl",
];

/// Commands without keys that a handler's connection sends: the SDK writes
/// a final reply, its record and its acknowledgement in one MULTI.
const HANDLER_KEYLESS: &[&str] = &[
    "ping",
    "time",
    "multi",
    "exec",
    "cluster|info",
    "cluster|slots",
    "cluster|shards",
];

/// What the handler SDK does on its command stream, through its group.
const HANDLER_ON_STREAM: &[&str] = &[
    "xgroup|create",
    "xreadgroup",
    "xautoclaim",
    "xpending",
    "xack",
];

/// What a handler does under its own prefix: the records of its final
/// replies, and its dead-letter stream.
const HANDLER_ON_OWN_KEYS: &[&str] = &["get", "set", "xadd"];

/// What `status`, `list` and `watch` send: reads only (`SCAN` names no key;
/// `GET` reads the definition versions, for step names).
/// What `sagaflow doctor` runs besides what viewers may, directly or in its
/// read-only scripts (which Redis checks command by command). Operators
/// have them; viewers do not, since a script of theirs could hold Redis
/// busy.
const DOCTOR_COMMANDS: &[&str] = &[
    "zcard",
    "zrevrange",
    "zscore",
    "scard",
    "srandmember",
    "smembers",
    "exists",
    "type",
    "xlen",
    "xinfo|groups",
    "xinfo|consumers",
    "evalsha_ro",
    "script|load",
];

const VIEW_COMMANDS: &[&str] = &[
    "ping",
    // `list` shows the saga names paused and counts the starts held.
    "hgetall",
    "xlen",
    "cluster|info",
    "cluster|slots",
    "cluster|shards",
    "get",
    "time",
    "zrevrange",
    "hmget",
    "ttl",
    "zrangebyscore",
    "xrange",
    "xrevrange",
    "xread",
    // A lock's queue (`locks`, `status`): its kind, then its entries.
    "type",
    "lrange",
];

/// What `start` sends: the last event's id, the start, then the
/// events after it (and, when no daemon took it, the names paused).
const START_COMMANDS: &[&str] = &[
    "ping",
    "hgetall",
    "cluster|info",
    "cluster|slots",
    "cluster|shards",
    "xrevrange",
    "xadd",
    "xread",
];

/// What `signal` sends: the last event's id, the signal, then the events
/// after it (the daemons' answer).
const SIGNAL_COMMANDS: &[&str] = &[
    "ping",
    "cluster|info",
    "cluster|slots",
    "cluster|shards",
    "xrevrange",
    "xadd",
    "xread",
];

/// What the daemon does on the signals stream: read it through its group
/// (in scripts, which bound what they return), acknowledge, take over what
/// dead daemons left pending, trim it and measure its group.
const DAEMON_ON_SIGNALS: &[&str] = &[
    "evalsha",
    "eval",
    "type",
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xgroup|create",
    "xgroup|delconsumer",
    "xinfo|groups",
    "xinfo|consumers",
    "xpending",
    "xlen",
    "xrange",
    "xtrim",
];

/// Which handler roles are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HandlerRoles {
    /// One role per command stream, named after it (`handler-resources`
    /// for `resources:commands`).
    PerService,
    /// One role, `handlers`, for a process serving every command stream on
    /// one connection, as `sagaflow handlers` does.
    Combined,
    Both,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow acl --sagas ./sagas --password daemon=\"$DAEMON_PASSWORD\" > acl.txt
  grep -v '^#' acl.txt | redis-cli -u redis://admin:ADMIN_PASSWORD@127.0.0.1:6379
  sagaflow acl --handler-roles combined --user-prefix prod-sagaflow-

Roles: `daemon` (sagaflow run), one `handler-<service>` per command stream
(--handler-roles), `starter` (writes starts; `sagaflow start`), `signaller`
(sends signals; `sagaflow signal`),
`operator` (cancel, retry, skip, abandon, and what viewers read), `viewer`
(status, list, locks, watch; no write at all). Each user is named <prefix><role>.

A role without --password gets a random password (from the system's random
source), printed in its command and nowhere else: keep the output, or give
passwords with --password. Each role's comment line shows the Redis URL its
piece connects with, password masked; percent-encode `@ : / %` in a password
put in a URL.

Stream names and key prefixes come from the settings (--config,
SAGAFLOW_*): run this with the settings the daemons use. Nothing connects to
Redis: --redis-url only gives the host the URLs show. After applying,
persist the users (ACL SAVE with an aclfile, else CONFIG REWRITE) and give
the default user a password or turn it off.")]
pub struct AclArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Directory of saga definitions [default: the `sagas` setting, ./sagas].
    #[arg(long)]
    sagas: Option<PathBuf>,
    /// The handlers' consumer group: their records live under
    /// `handler:{<group>}:*` [default: sagaflow-sim, that of `sagaflow handlers`].
    #[arg(long)]
    handler_group: Option<String>,
    /// Which handler roles to print.
    #[arg(long, value_enum, default_value_t = HandlerRoles::PerService)]
    handler_roles: HandlerRoles,
    /// Prefix of the user names.
    #[arg(long, default_value = "sagaflow-")]
    user_prefix: String,
    /// A role's password, instead of a random one (repeatable).
    #[arg(long = "password", value_name = "ROLE=SECRET")]
    passwords: Vec<String>,
}

pub fn run(args: AclArgs) -> ExitCode {
    match commands(&args) {
        Ok(text) => {
            outln!("{}", text.trim_end_matches('\n'));
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("sagaflow acl: {message}");
            ExitCode::FAILURE
        }
    }
}

fn commands(args: &AclArgs) -> Result<String, String> {
    let settings = args.redis.settings()?;
    let dir = args.sagas.clone().unwrap_or(settings.sagas_dir.clone());
    let catalog = definition::load_dir(&dir).map_err(|e| e.to_string())?;
    let group = args
        .handler_group
        .clone()
        .unwrap_or_else(|| SimulationOptions::default().group);
    let roles = roles(&settings, &catalog, &group, args.handler_roles)?;
    let mut passwords = parse_passwords(&args.passwords, &roles)?;
    if args.user_prefix.chars().any(char::is_whitespace) {
        return Err(format!(
            "--user-prefix `{}`: Redis user names cannot hold spaces",
            args.user_prefix
        ));
    }
    let mut out = format!(
        "# Redis users of sagaflow, one per role, for the sagas in {}.\n\
         # Apply as an administrator: grep -v '^#' FILE | redis-cli -u redis://ADMIN@HOST:PORT\n\
         # Passwords not given with --password are random and shown only here.\n",
        dir.display()
    );
    for role in &roles {
        let user = format!("{}{}", args.user_prefix, role.name);
        let password = passwords.remove(&role.name).unwrap_or_else(random_password);
        out.push_str(&format!(
            "\n# {}: {}\n",
            role.who,
            url_for(&settings.redis_url, &user)
        ));
        let mut words = vec![
            "ACL".to_owned(),
            "SETUSER".to_owned(),
            user,
            "reset".to_owned(),
            "on".to_owned(),
            format!(">{password}"),
            "resetchannels".to_owned(),
        ];
        words.extend(role.rules.iter().cloned());
        let line: Vec<String> = words.iter().map(|w| quote(w)).collect();
        out.push_str(&line.join(" "));
        out.push('\n');
    }
    Ok(out)
}

/// One user to create.
#[derive(Debug)]
struct Role {
    /// What `--password` calls it; the user is `<prefix><name>`.
    name: String,
    /// Which piece connects as it.
    who: String,
    /// Its rules after `reset on >password resetchannels`.
    rules: Vec<String>,
}

/// Every role, from the settings and the definitions.
fn roles(
    settings: &Settings,
    catalog: &Catalog,
    group: &str,
    handler_roles: HandlerRoles,
) -> Result<Vec<Role>, String> {
    let streams: Vec<String> = catalog
        .command_streams()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let mut out = vec![daemon(settings, catalog)?];
    if matches!(handler_roles, HandlerRoles::PerService | HandlerRoles::Both) {
        let mut taken = Vec::new();
        for stream in &streams {
            let name = unique(format!("handler-{}", service_name(stream)), &taken);
            taken.push(name.clone());
            out.push(Role {
                who: format!("the handlers of {stream}"),
                rules: handler(settings, std::slice::from_ref(stream), group)?,
                name,
            });
        }
    }
    if matches!(handler_roles, HandlerRoles::Combined | HandlerRoles::Both) && !streams.is_empty() {
        out.push(Role {
            name: "handlers".into(),
            who: format!(
                "sagaflow handlers, or one process serving {}",
                streams.join(", ")
            ),
            rules: handler(settings, &streams, group)?,
        });
    }
    let keys = Keys::of(settings);
    let [_, held] = keys.any_hold(MARK);
    let records = [
        shaped(&keys.in_any_partition(MARK, &format!("record:{MARK}"))),
        shaped(&keys.in_any_partition(MARK, &format!("index:{MARK}"))),
        literal(&keys.leases()),
        shaped(&keys.definition(MARK, MARK)),
        shaped(&keys.lock(MARK)),
        literal(&keys.paused_names()),
        shaped(&held),
    ];
    let events = literal(&settings.events_stream);
    let mut starter = commands_rule(START_COMMANDS);
    for trigger in crate::engine::trigger_streams(settings, catalog) {
        starter.push(key(Access::Write, &literal(&trigger)));
    }
    starter.push(key(Access::Read, &events));
    starter.push(key(Access::Read, &literal(&keys.paused_names())));
    out.push(Role {
        name: "starter".into(),
        who: "starting sagas (sagaflow start, services writing starts)".into(),
        rules: starter,
    });
    let mut signaller = commands_rule(SIGNAL_COMMANDS);
    signaller.push(key(Access::Write, &literal(&settings.signals_stream)));
    signaller.push(key(Access::Read, &events));
    out.push(Role {
        name: "signaller".into(),
        who: "sending sagas signals (sagaflow signal, services signalling sagas)".into(),
        rules: signaller,
    });
    let reads: Vec<String> = records
        .iter()
        .chain([&events])
        .map(|pattern| key(Access::Read, pattern))
        .collect();
    let mut viewer = commands_rule(VIEW_COMMANDS);
    viewer.extend(reads.iter().cloned());
    let mut operator = commands_rule(VIEW_COMMANDS);
    operator.extend(commands_rule(DOCTOR_COMMANDS));
    operator.push("+xadd".into());
    operator.extend(reads);
    // What `doctor` looks at besides the records: who owns what, the
    // streams the definitions name and the dead-letter streams.
    let looked_at = [
        literal(&keys.owners()),
        shaped(&keys.in_any_partition(MARK, &format!("owned:{MARK}"))),
        literal(&settings.dead_letter_stream),
        shaped(&crate::handler::dead_letter_key(MARK)),
    ]
    .into_iter()
    .chain(
        crate::engine::trigger_streams(settings, catalog)
            .into_iter()
            .map(|s| literal(&s)),
    )
    .chain(
        catalog
            .command_streams()
            .into_iter()
            .map(|(s, _)| literal(&s)),
    );
    operator.extend(looked_at.map(|pattern| key(Access::Read, &pattern)));
    operator.push(key(Access::Write, &literal(&settings.control_stream)));
    out.push(Role {
        name: "operator".into(),
        who:
            "operators (sagaflow cancel, retry, skip, abandon, status, list, locks, watch, doctor)"
                .into(),
        rules: operator,
    });
    out.push(Role {
        name: "viewer".into(),
        who: "read only (sagaflow status, list, locks, watch)".into(),
        rules: viewer,
    });
    Ok(out)
}

/// The daemon: everything it uses, and no write to the control stream or
/// the signals stream (unless its HTTP API takes them).
fn daemon(settings: &Settings, catalog: &Catalog) -> Result<Role, String> {
    let mut rules = commands_rule(DAEMON_COMMANDS);
    let keys = Keys::of(settings);
    let owned = [
        shaped(&keys.in_any_partition(MARK, MARK)),
        literal(&keys.leases()),
        literal(&keys.owners()),
        shaped(&keys.any_relayed(MARK)),
        shaped(&keys.definition(MARK, MARK)),
        shaped(&keys.idempotency(MARK, MARK)),
        shaped(&keys.nonce(MARK)),
        shaped(&keys.lock(MARK)),
        literal(&settings.events_stream),
        prefix(&settings.reply_stream_prefix),
        literal(&keys.paused_names()),
    ]
    .into_iter()
    .chain(keys.any_hold(MARK).map(|k| shaped(&k)));
    let streams = crate::engine::trigger_streams(settings, catalog)
        .into_iter()
        .chain(catalog.command_streams().into_iter().map(|(s, _)| s))
        .map(|s| literal(&s));
    for pattern in owned.into_iter().chain(streams) {
        rules.push(key(Access::ReadWrite, &pattern));
    }
    // The control stream is read (through scripts, which Redis counts as
    // writing their keys) and trimmed (operators' requests may come through
    // an XADD that does not cap it), but added to only when the HTTP API
    // takes operators' requests (`api_tokens` holds a write token); the
    // dead-letter stream is written, and its kind checked first.
    let control = literal(&settings.control_stream);
    let mut on_control = vec![
        "evalsha",
        "eval",
        "type",
        "xread",
        "xrange",
        "xrevrange",
        "xtrim",
    ];
    if (settings.api_tokens.iter()).any(|t| t.scope == crate::http::access::Scope::Write) {
        on_control.push("xadd");
    }
    rules.push(selector(&on_control, &[key(Access::ReadWrite, &control)])?);
    // The signals stream is read through the daemons' group, acknowledged
    // and trimmed, and added to only when the HTTP API takes signals (a
    // write token). An entry is acknowledged by the script that writes its
    // event (or by the relay, or with its dead-letter copy), which names
    // the saga partitions', the leases', the audit and dead-letter streams'
    // keys with it: the selector holds those too, with none of the
    // commands that write them, which the root rules allow already.
    let mut on_signals = DAEMON_ON_SIGNALS.to_vec();
    if (settings.api_tokens.iter()).any(|t| t.scope == crate::http::access::Scope::Write) {
        on_signals.push("xadd");
    }
    let with_signals: Vec<String> = [
        literal(&settings.signals_stream),
        shaped(&keys.in_any_partition(MARK, MARK)),
        literal(&keys.leases()),
        shaped(&keys.any_relayed(MARK)),
        literal(&settings.events_stream),
        literal(&settings.dead_letter_stream),
    ]
    .iter()
    .map(|pattern| key(Access::ReadWrite, pattern))
    .collect();
    rules.push(selector(&on_signals, &with_signals)?);
    rules.push(key(
        Access::ReadWrite,
        &literal(&settings.dead_letter_stream),
    ));
    Ok(Role {
        name: "daemon".into(),
        who: "the daemons (sagaflow run)".into(),
        rules,
    })
}

/// A handler of `streams`: keyless commands at the root, then a selector
/// each for its command streams, its own keys, and the reply streams, where
/// it may only `XADD`. So it cannot `XADD` to its own command stream.
fn handler(settings: &Settings, streams: &[String], group: &str) -> Result<Vec<String>, String> {
    let mut rules = commands_rule(HANDLER_KEYLESS);
    let on_streams: Vec<String> = streams
        .iter()
        .map(|s| key(Access::ReadWrite, &literal(s)))
        .collect();
    let own = vec![key(Access::ReadWrite, &handler_keys(group))];
    let replies = vec![key(Access::Write, &prefix(&settings.reply_stream_prefix))];
    rules.push(selector(HANDLER_ON_STREAM, &on_streams)?);
    rules.push(selector(HANDLER_ON_OWN_KEYS, &own)?);
    rules.push(selector(&["xadd"], &replies)?);
    Ok(rules)
}

/// The pattern of a handler group's own keys (see `handler::done_key`).
fn handler_keys(group: &str) -> String {
    prefix(&format!("handler:{{{group}}}:"))
}

/// Stands for "anything" in a key built by a [`Settings`] method, before
/// [`shaped`] turns it into `*`.
const MARK: &str = "\u{1}";

#[derive(Clone, Copy)]
enum Access {
    ReadWrite,
    Read,
    Write,
}

fn key(access: Access, pattern: &str) -> String {
    let sigil = match access {
        Access::ReadWrite => "~",
        Access::Read => "%R~",
        Access::Write => "%W~",
    };
    format!("{sigil}{pattern}")
}

fn commands_rule(commands: &[&str]) -> Vec<String> {
    commands.iter().map(|c| format!("+{c}")).collect()
}

/// `(+cmd ... ~key ...)`. Redis splits a selector on spaces, so no key in
/// it may hold one.
fn selector(commands: &[&str], keys: &[String]) -> Result<String, String> {
    if let Some(bad) = keys.iter().find(|k| k.chars().any(char::is_whitespace)) {
        return Err(format!(
            "the key pattern `{bad}` holds a space, which an ACL selector cannot: \
             rename the stream, prefix or group"
        ));
    }
    let mut words = commands_rule(commands);
    words.extend(keys.iter().cloned());
    Ok(format!("({})", words.join(" ")))
}

/// A key name as a glob pattern matching only itself.
fn literal(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every key starting with `start`.
fn prefix(start: &str) -> String {
    format!("{}*", literal(start))
}

/// A key built with [`MARK`] for its variable parts, as a pattern.
fn shaped(key: &str) -> String {
    literal(key).replace(MARK, "*")
}

/// A role name for the handlers of a stream: `resources:commands` gives
/// `resources`.
fn service_name(stream: &str) -> String {
    let base = stream.strip_suffix(":commands").unwrap_or(stream);
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `name`, or `name-2`, `name-3`... when it is taken.
fn unique(name: String, taken: &[String]) -> String {
    if !taken.contains(&name) {
        return name;
    }
    (2..)
        .map(|n| format!("{name}-{n}"))
        .find(|candidate| !taken.contains(candidate))
        .expect("an unused number")
}

/// `ROLE=SECRET` flags, by role.
fn parse_passwords(flags: &[String], roles: &[Role]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for flag in flags {
        let Some((role, secret)) = flag.split_once('=') else {
            return Err("--password takes ROLE=SECRET".into());
        };
        if !roles.iter().any(|r| r.name == role) {
            let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
            return Err(format!(
                "--password: no role `{role}`; the roles are {}",
                names.join(", ")
            ));
        }
        if secret.is_empty() {
            return Err(format!("--password: the password of `{role}` is empty"));
        }
        if out.insert(role.to_owned(), secret.to_owned()).is_some() {
            return Err(format!("--password: `{role}` is given twice"));
        }
    }
    Ok(out)
}

/// 256 bits from the system's random source (UUID v4 draws from it), as
/// 64 hex digits: safe in a URL and on a command line.
fn random_password() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The URL a piece uses: the configured one, as `user`, password masked.
fn url_for(base: &str, user: &str) -> String {
    let (scheme, rest) = base.split_once("://").unwrap_or(("redis", base));
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let user: String = user
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{scheme}://{user}:***@{host}")
}

/// One argument as redis-cli reads it: quoted when it holds a space, a
/// quote or a backslash.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && !word
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'));
    if plain {
        return word.to_owned();
    }
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mission() -> Catalog {
        let text = super::super::REFERENCE_MISSION;
        definition::catalog_from_str(std::path::Path::new("mission.yaml"), text).unwrap()
    }

    fn rules_of<'a>(roles: &'a [Role], name: &str) -> &'a [String] {
        &roles.iter().find(|r| r.name == name).unwrap().rules
    }

    #[test]
    fn each_role_gets_its_keys_from_the_settings() {
        let settings = Settings {
            saga_key_prefix: "app*:".into(),
            reply_stream_prefix: "r:".into(),
            control_stream: "ctl".into(),
            ..Settings::default()
        };
        let roles = roles(&settings, &mission(), "g", HandlerRoles::Both).unwrap();
        let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "daemon",
                "handler-exploration",
                "handler-mapping",
                "handler-resources",
                "handler-routing",
                "handlers",
                "starter",
                "signaller",
                "operator",
                "viewer"
            ]
        );
        let daemon = rules_of(&roles, "daemon");
        for rule in [
            "~app\\*:{*}:*",
            "~app\\*:{leases}",
            "~app\\*:relayed:*",
            "~r:*",
            "~mission:start",
            "~resources:commands",
            "~app\\*:{leases}:owners",
            "~app\\*:lock:{*}",
            "(+evalsha +eval +type +xread +xrange +xrevrange +xtrim ~ctl)",
            "~saga:dead-letter",
            "+evalsha",
        ] {
            assert!(daemon.contains(&rule.to_owned()), "{rule} in {daemon:?}");
        }
        assert_eq!(
            rules_of(&roles, "handler-routing")[7..],
            [
                "(+xgroup|create +xreadgroup +xautoclaim +xpending +xack ~routing:commands)",
                "(+get +set +xadd ~handler:{g}:*)",
                "(+xadd %W~r:*)",
            ]
        );
        let starter = rules_of(&roles, "starter");
        assert!(starter.contains(&"%W~mission:start".to_owned()));
        assert!(starter.contains(&"%R~saga:events".to_owned()));
        for reader in ["operator", "viewer"] {
            let rules = rules_of(&roles, reader);
            assert!(
                rules.contains(&"%R~app\\*:lock:{*}".to_owned()),
                "{rules:?}"
            );
            assert!(rules.contains(&"+lrange".to_owned()), "{rules:?}");
        }
        let signaller = rules_of(&roles, "signaller");
        assert!(signaller.contains(&"%W~saga:signals".to_owned()));
        assert!(signaller.contains(&"%R~saga:events".to_owned()));
        assert!(signaller.iter().all(|r| !r.starts_with('~')));
        // The daemon reads signals, and writes none without a write token.
        let on_signals = daemon.iter().find(|r| r.contains("~saga:signals")).unwrap();
        assert!(on_signals.contains("+xreadgroup") && !on_signals.contains("+xadd"));
        assert!(rules_of(&roles, "operator").contains(&"%W~ctl".to_owned()));
        let viewer = rules_of(&roles, "viewer");
        assert!(viewer
            .iter()
            .all(|r| !r.starts_with("%W~") && !r.starts_with('~')));
        assert!(!viewer.contains(&"+xadd".to_owned()));
    }

    #[test]
    fn the_handler_pattern_covers_the_sdk_records() {
        let pattern = handler_keys("sagaflow-sim");
        let record = crate::handler::done_key("sagaflow-sim", "abc");
        assert!(record.starts_with(pattern.trim_end_matches('*')));
    }

    #[test]
    fn passwords_are_checked_against_the_roles() {
        let roles = roles(
            &Settings::default(),
            &mission(),
            "g",
            HandlerRoles::PerService,
        )
        .unwrap();
        let ok = parse_passwords(&["daemon=a=b".into()], &roles).unwrap();
        assert_eq!(ok["daemon"], "a=b");
        let e = parse_passwords(&["nobody=x".into()], &roles).unwrap_err();
        assert!(
            e.contains("no role `nobody`; the roles are daemon, handler-"),
            "{e}"
        );
        assert!(parse_passwords(&["viewer".into()], &roles).is_err());
        assert!(parse_passwords(&["viewer=".into()], &roles).is_err());
        let twice = ["viewer=a".into(), "viewer=b".into()];
        assert!(parse_passwords(&twice, &roles).is_err());
        assert_eq!(random_password().len(), 64);
        assert_ne!(random_password(), random_password());
    }

    #[test]
    fn names_and_words_are_made_safe() {
        assert_eq!(literal("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(service_name("resources:commands"), "resources");
        assert_eq!(service_name("x.y z"), "x-y-z");
        let taken = vec!["a".to_owned(), "a-2".to_owned()];
        assert_eq!(unique("a".into(), &taken), "a-3");
        assert_eq!(quote("~k"), "~k");
        assert_eq!(quote("(+xadd ~r:*)"), "\"(+xadd ~r:*)\"");
        assert_eq!(quote(">a \"b\"\\"), "\">a \\\"b\\\"\\\\\"");
        assert_eq!(
            url_for("rediss://old:pw@host:6380/0", "sagaflow-daemon"),
            "rediss://sagaflow-daemon:***@host:6380/0"
        );
        assert_eq!(
            url_for("redis://127.0.0.1:6379", "a b"),
            "redis://a%20b:***@127.0.0.1:6379"
        );
        let spaced = Settings {
            reply_stream_prefix: "my replies:".into(),
            ..Settings::default()
        };
        let e = roles(&spaced, &mission(), "g", HandlerRoles::PerService).unwrap_err();
        assert!(e.contains("holds a space"), "{e}");
    }
}
