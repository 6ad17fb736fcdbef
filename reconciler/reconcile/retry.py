"""The retry decision: how long to wait before the next try, and when to give up.

Errors carry whether they are temporary (reconciler.dm.errors); this module adds the schedule:
exponential backoff from `initial`, capped at `maximum`, with jitter so that many devices that
failed together do not all retry in the same instant. `verdict` is the choice a failed step
leads to (try again later, or mark the device Faulty), pure and table-tested
(tests/unit/reconcile/test_retry_verdict.py); `drive` logs, saves and fires what it says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# A busy removal's first retry, at most: the device's holder is often udev's rules probing a
# device just made (blkid, for milliseconds; a second under emulation): a spec-file device's,
# or through dmsetup a snapshot's (libdevmapper turns udev's disk rules off for those:
# `NodeWait.NODE`). Later retries back off as any.
BUSY_INITIAL = 0.05


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff schedule and attempt budget for temporary errors."""

    initial: float = 0.5
    maximum: float = 30.0
    max_attempts: int = 5
    jitter: float = 0.1
    rng: random.Random = field(default_factory=lambda: random.Random(0), compare=False)

    def delay(self, attempt: int, busy: bool = False) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first failure);
        `busy`: a removal waiting for a holder, whose backoff starts at BUSY_INITIAL."""
        initial = min(self.initial, BUSY_INITIAL) if busy else self.initial
        base = initial * float(1 << min(max(0, attempt - 1), 62))
        # Jitter spreads retries out but never past the cap: retry_max is a promise.
        return min(self.maximum, base * (1 + self.jitter * self.rng.random()))

    def exhausted(self, attempt: int) -> bool:
        """True when `attempt` failures use up the budget."""
        return attempt >= self.max_attempts


@dataclass(frozen=True)
class Retry:
    """Try the step again in `delay` seconds. `busy`: a removal waiting for the device's
    holder, retried for as long as it takes (no attempt budget)."""

    delay: float
    busy: bool = False


@dataclass(frozen=True)
class Fault:
    """Give up: mark the device Faulty. `reason` says why ("permanent", "attempts
    exhausted")."""

    reason: str


def verdict(policy: RetryPolicy, attempt: int, temporary: bool, busy_removal: bool
            ) -> Retry | Fault:
    """What failed attempt number `attempt` of a step leads to.

    A removal refused because the device is open never goes Faulty: only its holder can end
    it, and udev's (the commonest, just after an activation) ends in moments, so its first
    retries come quickly. Otherwise a temporary error is retried with backoff until the
    budget is used up, and a permanent one marks the device Faulty at once.
    """
    if busy_removal:
        return Retry(policy.delay(attempt, busy=True), busy=True)
    if not temporary:
        return Fault("permanent")
    if policy.exhausted(attempt):
        return Fault("attempts exhausted")
    return Retry(policy.delay(attempt))
