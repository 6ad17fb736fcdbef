"""A Snapshotter over a Reconciler, wired as the daemon wires its own (test support).

The snapshotter takes the store, the settings, a clock and the devices seam rather than the
engine; tests that hold a Reconciler get one from it here in one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from reconciler.reconcile.reconciler import Reconciler
from reconciler.snapshots import Snapshotter
from reconciler.snapshots.calls import Runner
from reconciler.snapshots.snapshotter import SETTLE_SECONDS


def snapshotter_over(engine: Reconciler, sleep: Callable[[float], None] = time.sleep,
                     settle_seconds: float = SETTLE_SECONDS,
                     runner: Runner | None = None) -> Snapshotter:
    """A Snapshotter whose devices are `engine`'s (calls run to their end, sleeping with
    `sleep`, unless a runner is given)."""
    return Snapshotter(engine.store, engine.settings, engine.clock, engine.devices,
                       sleep=sleep, settle_seconds=settle_seconds, runner=runner)
