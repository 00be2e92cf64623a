//! Operators' requests: the entries `sagaflow cancel | retry | skip |
//! abandon` write to the control stream, signed with the operator's key.
//!
//! Anyone who can write Redis can write an entry; only an operator can sign
//! one. A request carries the name of the operator's key (`by`), the time
//! it was signed on Redis's clock (`issued_ms`), a random `nonce`, and
//! `signature`: HMAC-SHA256, under the key's secret, of every field of the
//! request. The daemons hold every operator's key (`operator_keys`) and
//! refuse a request that is unsigned, signed with an unknown key or a wrong
//! signature, not fresh (written more than [`FRESH_FOR`] away from when it
//! was signed), or seen before (its nonce). So the `by` of an accepted
//! request is an operator, and a request read from the stream cannot be
//! replayed later.

use super::fields as f;
use super::{text_field, RawFields, SagaId};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;

mod name;
pub use name::{check_saga_name, NameRequest, NAME_ACTIONS};

/// How far apart, on Redis's clock, a request may have been signed and
/// written: enough for a slow operator's terminal, short enough that a
/// request captured from the stream is useless soon after.
pub const FRESH_FOR_MS: u64 = 120_000;
/// See [`FRESH_FOR_MS`].
pub const FRESH_FOR: std::time::Duration = std::time::Duration::from_millis(FRESH_FOR_MS);

/// The shortest secret accepted for an operator's key: 128 bits of hex.
pub const MIN_SECRET_LEN: usize = 32;

/// Longest `reason` accepted: it is recorded on the audit stream.
pub const MAX_REASON_LEN: usize = 1024;

pub const ACTION: &str = "action";
pub const BY: &str = "by";
pub const REASON: &str = "reason";
pub const ISSUED_MS: &str = "issued_ms";
pub const NONCE: &str = "nonce";
pub const SIGNATURE: &str = "signature";

