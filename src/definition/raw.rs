//! The YAML files as written, every value with its location, before any
//! check beyond the shape (unknown keys are refused here).

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSaga {
    pub name: Spanned<String>,
    pub trigger: Option<Spanned<String>>,
    #[allow(dead_code)] // documentation for readers of the file
    pub description: Option<String>,
    pub steps: Spanned<Vec<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: Spanned<String>,
    /// Required on a `command` step.
    pub stream: Option<Spanned<String>>,
    pub command: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub ack_timeout: Option<Spanned<String>>,
    pub heartbeat_timeout: Option<Spanned<String>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub input: Option<Spanned<RawNode>>,
    pub reply_stream: Option<Spanned<String>>,
    pub compensation: Option<Spanned<RawCompensation>>,
    /// The steps it waits for, by name; `[]` for none.
    pub after: Option<Spanned<Vec<Spanned<String>>>>,
    /// The list it runs once per element of: one `${...}` expression.
    pub for_each: Option<Spanned<String>>,
    /// The most branches of a `for_each` under way at once.
    pub max_concurrency: Option<Spanned<i64>>,
    /// The semantic locks the step takes: one template each.
    pub locks: Option<Spanned<Vec<Spanned<String>>>>,
    /// The longest the step waits for its locks.
    pub lock_timeout: Option<Spanned<String>>,
    /// `command` (the default) or `wait`.
    pub kind: Option<Spanned<String>>,
    /// The signal a `wait` step waits for.
    pub signal: Option<Spanned<String>>,
    /// Set on a step that stands in for one that does not read
    /// ([`super::salvage`]) and has an `after`: which steps it waits for is
    /// not known. Not a key of the file.
    #[serde(skip)]
    pub after_unknown: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Spanned<i64>,
    pub backoff: Option<Spanned<String>>,
    pub initial_delay: Option<Spanned<String>>,
    pub max_delay: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompensation {
    pub command: Spanned<String>,
    pub stream: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub ack_timeout: Option<Spanned<String>>,
    pub heartbeat_timeout: Option<Spanned<String>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub input: Option<Spanned<RawNode>>,
    pub reply_stream: Option<Spanned<String>>,
}

/// A YAML value with the location of every node, so that a bad template
/// expression is reported where it is written, not where its block starts.
#[derive(Debug)]
pub enum RawNode {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawNode>>),
    /// Keys with their locations, for messages about a key itself.
    Map(Vec<(Spanned<String>, Spanned<RawNode>)>),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> serde::de::Visitor<'de> for NodeVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_none<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
        Ok(RawNode::UInt(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode::Str(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawNode>>()? {
            items.push(item);
        }
        Ok(RawNode::Seq(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<Spanned<String>, Spanned<RawNode>>()? {
            entries.push((key, value));
        }
        Ok(RawNode::Map(entries))
    }
}
