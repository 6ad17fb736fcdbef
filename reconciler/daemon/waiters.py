"""Waiters: callers on other threads waiting for work done on the reconcile thread.

The reconcile thread alone owns the store, the machines and the kernel; gRPC calls (on the
API server's worker threads) and control-socket requests (on the control server's) hand it
their work with `submit` and block until it is answered. Work that must wait for a device
(a snapshotter call whose device waits for a retry) is never slept on: run through `run`, it
is parked, and `resume` advances it again after each pass once its time has come, while the
loop goes on serving everything else. On stop, what is queued or parked is answered
Unavailable, so no caller is left waiting. Part of the daemon (`daemon.service` owns one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from reconciler.daemon.wakeups import Wakeups
from reconciler.snapshots import Unavailable

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

STOPPING = "the reconciler daemon is stopping"
log = structlog.get_logger(__name__)


class Resumable(Protocol[T_co]):
    """Work advanced in steps until it has its answer (`snapshots.calls.DeviceCall`)."""

    def needs(self) -> str | None:
        """The device it must have settled next (None: it has its answer)."""
        ...

    def advance(self) -> float | None:
        """Run until it must wait: when to advance it again, or None once finished."""
        ...

    def outcome(self) -> T_co:
        """Its answer, or its error raised; only once `advance` returned None."""
        ...


class Parked(Exception):
    """Work run by `Waiters.run` that must wait: advance `call` again at time `at`."""

    def __init__(self, call: Resumable[Any], at: float) -> None:
        super().__init__(f"call parked until {at}")
        self.call = call
        self.at = at


@dataclass
class _Waiter:
    """Parked work, and the caller waiting for its answer."""

    call: Resumable[Any]
    at: float
    future: Future[Any]


class Waiters:
    """Work handed to the reconcile thread, and what of it waits for a later pass."""

    def __init__(self, wakeups: Wakeups, clock: Callable[[], float],
                 stopping: Callable[[], bool],
                 settle_together: Callable[[Sequence[str]], object] | None = None) -> None:
        self._wakeups = wakeups
        self._clock = clock
        self._stopping = stopping
        # Drives several devices in one partial pass (`Devices.settle`); None: each call's
        # devices are settled on their own, as it runs.
        self._settle_together = settle_together
        self._parked: list[_Waiter] = []
        # Inside submitted work (whose answer can wait for `resume`), not a direct call.
        self._in_work = False

    @property
    def waiting(self) -> int:
        """How many are parked."""
        return len(self._parked)

    def next_at(self) -> float | None:
        """When the first parked work is due (None: none parked)."""
        return min((w.at for w in self._parked), default=None)

    def submit(self, fn: Callable[[], T]) -> T:
        """From another thread: run `fn` on the reconcile thread and wait for its answer
        (later, if it parks); Unavailable once the daemon is stopping."""
        future: Future[T] = Future()

        def work(stopping: bool) -> None:
            if not future.set_running_or_notify_cancel():
                return
            if stopping:  # answered, so its caller is not left waiting
                future.set_exception(Unavailable(STOPPING))
                return
            self._in_work = True
            try:
                future.set_result(fn())
            except Parked as parked:
                self._parked.append(_Waiter(parked.call, parked.at, future))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which re-raises
                future.set_exception(exc)
            finally:
                self._in_work = False

        if self._stopping():
            raise Unavailable(STOPPING)
        self._wakeups.call(work)
        return future.result()

    def run(self, call: Resumable[T]) -> T:
        """On the reconcile thread, inside submitted work: advance `call`; its answer if it
        has one now, else Parked raised (the submitted work is answered when it finishes).
        With `settle_together`, a call that needs a device is parked due at once: `resume`,
        after the wake-up's other calls, settles all their devices in one pass (one wait for
        udev, not one per call) before advancing each."""
        if self._in_work and self._settle_together is not None and call.needs() is not None:
            raise Parked(call, self._clock())
        at = call.advance()
        if at is not None:
            raise Parked(call, at)
        return call.outcome()

    def resume(self) -> None:
        """Advance every parked call whose time has come; answer those that finished."""
        now = self._clock()
        self._settle_due(now)
        waiting: list[_Waiter] = []
        for waiter in self._parked:
            if waiter.at > now or self._stopping():
                waiting.append(waiter)
                continue
            at = waiter.call.advance()
            if at is not None:
                waiter.at = at
                waiting.append(waiter)
                continue
            try:
                waiter.future.set_result(waiter.call.outcome())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which re-raises
                waiter.future.set_exception(exc)
        self._parked = waiting

    def _settle_due(self, now: float) -> None:
        """One partial pass for the devices the due calls need, so that advancing each finds
        its device settled (its own settle then has nothing left to do)."""
        if self._settle_together is None or self._stopping():
            return
        names = list(dict.fromkeys(
            name for waiter in self._parked if waiter.at <= now
            if (name := waiter.call.needs()) is not None))
        if len(names) < 2:
            return
        try:
            self._settle_together(names)
        except Exception:  # each call's own settle meets it again and answers it
            log.warning("calls.settle_together_failed", devices=names, exc_info=True,
                        next="settling each call's device on its own")

    def refuse(self) -> None:
        """Answer every parked call Unavailable (the daemon stops)."""
        for waiter in self._parked:
            waiter.future.set_exception(Unavailable(STOPPING))
        self._parked = []
