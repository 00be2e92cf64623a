//! Every bound on what the wire parsers accept, in one place, and the
//! helpers that apply them. `docs/protocol.md` ("Limits") states each one.
//!
//! Whatever a parser keeps ends up in a saga's record, in its events on
//! `saga:events` and often in later commands, so each copy multiplies what
//! one entry costs. The bounds keep every entry, and every field copied out
//! of one, small enough that a misbehaving starter or handler cannot make a
//! daemon hold, write or echo more than a known amount.

use super::RawFields;
use std::borrow::Cow;

/// Largest start entry, counting every field name and value, in either
/// form. A saga's input is kept in its record, in `saga_started`, in
/// `saga_completed` and in the default payload of every command: sagas
/// carry ids and parameters, not bulk data, and 1 MiB is far above any of
/// those while keeping a saga's copies of it in the megabytes.
pub const MAX_START_ENTRY_BYTES: usize = 1 << 20;

/// Most input fields of a start in the original form (no `payload`). The
/// original starters write a handful (`area`, `robots`); 64 is ample, and
/// keeps an input made of many tiny keys from costing far more in the
/// daemon's maps than its bytes suggest.
pub const MAX_LEGACY_START_FIELDS: usize = 64;

/// Longest field name that becomes an input key of a start in the original
/// form: the same as a saga or step name, which is what such keys are.
pub const MAX_LEGACY_KEY_LEN: usize = 128;

/// Longest saga name, idempotency key, command name (`event_type`) or step
/// name: saga definitions accept names of at most this length, so nothing
/// longer can name a saga or match a command.
pub const MAX_NAME_LEN: usize = 128;

/// Largest reply entry, counting every field name and value. A step's
/// result is kept in the saga's record, in `step_completed`, in
/// `saga_completed` and in the commands of later steps that use it: the
/// same role and the same bound as a saga's input. A reply over it is a
/// non-retryable failure of its attempt, since a retry would give the same
/// result.
pub const MAX_REPLY_ENTRY_BYTES: usize = 1 << 20;

/// Most bytes a saga input or a step result may take as compact JSON, the
/// form in which it is stored and sent. Its text is at most 1 MiB (the
/// entry's bound), but storing can lengthen it: the original starters'
/// fields gain quotes and braces, `1e5` is written `100000.0`, a control
/// character `\u0001`. Twice the entry's bound lets any ordinary input
/// through and stops the sixfold growth of escaped text.
pub const MAX_STORED_JSON_BYTES: usize = 2 << 20;

/// Longest `error` text kept from a `failed` reply; a longer one is cut to
/// this length (marked as cut), not refused. The error is copied into
/// `step_failed`, the saga's failure reason, `saga_compensated` or
/// `saga_failed`, and the payload of every compensation: 4 KiB holds a
/// message a person reads and the head of a stack trace.
pub const MAX_ERROR_LEN: usize = 4096;

/// Largest `details` object kept from a progress reply in the original
/// form, as compact JSON; a larger one is dropped. Each progress reply is
/// one `step_progress` event, and a handler may send many per step: details
/// are a stage name and a few counters, never kilobytes.
pub const MAX_PROGRESS_DETAILS_BYTES: usize = 4096;

/// Largest command entry, counting every field name and value, as a
/// handler reads it. The daemon writes commands: a step's default payload
/// holds the saga input and every earlier result, each at most 1 MiB of
/// text (2 MiB as stored at the very worst), so 16 MiB leaves room for
/// fifteen of them at their usual largest, beyond any real saga, while
/// bounding what one command costs a handler.
pub const MAX_COMMAND_ENTRY_BYTES: usize = 16 << 20;

/// Longest `reply_stream` a handler accepts on a command: it writes to that
/// key. The daemon's are `<prefix><node_id>.<epoch>[:<request_id>]`, under
/// 100 bytes with the defaults; 512 leaves room for long prefixes and node
/// ids.
pub const MAX_REPLY_STREAM_LEN: usize = 512;

/// Longest reason a parser gives for refusing an entry. Reasons go into
/// logs and `saga_rejected` events, so they never quote more than a short
/// piece of the input, whatever its size.
pub const MAX_REASON_LEN: usize = 256;

/// Deepest nesting of JSON arrays and objects the parsers accept. This is
/// what `serde_json`'s own recursion limit of 128 lets through, which every
/// parse here keeps (none disables it): deeper JSON is refused before it
/// can exhaust the stack. Real payloads nest a few levels.
pub const MAX_JSON_DEPTH: usize = 127;

/// Most JSON values (every array element, object member and nested value
/// counted) in a saga's input or a step's result. Parsed, each value costs
/// the daemon about a hundred bytes whatever its text: `[0,0,0,...]` of
/// 1 MiB is half a million values, some 30 MiB in memory. Ten thousand
/// keeps any input or result within about a megabyte parsed, far above
/// what ids and parameters need.
pub const MAX_JSON_VALUES: usize = 10_000;

/// An upper bound on the number of JSON values in `text`, and how deep its
/// arrays and objects nest, found without parsing it: one value, plus one
/// for every `[`, `{`, `,` and `:` outside strings.
pub fn json_shape(text: &str) -> (usize, usize) {
    let (mut count, mut depth, mut deepest) = (1usize, 0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    count += 1;
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b',' | b':' => count += 1,
                _ => {}
            }
        }
    }
    (count, deepest)
}

