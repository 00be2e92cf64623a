//! Property tests of the wire parsers: starts, replies, commands and
//! operators' requests built
//! from generated field maps with values just under, at and just over each
//! bound, bytes that are not UTF-8, many fields, JSON nested far too deep,
//! empty and missing fields. Whatever comes in, a parser never panics,
//! refuses what breaks a bound with a short reason that names the limit,
//! and keeps nothing beyond a bound; replies are also fed to the saga
//! rules, whose events must stay within the same bounds.
//!
//! Values are generated as recipes (`Bytes`) and made into bytes inside
//! each case, so that a failing case prints as a few words, not megabytes.

mod commands;
mod controls;
mod replies;
mod starts;
mod values;

use commands::*;
use controls::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use replies::*;
use sagaflow::protocol::{
    Command, CommandKind, CorrelationId, RawFields, Reply, ReplyStatus, RequestId, SagaId, SpanId,
    StartRequest, TraceId, TraceParent,
};
use serde_json::Value;
use starts::*;
use values::*;

/// The default number of cases from a fixed seed, so that every run tries
/// the same inputs; `PROPTEST_RNG_SEED=<n>` tries others, and
/// `PROPTEST_CASES=<n>` more of them. A failure prints its input, small as
/// a recipe: add it as a test rather than keeping a regressions file.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(0x5a6a_f10e);
    }
    config.failure_persistence = None;
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn starts_are_bounded(case in start_case()) {
        check_start(&case);
    }

    #[test]
    fn replies_are_bounded(case in reply_case()) {
        check_reply(&case);
    }

    #[test]
    fn reply_events_are_bounded(case in reply_case()) {
        check_events(&case);
    }

    #[test]
    fn commands_round_trip_within_their_bounds(cmd in command_near_its_bound()) {
        check_command_round_trip(&cmd);
    }

    #[test]
    fn damaged_commands_are_refused_shortly(cmd in command(), mutations in vec(mutation(), 1..4)) {
        check_command_mutated(&cmd, &mutations);
    }

    #[test]
    fn control_entries_are_bounded_and_never_pass_unsigned(case in control_case()) {
        check_control(&case);
    }

    #[test]
    fn signed_requests_pass_and_fail_once_changed(
        action in prop::sample::select(vec!["cancel", "retry", "abandon"]),
        reason in values::any_text(200),
        tamper in tamper(),
    ) {
        check_tampered(action, &reason, &tamper);
    }

    #[test]
    fn built_replies_parse_back_to_their_status(cmd in command(), status in status()) {
        prop_assume!(broken_bound(&cmd, 0).is_none());
        check_built_reply(&cmd, &status);
    }
}

/// The nesting attack, by name, in every parser: a payload 100,000 levels
/// deep is refused, with a reason naming the limit, and nothing overflows.
#[test]
fn json_nested_100000_deep_is_refused_everywhere() {
    let deep = deep_object(100_000);
    let names_limit = |reason: &str| {
        assert_short(reason);
        assert!(reason.contains("limit of 127 levels"), "{reason}");
    };
    let start = RawFields::from([("payload".to_owned(), deep.clone().into_bytes())]);
    names_limit(&StartRequest::from_fields(&start).unwrap_err().reason);

    for (status, field) in [("completed", "result"), ("completed", "payload")] {
        let fields = RawFields::from([
            ("request_id".to_owned(), REQ.as_bytes().to_vec()),
            ("status".to_owned(), status.as_bytes().to_vec()),
            (field.to_owned(), deep.clone().into_bytes()),
        ]);
        let ReplyStatus::Unreadable { reason } = Reply::from_fields(&fields).unwrap().status else {
            panic!("a deep {field} was read");
        };
        names_limit(&reason);
    }
    for status in ["progress", "failed"] {
        let fields = RawFields::from([
            ("request_id".to_owned(), REQ.as_bytes().to_vec()),
            ("status".to_owned(), status.as_bytes().to_vec()),
            ("payload".to_owned(), deep.clone().into_bytes()),
        ]);
        // Optional parts of these replies: the deep payload is ignored.
        let status = Reply::from_fields(&fields).unwrap().status;
        assert!(matches!(
            status,
            ReplyStatus::Progress {
                details: Value::Null,
                ..
            } | ReplyStatus::Failed { .. }
        ));
    }

    let cmd = Command {
        correlation_id: CorrelationId::parse("c").unwrap(),
        saga_id: SagaId::generate(),
        request_id: RequestId::generate(),
        traceparent: TraceParent::new(TraceId::generate(), SpanId::generate()),
        event_type: "e".into(),
        step: "s".into(),
        kind: CommandKind::Action,
        attempt: 1,
        reply_stream: "r".into(),
        payload: Value::Null,
        deadline_ms: 1,
        timestamp: 1,
        ack_timeout_ms: None,
        heartbeat_timeout_ms: None,
        branch: None,
    };
    let mut fields = raw(cmd.to_fields());
    fields.insert("payload".into(), deep.into_bytes());
    names_limit(&Command::from_fields(&fields).unwrap_err());
}