/// What names who: 1 to 64 letters, digits, `.`, `_`, `@` or `-` (an
/// operator's key, an API token).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
    {
        return Err(format!(
            "{what} `{}` must be 1 to 64 letters, digits, `.`, `_`, `@` or `-`",
            name.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// One operator's key: its name (who signs with it) and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorKey {
    pub name: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OperatorKey({}:***)", self.name)
    }
}

impl OperatorKey {
    /// Reads `name:secret`. The name is what the audit records as `by`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, secret) = text
            .trim()
            .split_once(':')
            .ok_or("an operator key is written name:secret")?;
        check_name("the operator key name", name)?;
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the secret of operator key `{name}` is {} characters; at least {MIN_SECRET_LEN} (make one with `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            secret: secret.as_bytes().to_vec(),
        })
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length")
    }
}

/// Every operator's key the daemons accept, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperatorKeys(BTreeMap<String, OperatorKey>);

impl OperatorKeys {
    /// Reads `name:secret,name:secret,...` (empty: no key at all).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let key = OperatorKey::parse(item)?;
            if keys.contains_key(&key.name) {
                return Err(format!("operator key `{}` is given twice", key.name));
            }
            keys.insert(key.name.clone(), key);
        }
        Ok(Self(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    pub fn get(&self, name: &str) -> Option<&OperatorKey> {
        self.0.get(name)
    }
}

/// An operator's request as written on the control stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlRequest {
    pub saga_id: SagaId,
    /// `cancel`, `retry`, `skip` or `abandon`.
    pub action: String,
    /// For `skip`: the step whose compensation is done by hand.
    pub step: Option<String>,
    /// The name of the key it is signed with.
    pub by: String,
    pub reason: String,
    /// When it was signed, on Redis's clock (unix ms).
    pub issued_ms: u64,
    pub nonce: String,
    /// Hex of the HMAC-SHA256; empty when unsigned.
    pub signature: String,
}

impl ControlRequest {
    /// A request signed with `key`, at `issued_ms` on Redis's clock.
    pub fn signed(
        key: &OperatorKey,
        saga_id: SagaId,
        action: &str,
        step: Option<String>,
        reason: &str,
        issued_ms: u64,
    ) -> Self {
        let mut request = Self {
            saga_id,
            action: action.to_owned(),
            step,
            by: key.name.clone(),
            reason: reason.to_owned(),
            issued_ms,
            nonce: super::ids::new_uuid_hex(),
            signature: String::new(),
        };
        let mut mac = key.mac();
        mac.update(&request.signed_bytes());
        request.signature = hex(&mac.finalize().into_bytes());
        request
    }

    /// Every field but the signature, each as its length and its bytes, so
    /// that no two requests sign the same bytes.
    fn signed_bytes(&self) -> Vec<u8> {
        let issued = self.issued_ms.to_string();
        length_prefixed(
            b"sagaflow operator request v1\n",
            &[
                self.by.as_str(),
                self.saga_id.as_str(),
                self.action.as_str(),
                self.step.as_deref().unwrap_or(""),
                self.reason.as_str(),
                issued.as_str(),
                self.nonce.as_str(),
            ],
        )
    }

    /// Checks the signature and the freshness: `written_ms` is when the
    /// entry was written, from its id (Redis's clock). The nonce's first
    /// use is checked by whoever acts on the request.
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
        let mut out = vec![
            (f::SAGA_ID, self.saga_id.to_string()),
            (ACTION, self.action.clone()),
            (BY, self.by.clone()),
            (REASON, self.reason.clone()),
            (ISSUED_MS, self.issued_ms.to_string()),
            (NONCE, self.nonce.clone()),
            (SIGNATURE, self.signature.clone()),
        ];
        if let Some(step) = &self.step {
            out.push((f::STEP, step.clone()));
        }
        out
    }

    /// Reads an entry. Missing signing fields read as empty: such a request
    /// is refused by [`Self::verify`], and the refusal recorded.
    pub fn from_fields(fields: &RawFields) -> Result<Self, String> {
        // Read as written, untrimmed: every field is signed as it was sent.
        let text = |name: &str| -> Result<String, String> {
            Ok(text_field(fields, name)?.unwrap_or("").to_owned())
        };
        let saga_id = SagaId::parse(&text(f::SAGA_ID)?).ok_or("`saga_id` is not a saga id")?;
        let action = text(ACTION)?;
        if !["cancel", "retry", "skip", "abandon", "pause", "resume"].contains(&action.as_str()) {
            return Err(format!(
                "unknown action `{}`",
                action.chars().take(32).collect::<String>()
            ));
        }
        let step = Some(text(f::STEP)?).filter(|s| !s.is_empty());
        if action == "skip" && step.is_none() {
            return Err("`skip` needs a `step`".into());
        }
        let reason = text(REASON)?;
        if reason.len() > MAX_REASON_LEN {
            return Err(format!(
                "`reason` is {} bytes, the limit is {MAX_REASON_LEN}",
                reason.len()
            ));
        }
        let by: String = text(BY)?.chars().take(64).collect();
        Ok(Self {
            saga_id,
            action,
            step: step.map(|s| s.chars().take(128).collect()),
            by: if by.is_empty() { "unknown".into() } else { by },
            reason,
            issued_ms: text(ISSUED_MS)?.parse().unwrap_or(0),
            nonce: hex_or_empty(text(NONCE)?, 64),
            signature: hex_or_empty(text(SIGNATURE)?, 128),
        })
    }
}

/// An entry of the control stream: a request about a saga or about a
/// saga name, as its `action` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Saga(ControlRequest),
    Name(NameRequest),
}

impl Request {
    pub fn from_fields(fields: &RawFields) -> Result<Self, String> {
        let action = text_field(fields, ACTION)?.unwrap_or("");
        if NAME_ACTIONS.contains(&action) {
            NameRequest::from_fields(fields).map(Self::Name)
        } else {
            ControlRequest::from_fields(fields).map(Self::Saga)
        }
    }
}

/// `first`, then each field as its length in bytes, `:`, the field and a
/// line break: no two lists of fields give the same bytes.
fn length_prefixed(first: &[u8], fields: &[&str]) -> Vec<u8> {
    let mut out = first.to_vec();
    for field in fields {
        out.extend_from_slice(field.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(field.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The checks of every request: keys configured, signed, by a key held,
/// the signature right, and fresh.
fn verify(
    keys: &OperatorKeys,
    by: &str,
    signature: &str,
    signed: &[u8],
    issued_ms: u64,
    written_ms: u64,
) -> Result<(), String> {
    if keys.is_empty() {
        return Err(
            "no operator keys are configured on the daemons (operator_keys): every request is refused"
                .into(),
        );
    }
    if signature.is_empty() {
        return Err(format!(
            "unsigned: `{by}` is not proven; operators sign requests with their key (operator_key)"
        ));
    }
    let key = keys
        .0
        .get(by)
        .ok_or_else(|| format!("signed with `{by}`, which is no operator key here"))?;
    let signature = unhex(signature).ok_or("the signature is not hex")?;
    let mut mac = key.mac();
    mac.update(signed);
    mac.verify_slice(&signature)
        .map_err(|_| format!("the signature does not match `{by}`'s key"))?;
    let apart = written_ms.abs_diff(issued_ms);
    if apart > FRESH_FOR_MS {
        return Err(format!(
            "signed {} s away from when it was written (at most {} s): a replay?",
            apart / 1000,
            FRESH_FOR_MS / 1000
        ));
    }
    Ok(())
}

/// A nonce or a signature as read: lowercase hex of at most `max` digits,
/// else nothing (the request then fails its check).
fn hex_or_empty(text: String, max: usize) -> String {
    let hex = text.len() <= max && text.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        text
    } else {
        String::new()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn key(name: &str) -> OperatorKey {
        OperatorKey::parse(&format!("{name}:{SECRET}")).unwrap()
    }

    fn fields(request: &ControlRequest) -> RawFields {
        request
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_bytes()))
            .collect()
    }

    #[test]
    fn a_signed_request_is_accepted_once_read_back() {
        let keys = OperatorKeys::parse(&format!("alice:{SECRET},bob:{SECRET}ff")).unwrap();
        let saga = SagaId::generate();
        let r = ControlRequest::signed(&key("alice"), saga, "retry", None, "fixed", 1_000);
        let back = ControlRequest::from_fields(&fields(&r)).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.verify(&keys, 1_000 + FRESH_FOR_MS), Ok(()));
    }

    #[test]
    fn forged_altered_stale_and_unsigned_requests_are_refused() {
        let keys = OperatorKeys::parse(&format!("alice:{SECRET}")).unwrap();
        let saga = SagaId::generate();
        let good = ControlRequest::signed(
            &key("alice"),
            saga.clone(),
            "skip",
            Some("a".into()),
            "x",
            5_000,
        );
        let mut altered = good.clone();
        altered.step = Some("b".into());
        assert!(altered
            .verify(&keys, 5_000)
            .unwrap_err()
            .contains("does not match"));
        let mut by_other = good.clone();
        by_other.by = "cfo@example.com".into();
        assert!(by_other
            .verify(&keys, 5_000)
            .unwrap_err()
            .contains("no operator key"));
        let forged = ControlRequest::signed(
            &OperatorKey::parse(&format!("alice:{SECRET}00")).unwrap(),
            saga.clone(),
            "cancel",
            None,
            "",
            5_000,
        );
        assert!(forged
            .verify(&keys, 5_000)
            .unwrap_err()
            .contains("does not match"));
        assert!(good
            .verify(&keys, 5_000 + FRESH_FOR_MS + 1)
            .unwrap_err()
            .contains("replay"));
        let mut unsigned = good.clone();
        unsigned.signature.clear();
        assert!(unsigned
            .verify(&keys, 5_000)
            .unwrap_err()
            .contains("unsigned"));
        assert!(good
            .verify(&OperatorKeys::default(), 5_000)
            .unwrap_err()
            .contains("no operator keys"));
    }

    #[test]
    fn a_signed_name_request_is_accepted_once_read_back_and_not_if_altered() {
        let keys = OperatorKeys::parse(&format!("alice:{SECRET}")).unwrap();
        let r = NameRequest::signed(&key("alice"), "mission_start", "pause_name", "maint", 7_000);
        let fields: RawFields = r
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_bytes()))
            .collect();
        let Ok(Request::Name(back)) = Request::from_fields(&fields) else {
            panic!("a request about a name");
        };
        assert_eq!(back, r);
        assert_eq!(back.verify(&keys, 7_000), Ok(()));
        for changed in [
            NameRequest {
                name: "other".into(),
                ..r.clone()
            },
            NameRequest {
                action: "resume_name".into(),
                ..r.clone()
            },
            NameRequest {
                reason: "x".into(),
                ..r.clone()
            },
        ] {
            assert!(changed
                .verify(&keys, 7_000)
                .unwrap_err()
                .contains("does not match"));
        }
        let mut unsigned = r.clone();
        unsigned.signature.clear();
        assert!(unsigned
            .verify(&keys, 7_000)
            .unwrap_err()
            .contains("unsigned"));
    }

    #[test]
    fn a_saga_requests_signature_is_no_name_requests() {
        let keys = OperatorKeys::parse(&format!("alice:{SECRET}")).unwrap();
        let saga = ControlRequest::signed(&key("alice"), SagaId::generate(), "pause", None, "", 1);
        let name = NameRequest {
            name: saga.saga_id.to_string(),
            action: "pause_name".into(),
            by: saga.by.clone(),
            reason: saga.reason.clone(),
            issued_ms: saga.issued_ms,
            nonce: saga.nonce.clone(),
            signature: saga.signature.clone(),
        };
        assert!(name
            .verify(&keys, 1)
            .unwrap_err()
            .contains("does not match"));
    }

    #[test]
    fn a_name_request_with_a_bad_name_or_reason_is_not_read() {
        let fields = |name: &str, reason: &str| -> RawFields {
            [("saga", name), ("action", "pause_name"), ("reason", reason)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
                .collect()
        };
        assert!(Request::from_fields(&fields("a b", ""))
            .unwrap_err()
            .contains("printable ASCII"));
        assert!(Request::from_fields(&fields("", ""))
            .unwrap_err()
            .contains("printable ASCII"));
        let long = "x".repeat(MAX_REASON_LEN + 1);
        assert!(Request::from_fields(&fields("s", &long))
            .unwrap_err()
            .contains("the limit is 1024"));
        assert!(matches!(
            Request::from_fields(&fields("s", "")),
            Ok(Request::Name(_))
        ));
    }

    #[test]
    fn keys_are_checked_when_read() {
        assert!(OperatorKeys::parse("").unwrap().is_empty());
        assert!(OperatorKey::parse("alice:short")
            .unwrap_err()
            .contains("at least 32"));
        assert!(OperatorKey::parse(&format!("bad name:{SECRET}")).is_err());
        assert!(OperatorKey::parse("no-colon").is_err());
        assert!(OperatorKeys::parse(&format!("a:{SECRET},a:{SECRET}")).is_err());
        assert_eq!(format!("{:?}", key("alice")), "OperatorKey(alice:***)");
    }
}
