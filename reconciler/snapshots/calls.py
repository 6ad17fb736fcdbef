"""A snapshotter call that waits for devices, advanced one settle at a time.

A call that needs a device settled is an *operation*: a generator that yields the name of
each device it needs settled and is sent how that device stands (`devices.Ready` or
`Failed`) once it has settled, or once its retries fall past the call's settle time.
`DeviceCall` advances one; it never sleeps. Who waits between its steps is the caller's
choice: `run_to_end` sleeps on the caller's thread (tests, no daemon); the daemon parks the
call (`daemon.waiters`) and advances it again after a later pass, so its reconcile thread
never sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Generic, Protocol, TypeVar

from reconciler.reconcile.devices import Devices, RetryAt, Verdict

T = TypeVar("T")
Operation = Generator[str, Verdict, T]
"""A call in progress: yields the name of each device it needs settled, returns the answer."""


class DeviceCall(Generic[T]):
    """One operation, advanced a settle at a time until it has its answer."""

    def __init__(self, operation: Operation[T], devices: Devices, clock: Callable[[], float],
                 settle_seconds: float) -> None:
        self._operation = operation
        self._devices = devices
        self._clock = clock
        self._settle_seconds = settle_seconds
        self._started = False
        self._waiting_for: str | None = None
        self._deadline = 0.0
        self._verdict: Verdict | None = None
        self._finished = False
        self._result: Any = None
        self._error: BaseException | None = None

    def _next_name(self) -> str:
        if not self._started:
            self._started = True
            return next(self._operation)
        assert self._verdict is not None
        return self._operation.send(self._verdict)

    def needs(self) -> str | None:
        """The device the call must have settled next, its operation run up to there and
        nothing settled (so that the daemon can settle the devices of several calls in one
        pass); None once it has its answer."""
        if self._waiting_for is None and not self._finished:
            try:
                self._waiting_for = self._next_name()
                self._deadline = self._clock() + self._settle_seconds
            except StopIteration as stop:
                self._finish(result=stop.value)
            except Exception as exc:  # noqa: BLE001 - the call's answer (NotFound, DmError...)
                self._operation.close()
                self._finish(error=exc)
        return self._waiting_for

    def advance(self) -> float | None:
        """Run until the call must wait: when to advance it again, or None once finished."""
        while (name := self.needs()) is not None:
            try:
                settled = self._devices.settle([name])
            except Exception as exc:  # noqa: BLE001 - the call's answer (DmError...)
                self._operation.close()
                self._finish(error=exc)
                self._waiting_for = None
            else:
                if isinstance(settled, RetryAt):
                    if settled.at <= self._deadline:
                        return settled.at
                    settled = settled.current  # not worth waiting for: how it stands
                self._verdict, self._waiting_for = settled, None
        return None

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self._finished, self._result, self._error = True, result, error

    def outcome(self) -> T:
        """The call's answer, or its error raised; only once `advance` returned None."""
        assert self._finished, "the call has not finished"
        if self._error is not None:
            raise self._error
        result: T = self._result
        return result


class Runner(Protocol):
    """Runs a call to its answer, waiting between its steps as its owner waits."""

    def __call__(self, call: DeviceCall[T]) -> T:
        """The call's answer (or its error raised)."""
        ...


def run_to_end(call: DeviceCall[T], clock: Callable[[], float],
               sleep: Callable[[float], None]) -> T:
    """Run a call to its answer, sleeping on this thread until each retry it waits for."""
    at = call.advance()
    while at is not None:
        sleep(max(0.0, at - clock()))
        at = call.advance()
    return call.outcome()
