//! Settings from four layers, the later winning: built-in defaults, the
//! configuration file (`--config`, `SAGAFLOW_CONFIG`), `SAGAFLOW_<KEY>`
//! environment variables, and command-line flags. Each value remembers where
//! it came from, for `sagaflow config`.

use super::Settings;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    /// The file, and the line the key is on.
    File(PathBuf, usize),
    Env(String),
    Flag(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path, line) => write!(f, "{}:{line}", path.display()),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One setting: its key (in the file; `SAGAFLOW_<KEY>` in the environment;
/// `--<key>` on the command line, with `-` for `_`), how to set it from
/// text, and how to show it.
struct Key {
    name: &'static str,
    set: fn(&mut Settings, &str) -> Result<(), String>,
    show: fn(&Settings) -> String,
}

macro_rules! keys {
    ($( $name:literal => $field:ident : $kind:ident ),* $(,)?) => {
        const KEYS: &[Key] = &[ $( Key {
            name: $name,
            set: |s, v| {
                s.$field = $kind::parse(v)?;
                Ok(())
            },
            show: |s| $kind::show(&s.$field),
        } ),* ];
    };
}

keys! {
    "redis_url" => redis_url: text,
    "redis_mode" => redis_mode: mode,
    "wait_replicas" => wait_replicas: count,
    "sagas" => sagas_dir: path,
    "node_id" => node_id: text,
    "trigger_stream" => trigger_stream: text,
    "trigger_group" => trigger_group: text,
    "events_stream" => events_stream: text,
    "control_stream" => control_stream: text,
    "signals_stream" => signals_stream: text,
    "dead_letter_stream" => dead_letter_stream: text,
    "reply_stream_prefix" => reply_stream_prefix: text,
    "saga_key_prefix" => saga_key_prefix: text,
    "retention" => retention: duration,
    "idempotency_retention" => idempotency_retention: duration,
    "reply_retention" => reply_retention: duration,
    "stream_retention" => stream_retention: duration,
    "events_maxlen" => events_maxlen: count,
    "triggers_maxlen" => triggers_maxlen: count,
    "control_maxlen" => control_maxlen: count,
    "signals_maxlen" => signals_maxlen: count,
    "commands_maxlen" => commands_maxlen: count,
    "max_deliveries" => max_deliveries: count64,
    "max_in_flight" => max_in_flight: count,
    "read_batch" => read_batch: count,
    "block" => block: duration,
    "redis_response_timeout" => redis_response_timeout: duration,
    "shutdown_grace" => shutdown_grace: duration,
    "lease_ttl" => lease_ttl: duration,
    "takeover_every" => takeover_every: duration,
    "http_addr" => http_addr: text,
    "log_format" => log_format: text,
    "operator_keys" => operator_keys: keys,
    "operator_key" => operator_key: key,
    "api_tokens" => api_tokens: tokens,
    "api_read" => api_read: read_access,
    "trace_url" => trace_url: optional_text,
}

mod text {
    pub fn parse(v: &str) -> Result<String, String> {
        Ok(v.to_owned())
    }
    pub fn show(v: &str) -> String {
        v.to_owned()
    }
}

/// Text that may be empty: shown as `(none)` then.
mod optional_text {
    pub fn parse(v: &str) -> Result<String, String> {
        Ok(v.trim().to_owned())
    }
    pub fn show(v: &str) -> String {
        if v.is_empty() {
            "(none)".into()
        } else {
            v.to_owned()
        }
    }
}

mod mode {
    use crate::connection::RedisMode;
    pub fn parse(v: &str) -> Result<RedisMode, String> {
        RedisMode::parse(v)
    }
    pub fn show(v: &RedisMode) -> String {
        v.name().to_owned()
    }
}

mod path {
    use std::path::{Path, PathBuf};
    pub fn parse(v: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(v))
    }
    pub fn show(v: &Path) -> String {
        v.display().to_string()
    }
}

mod duration {
    use std::time::Duration;
    pub fn parse(v: &str) -> Result<Duration, String> {
        humantime::parse_duration(v.trim())
            .map_err(|e| format!("`{v}` is not a duration like 500ms, 10s, 5m, 24h: {e}"))
    }
    pub fn show(v: &Duration) -> String {
        humantime::format_duration(*v).to_string()
    }
}

