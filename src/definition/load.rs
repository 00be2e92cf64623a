//! Loading and checking definition files, with `file:line:column` errors.

use super::model::*;
use super::raw::{RawCompensation, RawNode, RawRetry, RawSaga, RawStep};
use super::template;
use super::template::{Expr, Scope, Template};
use serde_json::Value;
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One problem in one file, at a 1-based line and column; a problem about
/// a whole document (an empty file, one that is not a mapping) is at 1:1.
/// `position` is `None` only when the file or directory could not be read
/// at all: then there is no text to point into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionError {
    pub file: PathBuf,
    /// The 1-based line and column.
    pub position: Option<(u64, u64)>,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.position {
            Some((line, column)) => write!(f, "{file}:{line}:{column}: {}", self.message),
            None => write!(f, "{file}: {}", self.message),
        }
    }
}

/// Every problem found, so one run of the loader reports them all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The loaded definitions, by name and by trigger stream.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    by_name: HashMap<String, Arc<SagaDefinition>>,
    by_trigger: HashMap<String, String>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Arc<SagaDefinition>> {
        self.by_name.get(name)
    }

    /// The definition bound to a trigger stream, used by starts without `saga`.
    pub fn for_trigger(&self, stream: &str) -> Option<&Arc<SagaDefinition>> {
        self.by_trigger
            .get(stream)
            .and_then(|name| self.by_name.get(name))
    }

    /// Every trigger stream some definition is bound to, sorted.
    pub fn triggers(&self) -> Vec<String> {
        let mut out: Vec<String> = self.by_trigger.keys().cloned().collect();
        out.sort();
        out
    }

    /// Every command stream a step or compensation sends to, with the
    /// longest timeout of the commands sent there, sorted by stream.
    pub fn command_streams(&self) -> Vec<(String, std::time::Duration)> {
        let mut out: HashMap<String, std::time::Duration> = HashMap::new();
        let mut note = |stream: &str, timeout| {
            let longest = out.entry(stream.to_owned()).or_default();
            *longest = (*longest).max(timeout);
        };
        for def in self.by_name.values() {
            // A `wait` step sends nothing.
            for step in def.steps.iter().filter(|s| s.wait.is_none()) {
                note(&step.stream, step.timeout);
                if let Some(c) = &step.compensation {
                    note(&c.stream, c.timeout);
                }
            }
        }
        let mut out: Vec<_> = out.into_iter().collect();
        out.sort();
        out
    }

    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        out.sort();
        out
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Builds a catalog from definitions already checked one by one,
    /// refusing duplicate names and two definitions on one trigger.
    fn from_definitions(
        defs: Vec<(SagaDefinition, Location, Option<Location>)>,
    ) -> Result<Self, DefinitionErrors> {
        let mut catalog = Catalog::default();
        let mut errors = Vec::new();
        for (def, name_at, trigger_at) in defs {
            if let Some(other) = catalog.by_name.get(&def.name) {
                errors.push(at(
                    &def.source,
                    name_at,
                    format!(
                        "saga `{}` is already defined in {}",
                        def.name,
                        other.source.display()
                    ),
                ));
                continue;
            }
            if let (Some(trigger), Some(trigger_at)) = (&def.trigger, trigger_at) {
                if let Some(other) = catalog.by_trigger.get(trigger) {
                    errors.push(at(&def.source, trigger_at, format!(
                        "trigger `{trigger}` is already bound to saga `{other}`; a start without a `saga` field would be ambiguous"
                    )));
                    continue;
                }
                catalog.by_trigger.insert(trigger.clone(), def.name.clone());
            }
            catalog.by_name.insert(def.name.clone(), Arc::new(def));
        }
        if errors.is_empty() {
            Ok(catalog)
        } else {
            Err(DefinitionErrors(errors))
        }
    }
}

/// An error at `loc`. The parser marks a problem it cannot place with
/// line 0: that is a problem of the whole document, put at its start.
fn at(file: &Path, loc: Location, message: String) -> DefinitionError {
    let position = if loc.line() == 0 {
        (1, 1)
    } else {
        (loc.line(), loc.column().max(1))
    };
    DefinitionError {
        file: file.to_owned(),
        position: Some(position),
        message,
    }
}

/// An error about a file or directory that could not be read.
fn unreadable(file: &Path, message: String) -> DefinitionError {
    DefinitionError {
        file: file.to_owned(),
        position: None,
        message,
    }
}

