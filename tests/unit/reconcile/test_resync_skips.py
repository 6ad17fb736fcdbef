"""A converged resync decides no device again while nothing it reads has changed, and still
catches every change made behind its back: in the kernel, in the spec files, in the store.

Counted, not timed: `next_step` is wrapped to count the devices it is asked about.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.dm.client import DmClient
from reconciler.dm.parse import single_thin_table
from reconciler.reconcile import decide, drive
from reconciler.reconcile.decide import Decision
from reconciler.reconcile.observe import KernelDevice
from reconciler.reconcile.pass_context import PassResult
from reconciler.reconcile.reconciler import Reconciler
from reconciler.specs import DeviceSpec
from reconciler.states import DeviceState
from reconciler.store import DeviceRecord, Store
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.world import World, make_settings

S = DeviceState
MIB = 1 << 20
RAW = 'filesystem = "none"\nsize = "1MiB"\n'
NAMES = ("a", "b", "c")


class Decided:
    """How often next_step was asked about each device since the last `take`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        real = decide.next_step

        def counting(record: DeviceRecord, spec: DeviceSpec | None,
                     kernel: KernelDevice | None, parent: DeviceRecord | None,
                     hold_new: str | None = None) -> Decision:
            self.counts[record.name] += 1
            return real(record, spec, kernel, parent, hold_new)

        monkeypatch.setattr(drive, "next_step", counting)

    def take(self) -> set[str]:
        """The devices decided since the last take."""
        names = set(self.counts)
        self.counts.clear()
        return names


@pytest.fixture(params=["dmsetup", "libdevmapper"])
def settled(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            ) -> Iterator[tuple[World, Reconciler, FakeKernel, Decided]]:
    """Three converged devices on the fake kernel (through either driver), their reconciler
    after two passes (so every device was found with nothing to do), and the counter."""
    kernel = FakeKernel()
    world = World(host=kernel, settings=make_settings(tmp_path, "rs", dm_driver=request.param),
                  real=False)
    try:
        for name in NAMES:
            world.spec(name, RAW)
        assert world.store is not None
        engine = Reconciler(world.settings, kernel, world.store, clock=world.clock)
        assert engine.run_pass().ok
        decided = Decided(monkeypatch)
        assert engine.run_pass().ok
        decided.take()
        yield world, engine, kernel, decided
    finally:
        world.teardown()


def resync(engine: Reconciler) -> PassResult:
    """One full pass (what the resync timer runs); it must end converged."""
    result = engine.run_pass()
    assert result.ok, result
    assert sorted(result.converged) == sorted(NAMES)
    return result


def table_length(kernel: FakeKernel, name: str) -> int:
    """The length in sectors of `rs-<name>`'s live thin table."""
    table = single_thin_table(DmClient(kernel).table(f"rs-{name}"))
    assert table is not None
    return table.length


def test_a_converged_resync_decides_no_device_again(settled: tuple[World, Reconciler,
                                                                  FakeKernel, Decided]) -> None:
    """Nothing changed: every device counts as converged and none is decided again."""
    _world, engine, kernel, decided = settled
    before = len(kernel.calls)
    resync(engine)
    assert decided.take() == set()
    assert not [c for c in kernel.calls[before:] if c[:2] in (("dmsetup", "create"),
                                                               ("dmsetup", "load"))]


def test_a_device_removed_behind_our_back_is_made_again(
        settled: tuple[World, Reconciler, FakeKernel, Decided]) -> None:
    """`dmsetup remove` of one device: the resync decides it (only it) and activates it."""
    _world, engine, kernel, decided = settled
    assert kernel.run(["dmsetup", "remove", "rs-b"]).ok
    resync(engine)
    assert decided.take() == {"b"}
    assert "rs-b" in kernel.devices


def test_a_table_reloaded_behind_our_back_is_put_right(
        settled: tuple[World, Reconciler, FakeKernel, Decided]) -> None:
    """A table loaded and resumed by someone else (another length): reloaded to the spec's."""
    _world, engine, kernel, decided = settled
    table = single_thin_table(DmClient(kernel).table("rs-c"))
    assert table is not None
    assert kernel.run(["dmsetup", "load", "rs-c", "--table",
                       f"0 {table.length // 2} thin /dev/mapper/rs {table.device_id}"]).ok
    assert kernel.run(["dmsetup", "resume", "rs-c"]).ok
    resync(engine)
    assert decided.take() == {"c"}
    assert table_length(kernel, "c") == MIB // 512


