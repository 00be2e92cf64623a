//! The shape of a definition file, checked on its YAML tree before the
//! file is read into the typed model: every unknown key (with the known
//! key it most resembles), every missing key (named with its step, at the
//! step's first line) and every value of the wrong kind, all in one pass.
//! Reading into the model alone would stop at the first of them, and would
//! place a missing key at whatever the parser read last.
//!
//! The keys a level knows are those of its type in [`super::raw`], read
//! from serde, so that a key added there is known here at once; a key this
//! module has no kind for is left for that type to check.

use super::raw::{RawCompensation, RawNode, RawRetry, RawSaga, RawStep};
use serde::de::{self, Deserialize, Visitor};
use serde_saphyr::{Location, Spanned};

/// One problem, where it stands.
pub(super) type Problem = (Location, String);

/// Checks the tree of one file; returns every problem of its shape.
pub(super) fn check(root: &Spanned<RawNode>) -> Vec<Problem> {
    let mut walk = Walk::default();
    if matches!(root.value, RawNode::Map(_)) {
        walk.mapping(root, Level::Saga, "the saga");
    } else {
        let keys = Level::Saga.keys().join(", ");
        let message = match root.value {
            RawNode::Null => format!("the file is empty: a saga definition is a mapping of {keys}"),
            _ => format!(
                "a saga definition is a mapping of {keys}, not {}",
                kind_of(&root.value)
            ),
        };
        walk.problems.push((root.referenced, message));
    }
    // In the order of the file, as a reader goes through it.
    walk.problems
        .sort_by_key(|(loc, _)| (loc.line(), loc.column()));
    walk.problems
}

/// The mappings of a definition file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Saga,
    Step,
    Compensation,
    Retry,
}

/// What a key's value must be.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A scalar: text, or a number or boolean read as text.
    Text,
    Integer,
    /// A list of step names (`after`).
    Names,
    /// One `${...}` expression (`for_each`).
    Expr,
    Map(Level),
    Steps,
    /// Anything (a template), or a key of no known kind.
    Any,
}

impl Level {
    /// The keys of this level, as its type in [`super::raw`] declares them.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Level::Saga => fields_of::<RawSaga>(),
            Level::Step => fields_of::<RawStep>(),
            Level::Compensation => fields_of::<RawCompensation>(),
            Level::Retry => fields_of::<RawRetry>(),
        }
    }

    /// The keys that must be given (the fields of [`super::raw`] that are
    /// not an `Option`; a unit test holds the two together).
    fn required(self) -> &'static [&'static str] {
        match self {
            Level::Saga => &["name", "steps"],
            // `stream` too, on a step that is not `kind: wait`: see
            // `Walk::mapping`.
            Level::Step => &["name"],
            Level::Compensation => &["command"],
            Level::Retry => &["max_attempts"],
        }
    }

    fn kind(self, key: &str) -> Kind {
        match (self, key) {
            (_, "input" | "description") => Kind::Any,
            (Level::Saga, "steps") => Kind::Steps,
            (Level::Step | Level::Compensation, "retry") => Kind::Map(Level::Retry),
            (Level::Step, "compensation") => Kind::Map(Level::Compensation),
            (Level::Retry, "max_attempts") | (Level::Step, "max_concurrency") => Kind::Integer,
            (Level::Step, "after" | "locks") => Kind::Names,
            (Level::Step, "for_each") => Kind::Expr,
            (_, k) if self.keys().contains(&k) => Kind::Text,
            _ => Kind::Any,
        }
    }
}

#[derive(Default)]
struct Walk {
    problems: Vec<Problem>,
}

