//! Which keys a handler may write its replies to.
//!
//! A command's `reply_stream` is a key name chosen by whoever wrote the
//! command, and anyone who can write to a command stream can forge one. A
//! handler that wrote wherever it was told would be a confused deputy: a
//! `reply_stream` of `mission:start` would make it start sagas, one of
//! `saga:leases` would have it fail on a key of another type. So replies go
//! only to the daemon's reply streams, recognised by their form:
//!
//! - shared: `<prefix><node>.<epoch>` (the daemon's `reply_stream_prefix`,
//!   its node id, the run it belongs to);
//! - per request: `<prefix><node>.<epoch>:<request_id>`, where
//!   `<request_id>` is the command's own. A suffix naming another command's
//!   `request_id` is refused: it is no stream the daemon follows for this
//!   command.
//!
//! The name must also be at most [`MAX_REPLY_STREAM_BYTES`] long and hold no
//! whitespace or control character. The epoch holds neither `.` nor `:`; the
//! node id may hold anything else.

/// The daemon's default `reply_stream_prefix`.
pub const DEFAULT_REPLY_STREAM_PREFIX: &str = "saga:replies:";

/// The longest `reply_stream` a handler writes to, in bytes. The daemon's
/// names are far shorter (a 13-byte prefix, a 32-hex node id, an 8-hex
/// epoch and a 32-hex request id make 87); the bound leaves room for long
/// node ids and prefixes while keeping what a forged command can make the
/// handler log or copy small.
pub const MAX_REPLY_STREAM_BYTES: usize = 256;

/// Why a `reply_stream` is not one the handler replies to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("reply_stream is {0} bytes long, over the limit of {MAX_REPLY_STREAM_BYTES}")]
    TooLong(usize),
    #[error("reply_stream holds whitespace or a control character")]
    BadCharacter,
    #[error("reply_stream does not start with the reply streams' prefix `{0}`")]
    OtherPrefix(String),
    #[error("reply_stream names nothing after the prefix")]
    Empty,
    #[error("reply_stream is not of the form `<prefix><node>.<epoch>[:<request_id>]`")]
    NotDaemonForm,
    #[error("reply_stream ends in a request_id that is not this command's")]
    OtherRequest,
}

/// The prefix is not one reply streams can have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the reply stream prefix `{}` must be 1 to 128 bytes without whitespace or control characters", .0.escape_debug())]
pub struct BadPrefix(pub String);

/// The daemon's reply streams, as recognised by their prefix and form.
#[derive(Clone, Debug)]
pub struct ReplyStreams {
    prefix: String,
}

impl ReplyStreams {
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        if prefix.is_empty() || prefix.len() > 128 || prefix.chars().any(forbidden) {
            return Err(BadPrefix(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether replies to the command `request_id` may go to `reply_stream`.
    pub fn check(&self, reply_stream: &str, request_id: &str) -> Result<(), Refusal> {
        if reply_stream.len() > MAX_REPLY_STREAM_BYTES {
            return Err(Refusal::TooLong(reply_stream.len()));
        }
        if reply_stream.chars().any(forbidden) {
            return Err(Refusal::BadCharacter);
        }
        let rest = reply_stream
            .strip_prefix(self.prefix.as_str())
            .ok_or_else(|| Refusal::OtherPrefix(self.prefix.clone()))?;
        if rest.is_empty() {
            return Err(Refusal::Empty);
        }
        let shared = rest
            .strip_suffix(request_id)
            .and_then(|r| r.strip_suffix(':'))
            .unwrap_or(rest);
        let Some((node, epoch)) = shared.rsplit_once('.') else {
            return Err(Refusal::NotDaemonForm);
        };
        if node.is_empty() || epoch.is_empty() {
            return Err(Refusal::NotDaemonForm);
        }
        match epoch.split_once(':') {
            None => Ok(()),
            Some((_, suffix)) if is_request_id(suffix) => Err(Refusal::OtherRequest),
            Some(_) => Err(Refusal::NotDaemonForm),
        }
    }
}

impl Default for ReplyStreams {
    fn default() -> Self {
        Self::new(DEFAULT_REPLY_STREAM_PREFIX).expect("the default prefix is valid")
    }
}

fn forbidden(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

fn is_request_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RID: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";

    fn check(stream: &str) -> Result<(), Refusal> {
        ReplyStreams::default().check(stream, RID)
    }

    #[test]
    fn the_daemons_forms_are_accepted() {
        assert_eq!(check("saga:replies:0a1b2c3d4e5f.9f8e7d6c"), Ok(()));
        assert_eq!(
            check(&format!("saga:replies:node-1.9f8e7d6c:{RID}")),
            Ok(())
        );
        // A node id may hold dots and colons of its own.
        assert_eq!(check("saga:replies:eu:node.1.9f8e7d6c"), Ok(()));
        let custom = ReplyStreams::new("acme:replies/").unwrap();
        assert_eq!(custom.check("acme:replies/n.e", RID), Ok(()));
        assert_eq!(
            custom.check("saga:replies:n.e", RID),
            Err(Refusal::OtherPrefix("acme:replies/".into()))
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let other_prefix = Err(Refusal::OtherPrefix("saga:replies:".into()));
        assert_eq!(check("saga:{leases}"), other_prefix);
        assert_eq!(check("mission:start"), other_prefix);
        assert_eq!(check(""), other_prefix);
        assert_eq!(check("saga:replies"), other_prefix);
        assert_eq!(check("saga:replies:"), Err(Refusal::Empty));
        assert_eq!(check("saga:replies:node"), Err(Refusal::NotDaemonForm));
        assert_eq!(check("saga:replies:.e"), Err(Refusal::NotDaemonForm));
        assert_eq!(check("saga:replies:n."), Err(Refusal::NotDaemonForm));
        assert_eq!(check("saga:replies:n.e:x"), Err(Refusal::NotDaemonForm));
        assert_eq!(
            check(&format!("saga:replies:n.e:{RID}:")),
            Err(Refusal::NotDaemonForm)
        );
        assert_eq!(
            check(&format!("saga:replies:n.e:{OTHER}")),
            Err(Refusal::OtherRequest)
        );
        assert_eq!(check("saga:replies:n 1.e"), Err(Refusal::BadCharacter));
        assert_eq!(check("saga:replies:n.e\n"), Err(Refusal::BadCharacter));
        assert_eq!(check("saga:replies:n.\u{7f}e"), Err(Refusal::BadCharacter));
        assert_eq!(check("saga:replies:n.\u{a0}e"), Err(Refusal::BadCharacter));
        let long = format!("saga:replies:n.{}", "e".repeat(MAX_REPLY_STREAM_BYTES));
        assert_eq!(check(&long), Err(Refusal::TooLong(long.len())));
        let longest = format!("saga:replies:n.{}", "e".repeat(MAX_REPLY_STREAM_BYTES - 15));
        assert_eq!(longest.len(), MAX_REPLY_STREAM_BYTES);
        assert_eq!(check(&longest), Ok(()));
    }

    #[test]
    fn a_prefix_must_be_usable() {
        assert!(ReplyStreams::new("").is_err());
        assert!(ReplyStreams::new("saga replies:").is_err());
        assert!(ReplyStreams::new(&"p".repeat(129)).is_err());
        assert_eq!(ReplyStreams::default().prefix(), "saga:replies:");
    }
}
