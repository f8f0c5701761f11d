"""Capped, jittered exponential backoff: how long every reconnect loop of probenet waits."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays that double from `initial_s` up to `max_s`, each jittered down to at most half.

    After the n-th consecutive failure (1 = the first) a loop waits between half and all of
    min(max_s, initial_s * 2**(n-1)) seconds. The cap keeps a long outage from growing the
    wait without bound; the jitter keeps a fleet of clients that lost the same server from
    coming back in lockstep. A value object: the loop counts its own failures (and decides
    when a success resets them). `rand` returns floats uniform in [0, 1); tests inject their
    own. Raises ValueError unless 0 < initial_s <= max_s (both finite).
    """

    initial_s: float
    max_s: float
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Check the bounds."""
        if not (math.isfinite(self.max_s) and 0 < self.initial_s <= self.max_s):
            raise ValueError(f"a backoff needs 0 < initial_s <= max_s (finite), "
                             f"not {self.initial_s!r} and {self.max_s!r}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (1-based; below 1 counts as 1)."""
        doublings = max(failures - 1, 0)
        # Compared as logarithms: 2.0 ** doublings would overflow for long outages.
        if doublings >= math.log2(self.max_s) - math.log2(self.initial_s):
            return self._jittered(self.max_s)
        return self._jittered(min(self.max_s, self.initial_s * 2.0 ** doublings))

    def longest(self) -> float:
        """A delay at the cap, jittered: for a failure that no quick retry can fix."""
        return self._jittered(self.max_s)

    def _jittered(self, ceiling_s: float) -> float:
        return ceiling_s * (0.5 + 0.5 * self.rand())
