"""Capped exponential backoff with full jitter, as client-go's wait.Backoff (and AWS's advice) does."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays for retrying after consecutive failures: ``base · 2ⁿ`` capped at ``cap``, drawn uniformly
    from its upper half so that many clients that failed together do not retry together; a server's
    ``Retry-After`` is a floor. ``reset()`` after a success."""

    MAX_RETRY_AFTER = 300.0  # a server asking for longer is asked again after this

    def __init__(self, base: float = 1.0, cap: float = 60.0, rand: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self.rand = base, cap, rand
        self.failures = 0

    def next(self, retry_after: float | None = None) -> float:
        """The delay before the next attempt, counting one more failure."""
        ceiling = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        delay = ceiling / 2 + self.rand() * ceiling / 2
        floor = min(retry_after or 0.0, self.MAX_RETRY_AFTER)
        return max(delay, floor)

    def reset(self) -> None:
        self.failures = 0
