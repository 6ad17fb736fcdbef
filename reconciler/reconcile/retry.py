"""The retry decision: how long to wait before the next try, and when to give up.

Errors carry whether they are temporary (reconciler.dm.errors); this module adds the schedule:
exponential backoff from `initial`, capped at `maximum`, with jitter so that many devices that
failed together do not all retry in the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff schedule and attempt budget for temporary errors."""

    initial: float = 0.5
    maximum: float = 30.0
    max_attempts: int = 5
    jitter: float = 0.1
    rng: random.Random = field(default_factory=lambda: random.Random(0), compare=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first failure)."""
        base = self.initial * float(1 << min(max(0, attempt - 1), 62))
        # Jitter spreads retries out but never past the cap: retry_max is a promise.
        return min(self.maximum, base * (1 + self.jitter * self.rng.random()))

    def exhausted(self, attempt: int) -> bool:
        """True when `attempt` failures use up the budget."""
        return attempt >= self.max_attempts
