"""Which collector group (shard) a probe's results go to: the same function in every agent.

A probe goes to shard `shard_of(name, shards)`: the last 8 bytes of the MD5 digest of the
probe's name (UTF-8), read as a big-endian unsigned integer, modulo the number of shards.
That is exactly Prometheus' `hashmod` relabel action applied to the probe name, so the
assignment can be reproduced in a Prometheus config (a `hashmod` of the `probe` label with
`modulus: <shards>`) and checked against a real Prometheus (tests/deploy/test_shard_hashmod.py).

Every region's results for one probe meet in one group, which is what the classifier needs:
it compares regions of the same probe. Changing the number of shards moves most probes.
"""

from __future__ import annotations

import hashlib

MAX_SHARDS = 1024


def shard_of(name: str, shards: int) -> int:
    """The shard (0 .. shards-1) of the probe called `name` among `shards` groups."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, not {shards}")
    digest = hashlib.md5(name.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % shards


class ShardCache:
    """Each name's shard among `shards`, computed once per name: a dict lookup, not an MD5.

    At most `max_names` are remembered; beyond that the cache starts afresh (probe sets may
    rename probes for as long as a process runs).
    """

    def __init__(self, shards: int, *, max_names: int = 100_000) -> None:
        """Split among `shards` shards (validated as `shard_of` does)."""
        shard_of("", shards)
        self.shards = shards
        self._max_names = max_names
        self._cache: dict[str, int] = {}

    def of(self, name: str) -> int:
        """The shard of the probe called `name`."""
        shard = self._cache.get(name)
        if shard is None:
            if len(self._cache) >= self._max_names:
                self._cache.clear()
            shard = self._cache[name] = shard_of(name, self.shards)
        return shard
