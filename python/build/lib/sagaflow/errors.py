"""What handlers raise, and what the client raises."""

from __future__ import annotations

from typing import Any, Optional


class Retryable(Exception):
    """Raised by a handler: the command is answered ``failed`` with
    ``retryable=true``, and the daemon tries again under the step's retry
    policy. Any exception other than :class:`Fatal` is answered the same way."""


class Fatal(Exception):
    """Raised by a handler: the command is answered ``failed`` with
    ``retryable=false``: trying again cannot help, and the saga compensates."""


class StartRejected(Exception):
    """The daemon refused a start (``saga_rejected``); ``reason`` says why."""

    def __init__(self, reason: str, entry_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.entry_id = entry_id


class NoAnswer(TimeoutError):
    """No daemon answered within the time given: none runs, or it is behind.
    For a start, the entry stays on the trigger stream and will be taken
    when a daemon reads it; ``entry_id`` names it."""

    def __init__(self, message: str, entry_id: str = "") -> None:
        super().__init__(message)
        self.entry_id = entry_id


class OperatorRequestRefused(Exception):
    """The daemon refused an operator's request; ``refused`` says why and
    ``payload`` is the payload of its ``operator_action`` event."""

    def __init__(self, refused: str, payload: Optional[Any] = None) -> None:
        super().__init__(refused)
        self.refused = refused
        self.payload = payload
