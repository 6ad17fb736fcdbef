"""What wakes the reconcile thread: device names from file events, API requests, and
operator signals.

Events are hints, never payloads: only a name is queued, and a burst of events for the same
or many names becomes one batch. Thread-safe; the watchdog thread and signal handlers add,
the reconcile thread takes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Batch:
    """Everything that arrived since the last take."""

    names: set[str] = field(default_factory=set)
    # Work handed over by other threads (API requests), run in order on the reconcile thread.
    # Each is told whether the daemon is stopping (then it answers with a refusal).
    calls: list[Callable[[bool], None]] = field(default_factory=list)
    resync: bool = False
    reload: bool = False
    stop: bool = False
    # The spec directory changed as a whole (a ConfigMap volume's `..data` swapped): every
    # file may have new content, so the pass reads them all, once the burst has settled.
    rescan: bool = False

    @property
    def empty(self) -> bool:
        """Nothing arrived (the wait timed out)."""
        return not (self.names or self.calls or self.resync or self.reload or self.stop
                    or self.rescan)


class Wakeups:
    """A coalescing queue of device names and flags."""

    def __init__(self, settle: float = 0.05, max_settle: float = 0.5) -> None:
        self._cond = threading.Condition()
        self._batch = Batch()
        self._last_event = 0.0
        self.settle = settle
        self.max_settle = max_settle

    def add(self, name: str) -> None:
        """A spec file of this name changed."""
        with self._cond:
            self._batch.names.add(name)
            self._last_event = time.monotonic()
            self._cond.notify()

    def add_all(self) -> None:
        """Every spec file may have changed at once (kubelet swapped a ConfigMap's `..data`):
        a full read, after the same settling as a file event, so the key links kubelet
        makes and removes right after the swap are seen by the same pass."""
        with self._cond:
            self._batch.rescan = True
            self._last_event = time.monotonic()
            self._cond.notify()

    def call(self, work: Callable[[bool], None]) -> None:
        """Run `work` on the reconcile thread at its next wake-up."""
        with self._cond:
            self._batch.calls.append(work)
            self._cond.notify()

    def _flag(self, flag: str) -> None:
        with self._cond:
            setattr(self._batch, flag, True)
            self._cond.notify()

    def resync(self) -> None:
        """Ask for a full pass now."""
        self._flag("resync")

    def reload(self) -> None:
        """Ask for the config to be read again."""
        self._flag("reload")

    def stop(self) -> None:
        """Ask the daemon to finish the step in flight and exit."""
        self._flag("stop")

    def pending(self) -> int:
        """How many names wait to be taken."""
        with self._cond:
            return len(self._batch.names)

    def take(self, timeout: float | None) -> Batch:
        """Wait up to `timeout` seconds for something, let a burst of events settle, take it."""
        with self._cond:
            if self._batch.empty:
                self._cond.wait(timeout)
            if (self._batch.names or self._batch.rescan) \
                    and not (self._batch.stop or self._batch.reload or self._batch.calls):
                # Editors and copies write in several steps: wait until they are quiet.
                started = time.monotonic()
                while True:
                    quiet_for = time.monotonic() - self._last_event
                    waited = time.monotonic() - started
                    if quiet_for >= self.settle or waited >= self.max_settle:
                        break
                    self._cond.wait(self.settle - quiet_for)
            batch, self._batch = self._batch, Batch()
            return batch
