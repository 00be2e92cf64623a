"""Which keys a handler may write its replies to (docs/protocol.md, "For
people writing handlers by hand"; the same rules as src/handler/reply_stream.rs).

A command's ``reply_stream`` is a key name chosen by whoever wrote the
command: a handler that wrote wherever it was told would act for anyone who
can write a command stream (a ``reply_stream`` of ``mission:start`` would
start sagas). So replies go only to the daemon's reply streams,
``<prefix><node>.<epoch>`` or ``<prefix><node>.<epoch>:<request_id>`` with the
command's own ``request_id``, at most 256 bytes, without whitespace or
control characters. The epoch holds neither ``.`` nor ``:``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Optional

#: The daemon's default ``reply_stream_prefix``.
DEFAULT_REPLY_STREAM_PREFIX = "saga:replies:"
#: The longest ``reply_stream`` written to, in bytes: the daemon's names are
#: under 100 bytes; the bound keeps what a forged command can make the handler
#: log or copy small.
MAX_REPLY_STREAM_BYTES = 256
#: The longest prefix accepted, in bytes.
MAX_PREFIX_BYTES = 128

_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


def _forbidden(c: str) -> bool:
    return c.isspace() or unicodedata.category(c) == "Cc"


def check_prefix(prefix: str) -> None:
    """Raises ``ValueError`` for a prefix reply streams cannot have."""
    if not prefix or len(prefix.encode()) > MAX_PREFIX_BYTES or any(_forbidden(c) for c in prefix):
        raise ValueError(
            f"the reply stream prefix {prefix!r} must be 1 to {MAX_PREFIX_BYTES} bytes "
            "without whitespace or control characters"
        )


def refusal(prefix: str, reply_stream: str, request_id: str) -> Optional[str]:
    """Why replies to command ``request_id`` may not go to ``reply_stream``,
    or None when they may."""
    size = len(reply_stream.encode("utf-8", "surrogatepass"))
    if size > MAX_REPLY_STREAM_BYTES:
        return f"reply_stream is {size} bytes long, over the limit of {MAX_REPLY_STREAM_BYTES}"
    if any(_forbidden(c) for c in reply_stream):
        return "reply_stream holds whitespace or a control character"
    if not reply_stream.startswith(prefix):
        return f"reply_stream does not start with the reply streams' prefix `{prefix}`"
    rest = reply_stream[len(prefix):]
    if not rest:
        return "reply_stream names nothing after the prefix"
    shared = rest
    if rest.endswith(request_id) and rest[: len(rest) - len(request_id)].endswith(":"):
        shared = rest[: len(rest) - len(request_id) - 1]
    node, dot, epoch = shared.rpartition(".")
    not_form = "reply_stream is not of the form `<prefix><node>.<epoch>[:<request_id>]`"
    if not dot or not node or not epoch:
        return not_form
    if ":" in epoch:
        suffix = epoch.split(":", 1)[1]
        if _REQUEST_ID.match(suffix):
            return "reply_stream ends in a request_id that is not this command's"
        return not_form
    return None
