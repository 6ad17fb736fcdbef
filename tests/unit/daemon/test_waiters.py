"""daemon.waiters: callers on other threads served on the reconcile thread; a snapshotter call
that waits for its device is parked and answered after a later pass, or Unavailable on stop."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.daemon.waiters import Waiters
from reconciler.daemon.wakeups import Wakeups
from reconciler.reconcile.reconciler import Reconciler
from reconciler.snapshots import Snapshotter, Unavailable
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import World


class Loop:
    """The reconcile thread's side, run by the test: waiters, a snapshotter that parks."""

    def __init__(self, world: World) -> None:
        self.stopping = False
        self.wakeups = Wakeups(settle=0.0)
        self.waiters = Waiters(self.wakeups, world.clock, lambda: self.stopping)
        self.engine: Reconciler = world.reconciler()
        self.snaps: Snapshotter = snapshotter_over(self.engine, runner=self.waiters.run)
        self.answers: dict[str, Any] = {}
        self._threads: dict[str, threading.Thread] = {}

    def ask(self, label: str, fn: Callable[[], Any]) -> None:
        """A caller's thread: submit `fn` and keep its answer (or error) under `label`."""
        def run() -> None:
            try:
                self.answers[label] = self.waiters.submit(fn)
            except Exception as exc:  # noqa: BLE001 - the test reads it
                self.answers[label] = exc
        thread = threading.Thread(target=run)
        thread.start()
        self._threads[label] = thread

    def serve(self, count: int) -> None:
        """Run what `count` callers queued, on this (the test's) thread."""
        served = 0
        while served < count:
            for work in self.wakeups.take(5.0).calls:
                work(self.stopping)
                served += 1

    def join(self, *labels: str) -> None:
        """Wait for these callers (all: none named) to have their answers."""
        for label, thread in self._threads.items():
            if not labels or label in labels:
                thread.join(timeout=5)


def _busy_once(world: World) -> None:
    fake = world.host
    assert isinstance(fake, FakeKernel)
    fake.faults.fail(Op.MESSAGE, world.pool, errno=errno.EBUSY, verb="create_thin")


def test_a_parked_call_is_answered_after_a_later_pass(fake_world: World) -> None:
    """A Prepare whose device waits for a retry is parked, not slept on; resumed once its
    time has come, it answers with the snapshot's mounts."""
    _busy_once(fake_world)
    loop = Loop(fake_world)
    loop.ask("prepare", lambda: loop.snaps.prepare("k"))
    loop.serve(1)
    assert loop.waiters.waiting == 1 and "prepare" not in loop.answers
    at = loop.waiters.next_at()
    assert at is not None and at > fake_world.clock.now
    loop.waiters.resume()
    assert loop.waiters.waiting == 1, "not due yet: left parked"
    fake_world.clock.now = at
    loop.waiters.resume()
    loop.join()
    assert loop.waiters.waiting == 0
    (mount,) = loop.answers["prepare"]
    assert mount.source == f"/dev/mapper/{fake_world.pool}-snap-1"
    assert fake_world.clock.slept == [], "the reconcile thread never slept"


def test_a_control_like_request_is_answered_while_a_grpc_like_call_is_parked(
        fake_world: World) -> None:
    """Both kinds of caller share the mechanism: a request that runs a full pass is answered
    at once, while the Prepare queued before it waits parked for its device."""
    _busy_once(fake_world)
    loop = Loop(fake_world)
    loop.ask("prepare", lambda: loop.snaps.prepare("k"))
    loop.serve(1)
    loop.ask("control", lambda: loop.engine.run_pass())
    loop.serve(1)
    loop.join("control")
    assert "snap-base-1" in loop.answers["control"].pending, "the base still waits"
    assert "prepare" not in loop.answers and loop.waiters.waiting == 1
    next_at = loop.waiters.next_at()
    assert next_at is not None
    fake_world.clock.now = next_at
    loop.waiters.resume()
    loop.join()
    assert loop.answers["prepare"][0].source.endswith("-snap-1")
    assert [info.name for info in loop.snaps.walk()] == ["k"]


def test_on_stop_parked_and_new_callers_are_answered_unavailable(fake_world: World) -> None:
    """Stopping answers every caller: a parked call, work queued before the stop, and a
    caller that comes after it."""
    _busy_once(fake_world)
    loop = Loop(fake_world)
    loop.ask("prepare", lambda: loop.snaps.prepare("k"))
    loop.serve(1)
    assert loop.waiters.waiting == 1
    loop.ask("queued", lambda: loop.snaps.walk())
    loop.stopping = True
    loop.serve(1)
    loop.waiters.refuse()
    loop.join()
    assert loop.waiters.waiting == 0
    assert isinstance(loop.answers["prepare"], Unavailable)
    assert isinstance(loop.answers["queued"], Unavailable)
    with pytest.raises(Unavailable, match="stopping"):
        loop.waiters.submit(lambda: loop.snaps.walk())


