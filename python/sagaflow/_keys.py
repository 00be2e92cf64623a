"""Where the daemon keeps a saga's record. The authority is the daemon's
``src/store/keys.rs``: this module follows it, and its tests pin values
that module computes.

Sagas are spread over :data:`PARTITIONS` partitions, fixed once and for all:
a saga's partition is ``slot(saga_id) % 64``, and its record is the hash
``<prefix>{<tag>}:record:<saga_id>`` (prefix ``saga:`` by default), where
``tag`` is its partition's hash tag. ``slot`` is Redis Cluster's: CRC16
(XMODEM) of a key's hash tag, modulo 16384. The tag of partition ``p`` is the
first ``p<p>.<n>`` (``n`` = 0, 1, 2, ...) whose key ``{<tag>}`` falls in the
``p``-th of 64 equal ranges of slots.
"""

from __future__ import annotations

import binascii
from functools import lru_cache

#: The number of partitions. Never changed: a saga's record is found from
#: its id through it.
PARTITIONS = 64
#: The daemon's default ``saga_key_prefix``.
DEFAULT_SAGA_KEY_PREFIX = "saga:"

_SLOTS = 16384
_WIDTH = _SLOTS // PARTITIONS


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the text between the first
    ``{`` and the first ``}`` after it when not empty, else the whole key."""
    open_at = key.find("{")
    if open_at >= 0:
        close_at = key.find("}", open_at + 1)
        if close_at > open_at + 1:
            return key[open_at + 1 : close_at]
    return key


def slot(key: str) -> int:
    """The cluster slot of a key, as Redis Cluster computes it."""
    # crc_hqx with an initial value of 0 is CRC16-XMODEM.
    return binascii.crc_hqx(hash_tag(key).encode(), 0) % _SLOTS


def partition_of(saga_id: str) -> int:
    """The partition of a saga."""
    return slot(saga_id) % PARTITIONS


@lru_cache(maxsize=PARTITIONS)
def partition_tag(partition: int) -> str:
    """The hash tag of a partition (``0 <= partition < PARTITIONS``): at most a
    few hundred tries, each one CRC of a few bytes, found once."""
    if not 0 <= partition < PARTITIONS:
        raise ValueError(f"no partition {partition}: there are {PARTITIONS}")
    n = 0
    while slot(f"{{p{partition}.{n}}}") // _WIDTH != partition:
        n += 1
    return f"p{partition}.{n}"


def record_key(saga_id: str, prefix: str = DEFAULT_SAGA_KEY_PREFIX) -> str:
    """A saga's record: a hash of ``owner``, ``seq``, ``phase`` and ``state``
    (JSON)."""
    return f"{prefix}{{{partition_tag(partition_of(saga_id))}}}:record:{saga_id}"


def definition_key(saga: str, version: str, prefix: str = DEFAULT_SAGA_KEY_PREFIX) -> str:
    """Where the daemons keep the text of one version of a definition, which
    a saga keeps to its end (its ``definition_version``)."""
    return f"{prefix}definition:{{{saga}}}:{version}"
