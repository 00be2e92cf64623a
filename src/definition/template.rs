//! Payload templates: JSON values whose strings may hold `${...}`
//! expressions, checked when a definition loads and rendered for each
//! command.
//!
//! `${input.<path>}`, `${steps.<step>.result.<path>}` (of a step that has
//! completed whenever the template renders: one the step waits for through
//! `after`, directly or not, or in its compensation the step itself),
//! `${saga_id}`, `${correlation_id}`; in compensations `${failure.step}` and
//! `${failure.reason}`; in the input of a step with `for_each` and of its
//! compensation, `${item}` / `${item.<path>}` (the element of the branch)
//! and `${index}` (its 0-based position in the list). A string that is
//! exactly one expression keeps the value's JSON type; otherwise values are
//! spliced in as text. `$${` writes a literal `${`. Path segments that are
//! numbers index arrays.

use crate::protocol::Json;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// What an expression refers to.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Input(Vec<String>),
    StepResult {
        step: String,
        path: Vec<String>,
    },
    SagaId,
    CorrelationId,
    FailureStep,
    FailureReason,
    /// The element of a fan-out's branch, or a part of it.
    Item(Vec<String>),
    /// The 0-based position of a fan-out's branch in its list.
    Index,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

/// A checked template.
#[derive(Clone, Debug, PartialEq)]
pub enum Template {
    Literal(Value),
    /// A string that is exactly one expression: keeps the JSON type.
    Expr(Expr),
    /// Text with expressions spliced in: always a string.
    Interpolated(Vec<Part>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

/// What a template may refer to, from where it stands in the saga.
pub struct Scope<'a> {
    /// The step the template belongs to, for messages.
    pub step: &'a str,
    /// Steps whose results exist whenever this template renders.
    pub visible_steps: &'a [String],
    /// Every step of the saga, to tell "not waited for" from "unknown".
    pub all_steps: &'a [String],
    /// Compensation templates may use `${failure.*}`.
    pub in_compensation: bool,
    /// The inputs of a step with `for_each` (and of its compensation) may
    /// use `${item}` and `${index}`.
    pub in_branch: bool,
}

/// The values a template renders from.
pub struct Context<'a> {
    pub input: &'a Json,
    pub results: &'a BTreeMap<String, Json>,
    pub saga_id: &'a str,
    pub correlation_id: &'a str,
    pub failure: Option<(&'a str, &'a str)>,
    /// The element of the branch being rendered and its 0-based position,
    /// for a fan-out step's commands; `None` elsewhere.
    pub item: Option<(&'a Value, usize)>,
}

/// A template that could not be rendered: a referenced value is missing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dotted = |path: &[String]| path.iter().map(|s| format!(".{s}")).collect::<String>();
        match self {
            Expr::Input(path) => write!(f, "${{input{}}}", dotted(path)),
            Expr::StepResult { step, path } => {
                write!(f, "${{steps.{step}.result{}}}", dotted(path))
            }
            Expr::SagaId => f.write_str("${saga_id}"),
            Expr::CorrelationId => f.write_str("${correlation_id}"),
            Expr::FailureStep => f.write_str("${failure.step}"),
            Expr::FailureReason => f.write_str("${failure.reason}"),
            Expr::Item(path) => write!(f, "${{item{}}}", dotted(path)),
            Expr::Index => f.write_str("${index}"),
        }
    }
}

impl Template {
    /// Checks a YAML value; the error names the key path inside `input`.
    pub fn parse(value: &Value, scope: &Scope<'_>) -> Result<Template, String> {
        parse_at(value, scope, "input")
    }