def test_calls_of_one_wake_up_have_their_devices_settled_in_one_pass(
        fake_world: World) -> None:
    """Five Prepares queued together (containerd's parallel unpacks, its suite's t.Parallel())
    are parked due at once and settled by one partial pass for all five devices, so the pass's
    kernel work (one udev wait) is shared; each call's own settle then finds its device made
    and active, and each answers with its own mounts."""
    loop = Loop(fake_world)
    settles: list[tuple[list[str], list[str]]] = []
    fake = fake_world.host
    assert isinstance(fake, FakeKernel)

    def settle(names: Any) -> object:
        mapped = [n for n in names if f"{fake_world.pool}-{n}" in fake.devices]
        settles.append((list(names), mapped))
        return loop.engine.devices.settle(names)

    loop.waiters = Waiters(loop.wakeups, fake_world.clock, lambda: loop.stopping,
                           settle_together=settle)
    loop.snaps = snapshotter_over(loop.engine, runner=loop.waiters.run)
    loop.snaps.devices = type("Recorded", (), {  # the calls' own settles, recorded too
        "settle": staticmethod(settle),
        "open_count": staticmethod(loop.engine.devices.open_count),
        "exclusive_bytes": staticmethod(loop.engine.devices.exclusive_bytes),
        "inodes": staticmethod(loop.engine.devices.inodes),
        "mount_source": staticmethod(loop.engine.devices.mount_source)})()
    loop.ask("base", lambda: loop.snaps.prepare("work"))
    loop.serve(1)
    loop.waiters.resume()
    loop.join("base")
    loop.ask("commit", lambda: loop.snaps.commit("layer", "work"))
    loop.serve(1)
    loop.waiters.resume()
    loop.join("commit")
    settles.clear()

    keys = [f"unpack-{i}" for i in range(5)]
    for key in keys:
        loop.ask(key, lambda key=key: loop.snaps.prepare(key, "layer"))  # type: ignore[misc]
    loop.serve(5)
    assert loop.waiters.waiting == 5 and not any(k in loop.answers for k in keys)
    loop.waiters.resume()
    loop.join(*keys)

    together, mapped_before = settles[0]
    assert len(together) == 5 and mapped_before == [], settles
    own = settles[1:]
    assert sorted(names[0] for names, _ in own) == sorted(together)
    assert all(mapped == names for names, mapped in own), "each found its device made"
    sources = {loop.answers[key][0].source for key in keys}
    assert sources == {f"/dev/mapper/{fake_world.pool}-{name}" for name in together}


def test_commits_of_one_wake_up_run_no_thin_ls_and_one_usage_measures_them(
        fake_world: World) -> None:
    """Four Commits queued together are settled by one pass and run no thin_ls (nothing asked
    for their usage); a Usage after them runs one thin_ls for all four and answers with the
    bytes its layer wrote; the other three are then read from the store."""
    loop = Loop(fake_world)
    fake = fake_world.host
    assert isinstance(fake, FakeKernel)
    keys = [f"unpack-{i}" for i in range(4)]
    for key in keys:
        loop.ask(key, lambda key=key: loop.snaps.prepare(key))  # type: ignore[misc]
        loop.serve(1)
        loop.waiters.resume()
        loop.join(key)
    for i, key in enumerate(keys):
        fake.write_blocks(f"{fake_world.pool}-{loop.snaps.store.snapshot_by_key(key).name}",  # type: ignore[union-attr]
                          16 << 20, (i + 1) << 20)

    def thin_ls_runs() -> int:
        return sum(1 for call in fake.calls if call[0] == "thin_ls")

    passes = 0
    settle = loop.engine.devices.settle

    def counted(names: Any) -> Any:
        nonlocal passes
        passes += 1
        return settle(names)

    loop.waiters = Waiters(loop.wakeups, fake_world.clock, lambda: loop.stopping,
                           settle_together=counted)
    loop.snaps = snapshotter_over(loop.engine, runner=loop.waiters.run)
    before = thin_ls_runs()
    for key in keys:
        loop.ask(f"commit-{key}", lambda key=key: loop.snaps.commit(  # type: ignore[misc]
            f"layer-{key}", key))
    loop.serve(len(keys))
    assert loop.waiters.waiting == len(keys)
    loop.waiters.resume()
    loop.join()
    assert all(loop.answers[f"commit-{key}"] is None for key in keys), loop.answers
    assert passes == 1, "the four Commits' devices settled by one pass"
    assert thin_ls_runs() == before, "no Commit ran thin_ls"

    loop.ask("usage", lambda: [loop.snaps.usage(f"layer-{key}") for key in keys])
    loop.serve(1)
    loop.join("usage")
    assert [usage.size for usage in loop.answers["usage"]] == [(i + 1) << 20
                                                               for i in range(len(keys))]
    assert thin_ls_runs() == before + 1, "one thin_ls measured the four"