def test_a_device_made_read_only_behind_our_back_is_made_writable(
        settled: tuple[World, Reconciler, FakeKernel, Decided]) -> None:
    """The same table reloaded read-only (same length, same thin id): only the info's
    read-only flag differs, and the resync reloads the device writable."""
    _world, engine, kernel, decided = settled
    table = single_thin_table(DmClient(kernel).table("rs-a"))
    assert table is not None
    assert kernel.run(["dmsetup", "load", "rs-a", "--table",
                       f"0 {table.length} thin /dev/mapper/rs {table.device_id}",
                       "--readonly"]).ok
    assert kernel.run(["dmsetup", "resume", "rs-a"]).ok
    resync(engine)
    assert decided.take() == {"a"}
    info = DmClient(kernel).info("rs-a")
    assert info is not None and not info.readonly


def test_a_device_suspended_behind_our_back_is_resumed(
        settled: tuple[World, Reconciler, FakeKernel, Decided]) -> None:
    """`dmsetup suspend`: the resync resumes it (and decides it, its info having changed)."""
    _world, engine, kernel, decided = settled
    assert kernel.run(["dmsetup", "suspend", "rs-b"]).ok
    resync(engine)
    assert not kernel.devices["rs-b"].suspended
    assert decided.take() <= {"b"}


def test_a_device_opened_since_is_decided_again(
        settled: tuple[World, Reconciler, FakeKernel, Decided]) -> None:
    """A mount (the open count moves): the decision's input changed, so it is asked again;
    a later resync with nothing new skips it once more."""
    _world, engine, kernel, decided = settled
    kernel.hold_open("rs-a")
    resync(engine)
    assert decided.take() == {"a"}
    resync(engine)
    assert decided.take() == set()


def test_a_spec_edited_in_place_without_an_event_is_applied(
        settled: tuple[World, Reconciler, FakeKernel, Decided]) -> None:
    """The file rewritten in place (same inode) with a larger size, its mtime in the past
    so that only its size and mtime tell: the resync grows the device."""
    world, engine, kernel, decided = settled
    path = world.settings.specs_path / "b.toml"
    inode = path.stat().st_ino
    old = path.stat().st_mtime_ns - 10 * 10**9
    with path.open("r+") as file:
        file.write('filesystem = "none"\nsize = "2MiB"\n')
    os.utime(path, ns=(old, old))
    assert path.stat().st_ino == inode
    resync(engine)
    assert decided.take() == {"b"}
    assert table_length(kernel, "b") == 2 * MIB // 512


def test_a_spec_replaced_without_an_event_is_applied(
        settled: tuple[World, Reconciler, FakeKernel, Decided]) -> None:
    """A new file renamed over the old one (an editor's save): a new inode, the new spec."""
    world, engine, kernel, decided = settled
    fresh = world.settings.specs_path / ".c.toml.new"
    fresh.write_text('filesystem = "none"\nsize = "3MiB"\n')
    fresh.replace(world.settings.specs_path / "c.toml")
    resync(engine)
    assert decided.take() == {"c"}
    assert table_length(kernel, "c") == 3 * MIB // 512


def test_a_spec_deleted_without_an_event_removes_its_device(
        settled: tuple[World, Reconciler, FakeKernel, Decided]) -> None:
    """The file gone: the resync removes the device (one removal: the guard lets it go)."""
    world, engine, kernel, _decided = settled
    world.unspec("a")
    result = engine.run_pass()
    assert result.removed == ["a"]
    assert "rs-a" not in kernel.devices


def test_a_row_changed_by_another_process_is_read_and_decided(
        settled: tuple[World, Reconciler, FakeKernel, Decided]) -> None:
    """Another connection marks a device Faulty: the resync reads the rows again (the
    database's data_version moved) and reports it, instead of skipping it as converged."""
    world, engine, _kernel, decided = settled
    other = Store(world.settings.database_path, world.clock)
    try:
        row = other.device("c")
        assert row is not None
        row.state = S.FAULTY
        row.error = "set by another process"
        other.save_device(row)
    finally:
        other.close()
    result = engine.run_pass()
    assert result.faulty == {"c": "set by another process"}
    assert "c" in decided.take()


def test_an_unchanged_listing_is_parsed_once_and_a_changed_one_again(
        settled: tuple[World, Reconciler, FakeKernel, Decided]) -> None:
    """DmClient hands back the last parse when the kernel printed the very same text (the
    observation then reuses every device), and parses again as soon as one line differs."""
    _world, _engine, kernel, _decided = settled
    client = DmClient(kernel)
    infos, tables = client.info_all(), client.table_all()
    assert client.info_all() is infos and client.table_all() is tables
    kernel.hold_open("rs-c")
    again = client.info_all()
    assert again is not infos
    assert {i.name: i.open_count for i in again}["rs-c"] == 1
    assert client.table_all() is tables, "the tables did not change"
