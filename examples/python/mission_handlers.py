#!/usr/bin/env python3
"""Command handlers for the reference mission, on the sagaflow Python package.

The four services of sagas/mission_start.yaml and their compensations in one
process. The package does the wire contract (consumer groups, replies with
trace context, deduplication, deadlines, heartbeats, dead letters, takeover of
a crashed instance's commands); this file is only the work.

    pip install ./python        # or PYTHONPATH=python
    python3 examples/python/mission_handlers.py --redis-url redis://127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import logging
import random
import secrets
from typing import Any, Dict, List, Optional

from sagaflow import App, Command, Context, Fatal

# --- The work: results the next steps' `input` templates refer to ----------
# A value is looked up at the top of the payload (a step's `input` template),
# then under `input`, then in any earlier step's `result`: a compensation
# without a template gets {"input": ..., "steps": {...}, "failure": ...}.


def lookup(payload: Any, key: str) -> Any:
    if not isinstance(payload, dict):
        return None
    steps = payload.get("steps") if isinstance(payload.get("steps"), dict) else {}
    results = [step.get("result") for step in steps.values() if isinstance(step, dict)]
    places = [payload, payload.get("input"), *results]
    return next((p[key] for p in places if isinstance(p, dict) and p.get(key) is not None), None)


def robot_ids(payload: Any) -> List[Any]:
    """The one `robot_id` of a branch's command (the mission explores with
    each robot in a branch of its own), else `robot_ids`, else the robots of
    `routes` or `partial_maps`."""
    if isinstance(payload, dict) and isinstance(payload.get("robot_id"), str):
        return [payload["robot_id"]]
    ids = lookup(payload, "robot_ids")
    if isinstance(ids, list):
        return ids
    for key in ("routes", "partial_maps"):
        items = lookup(payload, key)
        if isinstance(items, list):
            return [item.get("robot_id") for item in items if isinstance(item, dict)]
    return []


def partial_maps(payload: Any) -> List[Dict[str, Any]]:
    maps = lookup(payload, "partial_maps")
    return [m for m in maps if isinstance(m, dict)] if isinstance(maps, list) else []


def allocate_resources(payload: Any) -> Dict[str, Any]:
    try:  # `robots` may be a number or a numeric string
        count = int(float(lookup(payload, "robots")))
    except (TypeError, ValueError, OverflowError):
        count = 2
    count = min(count if count >= 1 else 2, 64)
    return {"robot_ids": [f"robot-{i}" for i in range(1, count + 1)], "area": lookup(payload, "area")}


def plan_route(payload: Any) -> Dict[str, Any]:  # one lane per robot, swept out and back
    def lane(y: int) -> List[List[int]]:
        return [[0, y], [100, y], [100, y + 5], [0, y + 5]]

    routes = [{"robot_id": r, "waypoints": lane(10 * i)} for i, r in enumerate(robot_ids(payload))]
    return {"routes": routes, "area": lookup(payload, "area")}


def explore(robot_id: Any) -> Dict[str, Any]:
    return {"robot_id": robot_id, "map_id": "partial-" + secrets.token_hex(4), "cells_explored": random.randint(100, 999)}


def perform_exploration(payload: Any) -> Dict[str, Any]:
    """One robot's partial map for a branch's command (`robot_id`); for
    several robots in one command (`robot_ids` or `routes`), `partial_maps`."""
    if isinstance(payload, dict) and isinstance(payload.get("robot_id"), str):
        return explore(payload["robot_id"])
    return {"partial_maps": [explore(r) for r in robot_ids(payload)]}


def integrate_maps(payload: Any) -> Dict[str, Any]:
    return {"map_id": "map-" + secrets.token_hex(6), "merged_from": len(partial_maps(payload))}


def discard_maps(payload: Any) -> Dict[str, Any]:
    merged = [lookup(payload, "map_id")] if lookup(payload, "map_id") else []
    return {"discarded": [m.get("map_id") for m in partial_maps(payload)] + merged}


# Command stream -> command name (the command's `event_type`) -> work.
SERVICES = {
    "resources:commands": {
        "allocate_resources": allocate_resources,
        "release_resources": lambda p: {"released": robot_ids(p)},
    },
    "routing:commands": {
        "plan_route": plan_route,
        "cancel_route": lambda p: {"cancelled": robot_ids(p)},
    },
    "exploration:commands": {
        "perform_exploration": perform_exploration,
        "abort_exploration": lambda p: {"aborted": robot_ids(p)},
    },
    "mapping:commands": {
        "integrate_maps": integrate_maps,
        "discard_maps": discard_maps,
    },
}


def make_app(group: str = "python-handlers", redis_url: Optional[str] = None, fail_step: Optional[str] = None, **settings: Any) -> App:
    """The mission's handlers; ``fail_step`` names a step whose action is
    answered ``failed``, not retryable, so that the saga compensates."""
    app = App(group=group, redis=redis_url, **settings)

    def serve(stream: str, name: str, work: Any) -> None:
        @app.handler(stream, name)
        async def handle(cmd: Command, ctx: Context) -> Dict[str, Any]:
            await ctx.progress(50)
            if cmd.kind == "action" and cmd.step == fail_step:
                raise Fatal(f"{name} failed on request")
            return work(cmd.payload)

    for stream, commands in SERVICES.items():
        for name, work in commands.items():
            serve(stream, name, work)
    return app


#: For ``python -m sagaflow run mission_handlers`` (from examples/python/).
app = make_app()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None, help="the daemon's Redis (default SAGAFLOW_REDIS_URL or redis://127.0.0.1:6379)")
    parser.add_argument("--group", default="python-handlers", help="the consumer group on each command stream")
    parser.add_argument("--fail-step", metavar="STEP", help="answer STEP's action `failed`, not retryable")
    parser.add_argument("--reply-stream-prefix", default="saga:replies:", help="the daemon's reply_stream_prefix")
    parser.add_argument("--max-in-flight", type=int, default=1024, help="commands handled at once")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    make_app(
        args.group,
        args.redis_url,
        args.fail_step,
        reply_stream_prefix=args.reply_stream_prefix,
        max_in_flight=args.max_in_flight,
    ).run()


if __name__ == "__main__":
    main()