/// What is wrong with the shape of JSON text, found before it is parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep(String),
    /// More than [`MAX_JSON_VALUES`] values.
    TooMany(String),
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShapeError::TooDeep(why) | ShapeError::TooMany(why) => f.write_str(why),
        }
    }
}

/// Checks the depth and the number of values of JSON text without parsing
/// it, so that neither a deep nor a vast structure is ever built.
pub fn check_shape(text: &str) -> Result<(), ShapeError> {
    let (values, depth) = json_shape(text);
    if depth > MAX_JSON_DEPTH {
        return Err(ShapeError::TooDeep(format!(
            "nested {depth} levels deep, deeper than the limit of {MAX_JSON_DEPTH} levels"
        )));
    }
    if values > MAX_JSON_VALUES {
        return Err(ShapeError::TooMany(format!(
            "it holds up to {values} JSON values, over the limit of {MAX_JSON_VALUES}"
        )));
    }
    Ok(())
}

/// Parses an input or a result: JSON text within the depth limit and with
/// at most [`MAX_JSON_VALUES`] values, refused before it is parsed.
pub fn parse_bounded_json(text: &str) -> Result<serde_json::Value, String> {
    check_shape(text).map_err(|e| e.to_string())?;
    parse_json(text)
}

/// How many bytes an entry's field names and values take together.
pub fn entry_bytes(fields: &RawFields) -> usize {
    fields
        .iter()
        .fold(0usize, |n, (k, v)| n.saturating_add(k.len() + v.len()))
}

/// How many bytes `value` takes as compact JSON, the form it is stored and
/// sent in, without building that text. It can exceed the text it was
/// parsed from (`1e5` is stored as `100000.0`, a control character in a
/// string as `\u0001`), so bounds on what is kept are checked on this.
pub fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("a Value always serializes");
    count.0
}

/// `s`, cut to at most `max` bytes on a character boundary, with a note of
/// its full length when it was cut. `max` must leave room for the note.
pub fn truncate_text(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let note = format!(" [cut: {} bytes in all]", s.len());
    let mut keep = max.saturating_sub(note.len());
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    Cow::Owned(format!("{}{note}", &s[..keep]))
}

/// A piece of untrusted text short enough to quote in a reason.
pub fn quote(s: &str) -> String {
    const QUOTED: usize = 64;
    match s.char_indices().nth(QUOTED) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

/// A reason cut to [`MAX_REASON_LEN`]. Reasons are built from short parts;
/// this keeps the bound whatever a future reason quotes.
pub fn bounded_reason(reason: String) -> String {
    match truncate_text(&reason, MAX_REASON_LEN) {
        Cow::Borrowed(_) => reason,
        Cow::Owned(cut) => cut,
    }
}

/// The reason for an entry over its size bound.
pub fn too_large(what: &str, size: usize, limit: usize) -> String {
    format!("{what} is {size} bytes, over the limit of {limit} bytes")
}

/// Parses JSON text, keeping the recursion limit, with a reason that names
/// the depth limit when that is what the text broke.
pub fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| {
        let e = e.to_string();
        if e.starts_with("recursion limit exceeded") {
            format!("{e} (nested deeper than the limit of {MAX_JSON_DEPTH} levels)")
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn json_values_are_counted_without_parsing() {
        assert_eq!(json_shape("1"), (1, 0));
        assert_eq!(json_shape(r#"{"a":[1,2],"b":"x,y:[{"}"#), (7, 2));
        assert_eq!(json_shape(r#""a\"b,c""#), (1, 0));
        let many = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES));
        assert!(parse_bounded_json(&many)
            .unwrap_err()
            .contains("JSON values"));
        let fine = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES - 3));
        assert!(parse_bounded_json(&fine).is_ok());
    }

    #[test]
    fn the_depth_limit_is_serde_jsons() {
        assert!(parse_json(&nested(MAX_JSON_DEPTH)).is_ok());
        let err = parse_json(&nested(MAX_JSON_DEPTH + 1)).unwrap_err();
        assert!(err.contains("limit of 127 levels"), "{err}");
        let err = parse_json(&nested(100_000)).unwrap_err();
        assert!(err.len() < MAX_REASON_LEN, "{err}");
    }

    #[test]
    fn cut_text_stays_within_its_bound_on_a_char_boundary() {
        assert_eq!(truncate_text("short", 10), "short");
        let long = "é".repeat(5000);
        let cut = truncate_text(&long, MAX_ERROR_LEN);
        assert!(cut.len() <= MAX_ERROR_LEN);
        assert!(
            cut.ends_with("[cut: 10000 bytes in all]"),
            "{}",
            &cut[cut.len() - 40..]
        );
        assert_eq!(quote(&"x".repeat(100)).len(), 67);
        assert_eq!(quote("ok"), "ok");
        assert!(bounded_reason("r".repeat(10_000)).len() <= MAX_REASON_LEN);
    }

    #[test]
    fn json_len_is_the_stored_length() {
        let v: serde_json::Value = serde_json::from_str(r#"[1e5, "\u0001", {"a": null}]"#).unwrap();
        assert_eq!(json_len(&v), v.to_string().len());
        assert_eq!(v.to_string(), r#"[100000.0,"\u0001",{"a":null}]"#);
    }
}
