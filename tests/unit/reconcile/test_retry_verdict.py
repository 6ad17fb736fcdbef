"""retry.verdict: what a failed step leads to, table-tested without a kernel."""

from __future__ import annotations

import pytest

from reconciler.reconcile.retry import Fault, Retry, RetryPolicy, verdict

# No jitter: the delays are exact.
POLICY = RetryPolicy(initial=0.5, maximum=4.0, max_attempts=3, jitter=0.0)


@pytest.mark.parametrize(
    ("attempt", "temporary", "busy_removal", "expected"),
    [
        (1, True, False, Retry(0.5)),
        (2, True, False, Retry(1.0)),
        (3, True, False, Fault("attempts exhausted")),
        (9, True, False, Fault("attempts exhausted")),
        (1, False, False, Fault("permanent")),
        (2, False, False, Fault("permanent")),
        # A removal refused because the device is open waits for its holder: no budget,
        # and quick first retries (udev's probe of a device just made ends in moments).
        (1, True, True, Retry(0.05, busy=True)),
        (2, True, True, Retry(0.1, busy=True)),
        (3, True, True, Retry(0.2, busy=True)),
        (8, True, True, Retry(4.0, busy=True)),
        (50, True, True, Retry(4.0, busy=True)),
        (50, False, True, Retry(4.0, busy=True)),
    ],
)
def test_verdict_table(attempt: int, temporary: bool, busy_removal: bool,
                       expected: Retry | Fault) -> None:
    """Each (attempt, temporary, busy removal) gives the retry or the fault the table says."""
    assert verdict(POLICY, attempt, temporary, busy_removal) == expected


def test_retry_delay_never_passes_the_cap_with_jitter() -> None:
    """Jitter spreads the delay but a retry never waits longer than the policy's maximum."""
    policy = RetryPolicy(initial=1.0, maximum=3.0, max_attempts=100, jitter=0.5)
    delays = []
    for attempt in range(1, 20):
        choice = verdict(policy, attempt, True, False)
        assert isinstance(choice, Retry)
        delays.append(choice.delay)
    assert max(delays) == pytest.approx(3.0)
    assert all(1.0 <= d <= 3.0 for d in delays)


def test_exhausted_retries_mark_device_faulty_at_the_budget() -> None:
    """The attempt that uses up max_attempts is the first one that faults."""
    policy = RetryPolicy(max_attempts=5, jitter=0.0)
    kinds = [type(verdict(policy, n, True, False)) for n in range(1, 7)]
    assert kinds == [Retry, Retry, Retry, Retry, Fault, Fault]


def test_busy_removal_never_starts_slower_than_the_policy() -> None:
    """A policy whose own first retry is quicker than BUSY_INITIAL keeps it for busy ones."""
    policy = RetryPolicy(initial=0.01, maximum=4.0, max_attempts=3, jitter=0.0)
    assert verdict(policy, 1, True, True) == Retry(0.01, busy=True)
