"""Time as Redis tells it. A command's ``deadline_ms`` is a time on Redis's
clock, and the handler's host may run ahead of or behind it: a host 15 s
ahead, comparing with its own clock, would skip every command with a timeout
under 15 s. So the offset of Redis's clock (``TIME``) from the host's is
measured at start and every :data:`RESYNC_EVERY` seconds, and the time read as
the host's clock plus that offset, known to within half a round trip.
"""

from __future__ import annotations

import time
from typing import Any, Tuple

#: How often the offset is measured again: a stepped clock is caught within a
#: minute, and a drifting one moves by 30 ms at most in that time.
RESYNC_EVERY = 60.0
#: An offset, or a change of it, worth a warning (ms).
NOTABLE_OFFSET_MS = 1000


def host_ms() -> int:
    return time.time_ns() // 1_000_000


class RedisClock:
    """The host's clock corrected by the last measured offset to Redis's."""

    def __init__(self) -> None:
        #: Redis's time minus the host's, in ms; 0 until measured.
        self.offset_ms = 0

    def now_ms(self) -> int:
        """Unix time in ms on Redis's clock, as last measured."""
        return max(host_ms() + self.offset_ms, 0)

    async def sync(self, client: Any) -> Tuple[int, int]:
        """Measures the offset with one ``TIME``; returns it with the one it
        replaces."""
        before = time.time_ns() // 1000
        secs, micros = await client.time()
        after = time.time_ns() // 1000
        offset = offset_ms(before, int(secs) * 1_000_000 + int(micros), after)
        previous, self.offset_ms = self.offset_ms, offset
        return offset, previous


def offset_ms(before_us: int, redis_us: int, after_us: int) -> int:
    """Redis's time minus the host's, in ms: Redis read its clock about half
    way through the round trip."""
    host_us = before_us + (after_us - before_us) // 2
    return (redis_us - host_us) // 1000