/// Operators' keys: shown by name only, never their secrets.
mod keys {
    use crate::protocol::control::OperatorKeys;
    pub fn parse(v: &str) -> Result<OperatorKeys, String> {
        OperatorKeys::parse(v)
    }
    pub fn show(v: &OperatorKeys) -> String {
        if v.is_empty() {
            return "(none)".into();
        }
        v.names()
            .iter()
            .map(|name| format!("{name}:***"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

mod key {
    use crate::protocol::control::OperatorKey;
    pub fn parse(v: &str) -> Result<Option<OperatorKey>, String> {
        if v.trim().is_empty() {
            return Ok(None);
        }
        OperatorKey::parse(v).map(Some)
    }
    pub fn show(v: &Option<OperatorKey>) -> String {
        v.as_ref()
            .map_or_else(|| "(none)".into(), |key| format!("{}:***", key.name))
    }
}

/// API tokens: shown by name and scope only, never their digests.
mod tokens {
    use crate::http::access::ApiTokens;
    pub fn parse(v: &str) -> Result<ApiTokens, String> {
        ApiTokens::parse(v)
    }
    pub fn show(v: &ApiTokens) -> String {
        if v.is_empty() {
            return "(none)".into();
        }
        v.iter()
            .map(|t| format!("{}:{}:***", t.name, t.scope.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

mod read_access {
    use crate::http::access::ReadAccess;
    pub fn parse(v: &str) -> Result<ReadAccess, String> {
        ReadAccess::parse(v)
    }
    pub fn show(v: &ReadAccess) -> String {
        v.as_str().to_owned()
    }
}

mod count {
    pub fn parse(v: &str) -> Result<usize, String> {
        v.trim()
            .parse()
            .map_err(|_| format!("`{v}` is not a whole number"))
    }
    pub fn show(v: &usize) -> String {
        v.to_string()
    }
}

mod count64 {
    pub fn parse(v: &str) -> Result<u64, String> {
        v.trim()
            .parse()
            .map_err(|_| format!("`{v}` is not a whole number"))
    }
    pub fn show(v: &u64) -> String {
        v.to_string()
    }
}

/// Every setting's key.
pub fn keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|k| k.name)
}

/// Every setting's key and its value as shown to people, the Redis URL
/// [`redacted`](super::redacted).
pub fn shown(settings: &Settings) -> impl Iterator<Item = (&'static str, String)> + '_ {
    KEYS.iter().map(|key| {
        let value = (key.show)(settings);
        match key.name {
            "redis_url" => (key.name, super::redacted(&value)),
            _ => (key.name, value),
        }
    })
}

/// The settings, and where each came from, in key order.
#[derive(Debug)]
pub struct Resolved {
    pub settings: Settings,
    pub sources: Vec<(&'static str, String, Source)>,
}

/// Layers the settings. `flags` are the values given on the command line,
/// by key; `env` looks variables up.
pub fn resolve(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    flags: &BTreeMap<String, String>,
) -> Result<Resolved, String> {
    let file_values = match file {
        Some(path) => read_file(path)?,
        None => BTreeMap::new(),
    };
    if let Some(unknown) = flags
        .keys()
        .find(|k| !KEYS.iter().any(|key| key.name == *k))
    {
        return Err(format!("no setting `{unknown}`"));
    }
    let mut settings = Settings::default();
    let mut chosen_sources = Vec::new();
    for key in KEYS {
        let var = format!("SAGAFLOW_{}", key.name.to_uppercase());
        let chosen = if let Some(v) = flags.get(key.name) {
            Some((
                v.clone(),
                Source::Flag(format!("--{}", key.name.replace('_', "-"))),
            ))
        } else if let Some(v) = env(&var) {
            Some((v, Source::Env(var)))
        } else {
            file_values.get(key.name).map(|(v, line)| {
                let path = file.expect("values come from a file").to_path_buf();
                (v.clone(), Source::File(path, *line))
            })
        };
        let source = match chosen {
            Some((value, source)) => {
                (key.set)(&mut settings, &value)
                    .map_err(|why| format!("{source}: {}: {why}", key.name))?;
                source
            }
            None => Source::Default,
        };
        chosen_sources.push(source);
    }
    check(&settings)?;
    let sources = shown(&settings)
        .zip(chosen_sources)
        .map(|((key, value), source)| (key, value, source))
        .collect();
    Ok(Resolved { settings, sources })
}

/// Bounds the values must keep.
fn check(s: &Settings) -> Result<(), String> {
    let at_least = |name: &str, v: Duration, min: Duration| {
        if v < min {
            Err(format!(
                "{name}: at least {}",
                humantime::format_duration(min)
            ))
        } else {
            Ok(())
        }
    };
    at_least("lease_ttl", s.lease_ttl, Duration::from_millis(300))?;
    at_least("block", s.block, Duration::from_millis(10))?;
    at_least(
        "takeover_every",
        s.takeover_every,
        Duration::from_millis(10),
    )?;
    for (name, v) in [
        ("max_in_flight", s.max_in_flight),
        ("read_batch", s.read_batch),
        ("events_maxlen", s.events_maxlen),
        ("triggers_maxlen", s.triggers_maxlen),
        ("control_maxlen", s.control_maxlen),
        ("signals_maxlen", s.signals_maxlen),
        ("commands_maxlen", s.commands_maxlen),
    ] {
        if v == 0 {
            return Err(format!("{name}: at least 1"));
        }
    }
    if s.max_deliveries == 0 {
        return Err("max_deliveries: at least 1".into());
    }
    if !["auto", "json", "pretty"].contains(&s.log_format.as_str()) {
        return Err(format!(
            "log_format: `{}` is not auto, json or pretty",
            s.log_format
        ));
    }
    if !s.trace_url.is_empty() && !s.trace_url.contains("{trace_id}") {
        return Err(format!(
            "trace_url: `{}` has no {{trace_id}} to put a saga's trace id in",
            s.trace_url
        ));
    }
    crate::http::parse_addr(&s.http_addr).map(|_| ())
}

/// The file's values as text, with the line of each key. The file is a
/// flat YAML mapping of keys to scalars.
fn read_file(path: &Path) -> Result<BTreeMap<String, (String, usize)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
    // Without the parser's snippet of the lines around a mistake: they may
    // hold the password of `redis_url`.
    let map: BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(&text).map_err(|e| {
        let e = e.without_snippet();
        format!("{}: not a YAML mapping of settings: {e}", path.display())
    })?;
    let line_of = |key: &str| {
        text.lines()
            .position(|l| l.trim_start().starts_with(&format!("{key}:")))
            .map_or(0, |i| i + 1)
    };
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let line = line_of(&key);
        if !KEYS.iter().any(|k| k.name == key) {
            return Err(format!(
                "{}:{line}: unknown setting `{key}` (see `sagaflow config` for the list)",
                path.display()
            ));
        }
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => continue,
            // Not quoted: it may be the password of `redis_url`.
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                return Err(format!(
                    "{}:{line}: {key}: a list or a mapping is not a single value",
                    path.display()
                ))
            }
        };
        out.insert(key, (text, line));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn later_layers_win_and_say_so() {
        let f = file("retention: 2d\nlease_ttl: 5s\nmax_in_flight: 50\n");
        let env = |var: &str| (var == "SAGAFLOW_LEASE_TTL").then(|| "3s".to_owned());
        let flags = BTreeMap::from([("max_in_flight".to_owned(), "7".to_owned())]);
        let r = resolve(Some(f.path()), &env, &flags).unwrap();
        assert_eq!(r.settings.retention, Duration::from_secs(2 * 86400));
        assert_eq!(r.settings.lease_ttl, Duration::from_secs(3));
        assert_eq!(r.settings.max_in_flight, 7);
        let source = |k: &str| r.sources.iter().find(|s| s.0 == k).unwrap().2.clone();
        assert_eq!(source("retention"), Source::File(f.path().to_path_buf(), 1));
        assert_eq!(
            source("lease_ttl"),
            Source::Env("SAGAFLOW_LEASE_TTL".into())
        );
        assert_eq!(
            source("max_in_flight"),
            Source::Flag("--max-in-flight".into())
        );
        assert_eq!(source("block"), Source::Default);
    }

    #[test]
    fn bad_values_name_the_key_the_place_and_the_reason() {
        let none = |_: &str| None;
        let f = file("block: 1s\nretension: 2d\n");
        let e = resolve(Some(f.path()), &none, &BTreeMap::new()).unwrap_err();
        assert!(
            e.ends_with(":2: unknown setting `retension` (see `sagaflow config` for the list)"),
            "{e}"
        );
        let f = file("retention: soon\n");
        let e = resolve(Some(f.path()), &none, &BTreeMap::new()).unwrap_err();
        assert!(e.contains(":1: retention: `soon` is not a duration"), "{e}");
        let env = |var: &str| (var == "SAGAFLOW_MAX_IN_FLIGHT").then(|| "many".to_owned());
        let e = resolve(None, &env, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            e,
            "env SAGAFLOW_MAX_IN_FLIGHT: max_in_flight: `many` is not a whole number"
        );
        let flags = BTreeMap::from([("lease_ttl".to_owned(), "100ms".to_owned())]);
        assert_eq!(
            resolve(None, &none, &flags).unwrap_err(),
            "lease_ttl: at least 300ms"
        );
    }
}
