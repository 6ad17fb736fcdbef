"""snapshots.calls: a call waits for its device's retries within its settle time, sleeping on
the caller's thread when run directly, and answers with how the device stands past it."""

from __future__ import annotations

import errno

import pytest

from reconciler.snapshots import Unavailable
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import World


def _busy_once(world: World) -> None:
    fake = world.host
    assert isinstance(fake, FakeKernel)
    fake.faults.fail(Op.MESSAGE, world.pool, errno=errno.EBUSY, verb="create_thin")


def test_a_direct_call_sleeps_until_the_retry_and_answers(fake_world: World) -> None:
    """Run directly, a Prepare whose base is refused once sleeps (on the given sleep) until
    the retry, then answers with its mounts."""
    _busy_once(fake_world)
    engine = fake_world.reconciler()
    snaps = snapshotter_over(engine, sleep=fake_world.clock.sleep)
    (mount,) = snaps.prepare("k")
    assert mount.source == f"/dev/mapper/{fake_world.pool}-snap-1"
    assert len(fake_world.clock.slept) == 1 and fake_world.clock.slept[0] > 0
    assert [info.name for info in snaps.walk()] == ["k"]


def test_a_retry_past_the_settle_time_is_not_waited_for(fake_world: World) -> None:
    """With no settle time, the refused base is not waited for: the Prepare answers
    Unavailable with the device's error at once, stores no snapshot, and never sleeps."""
    _busy_once(fake_world)
    engine = fake_world.reconciler()
    snaps = snapshotter_over(engine, sleep=fake_world.clock.sleep, settle_seconds=0.0)
    with pytest.raises(Unavailable, match=r"base filesystem .* is not ready: .*busy"):
        snaps.prepare("k")
    assert fake_world.clock.slept == []
    assert snaps.walk() == []
