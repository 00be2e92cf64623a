//! The results of the simulated mission services: pure functions of a
//! command payload.
//!
//! Values are taken from the payload leniently: a value may sit at the top
//! of the payload (a step `input` template), under `input`, or in any step's
//! `result` (the default context shape).

use super::simulated::random_unit;
use crate::protocol::ids::new_uuid_hex;
use serde_json::{json, Value};

/// Robots allocated when the input does not say how many.
pub const DEFAULT_ROBOTS: usize = 2;
/// Most robots one allocation hands out: keeps a typo like `robots: 2000`
/// from producing huge commands down the saga.
pub const MAX_ROBOTS: usize = 64;

/// `key` from the payload, else from `input`, else from any step's
/// `result`; nulls count as absent.
pub fn lookup<'a>(payload: &'a Value, key: &str) -> Option<&'a Value> {
    let found = |v: Option<&'a Value>| v.filter(|v| !v.is_null());
    found(payload.get(key))
        .or_else(|| found(payload.get("input").and_then(|i| i.get(key))))
        .or_else(|| {
            payload
                .get("steps")?
                .as_object()?
                .values()
                .find_map(|s| found(s.get("result").and_then(|r| r.get(key))))
        })
}

/// The `robots` input as a number or numeric string; absent or below one
/// means [`DEFAULT_ROBOTS`]; capped at [`MAX_ROBOTS`].
pub fn robot_count(value: Option<&Value>) -> usize {
    let n = match value {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n.is_finite() && n >= 1.0 => (n as usize).min(MAX_ROBOTS),
        _ => DEFAULT_ROBOTS,
    }
}

/// Robot ids: the one `robot_id` of a branch's command (a fan-out over
/// the robots), else `robot_ids`, else the `robot_id`s of `routes` or
/// `partial_maps`.
pub fn robot_ids(payload: &Value) -> Vec<String> {
    if let Some(Value::String(id)) = payload.get("robot_id") {
        return vec![id.clone()];
    }
    if let Some(Value::Array(ids)) = lookup(payload, "robot_ids") {
        return ids
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect();
    }
    ["routes", "partial_maps"]
        .into_iter()
        .find_map(|key| match lookup(payload, key) {
            Some(Value::Array(items)) => Some(strings_at(items, "robot_id")),
            _ => None,
        })
        .unwrap_or_default()
}

fn strings_at(items: &[Value], key: &str) -> Vec<String> {
    items
        .iter()
        .filter_map(|item| item.get(key)?.as_str().map(str::to_owned))
        .collect()
}

fn partial_maps(payload: &Value) -> Vec<Value> {
    match lookup(payload, "partial_maps") {
        Some(Value::Array(maps)) => maps.clone(),
        _ => Vec::new(),
    }
}

pub fn allocate_resources(payload: &Value) -> Value {
    let robots = robot_count(lookup(payload, "robots"));
    let ids: Vec<String> = (1..=robots).map(|i| format!("robot-{i}")).collect();
    json!({"robot_ids": ids, "area": lookup(payload, "area").cloned().unwrap_or(Value::Null)})
}

pub fn release_resources(payload: &Value) -> Value {
    json!({"released": robot_ids(payload)})
}

/// One lane of the area per robot, swept out and back: four waypoints.
pub fn plan_route(payload: &Value) -> Value {
    let routes: Vec<Value> = robot_ids(payload)
        .into_iter()
        .enumerate()
        .map(|(i, robot_id)| {
            let y = 10 * i as i64;
            json!({"robot_id": robot_id, "waypoints": [[0, y], [100, y], [100, y + 5], [0, y + 5]]})
        })
        .collect();
    json!({"routes": routes, "area": lookup(payload, "area").cloned().unwrap_or(Value::Null)})
}

pub fn cancel_route(payload: &Value) -> Value {
    json!({"cancelled": robot_ids(payload)})
}

/// One robot's exploration (`robot_id`: a branch of the mission's
/// fan-out) gives its partial map; several robots' at once (`robot_ids`,
/// the single-command form) give `partial_maps`.
pub fn perform_exploration(payload: &Value) -> Value {
    let explore = |robot_id: String| {
        let cells = 100 + (random_unit() * 900.0) as u64;
        json!({"robot_id": robot_id, "map_id": format!("partial-{}", &new_uuid_hex()[..8]), "cells_explored": cells})
    };
    if let Some(Value::String(robot_id)) = payload.get("robot_id") {
        return explore(robot_id.clone());
    }
    let maps: Vec<Value> = robot_ids(payload).into_iter().map(explore).collect();
    json!({"partial_maps": maps})
}

pub fn abort_exploration(payload: &Value) -> Value {
    json!({"aborted": robot_ids(payload)})
}