impl Walk {
    /// Checks a mapping of `level`; `owner` names it in messages
    /// ("step `plan_route`", "the compensation of step `plan_route`").
    fn mapping(&mut self, node: &Spanned<RawNode>, level: Level, owner: &str) {
        let RawNode::Map(entries) = &node.value else {
            return;
        };
        for (key, value) in entries {
            let name = key.value.as_str();
            if !level.keys().contains(&name) {
                let message = unknown_key(owner, name, level.keys());
                self.problems.push((key.referenced, message));
                continue;
            }
            let kind = level.kind(name);
            if let RawNode::Null = value.value {
                // An empty optional key is as good as none; an empty
                // required one is reported with the missing ones below.
                // But `after:` with nothing is neither of the two things
                // it could mean, so it is refused.
                if let Kind::Names = kind {
                    self.problems.push((
                        key.referenced,
                        format!("{owner}: `{name}` is empty: write `after: []` for a step that starts with the saga, or leave `after` out for one that waits for the step listed before it"),
                    ));
                }
                continue;
            }
            match kind {
                Kind::Any => {}
                Kind::Text | Kind::Expr if is_scalar(&value.value) => {}
                Kind::Names => {
                    if let RawNode::Seq(items) = &value.value {
                        for item in items.iter().filter(|i| !is_scalar(&i.value)) {
                            self.problems.push((
                                item.referenced,
                                format!(
                                    "{owner}: each entry of `{name}` must be {}, not {}",
                                    if name == "locks" {
                                        "a lock name"
                                    } else {
                                        "a step name"
                                    },
                                    kind_of(&item.value)
                                ),
                            ));
                        }
                    } else {
                        self.problems.push((
                            value.referenced,
                            format!(
                                "{owner}: `{name}` must be a list of {} (`[a, b]`, or `[]` for none), not {}",
                                if name == "locks" { "lock names" } else { "step names" },
                                kind_of(&value.value)
                            ),
                        ));
                    }
                }
                Kind::Integer if matches!(value.value, RawNode::Int(_) | RawNode::UInt(_)) => {}
                Kind::Map(inner) if matches!(value.value, RawNode::Map(_)) => {
                    let inner_owner = match inner {
                        Level::Retry => format!("the retry of {owner}"),
                        _ => format!("the {name} of {owner}"),
                    };
                    self.mapping(value, inner, &inner_owner);
                }
                Kind::Steps if matches!(value.value, RawNode::Seq(_)) => self.steps(value),
                _ => self.problems.push((
                    value.referenced,
                    format!(
                        "{owner}: `{name}` must be {}, not {}",
                        expected(kind),
                        kind_of(&value.value)
                    ),
                )),
            }
        }
        let is_wait = entries
            .iter()
            .any(|(k, v)| k.value == "kind" && matches!(&v.value, RawNode::Str(s) if s == "wait"));
        let stream = (level == Level::Step && !is_wait).then_some("stream");
        for required in level.required().iter().copied().chain(stream) {
            let given = entries
                .iter()
                .find(|(k, _)| k.value == required)
                .map(|(_, v)| v);
            match given {
                None => self
                    .problems
                    .push((node.referenced, format!("{owner} has no `{required}`"))),
                Some(v) if matches!(v.value, RawNode::Null) => self
                    .problems
                    .push((v.referenced, format!("{owner}: `{required}` is empty"))),
                Some(_) => {}
            }
        }
    }

    fn steps(&mut self, node: &Spanned<RawNode>) {
        let RawNode::Seq(items) = &node.value else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let owner = step_owner(item, i);
            if matches!(item.value, RawNode::Map(_)) {
                self.mapping(item, Level::Step, &owner);
            } else {
                self.problems.push((
                    item.referenced,
                    format!(
                        "{owner} must be a mapping (name, stream, ...), not {}",
                        kind_of(&item.value)
                    ),
                ));
            }
        }
    }
}

/// "step `plan_route`", or "step 2" (1-based) when it has no usable name.
fn step_owner(item: &Spanned<RawNode>, index: usize) -> String {
    if let RawNode::Map(entries) = &item.value {
        let name = entries.iter().find(|(k, _)| k.value == "name");
        if let Some((
            _,
            Spanned {
                value: RawNode::Str(name),
                ..
            },
        )) = name
        {
            return format!("step `{name}`");
        }
    }
    format!("step {}", index + 1)
}

