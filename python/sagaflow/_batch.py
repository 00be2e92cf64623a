"""Commands sent together, to keys that may lie in different slots of a
Redis Cluster: the one place where the app tells one Redis from a cluster
when it writes, as ``src/handler/batch.rs`` is for the Rust SDK.

On one Redis a batch is one pipeline (a ``MULTI`` when asked for). A
cluster refuses a ``MULTI`` or a pipeline whose keys span slots
(``CROSSSLOT``), so there a batch is cut into runs of consecutive commands
on one slot, each run one round trip, sent in order, each once the one
before it is written. A batch sent again after an error resumes at the first
run not written.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ._keys import slot


class Batch:
    """Commands to send together, each with the key a cluster routes it by.
    At most as many commands as added (a handful per command handled)."""

    def __init__(self, cluster: bool) -> None:
        self.cluster = cluster
        self.commands: List[Tuple[int, str, Tuple[Any, ...], Dict[str, Any]]] = []
        #: Replies of the commands written so far, in order.
        self.replies: List[Any] = []

    def add(self, key: str, method: str, *args: Any, **kwargs: Any) -> "Batch":
        """Adds redis-py's ``method(*args, **kwargs)``, whose key is ``key``."""
        self.commands.append((slot(key), method, args, kwargs))
        return self

    async def send(self, client: Any, transaction: bool) -> List[Any]:
        """Sends the commands not yet written and returns every reply. On one
        Redis: one pipeline, in one ``MULTI`` when ``transaction``. On a
        cluster: one run of a slot after another, without ``MULTI``."""
        if not self.cluster:
            pipe = client.pipeline(transaction=transaction)
            for _, method, args, kwargs in self.commands:
                getattr(pipe, method)(*args, **kwargs)
            self.replies = list(await pipe.execute())
            return self.replies
        for run in runs(self.commands, len(self.replies)):
            if len(run) == 1:
                _, method, args, kwargs = run[0]
                self.replies.append(await getattr(client, method)(*args, **kwargs))
                continue
            pipe = client.pipeline(transaction=False)
            for _, method, args, kwargs in run:
                getattr(pipe, method)(*args, **kwargs)
            self.replies.extend(await pipe.execute())
        return self.replies


def runs(commands: List[Tuple[int, str, Tuple[Any, ...], Dict[str, Any]]], start: int) -> List[List[Tuple[int, str, Tuple[Any, ...], Dict[str, Any]]]]:
    """The commands from ``start`` on, cut where the slot changes."""
    out: List[List[Tuple[int, str, Tuple[Any, ...], Dict[str, Any]]]] = []
    for command in commands[start:]:
        if out and out[-1][0][0] == command[0]:
            out[-1].append(command)
        else:
            out.append([command])
    return out
