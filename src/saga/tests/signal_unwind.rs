//! A `wait` step that took its signal is done like any completed step:
//! when a later step fails, the steps before the wait are undone.

use super::*;
use crate::protocol::signal::KeptSignal;

const WAITS: &str = "\
name: waits
steps:
  - name: allocate
    stream: resources:commands
    compensation: { command: release }
  - name: approve
    kind: wait
    signal: approved
  - name: plan
    stream: routing:commands
    compensation: { command: cancel_route }
";

#[test]
fn a_failure_after_a_wait_undoes_the_steps_before_it() {
    let (mut h, _) = Harness::with(WAITS);
    h.complete(json!({"robot_ids": ["r1"]}));
    h.apply(Event::Signal(KeptSignal {
        name: "approved".into(),
        signal_id: "s-1".into(),
        payload: json!({"ok": true}),
        by: None,
        received_ms: h.now,
    }));
    h.fail(false);
    h.complete(json!({}));
    let sent: Vec<String> = (h.sent().into_iter())
        .filter(|(_, kind, _)| *kind == CommandKind::Compensation)
        .map(|(command, _, _)| command)
        .collect();
    assert_eq!(sent, ["release"]);
    assert_eq!(h.status(), SagaStatus::Compensated);
    let payload = h.last_event_payload(EventType::SagaCompensated);
    assert_eq!(payload["compensated"], json!(["allocate"]));
    assert_eq!(payload["skipped"], json!(["approve"]));
}
