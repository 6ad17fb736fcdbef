"""Test support shared by the crash tests: the operations to crash in, and what converged
means."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.dm.crash import call_kind
from reconciler.testing.world import World
from reconciler.tools.thin_ls import list_thin_ids


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


def _specs(**texts: str) -> Callable[[World], None]:
    def write(world: World) -> None:
        for name, text in texts.items():
            world.spec(name, text)
    return write


def _remove(name: str) -> Callable[[World], None]:
    def remove(world: World) -> None:
        world.unspec(name)
    return remove


def _nothing(world: World) -> None:
    del world


RAW = 'filesystem = "none"\n'
OPERATIONS = [
    Operation("create", _nothing, _specs(a='size = "32MiB"\n'), frozenset({"a"})),
    Operation("snapshot", _specs(data=RAW), _specs(snap='parent = "data"\n'),
              frozenset({"data", "snap"})),
    Operation("activate", _specs(a=RAW + "active = false\n"), _specs(a=RAW),
              frozenset({"a"})),
    Operation("deactivate", _specs(a=RAW), _specs(a=RAW + "active = false\n"), frozenset()),
    Operation("grow", _specs(a=RAW + 'size = "32MiB"\n'), _specs(a=RAW + 'size = "64MiB"\n'),
              frozenset({"a"})),
    Operation("remove", _specs(data=RAW, a=RAW), _remove("a"), frozenset({"data"})),
]


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
