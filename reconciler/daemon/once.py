"""`reconciler run --once`: passes until every device converged or has no attempt left now.

A temporary error inside a pass only schedules the device's next try; here we wait for it
(with the injected sleep, so tests advance a fake clock) and pass again.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from reconciler.reconcile.pass_context import PassResult
from reconciler.reconcile.reconciler import Reconciler

log = structlog.get_logger(__name__)


def run_until_settled(
    reconciler: Reconciler, clock: Callable[[], float], sleep: Callable[[float], None]
) -> PassResult:
    """Pass, wait for the earliest retry that still has attempts left, pass again."""
    while True:
        result = reconciler.run_pass()
        due = result.next_budgeted_retry_at
        if result.stopped or due is None:
            return result
        wait = max(0.0, due - clock())
        log.info("pass.waiting", seconds=round(wait, 3), pending=sorted(result.pending),
                 next="retrying the pending devices")
        sleep(wait)
