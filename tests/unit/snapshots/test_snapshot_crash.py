"""Crash safety of the snapshotter API: a crash at any kernel call of Prepare, Commit or
Remove, then a restart, leaves the pool and the store agreeing and every snapshot usable; the
same for the first root Prepare, which makes the base (create_thin, mkfs) before its own
snapshot of it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.daemon.once import run_until_settled
from reconciler.dm.crash import CrashingHost, CrashPoint
from reconciler.reconcile.reconciler import Reconciler
from reconciler.snapshots import Kind, Snapshotter
from reconciler.store import Store
from reconciler.testing.crashing import (
    SimulatedCrash,
    assert_store_and_pool_agree,
    call_counts,
    simulated_crash,
)
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import FakeClock, World, make_settings

Action = Callable[[Snapshotter], None]


def _setup(snaps: Snapshotter) -> None:
    snaps.prepare("base")
    snaps.commit("layer", "base")
    snaps.prepare("work")


def _prepare_child(snaps: Snapshotter) -> None:
    snaps.prepare("child", "layer")


def _prepare_grown(snaps: Snapshotter) -> None:
    # containerd's max-size label: the device is made larger and its filesystem grown.
    snaps.prepare("grown", "layer", labels={"containerd.io/snapshot/max-size": str(256 << 20)})


def _view(snaps: Snapshotter) -> None:
    snaps.view("look", "layer")


def _prepare_root(snaps: Snapshotter) -> None:
    snaps.prepare("root")


BEFORE = {"layer": Kind.COMMITTED, "work": Kind.ACTIVE}
# What each action may leave: its whole effect, or (if it died before writing its record,
# e.g. while a child's Prepare measured its parent's usage: thin_ls and the metadata
# snapshot's messages) none of it.
ACTIONS: dict[str, tuple[Action, list[dict[str, Kind]]]] = {
    "prepare-child": (_prepare_child, [{**BEFORE, "child": Kind.ACTIVE}, BEFORE]),
    "prepare-grown": (_prepare_grown, [{**BEFORE, "grown": Kind.ACTIVE}, BEFORE]),
    "view": (_view, [{**BEFORE, "look": Kind.VIEW}, BEFORE]),
    # The base is there (made by the setup's first Prepare): a create_snap of it.
    "prepare-root": (_prepare_root, [{**BEFORE, "root": Kind.ACTIVE}]),
    # On an empty store (see FRESH): the base is made first, and the snapshot's record is
    # written only once it is ready, so a crash while making the base leaves no snapshot.
    "first-root": (_prepare_root, [{}, {"root": Kind.ACTIVE}]),
    "commit": (lambda s: s.commit("layer-2", "work"),
               [{"layer": Kind.COMMITTED, "layer-2": Kind.COMMITTED}, BEFORE]),
    # Remove looks at the device's open count before it writes anything: a crash there
    # leaves the snapshot as it was, for containerd to remove again.
    "remove": (lambda s: s.remove("work"), [{"layer": Kind.COMMITTED},
                                            {"layer": Kind.COMMITTED, "work": Kind.ACTIVE}]),
}


# Actions run on an empty store rather than after _setup.
FRESH = {"first-root"}


def world_at(tmp_path: Path, name: str) -> World:
    world = World(host=FakeKernel(), settings=make_settings(tmp_path, "cs"), real=False,
                  clock=FakeClock())
    if name not in FRESH:
        _setup(snapshotter_over(world.reconciler(), sleep=world.clock.sleep))
    return world


def crash_points() -> list[tuple[str, CrashPoint]]:
    cases = []
    for name, (action, _) in ACTIONS.items():
        with tempfile.TemporaryDirectory() as tmp:
            world = world_at(Path(tmp), name)
            fake = world.host
            assert isinstance(fake, FakeKernel)
            start = len(fake.calls)
            action(snapshotter_over(world.reconciler(), sleep=world.clock.sleep))
            counts = call_counts([c for c in fake.calls[start:] if c[0] != "thin_ls"])
            world.teardown()
        for kind, count in sorted(counts.items()):
            if kind.startswith(("dmsetup info", "dmsetup status", "dmsetup table")):
                continue  # reads: a crash there is a crash between two writes
            for n in range(1, count + 1):
                for when in ("before", "after"):
                    cases.append((name, CrashPoint(when, kind, n)))
    return cases


CASES = crash_points()


def test_every_action_has_crash_points() -> None:
    """The matrix covers each API action at its kernel writes."""
    assert {name for name, _ in CASES} == set(ACTIONS)
    assert len(CASES) > 30


@pytest.mark.parametrize(("name", "point"), CASES,
                         ids=[f"{n}-{p.when}-{p.kind.replace(' ', '_')}-{p.count}"
                              for n, p in CASES])
def test_a_crash_in_an_api_call_recovers(tmp_path: Path, name: str, point: CrashPoint) -> None:
    """Crash at this call, restart: converged, pool and store agree, each snapshot that the
    call made or kept is there with its kind, and one it removed is gone."""
    world = world_at(tmp_path, name)
    assert world.store is not None
    world.store.close()
    action, outcomes = ACTIONS[name]
    crashing = CrashingHost(world.host, point, crash=simulated_crash)
    doomed = Reconciler(world.settings, crashing,
                        Store(world.settings.database_path, world.clock), clock=world.clock)
    with pytest.raises(SimulatedCrash):
        action(snapshotter_over(doomed, sleep=world.clock.sleep))

    world.store = Store(world.settings.database_path, world.clock)  # the restart
    engine = world.reconciler()
    result = run_until_settled(engine, world.clock, world.clock.sleep)
    assert result.ok, result
    assert_store_and_pool_agree(world)
    snaps = snapshotter_over(engine, sleep=world.clock.sleep)
    found = {info.name: info.kind for info in snaps.walk()}
    # The record is written before the call's kernel changes: a crash keeps all of the wish
    # or none of it, never half.
    assert found in outcomes
    expected = found
    for key, kind in expected.items():
        if kind != Kind.COMMITTED:
            assert snaps.mounts(key)[0].source.startswith("/dev/mapper/cs-snap-")
    # A grow in flight is finished: every filesystem fills its device.
    assert all(d.fs_size_bytes == d.size_bytes for d in world.store.devices() if d.formatted)
    live = {f"cs-{snaps.store.snapshot_by_key(k).name}"  # type: ignore[union-attr]
            for k, kind in expected.items() if kind != Kind.COMMITTED}
    assert world.kernel_names() == live
    if name in ("first-root", "prepare-root"):
        # The base came through whole: the next root is a snapshot of it, with no mkfs.
        fake = world.host
        assert isinstance(fake, FakeKernel)
        start = len(fake.calls)
        source = snaps.prepare("next-root")[0].source
        assert not [c for c in fake.calls[start:] if c[0].startswith("mkfs")]
        assert fake.filesystem(source.removeprefix("/dev/mapper/")) == "ext4"
        assert [b.name for b in snaps.store.bases()] == ["snap-base-1"]
