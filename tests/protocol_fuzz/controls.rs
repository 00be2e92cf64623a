//! Operators' requests: generated entries for the control stream, signed or
//! not, with fields of any bytes and lengths around their bounds, and
//! signed requests changed after signing.

use crate::values::*;
use proptest::prelude::*;
use sagaflow::protocol::control::{
    ControlRequest, OperatorKey, OperatorKeys, FRESH_FOR_MS, MAX_REASON_LEN,
};
use sagaflow::protocol::limits::MAX_REASON_LEN as MAX_REFUSAL_LEN;
use sagaflow::protocol::{RawFields, SagaId};

pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// An entry of generated fields, each a recipe or absent.
#[derive(Clone, Debug)]
pub struct ControlCase {
    pub fields: Vec<(&'static str, Bytes)>,
}

const NAMES: [&str; 9] = [
    "saga_id",
    "action",
    "step",
    "by",
    "reason",
    "issued_ms",
    "nonce",
    "signature",
    "extra",
];

fn field_value(name: &'static str) -> BoxedStrategy<Bytes> {
    let common = prop_oneof![
        any_text(40).prop_map(Bytes::Text),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::Raw),
        fill_near(MAX_REASON_LEN),
    ];
    match name {
        "saga_id" => prop_oneof![Just(Bytes::Text(SagaId::generate().to_string())), common].boxed(),
        "action" => prop_oneof![
            prop::sample::select(vec!["cancel", "retry", "skip", "abandon"])
                .prop_map(|a| Bytes::Text(a.to_owned())),
            common
        ]
        .boxed(),
        _ => common.boxed(),
    }
}

pub fn control_case() -> impl Strategy<Value = ControlCase> {
    let fields: Vec<_> = NAMES
        .iter()
        .map(|name| proptest::option::of(field_value(name)).prop_map(move |v| (*name, v)))
        .collect();
    fields.prop_map(|pairs| ControlCase {
        fields: pairs
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect(),
    })
}

impl ControlCase {
    pub fn fields(&self) -> RawFields {
        self.fields
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.make()))
            .collect()
    }
}

fn keys() -> OperatorKeys {
    OperatorKeys::parse(&format!("alice:{SECRET}")).unwrap()
}

/// Whatever an entry holds: no panic; a refusal is short; what is read
/// keeps its bounds; and nothing made by hand passes the check.
pub fn check_control(case: &ControlCase) {
    match ControlRequest::from_fields(&case.fields()) {
        Err(why) => assert!(why.len() <= MAX_REFUSAL_LEN, "a long refusal: {why}"),
        Ok(request) => {
            assert!(request.reason.len() <= MAX_REASON_LEN);
            assert!(request.by.chars().count() <= 64);
            assert!(request
                .step
                .as_ref()
                .is_none_or(|s| s.chars().count() <= 128));
            assert!(request.nonce.len() <= 64 && request.signature.len() <= 128);
            let verdict = request.verify(&keys(), request.issued_ms);
            assert!(
                verdict.is_err(),
                "an entry made by hand passed: {request:?}"
            );
        }
    }
}

/// What may change in a signed request after it is signed.
#[derive(Clone, Debug)]
pub enum Tamper {
    Action(String),
    Step(Option<String>),
    By(String),
    Reason(String),
    Issued(u64),
    Nonce(String),
    Saga,
}

pub fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        prop::sample::select(vec!["cancel", "retry", "skip", "abandon"])
            .prop_map(|a| Tamper::Action(a.to_owned())),
        proptest::option::of(any_text(20)).prop_map(Tamper::Step),
        any_text(20).prop_map(Tamper::By),
        any_text(60).prop_map(Tamper::Reason),
        any::<u64>().prop_map(Tamper::Issued),
        "[0-9a-f]{32}".prop_map(Tamper::Nonce),
        Just(Tamper::Saga),
    ]
}

/// A request signed by alice passes, read back from its fields; changed
/// in any field after signing, it fails.
pub fn check_tampered(action: &str, reason: &str, tamper: &Tamper) {
    let key = OperatorKey::parse(&format!("alice:{SECRET}")).unwrap();
    let issued = 1_800_000_000_000;
    let signed = ControlRequest::signed(&key, SagaId::generate(), action, None, reason, issued);
    let fields: RawFields = signed
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
    let read = ControlRequest::from_fields(&fields).unwrap();
    assert_eq!(read.verify(&keys(), issued + FRESH_FOR_MS), Ok(()));
    let mut changed = read.clone();
    match tamper {
        Tamper::Action(a) => changed.action = a.clone(),
        Tamper::Step(s) => changed.step = s.clone(),
        Tamper::By(b) => changed.by = b.clone(),
        Tamper::Reason(r) => changed.reason = r.clone(),
        Tamper::Issued(i) => changed.issued_ms = *i,
        Tamper::Nonce(n) => changed.nonce = n.clone(),
        Tamper::Saga => changed.saga_id = SagaId::generate(),
    }
    if changed != read {
        assert!(
            changed.verify(&keys(), issued).is_err(),
            "{tamper:?} passed"
        );
    }
}
