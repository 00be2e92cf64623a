//! Operators' requests about a saga name (`pause_name`, `resume_name`):
//! written on the control stream beside the requests about sagas, signed
//! with the same keys over bytes of their own.

use super::super::{text_field, RawFields};
use super::{
    hex, hex_or_empty, length_prefixed, verify, OperatorKey, OperatorKeys, ACTION, BY, ISSUED_MS,
    MAX_REASON_LEN, NONCE, REASON, SIGNATURE,
};
use crate::protocol::fields as f;
use hmac::Mac;

/// The actions of a request about a saga name rather than a saga.
pub const NAME_ACTIONS: [&str; 2] = ["pause_name", "resume_name"];

/// Checks a saga name as definitions allow it: 1 to 128 printable ASCII
/// characters without spaces.
pub fn check_saga_name(name: &str) -> Result<(), String> {
    let max = crate::protocol::limits::MAX_NAME_LEN;
    if name.is_empty() || name.len() > max || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "saga name `{}` must be 1 to {max} printable ASCII characters without spaces",
            name.chars().take(max).collect::<String>()
        ));
    }
    Ok(())
}

/// An operator's request about a saga name (`pause_name`, `resume_name`):
/// every new start of the name waits while it is paused. Written on the
/// control stream beside the requests about sagas, signed the same way but
/// over bytes of its own (see [`NameRequest::signed_bytes`]), so that no
/// signature of one kind is ever valid for the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameRequest {
    /// The saga name (the `saga` field).
    pub name: String,
    /// `pause_name` or `resume_name`.
    pub action: String,
    pub by: String,
    pub reason: String,
    pub issued_ms: u64,
    pub nonce: String,
    pub signature: String,
}

impl NameRequest {
    /// A request signed with `key`, at `issued_ms` on Redis's clock.
    pub fn signed(
        key: &OperatorKey,
        name: &str,
        action: &str,
        reason: &str,
        issued_ms: u64,
    ) -> Self {
        let mut request = Self {
            name: name.to_owned(),
            action: action.to_owned(),
            by: key.name.clone(),
            reason: reason.to_owned(),
            issued_ms,
            nonce: crate::protocol::ids::new_uuid_hex(),
            signature: String::new(),
        };
        let mut mac = key.mac();
        mac.update(&request.signed_bytes());
        request.signature = hex(&mac.finalize().into_bytes());
        request
    }

    /// Every field but the signature, each as its length and its bytes,
    /// after a first line no request about a saga begins with.
    fn signed_bytes(&self) -> Vec<u8> {
        let issued = self.issued_ms.to_string();
        length_prefixed(
            b"sagaflow operator name request v1\n",
            &[
                self.by.as_str(),
                self.name.as_str(),
                self.action.as_str(),
                self.reason.as_str(),
                issued.as_str(),
                self.nonce.as_str(),
            ],
        )
    }

    /// Checks the signature and the freshness, as [`ControlRequest::verify`].
    pub fn verify(&self, keys: &OperatorKeys, written_ms: u64) -> Result<(), String> {
        verify(
            keys,
            &self.by,
            &self.signature,
            &self.signed_bytes(),
            self.issued_ms,
            written_ms,
        )
    }

    /// The entry's fields.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            (f::SAGA, self.name.clone()),
            (ACTION, self.action.clone()),
            (BY, self.by.clone()),
            (REASON, self.reason.clone()),
            (ISSUED_MS, self.issued_ms.to_string()),
            (NONCE, self.nonce.clone()),
            (SIGNATURE, self.signature.clone()),
        ]
    }

    /// Reads an entry whose action is one of [`NAME_ACTIONS`].
    pub fn from_fields(fields: &RawFields) -> Result<Self, String> {
        let text = |name: &str| -> Result<String, String> {
            Ok(text_field(fields, name)?.unwrap_or("").to_owned())
        };
        let action = text(ACTION)?;
        if !NAME_ACTIONS.contains(&action.as_str()) {
            return Err(format!(
                "unknown action `{}`",
                action.chars().take(32).collect::<String>()
            ));
        }
        let name = text(f::SAGA)?;
        check_saga_name(&name)?;
        let reason = text(REASON)?;
        if reason.len() > MAX_REASON_LEN {
            return Err(format!(
                "`reason` is {} bytes, the limit is {MAX_REASON_LEN}",
                reason.len()
            ));
        }
        let by: String = text(BY)?.chars().take(64).collect();
        Ok(Self {
            name,
            action,
            by: if by.is_empty() { "unknown".into() } else { by },
            reason,
            issued_ms: text(ISSUED_MS)?.parse().unwrap_or(0),
            nonce: hex_or_empty(text(NONCE)?, 64),
            signature: hex_or_empty(text(SIGNATURE)?, 128),
        })
    }
}
