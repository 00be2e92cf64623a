//! The wire contract between starters, the daemon and command handlers
//! (`docs/protocol.md`): field names, id newtypes, trace context, and the
//! parsing and formatting of every stream entry that crosses Redis.
//!
//! Everything here is pure: entries come in as field maps and go out as field
//! lists. Data from Redis is untrusted, so parsing returns typed errors, never
//! panics.

pub mod command;
pub mod control;
pub mod event;
pub mod fields;
pub mod ids;
pub mod json;
pub mod limits;
pub mod locks;
pub mod payload;
pub mod reply;
pub mod signal;
pub mod start;
pub mod trace;

pub use command::{Command, CommandKind};
pub use event::{EventType, SagaEvent, SagaStatus};
pub use ids::{CorrelationId, RequestId, SagaId};
pub use json::Json;
pub use reply::{Reply, ReplyStatus};
pub use start::{StartError, StartRequest};
pub use trace::{SpanId, TraceId, TraceParent};

use std::collections::HashMap;

/// A stream entry's fields as Redis returned them: values are raw bytes
/// because nothing guarantees they are UTF-8.
pub type RawFields = HashMap<String, Vec<u8>>;

/// Unix time in milliseconds, as carried in `timestamp` and `deadline_ms`.
pub type UnixMillis = u64;

/// Reads one field as UTF-8 text: `Ok(None)` when absent, `Err` naming the
/// field when present but not UTF-8.
pub fn text_field<'a>(fields: &'a RawFields, name: &str) -> Result<Option<&'a str>, String> {
    match fields.get(name) {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(bytes)
            .map(Some)
            // Field names of the original starters' form are the sender's:
            // quoted short, so that a reason never grows with the input.
            .map_err(|_| format!("field `{}` is not valid UTF-8", limits::quote(name))),
    }
}