/// Loads every `*.yaml` / `*.yml` file of a directory, or the one file
/// `path` names (whatever its extension).
pub fn load_dir(path: &Path) -> Result<Catalog, DefinitionErrors> {
    let mut files: Vec<PathBuf> = if path.is_file() {
        vec![path.to_owned()]
    } else {
        let entries = std::fs::read_dir(path).map_err(|e| {
            DefinitionErrors(vec![unreadable(
                path,
                format!("cannot read the sagas directory or file: {e}"),
            )])
        })?;
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect()
    };
    files.sort();
    if files.is_empty() {
        return Err(DefinitionErrors(vec![unreadable(
            path,
            "no saga definitions (*.yaml, *.yml) in this directory".into(),
        )]));
    }
    let mut defs = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse_one(&file, &text) {
                Ok(def) => defs.push(def),
                Err(mut e) => errors.append(&mut e),
            },
            Err(e) => errors.push(unreadable(&file, format!("cannot read the file: {e}"))),
        }
    }
    // Clashes between the files that did load are reported with the rest.
    match Catalog::from_definitions(defs) {
        Ok(catalog) if errors.is_empty() => Ok(catalog),
        Ok(_) => Err(DefinitionErrors(errors)),
        Err(DefinitionErrors(mut clashes)) => {
            errors.append(&mut clashes);
            Err(DefinitionErrors(errors))
        }
    }
}

/// A catalog of the one definition in `text`, as if read from `file`.
pub fn catalog_from_str(file: &Path, text: &str) -> Result<Catalog, DefinitionErrors> {
    let parsed = parse_one(file, text).map_err(DefinitionErrors)?;
    Catalog::from_definitions(vec![parsed])
}

/// Loads one definition from text, as if read from `file`.
pub fn load_str(file: &Path, text: &str) -> Result<SagaDefinition, DefinitionErrors> {
    parse_one(file, text)
        .map(|(def, _, _)| def)
        .map_err(DefinitionErrors)
}

type Parsed = (SagaDefinition, Location, Option<Location>);

/// Reads one file in three passes, each reporting every problem it finds:
/// the YAML syntax (which stops at its first error), the shape (keys and
/// kinds of values, [`super::shape`]), then the values themselves: of the
/// whole file when its shape is right, else of its well-formed steps
/// ([`super::salvage`]).
fn parse_one(file: &Path, text: &str) -> Result<Parsed, Vec<DefinitionError>> {
    let syntax = |e: serde_saphyr::Error| {
        let loc = e.location().unwrap_or(Location::UNKNOWN);
        vec![at(
            file,
            loc,
            yaml_message(&e.without_snippet().to_string()),
        )]
    };
    let tree: Spanned<RawNode> = serde_saphyr::from_str(text).map_err(syntax)?;
    let problems = super::shape::check(&tree);
    if !problems.is_empty() {
        let mut errors: Vec<DefinitionError> = problems
            .into_iter()
            .map(|(loc, message)| at(file, loc, message))
            .collect();
        // The values of the steps that are well formed, in the same run.
        if let Some(raw) = super::salvage::raw_saga(text, &tree) {
            let mut checker = Checker {
                file,
                errors: Vec::new(),
            };
            checker.saga(&raw);
            errors.append(&mut checker.errors);
            errors.sort_by_key(|e| e.position);
        }
        return Err(errors);
    }
    let raw: RawSaga = serde_saphyr::from_str(text).map_err(syntax)?;
    let mut checker = Checker {
        file,
        errors: Vec::new(),
    };
    let mut def = checker.saga(&raw);
    def.text = Arc::from(text);
    def.version = content_version(text);
    // In the order of the file, as a reader goes through it.
    checker.errors.sort_by_key(|e| e.position);
    if checker.errors.is_empty() {
        Ok((
            def,
            raw.name.referenced,
            raw.trigger.as_ref().map(|t| t.referenced),
        ))
    } else {
        Err(checker.errors)
    }
}

/// The parser's message without its own location prefix or suffix, since
/// ours leads the line.
fn yaml_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered).trim();
    let cut = first.find(" at line ").map_or(first, |i| &first[..i]);
    cut.trim_start_matches("error: ").to_owned()
}

struct Checker<'a> {
    file: &'a Path,
    errors: Vec<DefinitionError>,
}

