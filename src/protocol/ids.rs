//! Id newtypes, so a saga id can never be passed where a request id is due.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest correlation id the contract accepts.
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// A fresh UUID4 as 32 lowercase hex digits, the contract's form of
/// generated ids.
pub fn new_uuid_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// True for a UUID written as 32 lowercase hex digits.
pub fn is_uuid_hex(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id.
            pub fn generate() -> Self {
                Self(new_uuid_hex())
            }

            /// Accepts only the contract's form: 32 lowercase hex digits.
            pub fn parse(s: &str) -> Option<Self> {
                is_uuid_hex(s).then(|| Self(s.to_owned()))
            }

            /// Wraps a string that is already known to be valid, such as a
            /// fixed id in a test or one read back from our own records.
            pub fn from_trusted(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

uuid_id!(
    /// One saga instance.
    SagaId
);

/// Namespace of the saga ids derived from start entries.
const START_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x7c3e_9a1d_52b4_4f0e_9d61_0b8a_3f2c_e415);

impl SagaId {
    /// The saga id of the start entry `entry_id` of `stream`: the same for
    /// every daemon that takes the entry, so that an entry taken twice (after
    /// a crash, or by a daemon that was paused) starts one saga, not two. It
    /// has the form of a random UUID4.
    pub fn for_start(stream: &str, entry_id: &str) -> Self {
        let digest =
            uuid::Uuid::new_v5(&START_NAMESPACE, format!("{stream}\n{entry_id}").as_bytes());
        let id = uuid::Builder::from_random_bytes(*digest.as_bytes()).into_uuid();
        Self(id.simple().to_string())
    }
}
uuid_id!(
    /// One request/reply exchange: new for every attempt of every command.
    RequestId
);

/// Ties together everything caused by one request; chosen by the starter or
/// generated, never rewritten.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CorrelationId(String);

impl CorrelationId {
    pub fn generate() -> Self {
        Self(new_uuid_hex())
    }

    /// Non-empty, at most 128 printable ASCII characters (0x20 to 0x7E),
    /// space included, as the contract and HTTP header values such as
    /// `X-Request-ID` have them. Kept verbatim: no trimming.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("correlation_id is empty".into());
        }
        // The characters first: a long run of non-ASCII text is refused
        // for what it is, not for its length in bytes.
        if let Some((at, c)) = s.chars().enumerate().find(|(_, c)| !matches!(c, ' '..='~')) {
            let what = match c {
                '\t' => "a tab (0x09)".to_owned(),
                '\n' | '\r' => format!("a line break (0x{:02X})", u32::from(c)),
                c if c.is_ascii() => format!("a control character (0x{:02X})", u32::from(c)),
                c => format!("a non-ASCII character `{}`", c.escape_debug()),
            };
            return Err(format!(
                "correlation_id has {what} at character {}: only printable ASCII (0x20 to 0x7E, space included) is allowed",
                at + 1
            ));
        }
        if s.len() > MAX_CORRELATION_ID_LEN {
            return Err(format!(
                "correlation_id is {} characters long, the limit is {MAX_CORRELATION_ID_LEN}",
                s.len()
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn from_trusted(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The correlation id as a trace id when it is a UUID (with or without
    /// hyphens, any case), per the contract's trace-id rule.
    pub fn as_trace_id(&self) -> Option<String> {
        let compact: String = self
            .0
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        let hyphens = self.0.len() - self.0.replace('-', "").len();
        (is_uuid_hex(&compact) && (hyphens == 0 || hyphens == 4) && compact != "0".repeat(32))
            .then_some(compact)
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_contract_form() {
        assert!(is_uuid_hex(SagaId::generate().as_str()));
        assert!(is_uuid_hex(RequestId::generate().as_str()));
        assert!(is_uuid_hex(CorrelationId::generate().as_str()));
        assert_ne!(SagaId::generate(), SagaId::generate());
    }

    #[test]
    fn a_start_entry_always_gives_the_same_saga_id() {
        let a = SagaId::for_start("mission:start", "1700000000000-0");
        assert_eq!(a, SagaId::for_start("mission:start", "1700000000000-0"));
        assert_ne!(a, SagaId::for_start("mission:start", "1700000000000-1"));
        assert_ne!(a, SagaId::for_start("other:start", "1700000000000-0"));
        assert!(is_uuid_hex(a.as_str()));
        assert_eq!(&a.as_str()[12..13], "4", "UUID4 form");
    }

    #[test]
    fn correlation_ids_are_checked() {
        assert!(CorrelationId::parse("trace-demo-123").is_ok());
        assert!(CorrelationId::parse(&"a".repeat(128)).is_ok());
        let refused = |s: &str| CorrelationId::parse(s).unwrap_err();
        assert_eq!(refused(""), "correlation_id is empty");
        assert_eq!(
            refused(&"a".repeat(129)),
            "correlation_id is 129 characters long, the limit is 128"
        );
        assert_eq!(
            refused("tab\there"),
            "correlation_id has a tab (0x09) at character 4: only printable ASCII (0x20 to 0x7E, space included) is allowed"
        );
        assert_eq!(
            refused("del\u{7f}"),
            "correlation_id has a control character (0x7F) at character 4: only printable ASCII (0x20 to 0x7E, space included) is allowed"
        );
        assert_eq!(
            refused("ordér 42"),
            "correlation_id has a non-ASCII character `é` at character 4: only printable ASCII (0x20 to 0x7E, space included) is allowed"
        );
        assert!(refused("line\nbreak").contains("a line break (0x0A) at character 5"));
        // 128 characters of 2 bytes each are 256 bytes: still refused for
        // what they are, not for their length in bytes.
        assert!(refused(&"é".repeat(100)).contains("non-ASCII"));
    }

    #[test]
    fn a_space_is_part_of_a_correlation_id() {
        // The contract follows HTTP header values (`X-Request-ID: order 42`).
        for id in ["order 42", " ", "  padded  ", "a b\"c'd ~!"] {
            let parsed = CorrelationId::parse(id).unwrap();
            assert_eq!(parsed.as_str(), id, "kept verbatim");
            assert_eq!(parsed.to_string(), id);
        }
        assert!(CorrelationId::parse(&" ".repeat(128)).is_ok());
        assert!(CorrelationId::parse("order 42")
            .unwrap()
            .as_trace_id()
            .is_none());
    }

    #[test]
    fn uuid_correlation_ids_become_trace_ids() {
        let hyphenated = CorrelationId::parse("F77364F4-7481-4342-89B2-610907F31C84").unwrap();
        assert_eq!(
            hyphenated.as_trace_id().as_deref(),
            Some("f77364f47481434289b2610907f31c84")
        );
        let plain = CorrelationId::parse("f77364f47481434289b2610907f31c84").unwrap();
        assert!(plain.as_trace_id().is_some());
        assert!(CorrelationId::parse("trace-demo-123")
            .unwrap()
            .as_trace_id()
            .is_none());
    }
}
