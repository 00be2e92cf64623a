"""The handlers of the test saga `order` (conftest.SAGAS), for the tests and
for ``python -m sagaflow run handler_apps`` in a child process.

What they do is read from the saga input: ``fail`` names a step whose action
is answered ``Fatal``, ``fail_compensation`` a step whose compensation is,
``slow`` makes ``charge`` take that many seconds. ``HANG_ON`` in the
environment names a step whose action reports progress, then never ends.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import Any, Dict, Optional

from sagaflow import App, Command, Context, Fatal, SyncContext

#: How many times each command ran in this process.
CALLS: Dict[str, int] = collections.Counter()


def saga_input(cmd: Command) -> Dict[str, Any]:
    payload = cmd.payload if isinstance(cmd.payload, dict) else {}
    value = payload.get("input")
    return value if isinstance(value, dict) else {}


def make_app(group: str = "shop", redis: Any = None, hang_on: Optional[str] = None, **settings: Any) -> App:
    app = App(group=group, redis=redis, **settings)

    @app.handler("shop:commands", "reserve")
    async def reserve(cmd: Command, ctx: Context) -> Dict[str, Any]:
        CALLS["reserve"] += 1
        if hang_on == "reserve":
            await ctx.progress(10)
            await asyncio.sleep(3600)
        await ctx.progress(50)
        if saga_input(cmd).get("fail") == "reserve":
            raise Fatal("nothing left to reserve")
        return {"item": saga_input(cmd).get("item", "widget"), "reservation": f"r-{cmd.request_id[:8]}"}

    @app.handler("shop:commands", "release")
    def release(cmd: Command, ctx: SyncContext) -> Dict[str, Any]:
        CALLS["release"] += 1
        if saga_input(cmd).get("fail_compensation") == "reserve":
            raise Fatal("the warehouse is closed")
        return {"released": True}

    @app.handler("pay:commands", "charge")
    def charge(cmd: Command, ctx: SyncContext) -> Dict[str, Any]:
        CALLS["charge"] += 1
        ctx.progress(25)
        slow = float(saga_input(cmd).get("slow", 0))
        deadline = time.monotonic() + slow
        while time.monotonic() < deadline and not ctx.stopping:
            time.sleep(0.02)
        if saga_input(cmd).get("fail") == "charge":
            raise Fatal("card declined")
        return {"charged": saga_input(cmd).get("amount", 1)}

    @app.handler("pay:commands", "refund")
    async def refund(cmd: Command, ctx: Context) -> Dict[str, Any]:
        CALLS["refund"] += 1
        return {"refunded": True}

    return app


app = make_app(hang_on=os.environ.get("HANG_ON"))