    /// Renders the payload. With `lenient`, a missing value renders as
    /// `null` (compensations must run even when the step left no result);
    /// otherwise it is an error.
    pub fn render(&self, ctx: &Context<'_>, lenient: bool) -> Result<Value, TemplateError> {
        Ok(match self {
            Template::Literal(v) => v.clone(),
            Template::Expr(e) => match lookup(e, ctx) {
                Some(v) => v,
                None if lenient => Value::Null,
                None => {
                    return Err(TemplateError(format!(
                        "{e} refers to a value that is not there"
                    )))
                }
            },
            Template::Interpolated(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(e) => match lookup(e, ctx) {
                            Some(Value::String(s)) => out.push_str(&s),
                            Some(v) => out.push_str(&v.to_string()),
                            None if lenient => {}
                            None => {
                                return Err(TemplateError(format!(
                                    "{e} refers to a value that is not there"
                                )))
                            }
                        },
                    }
                }
                Value::String(out)
            }
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.render(ctx, lenient))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Object(entries) => {
                let mut map = Map::new();
                for (k, t) in entries {
                    map.insert(k.clone(), t.render(ctx, lenient)?);
                }
                Value::Object(map)
            }
        })
    }
}

fn parse_at(value: &Value, scope: &Scope<'_>, at: &str) -> Result<Template, String> {
    Ok(match value {
        Value::String(s) => parse_text(s, scope).map_err(|e| format!("{at}: {e}"))?,
        Value::Array(items) => Template::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_at(v, scope, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Template::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), parse_at(v, scope, &format!("{at}.{k}"))?)))
                .collect::<Result<_, String>>()?,
        ),
        other => Template::Literal(other.clone()),
    })
}

/// Checks one string of a template.
pub fn parse_text(s: &str, scope: &Scope<'_>) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        text.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            text.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("`${{` without a closing `}}` in {s:?}"))?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Expr(parse_expr(tail[..end].trim(), scope)?));
            rest = &tail[end + 1..];
        } else {
            text.push('$');
            rest = &after[1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(match parts.as_slice() {
        [] => Template::Literal(Value::String(String::new())),
        [Part::Expr(e)] => Template::Expr(e.clone()),
        [Part::Text(t)] => Template::Literal(Value::String(t.clone())),
        _ => Template::Interpolated(parts),
    })
}

fn parse_expr(expr: &str, scope: &Scope<'_>) -> Result<Expr, String> {
    let segments: Vec<&str> = expr.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "`${{{expr}}}` is not a valid expression (empty path segment)"
        ));
    }
    let owned = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    match segments.as_slice() {
        ["input", path @ ..] => Ok(Expr::Input(owned(path))),
        ["saga_id"] => Ok(Expr::SagaId),
        ["correlation_id"] => Ok(Expr::CorrelationId),
        ["failure", "step"] if scope.in_compensation => Ok(Expr::FailureStep),
        ["failure", "reason"] if scope.in_compensation => Ok(Expr::FailureReason),
        ["failure", ..] if !scope.in_compensation => Err(format!(
            "`${{{expr}}}` is only available in a compensation's input"
        )),
        ["item", path @ ..] if scope.in_branch => Ok(Expr::Item(owned(path))),
        ["index"] if scope.in_branch => Ok(Expr::Index),
        ["index", ..] if scope.in_branch => Err(format!(
            "`${{{expr}}}` is not valid: `${{index}}` is a number, with no path"
        )),
        ["item" | "index", ..] => Err(format!(
            "`${{{expr}}}` is only available in the input of a step with `for_each` and of its compensation (the element of one branch, and its position)"
        )),
        ["steps", step, "result", path @ ..] => {
            let step = (*step).to_owned();
            if scope.visible_steps.contains(&step) {
                Ok(Expr::StepResult { step, path: owned(path) })
            } else if step == scope.step {
                Err(format!(
                    "`${{{expr}}}` reads the result of step `{step}` itself, which exists only once it has completed: only its compensation's input may read it"
                ))
            } else if scope.all_steps.contains(&step) {
                Err(format!(
                    "`${{{expr}}}` reads the result of step `{step}`, which step `{}` does not wait for, so it may not have completed: add `{step}` to the `after` of `{}`",
                    scope.step, scope.step
                ))
            } else {
                Err(format!("`${{{expr}}}` refers to step `{step}`, but no step has that name"))
            }
        }
        ["steps", ..] => Err(format!(
            "`${{{expr}}}` is not a valid step reference: write `${{steps.<step>.result.<path>}}`"
        )),
        _ => Err(format!(
            "`${{{expr}}}` is unknown: use input.<path>, steps.<step>.result.<path>, saga_id, correlation_id{}{}",
            if scope.in_branch { ", item, item.<path>, index" } else { "" },
            if scope.in_compensation { ", failure.step or failure.reason" } else { "" }
        )),
    }
}

