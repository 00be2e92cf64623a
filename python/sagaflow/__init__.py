"""sagaflow for Python: command handlers (:class:`App`) and a client
(:class:`Client`, :class:`AsyncClient`) for the sagaflow saga orchestrator,
which talks to the rest of a system only through Redis Streams
(docs/protocol.md in the sagaflow repository).

    from sagaflow import App, Command, Context

    app = App(group="resources-service")

    @app.handler("resources:commands", "allocate_resources")
    async def allocate(cmd: Command, ctx: Context) -> dict:
        await ctx.progress(50)
        return {"robot_ids": ["robot-1"]}

    app.run()
"""

from ._protocol import Command, saga_id_for_start
from .app import App, Context, Stats, SyncContext
from .client import AsyncClient, AsyncSagaHandle, Client, OperatorKey, Outcome, SagaHandle, SagaState
from .errors import Fatal, NoAnswer, OperatorRequestRefused, Retryable, StartRejected

__all__ = [
    "App",
    "AsyncClient",
    "AsyncSagaHandle",
    "Client",
    "Command",
    "Context",
    "Fatal",
    "NoAnswer",
    "OperatorKey",
    "OperatorRequestRefused",
    "Outcome",
    "Retryable",
    "SagaHandle",
    "SagaState",
    "StartRejected",
    "Stats",
    "SyncContext",
    "saga_id_for_start",
]

__version__ = "0.1.0"
