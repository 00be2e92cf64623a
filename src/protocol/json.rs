//! A JSON value kept as its compact text.
//!
//! A saga holds its input and its steps' results for its whole life, and a
//! daemon holds thousands of sagas. Parsed, a small result of a few nested
//! objects and arrays takes ten times its text in allocations; as text it
//! takes its length, is written into the saga's record as it is, and is
//! parsed only when a template reads from it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;

/// JSON text, checked when made; serializes inline, as the value it holds.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(Box<RawValue>);

impl Json {
    /// The compact text of `value`.
    pub fn of(value: &Value) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("a Value always serializes"))
    }

    /// The value, parsed from the text.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.0.get()).expect("the text was checked when made")
    }

    pub fn text(&self) -> &str {
        self.0.get()
    }
}

impl From<Value> for Json {
    fn from(value: Value) -> Self {
        Self::of(&value)
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_compact_text_and_serializes_inline() {
        let j = Json::of(&json!({"robot_ids": ["r1", "r2"], "n": 2}));
        assert_eq!(j.text(), r#"{"robot_ids":["r1","r2"],"n":2}"#);
        assert_eq!(j.value(), json!({"robot_ids": ["r1", "r2"], "n": 2}));
        let outer = serde_json::to_string(&json!({"r": j.value()})).unwrap();
        #[derive(Serialize, Deserialize)]
        struct Holder {
            r: Json,
        }
        let held = serde_json::to_string(&Holder { r: j.clone() }).unwrap();
        assert_eq!(held, outer);
        let back: Holder = serde_json::from_str(&held).unwrap();
        assert_eq!(back.r, j);
    }
}
