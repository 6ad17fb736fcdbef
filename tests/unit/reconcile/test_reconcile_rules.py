"""Reconcile rules that only the fake kernel can stage on demand: failures, retries, conflicts."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from reconciler.dm.client import DmClient
from reconciler.dm.pool import MetadataCheckFailed, PoolMismatch, ThinPool
from reconciler.reconcile.retry import BUSY_INITIAL, RetryPolicy
from reconciler.store import IdAllocator, Store
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.world import World


def held_ids(store: Store | None) -> set[int]:
    """Thin ids held by devices that are not Removed (a Faulty one's stays quarantined)."""
    assert store is not None
    return {r.device_id for r in store.devices() if r.device_id is not None}


def fake(world: World) -> FakeKernel:
    assert isinstance(world.host, FakeKernel)
    return world.host


@pytest.fixture
def at_debug() -> Iterator[None]:
    """structlog lets debug events through (whatever level an earlier test configured)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("at_debug")
def test_every_state_change_is_one_structured_event_at_debug(fake_world: World) -> None:
    """Each transition logs device.state_changed with the name, from and to, at debug."""
    fake_world.spec("a", 'filesystem = "none"\n')
    with capture_logs() as events:
        assert fake_world.run_pass().ok
    changes = [(e["name"], e["from"], e["to"], e["log_level"]) for e in events
               if e["event"] == "device.state_changed"]
    assert changes == [
        ("a", "Unknown", "Creating", "debug"), ("a", "Creating", "Created", "debug"),
        ("a", "Created", "Activating", "debug"), ("a", "Activating", "Activated", "debug"),
    ]


@pytest.mark.usefixtures("at_debug")
def test_a_pass_says_where_each_device_went_in_one_line_at_info(fake_world: World) -> None:
    """At info a pass logs one device.changed per device it moved, from the state it found
    to the one it left, with the triggers on the way; a converged device logs nothing."""
    fake_world.spec("a", 'filesystem = "none"\n')
    fake_world.spec("b", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    fake_world.spec("c", 'filesystem = "none"\n')
    with capture_logs() as events:
        assert fake_world.run_pass().ok
    info = [e for e in events if e["log_level"] != "debug" and e["event"].startswith("device.")]
    assert info == [{
        "event": "device.changed", "log_level": "info", "name": "c", "from": "Unknown",
        "to": "Activated", "triggers": ["create", "created", "activate", "activated"],
        "error": None,
    }]


@pytest.mark.usefixtures("at_debug")
def test_a_device_gone_faulty_says_so_in_its_line(fake_world: World) -> None:
    """The step_failed error says Faulty is next; the device's line ends in Faulty with
    that error."""
    fake_world.spec("a", 'filesystem = "none"\n')
    fake(fake_world).faults.fail(Op.LOAD, f"{fake_world.pool}-a", errno=errno.EINVAL)
    with capture_logs() as events:
        assert "a" in fake_world.run_pass().faulty
    said = [(e["event"], e["log_level"], e.get("next")) for e in events
            if e["log_level"] != "debug" and e["event"].startswith("device.")]
    assert said == [("device.step_failed", "error", "marking Faulty"),
                    ("device.changed", "info", None)]
    said_line = next(e for e in events if e["event"] == "device.changed")
    assert (said_line["from"], said_line["to"]) == ("Unknown", "Faulty")
    assert said_line["triggers"] == ["create", "created", "activate", "fail"]
    assert said_line["error"].startswith("activate: ")


def test_each_transition_is_in_the_history(fake_world: World) -> None:
    """The store keeps every transition of a device with its trigger, in order."""
    fake_world.spec("a", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    assert fake_world.store is not None
    history = fake_world.store.history("a")
    assert [(t.from_state, t.to_state, t.trigger) for t in history] == [
        ("Unknown", "Creating", "create"), ("Creating", "Created", "created"),
        ("Created", "Activating", "activate"), ("Activating", "Activated", "activated"),
    ]


def test_an_active_origin_is_suspended_while_it_is_snapshotted(fake_world: World) -> None:
    """create_snap of an active origin happens only while the origin is suspended."""
    fake_world.spec("base")
    assert fake_world.run_pass().ok
    fake_world.spec("snap", 'parent = "base"\n')
    assert fake_world.run_pass().ok
    assert fake(fake_world).unsafe_snapshots == []
    assert fake_world.store is not None
    base = fake_world.store.device("base")
    assert base is not None and base.state == "Resumed"
    info = DmClient(fake_world.host).info(f"{fake_world.pool}-base")
    assert info is not None and not info.suspended


def test_temporary_errors_are_retried_with_backoff(fake_world: World) -> None:
    """EBUSY on a remove is retried after growing delays (starting at BUSY_INITIAL: the
    holder is most often udev, for moments) and then succeeds."""
    fake_world.spec("a", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    fake(fake_world).faults.fail(Op.REMOVE, f"{fake_world.pool}-a", errno=errno.EBUSY, times=2)
    fake_world.unspec("a")
    policy = RetryPolicy(initial=1.0, maximum=10.0, max_attempts=5, jitter=0.0)
    result = fake_world.run_pass(policy)
    assert result.ok and result.removed == ["a"]
    assert fake_world.clock.slept == pytest.approx([BUSY_INITIAL, 2 * BUSY_INITIAL])


def test_exhausted_retries_mark_device_faulty(fake_world: World) -> None:
    """A temporary error that outlasts max_attempts makes the device Faulty with its error,
    the failed step and the attempt count, and its thin id stays reserved."""
    fake_world.spec("a", 'filesystem = "none"\n')
    fake(fake_world).faults.fail(Op.MESSAGE, fake_world.pool, errno=errno.EBUSY, times=10,
                                 verb="create_thin")
    result = fake_world.run_pass(RetryPolicy(initial=1.0, max_attempts=3, jitter=0.0))
    assert not result.ok
    assert fake_world.clock.slept == [1.0, 2.0]
    assert fake_world.store is not None
    record = fake_world.store.device("a")
    assert record is not None
    assert record.state == "Faulty"
    assert record.error_step == "create"
    assert record.error is not None and "Device or resource busy" in record.error
    assert "attempts exhausted after 3 attempts" in record.error
    assert IdAllocator(held_ids(fake_world.store)).take() == 1


def test_a_faulty_device_waits_for_its_spec_to_change(fake_world: World) -> None:
    """Faulty devices are not retried on the next pass, but are when their spec changes."""
    fake_world.spec("a", 'filesystem = "none"\n')
    fake(fake_world).faults.fail(Op.LOAD, f"{fake_world.pool}-a", errno=errno.EINVAL)
    result = fake_world.run_pass()
    assert "a" in result.faulty
    assert fake_world.store is not None
    faulty = fake_world.store.device("a")
    assert faulty is not None and faulty.state == "Faulty"
    assert IdAllocator(held_ids(fake_world.store)).take() == 1  # id 0 stays quarantined
    assert "a" in fake_world.run_pass().faulty  # not retried as is
    fake_world.spec("a", 'filesystem = "none"\nactive = true\n')
    assert fake_world.run_pass().ok
    record = fake_world.store.device("a")
    assert record is not None and record.state == "Activated" and record.error is None
    assert record.device_id == 0


def test_a_busy_create_is_retried_and_then_made(fake_world: World) -> None:
    """EBUSY from the create ioctl (udev still holding a name going away) is temporary: the
    device is created on a later attempt, with its thin id and nothing left behind."""
    fake_world.spec("a", 'filesystem = "none"\n')
    fake(fake_world).faults.fail(Op.CREATE, f"{fake_world.pool}-a", errno=errno.EBUSY)
    result = fake_world.run_pass(RetryPolicy(initial=1.0, max_attempts=3, jitter=0.0))
    assert result.ok
    assert fake_world.clock.slept == [1.0]
    assert fake_world.store is not None
    record = fake_world.store.device("a")
    assert record is not None and record.state == "Activated" and record.device_id == 0
    assert fake_world.kernel_names() == {f"{fake_world.pool}-a"}


def test_a_conflicting_device_name_is_not_taken_over(fake_world: World) -> None:
    """A dm device already using our name with another table is reported, never replaced."""
    fake_world.spec("a", 'filesystem = "none"\n')
    fake_world.run_pass(RetryPolicy(max_attempts=1))  # pool exists now
    kname = f"{fake_world.pool}-b"
    DmClient(fake_world.host).create(kname, "0 8 zero", "someone-else")
    fake_world.spec("b", 'filesystem = "none"\n')
    result = fake_world.run_pass(RetryPolicy(initial=1.0, max_attempts=2, jitter=0.0))
    assert "b" in result.faulty
    assert "already exists" in result.faulty["b"]
    (line,) = DmClient(fake_world.host).table(kname)
    assert line.target == "zero"


def test_a_loaded_pool_with_another_table_is_refused(fake_world: World) -> None:
    """A device with the pool's name but a different table stops the pass with a clear error."""
    DmClient(fake_world.host).create(fake_world.pool, "0 8 zero", "someone-else")
    with pytest.raises(PoolMismatch, match="refusing to touch it"):
        fake_world.run_pass()


def test_an_existing_pool_is_adopted_and_its_metadata_kept(fake_world: World) -> None:
    """A second run adopts the loaded pool; after a reboot the pool is re-created from the
    same metadata, which is not zeroed."""
    fake_world.spec("a", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    fake(fake_world).reboot()
    assert fake_world.run_pass().ok
    pool = ThinPool(fake_world.host, fake_world.pool)
    assert pool.status().transaction_id == 1
    assert fake_world.kernel_names() == {f"{fake_world.pool}-a"}


def test_damaged_metadata_is_never_loaded(fake_world: World) -> None:
    """After a reboot, metadata that fails thin_check stops start-up with a repair hint."""
    fake_world.spec("a", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    kernel = fake(fake_world)
    kernel.reboot()
    kernel.fail_next(("thin_check",), 1, "examining superblock\n  superblock is corrupt\n")
    with pytest.raises(MetadataCheckFailed, match="thin_repair"):
        fake_world.run_pass()
    assert DmClient(fake_world.host).info(fake_world.pool) is None


def test_an_unmounted_ext4_device_is_grown_with_its_filesystem(fake_world: World) -> None:
    """A larger size reloads the table, then e2fsck and resize2fs grow the filesystem."""
    fake_world.spec("g", 'size = "64MiB"\n')
    assert fake_world.run_pass().ok
    fake_world.spec("g", 'size = "128MiB"\n')
    assert fake_world.run_pass().ok
    assert fake_world.store is not None
    record = fake_world.store.device("g")
    assert record is not None
    assert (record.size_bytes, record.fs_size_bytes, record.notice) == (128 << 20, 128 << 20,
                                                                        None)
    assert ("resize2fs", f"/dev/mapper/{fake_world.pool}-g") in fake(fake_world).calls


def test_an_unmounted_xfs_device_is_grown_on_a_temporary_mount(fake_world: World) -> None:
    """xfs, which grows only mounted, is grown too: xfs_growfs on a mount of our own, gone
    after; no notice asks the operator to do it."""
    fake_world.spec("g", 'size = "300MiB"\nfilesystem = "xfs"\n')
    assert fake_world.run_pass().ok
    fake_world.spec("g", 'size = "600MiB"\nfilesystem = "xfs"\n')
    assert fake_world.run_pass().ok
    assert fake_world.store is not None
    record = fake_world.store.device("g")
    assert record is not None
    assert (record.size_bytes, record.fs_size_bytes, record.notice) == (600 << 20, 600 << 20,
                                                                        None)
    assert fake(fake_world).filesystem_size(f"{fake_world.pool}-g") == 600 << 20
    assert fake(fake_world).mounted() == {}


def test_a_mounted_device_is_grown_but_its_filesystem_left_to_the_user(
    fake_world: World
) -> None:
    """Open while growing: the table grows, status says the filesystem must be grown."""
    fake_world.spec("g", 'size = "64MiB"\n')
    assert fake_world.run_pass().ok
    fake(fake_world).hold_open(f"{fake_world.pool}-g")
    fake_world.spec("g", 'size = "128MiB"\n')
    assert fake_world.run_pass().ok
    assert fake_world.store is not None
    record = fake_world.store.device("g")
    assert record is not None
    assert record.notice is not None and "grow its filesystem" in record.notice
    assert not any(c[0] == "resize2fs" for c in fake(fake_world).calls)