pub fn integrate_maps(payload: &Value) -> Value {
    json!({"map_id": format!("map-{}", &new_uuid_hex()[..12]), "merged_from": partial_maps(payload).len()})
}

/// Discards the partial maps and the merged map, when the payload has them.
pub fn discard_maps(payload: &Value) -> Value {
    let mut discarded = strings_at(&partial_maps(payload), "map_id");
    if let Some(map_id) = lookup(payload, "map_id").and_then(Value::as_str) {
        discarded.push(map_id.to_owned());
    }
    json!({"discarded": discarded})
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_counts_robots_leniently() {
        let r = allocate_resources(&json!({"area": "hall-a", "robots": "3"}));
        assert_eq!(
            r,
            json!({"robot_ids": ["robot-1", "robot-2", "robot-3"], "area": "hall-a"})
        );
        assert_eq!(
            allocate_resources(&json!({}))["robot_ids"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            allocate_resources(&json!({"robots": 1000}))["robot_ids"]
                .as_array()
                .unwrap()
                .len(),
            64
        );
        assert_eq!(robot_count(Some(&json!(4.0))), 4);
        assert_eq!(robot_count(Some(&json!("many"))), DEFAULT_ROBOTS);
        assert_eq!(robot_count(Some(&json!(0))), DEFAULT_ROBOTS);
        assert_eq!(robot_count(Some(&json!(-3))), DEFAULT_ROBOTS);
    }

    #[test]
    fn values_are_found_in_the_default_context_shape() {
        let ctx = json!({
            "input": {"area": "hall-b", "robots": 1},
            "steps": {"allocate_resources": {"result": {"robot_ids": ["robot-7"]}}}
        });
        assert_eq!(lookup(&ctx, "area"), Some(&json!("hall-b")));
        assert_eq!(allocate_resources(&ctx)["robot_ids"], json!(["robot-1"]));
        assert_eq!(release_resources(&ctx), json!({"released": ["robot-7"]}));
        assert_eq!(release_resources(&json!({})), json!({"released": []}));
        // The payload itself wins over the context; nulls count as absent.
        assert_eq!(
            lookup(&json!({"area": "x", "input": {"area": "y"}}), "area"),
            Some(&json!("x"))
        );
        assert_eq!(
            lookup(&json!({"area": null, "input": {"area": "y"}}), "area"),
            Some(&json!("y"))
        );
    }

    #[test]
    fn a_branch_explores_with_its_one_robot() {
        let routes = plan_route(&json!({"robot_ids": ["robot-1", "robot-2"]}));
        let one = json!({"robot_id": "robot-2", "routes": routes["routes"]});
        let map = perform_exploration(&one);
        assert_eq!(map["robot_id"], "robot-2");
        assert!(map["map_id"].as_str().unwrap().starts_with("partial-"));
        let merged = integrate_maps(&json!({"partial_maps": [map.clone(), map]}));
        assert_eq!(merged["merged_from"], 2);
        let aborted = abort_exploration(&json!({"robot_id": "robot-2"}));
        assert_eq!(aborted, json!({"aborted": ["robot-2"]}));
    }

    #[test]
    fn the_mission_results_chain() {
        let alloc = allocate_resources(&json!({"area": "hall-a", "robots": 2}));
        let routes = plan_route(&json!({"robot_ids": alloc["robot_ids"], "area": "hall-a"}));
        let routes_list = routes["routes"].as_array().unwrap();
        assert_eq!(routes_list.len(), 2);
        assert_eq!(routes_list[1]["robot_id"], "robot-2");
        assert_eq!(routes_list[0]["waypoints"].as_array().unwrap().len(), 4);

        let explored = perform_exploration(&json!({"routes": routes["routes"]}));
        let maps = explored["partial_maps"].as_array().unwrap();
        assert_eq!(maps.len(), 2);
        let map_id = maps[0]["map_id"].as_str().unwrap();
        assert!(
            map_id.starts_with("partial-") && map_id.len() == 16,
            "{map_id}"
        );
        assert!((100..1000).contains(&maps[0]["cells_explored"].as_u64().unwrap()));

        let merged = integrate_maps(&json!({"partial_maps": explored["partial_maps"]}));
        assert_eq!(merged["merged_from"], 2);
        assert_eq!(merged["map_id"].as_str().unwrap().len(), "map-".len() + 12);
        assert_eq!(
            discard_maps(&json!({"partial_maps": maps}))["discarded"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            cancel_route(&routes),
            json!({"cancelled": ["robot-1", "robot-2"]})
        );
        assert_eq!(
            abort_exploration(&explored),
            json!({"aborted": ["robot-1", "robot-2"]})
        );
    }
}