fn walk(mut value: &Value, path: &[String]) -> Option<Value> {
    for seg in path {
        value = match value {
            Value::Object(map) => map.get(seg)?,
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value.clone())
}

fn lookup(expr: &Expr, ctx: &Context<'_>) -> Option<Value> {
    match expr {
        Expr::Input(path) => walk(&ctx.input.value(), path),
        Expr::StepResult { step, path } => walk(&ctx.results.get(step)?.value(), path),
        Expr::SagaId => Some(Value::String(ctx.saga_id.to_owned())),
        Expr::CorrelationId => Some(Value::String(ctx.correlation_id.to_owned())),
        Expr::FailureStep => ctx.failure.map(|(step, _)| Value::String(step.to_owned())),
        Expr::FailureReason => ctx
            .failure
            .map(|(_, reason)| Value::String(reason.to_owned())),
        Expr::Item(path) => walk(ctx.item?.0, path),
        Expr::Index => ctx.item.map(|(_, index)| Value::from(index)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn steps() -> Vec<String> {
        vec!["allocate".into(), "plan".into()]
    }

    /// A template of a third step, `explore`, which waits for the first
    /// `visible` steps.
    fn parse(v: Value, visible: usize, comp: bool) -> Result<Template, String> {
        parse_in(v, visible, comp, false)
    }

    fn parse_in(v: Value, visible: usize, comp: bool, branch: bool) -> Result<Template, String> {
        let mut all = steps();
        all.push("explore".into());
        Template::parse(
            &v,
            &Scope {
                step: "explore",
                visible_steps: &all[..visible],
                all_steps: &all,
                in_compensation: comp,
                in_branch: branch,
            },
        )
    }

    fn ctx_render(t: &Template, lenient: bool) -> Result<Value, TemplateError> {
        ctx_render_item(t, lenient, None)
    }

    fn ctx_render_item(
        t: &Template,
        lenient: bool,
        item: Option<(&Value, usize)>,
    ) -> Result<Value, TemplateError> {
        let input = Json::of(&json!({"area": "hall-a", "robots": 2, "tags": ["x", "y"]}));
        let mut results = BTreeMap::new();
        results.insert(
            "allocate".to_owned(),
            Json::of(&json!({"robot_ids": ["r1", "r2"]})),
        );
        t.render(
            &Context {
                input: &input,
                results: &results,
                saga_id: "s1",
                correlation_id: "c1",
                failure: Some(("plan", "boom")),
                item,
            },
            lenient,
        )
    }

    #[test]
    fn whole_expressions_keep_their_type() {
        let t = parse(
            json!({"robots": "${input.robots}", "ids": "${steps.allocate.result.robot_ids}", "first": "${input.tags.0}"}),
            1,
            false,
        )
        .unwrap();
        assert_eq!(
            ctx_render(&t, false).unwrap(),
            json!({"robots": 2, "ids": ["r1", "r2"], "first": "x"})
        );
    }

    #[test]
    fn mixed_text_is_spliced() {
        let t = parse(
            json!("mission ${saga_id} in ${input.area} (${input.robots}) costs $5 $${x}"),
            0,
            false,
        )
        .unwrap();
        assert_eq!(
            ctx_render(&t, false).unwrap(),
            json!("mission s1 in hall-a (2) costs $5 ${x}")
        );
    }

    #[test]
    fn literals_pass_through() {
        let t = parse(json!({"n": 3, "ok": true, "list": [1, "a"]}), 0, false).unwrap();
        assert_eq!(
            ctx_render(&t, false).unwrap(),
            json!({"n": 3, "ok": true, "list": [1, "a"]})
        );
    }

    #[test]
    fn bad_references_are_refused_with_their_path() {
        let err = parse(json!({"a": {"b": "${steps.plan.result.x}"}}), 1, false).unwrap_err();
        assert!(err.starts_with("input.a.b: "), "{err}");
        assert!(
            err.ends_with("reads the result of step `plan`, which step `explore` does not wait for, so it may not have completed: add `plan` to the `after` of `explore`"),
            "{err}"
        );
        let err = parse(json!("${steps.explore.result}"), 2, false).unwrap_err();
        assert!(err.contains("the result of step `explore` itself"), "{err}");
        let err = parse(json!("${steps.nope.result}"), 2, false).unwrap_err();
        assert!(err.contains("no step has that name"), "{err}");
        assert!(parse(json!("${steps.allocate}"), 2, false)
            .unwrap_err()
            .contains("not a valid step reference"));
        assert!(parse(json!("${inputs.x}"), 0, false)
            .unwrap_err()
            .contains("unknown"));
        assert!(parse(json!("${input.}"), 0, false)
            .unwrap_err()
            .contains("empty path segment"));
        assert!(parse(json!("${input.x"), 0, false)
            .unwrap_err()
            .contains("closing"));
        assert!(parse(json!("${failure.step}"), 0, false)
            .unwrap_err()
            .contains("compensation"));
    }

    #[test]
    fn compensations_see_the_failure() {
        let t = parse(
            json!({"why": "${failure.step}: ${failure.reason}"}),
            2,
            true,
        )
        .unwrap();
        assert_eq!(ctx_render(&t, false).unwrap(), json!({"why": "plan: boom"}));
    }

    #[test]
    fn branches_see_their_element_and_position() {
        let t = parse_in(
            json!({"robot": "${item}", "n": "${index}", "zone": "${item.zone}", "text": "#${index}: ${item.id}", "all": "${steps.allocate.result.robot_ids}"}),
            1,
            false,
            true,
        )
        .unwrap();
        let item = json!({"id": "r2", "zone": 7});
        assert_eq!(
            ctx_render_item(&t, false, Some((&item, 1))).unwrap(),
            json!({"robot": {"id": "r2", "zone": 7}, "n": 1, "zone": 7, "text": "#1: r2", "all": ["r1", "r2"]})
        );
        // Outside a branch there is no element: missing, like any value.
        let err = ctx_render_item(&t, false, None).unwrap_err();
        assert_eq!(err.0, "${item} refers to a value that is not there");
        // In a compensation too.
        let t = parse_in(json!(["${item.id}", "${index}"]), 3, true, true).unwrap();
        assert_eq!(
            ctx_render_item(&t, false, Some((&item, 4))).unwrap(),
            json!(["r2", 4])
        );
    }

    #[test]
    fn item_and_index_are_only_for_branches() {
        for expr in ["${item}", "${item.id}", "${index}"] {
            for comp in [false, true] {
                let err = parse_in(json!(expr), 0, comp, false).unwrap_err();
                assert_eq!(
                    err,
                    format!("input: `{expr}` is only available in the input of a step with `for_each` and of its compensation (the element of one branch, and its position)")
                );
            }
        }
        let err = parse_in(json!("${index.x}"), 0, false, true).unwrap_err();
        assert!(
            err.contains("`${index}` is a number, with no path"),
            "{err}"
        );
        let err = parse_in(json!("${items}"), 0, false, true).unwrap_err();
        assert!(err.contains("item, item.<path>, index"), "{err}");
    }

    #[test]
    fn expressions_display_as_written() {
        for text in [
            "${input.a.0}",
            "${steps.allocate.result.robot_ids}",
            "${saga_id}",
            "${correlation_id}",
            "${failure.step}",
            "${failure.reason}",
            "${item}",
            "${item.pose.x}",
            "${index}",
        ] {
            let Template::Expr(e) = parse_in(json!(text), 2, true, true).unwrap() else {
                panic!("{text} is one expression");
            };
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn missing_values_fail_unless_lenient() {
        let t = parse(
            json!({"x": "${input.missing}", "y": "${steps.plan.result.routes}"}),
            2,
            false,
        )
        .unwrap();
        let err = ctx_render(&t, false).unwrap_err();
        assert!(err.0.contains("${input.missing}"), "{err}");
        assert_eq!(ctx_render(&t, true).unwrap(), json!({"x": null, "y": null}));
    }
}
