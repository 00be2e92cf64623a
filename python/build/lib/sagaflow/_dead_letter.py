"""The dead-letter stream of a handler group: where a command goes that can
never be answered (malformed, a refused ``reply_stream``, a write Redis
refuses for good), as a bounded copy, so that a flood of huge forged commands
cannot grow it past what its cap allows. The same form as the Rust SDK's
(src/handler/dead_letter.rs).
"""

from __future__ import annotations

from typing import Dict, Mapping

from ._protocol import CONTRACT_FIELDS, cut_bytes

#: Approximate cap on a dead-letter stream (``XADD MAXLEN ~``): about 10,000
#: copies of at most :data:`MAX_COPY_BYTES` each (about 120 MB at worst).
DEAD_LETTER_MAXLEN = 10_000
#: Fields of a command copied: a command has 13, a forged one may have
#: thousands.
MAX_COPIED_FIELDS = 32
#: Longest field name copied, in bytes.
MAX_NAME_BYTES = 64
#: Longest field value copied, in bytes: every id and a whole reply stream
#: name fit; a payload is cut to its beginning.
MAX_VALUE_BYTES = 256
#: Longest ``reason``, in bytes.
MAX_REASON_BYTES = 512
#: The most one dead-letter entry holds, field names included (about 11.6 KiB).
MAX_COPY_BYTES = MAX_COPIED_FIELDS * (len("command.") + MAX_NAME_BYTES + MAX_VALUE_BYTES) + MAX_REASON_BYTES + 3 * MAX_VALUE_BYTES + 128


def dead_letter_key(group: str) -> str:
    """The group's dead-letter stream; the hash tag keeps it in the slot of
    the group's deduplication records."""
    return f"handler:{{{group}}}:dead-letter"


def done_key(group: str, request_id: str) -> str:
    """The key that records the final reply to ``request_id`` for ``group``,
    the same as the Rust SDK's."""
    return f"handler:{{{group}}}:done:{request_id}"


def _lossy(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def entry(stream: str, entry_id: str, consumer: str, fields: Mapping[bytes, bytes], reason: str) -> Dict[str, str]:
    """The fields of the dead-letter entry for a command read at
    ``entry_id`` of ``stream``."""
    reason, truncated = cut_bytes(reason, MAX_REASON_BYTES)
    names = sorted(fields, key=lambda n: (_lossy(n) not in CONTRACT_FIELDS, n))
    truncated = truncated or len(names) > MAX_COPIED_FIELDS
    out = {
        "reason": reason,
        "stream": cut_bytes(stream, MAX_VALUE_BYTES)[0],
        "entry_id": cut_bytes(entry_id, MAX_VALUE_BYTES)[0],
        "consumer": cut_bytes(consumer, MAX_VALUE_BYTES)[0],
        "field_count": str(len(fields)),
    }
    for name in names[:MAX_COPIED_FIELDS]:
        short_name, name_cut = cut_bytes(_lossy(name), MAX_NAME_BYTES)
        value, value_cut = cut_bytes(_lossy(fields[name]), MAX_VALUE_BYTES)
        truncated = truncated or name_cut or value_cut
        out["command." + short_name] = value
    out["truncated"] = "true" if truncated else "false"
    return out
