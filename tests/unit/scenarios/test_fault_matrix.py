"""The fault matrix: every mutating kernel call of every step x {EBUSY, ENOSPC, EEXIST, EIO,
EINVAL} x {once, ten times}, injected by errno so both drivers meet it.

After the fault clears (and, for a device that went Faulty, the operator's `retry`), every
device has converged, no device is left suspended, the pool's thin ids are exactly the
store's, nothing is an orphan, and the error shown while it lasted named the injected cause.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from reconciler.dm.client import DmClient
from reconciler.reconcile.reconciler import Reconciler
from reconciler.reconcile.retry import RetryPolicy
from reconciler.store import RequestKind
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.world import World
from reconciler.tools.thin_ls import list_thin_ids

NONE = 'filesystem = "none"\nsize = "4MiB"\n'
ERRNOS = (errno.EBUSY, errno.ENOSPC, errno.EEXIST, errno.EIO, errno.EINVAL)
POLICY = RetryPolicy(initial=1.0, maximum=4.0, max_attempts=3, jitter=0.0)


@dataclass(frozen=True)
class Case:
    """A step, what is there before it, what makes a pass take it, and its kernel call."""

    setup: Callable[[World], object]
    change: Callable[[World], object]
    op: Op
    device: str | None  # our device name whose dm device the call is on; None: the pool
    verb: str | None = None


def _base(world: World) -> None:
    world.spec("base", NONE)


def _a(world: World) -> None:
    world.spec("a", NONE)


def _nothing(world: World) -> None:
    del world


def _snapshot(world: World) -> None:
    world.spec("snap", 'parent = "base"\n')


CASES: dict[str, Case] = {
    "create_thin": Case(_nothing, _a, Op.MESSAGE, None, "create_thin"),
    "set_transaction_id after create_thin": Case(_nothing, _a, Op.MESSAGE, None,
                                                 "set_transaction_id"),
    "create_snap": Case(_base, _snapshot, Op.MESSAGE, None, "create_snap"),
    "suspend the origin": Case(_base, _snapshot, Op.SUSPEND, "base"),
    "resume the origin": Case(_base, _snapshot, Op.RESUME, "base"),
    "activate": Case(_nothing, _a, Op.CREATE, "a"),
    "grow: suspend": Case(_a, lambda w: w.spec("a", NONE.replace("4MiB", "8MiB")),
                          Op.SUSPEND, "a"),
    "grow: load": Case(_a, lambda w: w.spec("a", NONE.replace("4MiB", "8MiB")), Op.LOAD, "a"),
    "grow: resume": Case(_a, lambda w: w.spec("a", NONE.replace("4MiB", "8MiB")),
                         Op.RESUME, "a"),
    "deactivate": Case(_a, lambda w: w.spec("a", NONE + "active = false\n"), Op.REMOVE, "a"),
    "remove the dm device": Case(_a, lambda w: w.unspec("a"), Op.REMOVE, "a"),
    "delete": Case(_a, lambda w: w.unspec("a"), Op.MESSAGE, None, "delete"),
    "set_transaction_id after delete": Case(_a, lambda w: w.unspec("a"), Op.MESSAGE, None,
                                            "set_transaction_id"),
}


def _settle(world: World, engine: Reconciler) -> list[str]:
    """Passes (on the fake clock) until nothing is due; the errors shown on the way. One
    engine throughout: a restart's recovery would hide a retry that is not idempotent."""
    shown: list[str] = []
    for _ in range(40):
        result = engine.run_pass()
        shown += [*result.pending.values(), *result.faulty.values()]
        due = result.next_retry_at
        if due is None:
            return shown
        world.clock.now = max(world.clock.now, due)
    raise AssertionError("did not settle in 40 passes")


def _retry_faulty(world: World) -> None:
    assert world.store is not None
    for record in world.store.devices():
        if record.state == "Faulty":
            world.store.add_request(RequestKind.RETRY, record.name)


def _suspended(world: World) -> list[str]:
    return [i.name for i in DmClient(world.host).info_all() if i.suspended]


def _assert_whole(world: World, engine: Reconciler) -> None:
    """Converged, nothing suspended, the pool's ids are the store's, no orphan."""
    assert world.store is not None
    result = engine.run_pass()
    assert result.ok, (result.pending, result.faulty)
    client = DmClient(world.host)
    assert _suspended(world) == []
    pool = world.store.pool(world.pool)
    assert pool is not None
    pool_ids = list_thin_ids(world.host, world.pool, pool.metadata_device, client)
    stored = {r.device_id for r in world.store.devices() if r.provisioned}
    assert pool_ids == stored
    assert world.store.orphans() == []
    assert world.store.intents() == []


@pytest.mark.parametrize("times", [1, 10], ids=["once", "ten times"])
@pytest.mark.parametrize("number", ERRNOS, ids=[errno.errorcode[n] for n in ERRNOS])
@pytest.mark.parametrize("step", sorted(CASES))
def test_a_fault_at_any_step_is_recovered_whole(fake_world: World, step: str, number: int,
                                                times: int) -> None:
    """The injected errno is shown while it lasts; afterwards everything is whole."""
    case = CASES[step]
    case.setup(fake_world)
    engine = fake_world.reconciler(POLICY)
    assert engine.run_pass().ok
    kernel = fake_world.host
    assert isinstance(kernel, FakeKernel)
    name = fake_world.pool if case.device is None else f"{fake_world.pool}-{case.device}"
    kernel.faults.fail(case.op, name, errno=number, times=times, verb=case.verb)
    case.change(fake_world)

    shown = _settle(fake_world, engine)
    cause = os.strerror(number)
    if (step, number, times) == ("deactivate", errno.EBUSY, 1):
        # An EBUSY remove is met as containerd meets it: flush, then a deferred remove, which
        # the kernel takes; nothing to show.
        assert shown == []
    else:
        assert any(cause in text for text in shown), (cause, shown)
    others = [os.strerror(n) for n in ERRNOS if n != number]
    misleading = [text for text in shown if any(other in text for other in others)]
    assert misleading == [], "an error must name the real cause"
    if case.op is not Op.RESUME:  # a resume the kernel refuses is the one way to stay so
        assert _suspended(fake_world) == [], "no device is left suspended, even meanwhile"

    kernel.faults.clear()
    _retry_faulty(fake_world)
    fake_world.clock.now += 3600
    _settle(fake_world, engine)
    _assert_whole(fake_world, engine)


def test_the_matrix_covers_every_mutating_call() -> None:
    """Each kernel call a step makes to change something has a row."""
    covered = {(c.op, c.verb) for c in CASES.values()}
    assert covered >= {
        (Op.MESSAGE, "create_thin"), (Op.MESSAGE, "create_snap"), (Op.MESSAGE, "delete"),
        (Op.MESSAGE, "set_transaction_id"), (Op.CREATE, None), (Op.SUSPEND, None),
        (Op.LOAD, None), (Op.RESUME, None), (Op.REMOVE, None)}