fn unknown_key(owner: &str, key: &str, known: &[&str]) -> String {
    match closest(key, known) {
        Some(near) => format!("{owner}: unknown key `{key}`; did you mean `{near}`?"),
        None => format!(
            "{owner}: unknown key `{key}`; the keys here are {}",
            known.join(", ")
        ),
    }
}

/// The known key most like `key`, if one is like it at all: the measure
/// and threshold clap uses for its own suggestions.
pub(super) fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro(key, k), *k))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

fn is_scalar(node: &RawNode) -> bool {
    matches!(
        node,
        RawNode::Bool(_) | RawNode::Int(_) | RawNode::UInt(_) | RawNode::Float(_) | RawNode::Str(_)
    )
}

fn expected(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "a single value",
        Kind::Integer => "a whole number",
        Kind::Names => "a list of step names",
        Kind::Expr => "one `${...}` expression",
        Kind::Map(_) => "a mapping",
        Kind::Steps => "a list of steps",
        Kind::Any => "a value",
    }
}

fn kind_of(node: &RawNode) -> &'static str {
    match node {
        RawNode::Null => "empty",
        RawNode::Bool(_) => "a boolean",
        RawNode::Int(_) | RawNode::UInt(_) | RawNode::Float(_) => "a number",
        RawNode::Str(_) => "text",
        RawNode::Seq(_) => "a list",
        RawNode::Map(_) => "a mapping",
    }
}

/// The field names serde's derive gives a struct: it passes them to
/// `deserialize_struct`, which this deserializer records before refusing.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldsProbe(&mut fields));
    fields
}

struct FieldsProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldsProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only the field names are read"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only the field names are read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_are_read_from_the_raw_types() {
        assert_eq!(
            Level::Saga.keys(),
            ["name", "trigger", "description", "steps"]
        );
        assert!(Level::Step.keys().contains(&"compensation"));
        assert!(Level::Retry.keys().contains(&"max_attempts"));
    }

    /// Every key listed as required is one the raw type cannot do without,
    /// and every other key is one it can.
    #[test]
    fn the_required_keys_are_those_of_the_raw_types() {
        let minimal = |level: Level| -> Vec<(&str, &str)> {
            match level {
                Level::Saga => vec![("name", "x"), ("steps", "[{name: a, stream: s}]")],
                Level::Step => vec![("name", "a")],
                Level::Compensation => vec![("command", "c")],
                Level::Retry => vec![("max_attempts", "1")],
            }
        };
        let parses = |level: Level, pairs: &[(&str, &str)]| {
            let body = pairs
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let text = format!("{{{body}}}");
            match level {
                Level::Saga => serde_saphyr::from_str::<RawSaga>(&text).is_ok(),
                Level::Step => serde_saphyr::from_str::<RawStep>(&text).is_ok(),
                Level::Compensation => serde_saphyr::from_str::<RawCompensation>(&text).is_ok(),
                Level::Retry => serde_saphyr::from_str::<RawRetry>(&text).is_ok(),
            }
        };
        for level in [Level::Saga, Level::Step, Level::Compensation, Level::Retry] {
            let all = minimal(level);
            assert!(parses(level, &all), "{level:?}");
            let required: Vec<&str> = all.iter().map(|(k, _)| *k).collect();
            assert_eq!(level.required(), required.as_slice(), "{level:?}");
            for key in &required {
                let without: Vec<_> = all.iter().copied().filter(|(k, _)| k != key).collect();
                assert!(!parses(level, &without), "{level:?} without {key}");
            }
        }
    }

    #[test]
    fn suggestions_are_for_near_misses_only() {
        let keys = Level::Step.keys();
        assert_eq!(closest("timout", keys), Some("timeout"));
        assert_eq!(closest("compensate", keys), Some("compensation"));
        assert_eq!(closest("streem", keys), Some("stream"));
        assert_eq!(closest("zzz", keys), None);
    }
}
