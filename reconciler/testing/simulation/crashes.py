"""Where a simulated process dies: at a chosen kernel call or store write, before or after it.

The simulation arms one `CrashPlan` at a random step; the Host and the Store the simulated
daemon is given count their calls against it, and the chosen one raises `SimulatedCrash`
(which nothing in the product catches, like SIGKILL). Unlike `dm.crash.CrashingHost`, which
dies at the Nth call of one kind, any mutating call counts: the seed picks the point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.dm.host import Completed, Host
from reconciler.dm.libdm_bindings import DmLibrary
from reconciler.dm.udev import UdevFacts, udev_facts_of
from reconciler.store import Store
from reconciler.testing.crashing import SimulatedCrash


@dataclass
class CrashPlan:
    """Die at the `countdown`th counted call of `where` ("kernel" or "store"), `when`
    ("before" or "after") it; a plan that fired is spent."""

    where: str = ""
    when: str = "before"
    countdown: int = 0
    fired: bool = False
    _chosen: bool = False

    def arm(self, where: str, when: str, countdown: int) -> None:
        """Die at this point from now on."""
        self.where, self.when, self.countdown = where, when, countdown
        self.fired = self._chosen = False

    @property
    def armed(self) -> bool:
        """Whether a crash is still to come."""
        return self.countdown > 0 or self._chosen

    def disarm(self) -> None:
        """No crash to come (the convergence phase)."""
        self.countdown = 0
        self._chosen = False

    def before(self, where: str) -> None:
        """A call of `where` starts: die now if it is the chosen one and `when` is before."""
        if self.countdown <= 0 or where != self.where:
            return
        self.countdown -= 1
        if self.countdown == 0:
            if self.when == "before":
                self._fire()
            self._chosen = True

    def after(self, where: str) -> None:
        """A call of `where` ended (or raised): die now if it was the chosen one."""
        if self._chosen and where == self.where:
            self._fire()

    def _fire(self) -> None:
        self.fired, self._chosen = True, False
        raise SimulatedCrash


class CrashingKernel:
    """The Host the simulated daemon sees: the fake kernel, dying where the plan says.

    Reads are never crash points; a kernel call (a program run) is. The fake's libdevmapper
    is not offered through here (the simulation drives dmsetup, whose calls it can count).
    """

    def __init__(self, inner: Host, plan: CrashPlan) -> None:
        self.inner = inner
        self.plan = plan

    def run(self, argv: Sequence[str]) -> Completed:
        """Run argv, dying before or after it when it is the chosen call."""
        self.plan.before("kernel")
        try:
            return self.inner.run(argv)
        finally:
            self.plan.after("kernel")

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Reads are not crash points."""
        return self.inner.read(path, offset, length)

    def write(self, path: str, offset: int, data: bytes) -> None:
        """A write is a crash point like a program run."""
        self.plan.before("kernel")
        try:
            self.inner.write(path, offset, data)
        finally:
            self.plan.after("kernel")

    def udev_facts(self) -> UdevFacts:
        """The fake kernel's udev (asking about it is no kernel call)."""
        return udev_facts_of(self.inner)

    def dm_library(self) -> DmLibrary:
        """Not offered: the simulation counts dmsetup's calls."""
        raise NotImplementedError("the simulation drives dmsetup")


class CrashingStore(Store):
    """A Store whose writes are crash points (each commits before it returns, so a crash
    before one loses it and a crash after one keeps it)."""

    def __init__(self, path: Path, clock: Callable[[], float], plan: CrashPlan) -> None:
        self.plan = plan
        super().__init__(path, clock)

    def _crashing(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.plan.before("store")
        try:
            return getattr(super(), method)(*args, **kwargs)
        finally:
            self.plan.after("store")

    def save_device(self, *args: Any, **kwargs: Any) -> None:
        """A crash point."""
        self._crashing("save_device", *args, **kwargs)

    def record_transition(self, *args: Any, **kwargs: Any) -> None:
        """A crash point."""
        self._crashing("record_transition", *args, **kwargs)

    def save_intent(self, *args: Any, **kwargs: Any) -> None:
        """A crash point."""
        self._crashing("save_intent", *args, **kwargs)

    def drop_intent(self, *args: Any, **kwargs: Any) -> None:
        """A crash point."""
        self._crashing("drop_intent", *args, **kwargs)

    def save_transaction_id(self, *args: Any, **kwargs: Any) -> None:
        """A crash point."""
        self._crashing("save_transaction_id", *args, **kwargs)

    def save_snapshot(self, *args: Any, **kwargs: Any) -> None:
        """A crash point."""
        self._crashing("save_snapshot", *args, **kwargs)

    def set_condition(self, *args: Any, **kwargs: Any) -> Any:
        """A crash point."""
        return self._crashing("set_condition", *args, **kwargs)

