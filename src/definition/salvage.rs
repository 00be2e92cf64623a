//! The parts of a file whose shape is wrong that can still be checked, so
//! that one run reports the bad values of its well-formed steps along with
//! the problems of shape ([`super::shape`]) of the others.
//!
//! Each step is read on its own from the file's text with every other line
//! blanked, so that lines and columns stay those of the file. A step that
//! does not read on its own (a problem of shape, a flow-style list of
//! steps, an alias to an anchor outside it) stands in under its name with
//! no values to check, so that the steps after it may still refer to it.
//! Which steps it waits for is then known only when it has no `after` (the
//! step listed before it); otherwise it is marked unknown, so that no
//! reference to a step is refused for want of an `after` that may well be
//! in the part that does not read.

use super::raw::{RawNode, RawSaga, RawStep};
use serde_saphyr::Spanned;

/// The saga as far as it can be read, or `None` when its top level is too
/// broken for its steps to be found.
pub(super) fn raw_saga(text: &str, root: &Spanned<RawNode>) -> Option<RawSaga> {
    let RawNode::Map(entries) = &root.value else {
        return None;
    };
    let entry = |key: &str| entries.iter().find(|(k, _)| k.value == key);
    let (steps_key, steps) = entry("steps")?;
    let RawNode::Seq(items) = &steps.value else {
        return None;
    };
    let text_of = |node: &Spanned<RawNode>| match &node.value {
        RawNode::Str(s) => Some(Spanned::new(s.clone(), node.referenced, node.defined)),
        _ => None,
    };
    let name = entry("name")
        .and_then(|(_, v)| text_of(v))
        .unwrap_or_else(|| Spanned::new("saga".into(), root.referenced, root.defined));
    let trigger = entry("trigger").and_then(|(_, v)| text_of(v));
    // The steps end where the next key of the top level begins.
    let end = entries
        .iter()
        .map(|(k, _)| k.referenced.line())
        .filter(|line| *line > steps_key.referenced.line())
        .min()
        .unwrap_or(u64::MAX);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let steps_read = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let until = items.get(i + 1).map_or(end, |next| next.referenced.line());
            alone(&lines, item.referenced.line(), until)
                .unwrap_or_else(|| stand_in(item, i, &text_of))
        })
        .collect();
    Some(RawSaga {
        name,
        trigger,
        description: None,
        steps: Spanned::new(steps_read, steps.referenced, steps.defined),
    })
}

/// The step on lines `from..until` (1-based), read with every other line
/// blank.
fn alone(lines: &[&str], from: u64, until: u64) -> Option<RawStep> {
    let mut piece = String::new();
    for (i, line) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        if (from..until).contains(&n) {
            piece.push_str(line);
        } else {
            piece.push('\n');
        }
    }
    let mut read: Vec<RawStep> = serde_saphyr::from_str(&piece).ok()?;
    (read.len() == 1).then(|| read.remove(0))
}

/// A step that stands for one that does not read: its name if it has one
/// (else one no step can have), nothing else to check.
fn stand_in(
    item: &Spanned<RawNode>,
    index: usize,
    text_of: &dyn Fn(&Spanned<RawNode>) -> Option<Spanned<String>>,
) -> RawStep {
    let mut step: RawStep =
        serde_saphyr::from_str("{name: x, stream: x}").expect("a minimal step reads");
    let entries = match &item.value {
        RawNode::Map(entries) => entries.as_slice(),
        _ => &[],
    };
    let name = entries
        .iter()
        .find(|(k, _)| k.value == "name")
        .and_then(|(_, v)| text_of(v));
    step.after_unknown = entries.iter().any(|(k, _)| k.value == "after");
    step.name = name
        .unwrap_or_else(|| Spanned::new(format!("#{}", index + 1), item.referenced, item.defined));
    step.stream = Some(Spanned::new("x".into(), item.referenced, item.defined));
    step
}