const NAME_MAX: usize = 128;

impl Checker<'_> {
    fn error(&mut self, loc: Location, message: String) {
        self.errors.push(at(self.file, loc, message));
    }

    fn name(&mut self, what: &str, s: &Spanned<String>) -> String {
        let v = &s.value;
        if v.is_empty() || v.len() > NAME_MAX || !v.bytes().all(|b| b.is_ascii_graphic()) {
            self.error(
                s.referenced,
                format!("{what} `{v}` must be 1 to {NAME_MAX} printable ASCII characters without spaces"),
            );
        }
        v.clone()
    }

    fn duration(&mut self, what: &str, s: &Spanned<String>) -> Duration {
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(s.referenced, format!("{what} must be longer than zero"));
                Duration::from_secs(1)
            }
            Err(e) => {
                self.error(
                    s.referenced,
                    format!(
                        "{what} `{}` is not a duration ({e}); write e.g. 500ms, 30s, 5m",
                        s.value
                    ),
                );
                Duration::from_secs(1)
            }
        }
    }

    /// `ack_timeout` and `heartbeat_timeout`: each shorter than `timeout`,
    /// or it could never run out first.
    fn clocks(
        &mut self,
        ack: Option<&Spanned<String>>,
        heartbeat: Option<&Spanned<String>>,
        timeout: Duration,
    ) -> Clocks {
        let mut clock = |what: &str, raw: Option<&Spanned<String>>| {
            let raw = raw?;
            let d = self.duration(what, raw);
            if d >= timeout {
                self.error(
                    raw.referenced,
                    format!(
                        "{what} ({}) must be shorter than the attempt's timeout ({}), or it never runs out first",
                        humantime::format_duration(d),
                        humantime::format_duration(timeout)
                    ),
                );
            }
            Some(d)
        };
        Clocks {
            ack: clock("ack_timeout", ack),
            heartbeat: clock("heartbeat_timeout", heartbeat),
        }
    }

    fn retry(&mut self, raw: &Spanned<RawRetry>) -> RetryPolicy {
        let r = &raw.value;
        let max_attempts = match u32::try_from(r.max_attempts.value) {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                self.error(
                    r.max_attempts.referenced,
                    format!("max_attempts is {}; it must be between 1 and 1000 (it counts the first attempt)", r.max_attempts.value),
                );
                1
            }
        };
        let backoff = match r.backoff.as_ref().map(|b| b.value.as_str()) {
            None | Some("exponential") => Backoff::Exponential,
            Some("linear") => Backoff::Linear,
            Some("fixed") => Backoff::Fixed,
            Some(other) => {
                let loc = r
                    .backoff
                    .as_ref()
                    .map(|b| b.referenced)
                    .unwrap_or(raw.referenced);
                self.error(
                    loc,
                    format!("backoff `{other}` is unknown; use exponential, linear or fixed"),
                );
                Backoff::Exponential
            }
        };
        let initial_delay = r
            .initial_delay
            .as_ref()
            .map_or(DEFAULT_STEP_RETRY.initial_delay, |d| {
                self.duration("initial_delay", d)
            });
        let max_delay = r
            .max_delay
            .as_ref()
            .map_or(DEFAULT_MAX_DELAY, |d| self.duration("max_delay", d));
        if initial_delay > max_delay {
            let loc = r
                .max_delay
                .as_ref()
                .map(|d| d.referenced)
                .unwrap_or(raw.referenced);
            self.error(loc, "max_delay is shorter than initial_delay".into());
        }
        RetryPolicy {
            max_attempts,
            backoff,
            initial_delay,
            max_delay,
        }
    }

    /// Checks a template, reporting every bad expression where it stands.
    fn template(&mut self, raw: &Spanned<RawNode>, scope: &Scope<'_>) -> Option<Template> {
        let errors_before = self.errors.len();
        let template = self.node(raw, scope, "input");
        (self.errors.len() == errors_before).then_some(template)
    }

    fn node(&mut self, raw: &Spanned<RawNode>, scope: &Scope<'_>, path: &str) -> Template {
        match &raw.value {
            RawNode::Null => Template::Literal(Value::Null),
            RawNode::Bool(b) => Template::Literal(Value::Bool(*b)),
            RawNode::Int(i) => Template::Literal(Value::from(*i)),
            RawNode::UInt(u) => Template::Literal(Value::from(*u)),
            RawNode::Float(f) => Template::Literal(Value::from(*f)),
            RawNode::Str(s) => template::parse_text(s, scope).unwrap_or_else(|e| {
                self.error(raw.referenced, format!("{path}: {e}"));
                Template::Literal(Value::Null)
            }),
            RawNode::Seq(items) => Template::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.node(item, scope, &format!("{path}[{i}]")))
                    .collect(),
            ),
            RawNode::Map(entries) => Template::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        let k = &k.value;
                        (k.clone(), self.node(v, scope, &format!("{path}.{k}")))
                    })
                    .collect(),
            ),
        }
    }

    fn saga(&mut self, raw: &RawSaga) -> SagaDefinition {
        let name = self.name("saga name", &raw.name);
        let trigger = raw.trigger.as_ref().map(|t| self.name("trigger stream", t));
        if raw.steps.value.is_empty() {
            self.error(raw.steps.referenced, format!("saga `{name}` has no steps"));
        }
        let all: Vec<String> = raw
            .steps
            .value
            .iter()
            .map(|s| s.name.value.clone())
            .collect();
        for (i, step) in raw.steps.value.iter().enumerate() {
            if let Some(first) = raw.steps.value[..i]
                .iter()
                .find(|s| s.name.value == step.name.value)
            {
                self.error(
                    step.name.referenced,
                    format!(
                        "step name `{}` is used twice (first at line {}); step names must be unique",
                        step.name.value,
                        first.name.referenced.line()
                    ),
                );
            }
        }
        // Which steps each one waits for, before any template is checked:
        // a template may read the results of those steps only.
        let entries: Vec<Vec<(usize, Option<Location>)>> = raw
            .steps
            .value
            .iter()
            .enumerate()
            .map(|(i, step)| self.after(step, i, &all))
            .collect();
        self.cycles(&all, &entries);
        let after: Vec<Vec<usize>> = entries
            .iter()
            .map(|e| e.iter().map(|(j, _)| *j).collect())
            .collect();
        let mut steps = Vec::with_capacity(all.len());
        for (i, step) in raw.steps.value.iter().enumerate() {
            let ancestors = ancestors(all.len(), i, |j| &after[j]);
            // Past a step whose `after` could not be read, any other step
            // may be one this one waits for: no reference is refused for
            // not being waited for until that step reads.
            let unknown = |j: usize| raw.steps.value[j].after_unknown;
            let visible: Vec<String> = if unknown(i) || ancestors.iter().any(|&j| unknown(j)) {
                (0..all.len())
                    .filter(|&j| j != i)
                    .map(|j| all[j].clone())
                    .collect()
            } else {
                ancestors
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| all[j].clone())
                    .collect()
            };
            let mut step = self.step(step, &visible, &all);
            step.after = after[i].clone();
            steps.push(step);
        }
        SagaDefinition {
            name,
            trigger,
            steps,
            source: self.file.to_owned(),
            text: Arc::from(""),
            version: String::new(),
        }
    }

    /// The steps that step `index` waits for, each with the place of the
    /// `after` entry naming it: every entry of its `after` that names
    /// another step once, or without `after:` the step listed before it
    /// (which no entry names).
    fn after(
        &mut self,
        raw: &RawStep,
        index: usize,
        all: &[String],
    ) -> Vec<(usize, Option<Location>)> {
        if raw.after_unknown {
            return Vec::new();
        }
        let Some(list) = &raw.after else {
            return index
                .checked_sub(1)
                .map(|j| (j, None))
                .into_iter()
                .collect();
        };
        let me = &raw.name.value;
        let mut out: Vec<(usize, Option<Location>)> = Vec::new();
        for (k, entry) in list.value.iter().enumerate() {
            let name = &entry.value;
            let loc = entry.referenced;
            if let Some(first) = list.value[..k].iter().find(|e| e.value == *name) {
                let first = first.referenced;
                self.error(
                    loc,
                    format!(
                        "step `{me}` lists `{name}` twice in its `after` (first at {}:{})",
                        first.line(),
                        first.column()
                    ),
                );
            } else if name == me {
                self.error(
                    loc,
                    format!(
                        "step `{me}` names itself in its `after`: a step cannot wait for itself"
                    ),
                );
            } else if let Some(j) = all.iter().position(|s| s == name) {
                out.push((j, Some(loc)));
            } else {
                let names: Vec<&str> = all.iter().map(String::as_str).collect();
                let hint = super::shape::closest(name, &names)
                    .map(|near| format!("; did you mean `{near}`?"))
                    .unwrap_or_default();
                self.error(
                    loc,
                    format!("`after` of step `{me}` names step `{name}`, but no step has that name{hint}"),
                );
            }
        }
        out
    }

    /// Reports the cycles of `after`, each at the entry that closes it.
    ///
    /// The steps listed before each step (what a step without `after:`
    /// waits for) never make a cycle, since each is earlier in the file.
    /// The entries are then taken in the order of the file: an entry that
    /// closes a cycle with those before it is reported, with the shortest
    /// such cycle as a path from the step it belongs to. So a cycle is
    /// reported at most once, at the last of its entries in the file, and
    /// every entry that is the last of some cycle's is reported.
    fn cycles(&mut self, all: &[String], entries: &[Vec<(usize, Option<Location>)>]) {
        let mut waits: Vec<Vec<usize>> = entries
            .iter()
            .map(|e| {
                e.iter()
                    .filter(|(_, loc)| loc.is_none())
                    .map(|(j, _)| *j)
                    .collect()
            })
            .collect();
        for (i, step_entries) in entries.iter().enumerate() {
            for &(j, loc) in step_entries {
                let Some(loc) = loc else { continue };
                if let Some(back) = path(&waits, j, i) {
                    let mut names = vec![all[i].as_str()];
                    names.extend(back.iter().map(|&k| all[k].as_str()));
                    self.error(
                            loc,
                            format!(
                                "this `after` closes a cycle: {} (each step waits for the next), so none of them can start",
                                names.join(" → ")
                            ),
                        );
                }
                waits[i].push(j);
            }
        }
    }

    /// A step's `for_each`: exactly one expression reading the saga input
    /// or the result of a step it waits for.
    fn for_each(&mut self, raw: &Spanned<String>, scope: &Scope<'_>) -> Option<Expr> {
        let loc = raw.referenced;
        let text = &raw.value;
        let wanted = "write `${input.<path>}` or `${steps.<step>.result.<path>}` for the list of the branches";
        let message = match template::parse_text(text, scope) {
            Err(e) => format!("for_each: {e}"),
            Ok(Template::Expr(e @ (Expr::Input(_) | Expr::StepResult { .. }))) => return Some(e),
            Ok(Template::Expr(e)) => {
                format!("for_each `{e}` is not a list of the saga input or of a step's result: {wanted}")
            }
            Ok(Template::Interpolated(_)) => format!(
                "for_each `{text}` is text with expressions in it, always a string: it must be exactly one expression; {wanted}"
            ),
            Ok(_) => format!("for_each `{text}` is not an expression: {wanted}"),
        };
        self.error(loc, message);
        None
    }

    /// `max_concurrency`, on a step with `for_each` only.
    fn max_concurrency(&mut self, raw: &RawStep) -> Option<u32> {
        let m = raw.max_concurrency.as_ref()?;
        if raw.for_each.is_none() {
            self.error(
                m.referenced,
                "max_concurrency bounds the branches of a fan-out: it is only allowed on a step with `for_each`".into(),
            );
            return None;
        }
        match u32::try_from(m.value) {
            Ok(n) if (1..=MAX_BRANCHES).contains(&(n as usize)) => Some(n),
            _ => {
                self.error(
                    m.referenced,
                    format!(
                        "max_concurrency is {}; it must be between 1 and {MAX_BRANCHES} (the most branches a fan-out may have)",
                        m.value
                    ),
                );
                None
            }
        }
    }

    /// A step; `visible` are the steps it waits for, directly or not.
    fn step(&mut self, raw: &RawStep, visible: &[String], all: &[String]) -> StepDefinition {
        let name = self.name("step name", &raw.name);
        let wait = self.wait(raw);
        let stream = match (&raw.stream, &wait) {
            (Some(s), None) => self.name("stream", s),
            // Reported by the shape check (`has no `stream``).
            (None, None) | (_, Some(_)) => String::new(),
        };
        let command = match (&raw.command, &wait) {
            (_, Some(_)) => String::new(),
            (Some(c), None) => self.name("command", c),
            (None, None) => name.clone(),
        };
        let default_timeout = match wait {
            Some(_) => DEFAULT_WAIT_TIMEOUT,
            None => DEFAULT_STEP_TIMEOUT,
        };
        let timeout = raw
            .timeout
            .as_ref()
            .map_or(default_timeout, |t| self.duration("timeout", t));
        let clocks = self.clocks(
            raw.ack_timeout.as_ref(),
            raw.heartbeat_timeout.as_ref(),
            timeout,
        );
        let retry = raw
            .retry
            .as_ref()
            .map_or(DEFAULT_STEP_RETRY, |r| self.retry(r));
        let in_branch = raw.for_each.is_some();
        let action_scope = Scope {
            step: &raw.name.value,
            visible_steps: visible,
            all_steps: all,
            in_compensation: false,
            in_branch,
        };
        let for_each_scope = Scope {
            in_branch: false,
            ..action_scope
        };
        let items = raw
            .for_each
            .as_ref()
            .and_then(|f| self.for_each(f, &for_each_scope));
        let max_concurrency = self.max_concurrency(raw);
        let input = raw
            .input
            .as_ref()
            .and_then(|i| self.template(i, &action_scope));
        let replies = raw
            .reply_stream
            .as_ref()
            .map_or(ReplyMode::Shared, |r| self.reply_mode(r));
        let locks = self.locks(raw, &action_scope);
        let lock_timeout = raw
            .lock_timeout
            .as_ref()
            .map_or(DEFAULT_LOCK_TIMEOUT, |t| self.duration("lock_timeout", t));
        if let (Some(t), true) = (&raw.lock_timeout, locks.is_empty()) {
            self.error(
                t.referenced,
                "lock_timeout bounds the wait for the step's locks: the step takes none (`locks:`)"
                    .into(),
            );
        }
        let mut step = StepDefinition {
            name,
            stream,
            command,
            timeout,
            clocks,
            retry,
            input,
            replies,
            compensation: None,
            after: Vec::new(),
            for_each: items.map(|items| ForEach {
                items,
                max_concurrency,
            }),
            locks,
            lock_timeout,
            wait,
        };
        // A compensation runs once its step has completed (or may have):
        // it may read the step's own result too.
        let mut up_to_self = visible.to_vec();
        up_to_self.push(raw.name.value.clone());
        let comp_scope = Scope {
            step: &raw.name.value,
            visible_steps: &up_to_self,
            all_steps: all,
            in_compensation: true,
            in_branch,
        };
        step.compensation = raw
            .compensation
            .as_ref()
            .map(|c| self.compensation(&c.value, &step, &comp_scope));
        step
    }

    /// A step's `kind` and `signal`: the signal's name for a `wait` step,
    /// which may have none of what makes a command.
    fn wait(&mut self, raw: &RawStep) -> Option<String> {
        let kind = raw.kind.as_ref();
        match kind.map(|k| k.value.as_str()) {
            None | Some("command") => {
                if let Some(signal) = &raw.signal {
                    self.error(
                        signal.referenced,
                        "`signal` names what a `kind: wait` step waits for; this step sends a command".into(),
                    );
                }
                return None;
            }
            Some("wait") => {}
            Some(other) => {
                let at = kind.expect("read").referenced;
                self.error(
                    at,
                    format!("kind `{other}` is unknown; use command or wait"),
                );
                return None;
            }
        }
        let at = kind.expect("read").referenced;
        let not_here: [(&str, Option<Location>); 10] = [
            ("stream", raw.stream.as_ref().map(|s| s.referenced)),
            ("command", raw.command.as_ref().map(|s| s.referenced)),
            ("input", raw.input.as_ref().map(|s| s.referenced)),
            ("retry", raw.retry.as_ref().map(|s| s.referenced)),
            (
                "compensation",
                raw.compensation.as_ref().map(|s| s.referenced),
            ),
            (
                "reply_stream",
                raw.reply_stream.as_ref().map(|s| s.referenced),
            ),
            (
                "ack_timeout",
                raw.ack_timeout.as_ref().map(|s| s.referenced),
            ),
            (
                "heartbeat_timeout",
                raw.heartbeat_timeout.as_ref().map(|s| s.referenced),
            ),
            ("for_each", raw.for_each.as_ref().map(|s| s.referenced)),
            ("locks", raw.locks.as_ref().map(|s| s.referenced)),
        ];
        for (key, loc) in not_here {
            if let Some(loc) = loc {
                self.error(
                    loc,
                    format!("a `kind: wait` step sends no command and undoes nothing: `{key}` does not belong on it"),
                );
            }
        }
        let Some(signal) = &raw.signal else {
            self.error(
                at,
                "a `kind: wait` step needs `signal`: the name of the signal it waits for".into(),
            );
            return None;
        };
        if let Err(e) = crate::protocol::signal::check_signal_name(&signal.value) {
            self.error(signal.referenced, e);
        }
        Some(signal.value.clone())
    }

    /// A step's `locks`: each a text template (a branch's may read
    /// `${item}`), rendered when the step is about to start.
    fn locks(&mut self, raw: &RawStep, scope: &Scope<'_>) -> Vec<Template> {
        let Some(locks) = &raw.locks else {
            return Vec::new();
        };
        if locks.value.len() > crate::protocol::locks::MAX_LOCKS_PER_SAGA {
            self.error(
                locks.referenced,
                format!(
                    "a step takes at most {} locks",
                    crate::protocol::locks::MAX_LOCKS_PER_SAGA
                ),
            );
        }
        let mut out = Vec::new();
        for lock in &locks.value {
            match template::parse_text(&lock.value, scope) {
                Ok(Template::Literal(Value::String(name))) => {
                    if let Err(e) = crate::protocol::locks::check_lock_name(&name) {
                        self.error(lock.referenced, e);
                    }
                    out.push(Template::Literal(Value::String(name)));
                }
                Ok(t @ (Template::Interpolated(_) | Template::Expr(_))) => out.push(t),
                Ok(_) => self.error(
                    lock.referenced,
                    format!("lock `{}` is not text", lock.value),
                ),
                Err(e) => self.error(lock.referenced, format!("locks: {e}")),
            }
        }
        out
    }

    fn reply_mode(&mut self, raw: &Spanned<String>) -> ReplyMode {
        match raw.value.as_str() {
            "shared" => ReplyMode::Shared,
            "per_request" => ReplyMode::PerRequest,
            other => {
                self.error(
                    raw.referenced,
                    format!("reply_stream `{other}` is unknown; use shared or per_request"),
                );
                ReplyMode::Shared
            }
        }
    }

    /// A compensation; what it leaves out comes from its step.
    fn compensation(
        &mut self,
        raw: &RawCompensation,
        step: &StepDefinition,
        scope: &Scope<'_>,
    ) -> CompensationDefinition {
        let timeout = raw
            .timeout
            .as_ref()
            .map_or(step.timeout, |t| self.duration("timeout", t));
        CompensationDefinition {
            command: self.name("command", &raw.command),
            stream: raw
                .stream
                .as_ref()
                .map_or_else(|| step.stream.clone(), |s| self.name("stream", s)),
            timeout,
            // Not taken from the step: an undo is another handler's work,
            // often quick, and its clocks are its own.
            clocks: self.clocks(
                raw.ack_timeout.as_ref(),
                raw.heartbeat_timeout.as_ref(),
                timeout,
            ),
            retry: raw
                .retry
                .as_ref()
                .map_or(DEFAULT_COMPENSATION_RETRY, |r| self.retry(r)),
            input: raw.input.as_ref().and_then(|i| self.template(i, scope)),
            replies: raw
                .reply_stream
                .as_ref()
                .map_or(step.replies, |r| self.reply_mode(r)),
        }
    }
}

/// A path from step `from` to step `to` (both included) along what each
/// step waits for (`waits`): the shortest, the first in the order of the
/// entries when several are as short.
fn path(waits: &[Vec<usize>], from: usize, to: usize) -> Option<Vec<usize>> {
    let mut came_from: Vec<Option<usize>> = vec![None; waits.len()];
    let mut queue = std::collections::VecDeque::from([from]);
    let mut seen = vec![false; waits.len()];
    seen[from] = true;
    while let Some(k) = queue.pop_front() {
        if k == to {
            let mut out = vec![to];
            let mut at = to;
            while let Some(prev) = came_from[at] {
                out.push(prev);
                at = prev;
            }
            out.reverse();
            return Some(out);
        }
        for &next in &waits[k] {
            if !std::mem::replace(&mut seen[next], true) {
                came_from[next] = Some(k);
                queue.push_back(next);
            }
        }
    }
    None
}
