//! The dead-letter stream of a handler group: where a command goes that can
//! never be answered (malformed, a `reply_stream` that is no reply stream, a
//! write Redis refuses for good), so that it is acknowledged without being
//! lost from sight and without holding up the commands behind it.
//!
//! Each entry is a bounded copy of the command, so that a flood of huge
//! forged commands cannot grow it past what its cap allows:
//!
//! | field | value |
//! |---|---|
//! | `reason` | why the command was not answered (at most [`MAX_REASON_BYTES`]) |
//! | `stream`, `entry_id` | where the command was read |
//! | `consumer` | the handler instance that gave up on it |
//! | `field_count` | how many fields the command had |
//! | `truncated` | `true` when a field was cut or left out of the copy |
//! | `command.<field>` | the command's fields, at most [`MAX_COPIED_FIELDS`], names cut to [`MAX_NAME_BYTES`], values to [`MAX_VALUE_BYTES`] (lossy UTF-8) |

use crate::protocol::{fields as f, RawFields};

/// The dead-letter stream of `group`. The hash tag keeps it in the slot of
/// the group's deduplication records (`handler:{<group>}:done:*`).
pub fn dead_letter_key(group: &str) -> String {
    format!("handler:{{{group}}}:dead-letter")
}

/// Approximate cap on a dead-letter stream (`XADD MAXLEN ~`): room for
/// several floods of a whole `max_in_flight` (1024 by default) for an
/// operator to look into, while bounding the stream to about 10,000 copies
/// of at most [`MAX_COPY_BYTES`] each (about 120 MB at worst, a few MB for
/// commands of ordinary size).
pub const DEAD_LETTER_MAXLEN: usize = 10_000;
/// Fields of a command copied: a command has 13, so every field of a real
/// one is kept, and a forged one with thousands is cut short.
pub const MAX_COPIED_FIELDS: usize = 32;
/// Longest field name copied, in bytes: the contract's longest is 14.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest field value copied, in bytes: every id and a whole reply stream
/// name ([`super::reply_stream::MAX_REPLY_STREAM_BYTES`]) fit; a payload is
/// cut to its beginning, enough to recognise it.
pub const MAX_VALUE_BYTES: usize = 256;
/// Longest `reason`, in bytes: it may quote the command's own content.
pub const MAX_REASON_BYTES: usize = 512;
/// The most one dead-letter entry can hold, field names included (about
/// 11.6 KiB): the copied fields under their `command.` names, the reason,
/// three more values cut like the copied ones (`stream`, `entry_id`,
/// `consumer`), and 128 bytes for the remaining names and counts.
pub const MAX_COPY_BYTES: usize = MAX_COPIED_FIELDS
    * ("command.".len() + MAX_NAME_BYTES + MAX_VALUE_BYTES)
    + MAX_REASON_BYTES
    + 3 * MAX_VALUE_BYTES
    + 128;

/// The fields of the dead-letter entry for a command read at `entry_id` of
/// `stream`.
pub(super) fn entry(
    stream: &str,
    entry_id: &str,
    consumer: &str,
    fields: &RawFields,
    reason: &str,
) -> Vec<(String, String)> {
    let (reason, mut truncated) = cut(reason, MAX_REASON_BYTES);
    let mut names: Vec<&String> = fields.keys().collect();
    // The contract's fields first, so that a copy cut short keeps them.
    names.sort_by_key(|name| (!is_contract_field(name), name.as_str()));
    truncated |= names.len() > MAX_COPIED_FIELDS;
    let mut out = vec![
        ("reason".to_owned(), reason.to_owned()),
        (
            "stream".to_owned(),
            cut(stream, MAX_VALUE_BYTES).0.to_owned(),
        ),
        (
            "entry_id".to_owned(),
            cut(entry_id, MAX_VALUE_BYTES).0.to_owned(),
        ),
        (
            "consumer".to_owned(),
            cut(consumer, MAX_VALUE_BYTES).0.to_owned(),
        ),
        ("field_count".to_owned(), fields.len().to_string()),
    ];
    for name in names.into_iter().take(MAX_COPIED_FIELDS) {
        let value = String::from_utf8_lossy(&fields[name]);
        let (name, name_cut) = cut(name, MAX_NAME_BYTES);
        let (value, value_cut) = cut(&value, MAX_VALUE_BYTES);
        truncated |= name_cut || value_cut;
        out.push((format!("command.{name}"), value.to_owned()));
    }
    out.push(("truncated".to_owned(), truncated.to_string()));
    out
}

