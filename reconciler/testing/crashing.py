"""Test support shared by the crash tests: the operations to crash in, and what converged
means."""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.dm.crash import CrashingHost, call_kind
from reconciler.store import Store
from reconciler.testing.fakekernel.faults import Op
from reconciler.testing.world import World
from reconciler.tools.thin_ls import list_thin_ids
from reconciler.vocabulary import PoolOp


class SimulatedCrash(BaseException):
    """Raised at a crash point in the unit tier: nothing catches it, like SIGKILL."""


def simulated_crash() -> None:
    raise SimulatedCrash


@dataclass(frozen=True)
class Operation:
    """A spec change to crash in the middle of, after `setup` converged."""

    name: str
    setup: Callable[[World], None]
    action: Callable[[World], None]
    expected_devices: frozenset[str]


def specs(**texts: str) -> Callable[[World], None]:
    """An action writing these spec files (name: text)."""
    def write(world: World) -> None:
        for name, text in texts.items():
            world.spec(name, text)
    return write


def _nothing(world: World) -> None:
    del world


def removes(*names: str) -> Callable[[World], None]:
    """An action deleting these devices' spec files."""
    def remove(world: World) -> None:
        for name in names:
            world.unspec(name)
    return remove


def _both(*actions: Callable[[World], None]) -> Callable[[World], None]:
    def both(world: World) -> None:
        for action in actions:
            action(world)
    return both


def _first_create_fails(world: World) -> None:
    """The batch's first create_thin is refused once (EBUSY, a temporary error): that
    device waits for its retry while the rest of the batch goes on (fake kernel only)."""
    faults = getattr(world.host, "faults", None)
    assert faults is not None, "a fault is injected into the fake kernel only"
    faults.fail(Op.MESSAGE, world.pool, errno=errno.EBUSY, verb=PoolOp.CREATE_THIN.value)


RAW = 'filesystem = "none"\n'
OPERATIONS = [
    Operation("create", _nothing, specs(a='size = "32MiB"\n'), frozenset({"a"})),
    Operation("snapshot", specs(data=RAW), specs(snap='parent = "data"\n'),
              frozenset({"data", "snap"})),
    Operation("activate", specs(a=RAW + "active = false\n"), specs(a=RAW),
              frozenset({"a"})),
    Operation("deactivate", specs(a=RAW), specs(a=RAW + "active = false\n"), frozenset()),
    Operation("grow", specs(a=RAW + 'size = "32MiB"\n'), specs(a=RAW + 'size = "64MiB"\n'),
              frozenset({"a"})),
    Operation("remove", specs(data=RAW, a=RAW), removes("a"), frozenset({"data"})),
    # Several devices in one pass, so that crash points fall inside a batch (group commit):
    # before and after its 1st, 2nd and 3rd message and its one set_transaction_id.
    Operation("create3", _nothing, specs(a=RAW, b=RAW, c=RAW), frozenset({"a", "b", "c"})),
    Operation("snapshot3", specs(p1=RAW, p2=RAW, p3=RAW),
              specs(s1='parent = "p1"\n', s2='parent = "p2"\n', s3='parent = "p3"\n'),
              frozenset({"p1", "p2", "p3", "s1", "s2", "s3"})),
    Operation("remove3", specs(data=RAW, a=RAW, b=RAW, c=RAW), removes("a", "b", "c"),
              frozenset({"data"})),
]
# Fake kernel only (a fault is injected): creates, a snapshot and a removal in one pass,
# the first create refused once.
MIXED = Operation(
    "mixed_one_failing", specs(data=RAW, old=RAW),
    _both(specs(a=RAW, b=RAW, c=RAW, snap='parent = "data"\n'), removes("old"),
          _first_create_fails),
    frozenset({"data", "a", "b", "c", "snap"}))


class CountingStore(Store):
    """A Store that counts its commits (outermost transactions), and dies right after the
    `crash_after`th one when given: a crash between two of a batch's commits. Its `host`
    (a CrashingHost) dies with it, so that not even a `finally` reaches the kernel after."""

    def __init__(self, path: Path, clock: Callable[[], float], crash_after: int = 0,
                 host: CrashingHost | None = None) -> None:
        super().__init__(path, clock)
        self.commits = 0
        self.crash_after = crash_after
        self.host = host

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Store.transaction, counted; the crash point once committed."""
        outermost = not self.in_transaction()
        with super().transaction():
            yield
        if not outermost:
            return
        self.commits += 1
        if self.commits == self.crash_after:
            if self.host is not None:
                self.host.dead = True
            simulated_crash()


def call_counts(calls: list[tuple[str, ...]]) -> Counter[str]:
    """How many calls of each kind a pass made."""
    return Counter(call_kind(c) for c in calls)


def assert_store_and_pool_agree(world: World) -> None:
    """Every id the pool has is a managed device's, and every managed device's id is there;
    no orphans; the dm devices are exactly the active managed ones."""
    assert world.store is not None
    pool = world.store.pool(world.pool)
    assert pool is not None
    records = world.store.devices()
    managed = {r.device_id for r in records if r.provisioned}
    assert list_thin_ids(world.host, world.pool, pool.metadata_device) == managed
    assert all(r.state not in ("Creating", "Activating", "Suspending", "Suspended",
                               "Resuming", "Deactivating", "Removing", "Faulty")
               for r in records), [(r.name, r.state) for r in records]
    assert len(managed) == len([r for r in records if r.provisioned])  # no id twice
    assert world.store.intents() == []
    assert world.store.orphans() == []