/// `text` cut to at most `max` bytes on a character boundary, and whether
/// anything was cut.
pub(super) fn cut(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

fn is_contract_field(name: &str) -> bool {
    [
        f::CORRELATION_ID,
        f::SAGA_ID,
        f::REQUEST_ID,
        f::TRACEPARENT,
        f::PARENT_SPAN_ID,
        f::EVENT_TYPE,
        f::STEP,
        f::KIND,
        f::ATTEMPT,
        f::REPLY_STREAM,
        f::PAYLOAD,
        f::DEADLINE_MS,
        f::TIMESTAMP,
    ]
    .contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &[u8])]) -> RawFields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    fn get<'a>(entry: &'a [(String, String)], name: &str) -> Option<&'a str> {
        entry
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_small_command_is_copied_whole() {
        let fields = raw(&[("reply_stream", b"saga:{leases}"), ("payload", b"{}")]);
        let entry = entry("s:commands", "1-0", "c-1", &fields, "refused");
        assert_eq!(get(&entry, "reason"), Some("refused"));
        assert_eq!(get(&entry, "stream"), Some("s:commands"));
        assert_eq!(get(&entry, "entry_id"), Some("1-0"));
        assert_eq!(get(&entry, "consumer"), Some("c-1"));
        assert_eq!(get(&entry, "field_count"), Some("2"));
        assert_eq!(get(&entry, "command.reply_stream"), Some("saga:{leases}"));
        assert_eq!(get(&entry, "command.payload"), Some("{}"));
        assert_eq!(get(&entry, "truncated"), Some("false"));
    }

    #[test]
    fn a_huge_command_is_cut_to_the_bounds() {
        let big = "é".repeat(1 << 20);
        let mut fields = raw(&[("request_id", b"abc"), ("payload", big.as_bytes())]);
        for i in 0..1000 {
            fields.insert(format!("junk{i:04}{}", "n".repeat(200)), b"v".to_vec());
        }
        fields.insert("bytes".into(), vec![0xff, 0xfe]);
        let entry = entry("s", "1-0", "c", &fields, &"why".repeat(1000));
        let copied: Vec<&(String, String)> = entry
            .iter()
            .filter(|(k, _)| k.starts_with("command."))
            .collect();
        assert_eq!(copied.len(), MAX_COPIED_FIELDS);
        assert_eq!(get(&entry, "command.request_id"), Some("abc"));
        let payload = get(&entry, "command.payload").unwrap();
        assert!(payload.len() <= MAX_VALUE_BYTES && payload.starts_with("éé"));
        assert!(get(&entry, "reason").unwrap().len() <= MAX_REASON_BYTES);
        assert_eq!(get(&entry, "field_count"), Some("1003"));
        assert_eq!(get(&entry, "truncated"), Some("true"));
        for (name, value) in &entry {
            assert!(name.len() <= "command.".len() + MAX_NAME_BYTES, "{name}");
            assert!(value.len() <= MAX_REASON_BYTES, "{name}");
        }
        let size: usize = entry.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(size <= MAX_COPY_BYTES, "{size}");
    }

    #[test]
    fn cutting_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), ("h", true));
        assert_eq!(cut("héllo", 3), ("hé", true));
        assert_eq!(cut("hé", 3), ("hé", false));
    }

    #[test]
    fn the_key_shares_the_slot_of_the_records() {
        assert_eq!(dead_letter_key("sim"), "handler:{sim}:dead-letter");
        assert_eq!(
            super::super::done_key("sim", "r").split(':').nth(1),
            dead_letter_key("sim").split(':').nth(1)
        );
    }
}
