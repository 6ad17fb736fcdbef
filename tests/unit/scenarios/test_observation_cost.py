"""A pass over converged devices costs a constant number of kernel calls and SQL statements,
whatever the number of devices, and changes nothing in the kernel (counted, not timed)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler.dm.crash import call_kind
from reconciler.reconcile.pass_context import PassContext
from reconciler.reconcile.reconciler import Reconciler
from reconciler.reconcile.records import RECORDS_REREAD_EVERY
from reconciler.states import DeviceMachine
from reconciler.store import Store
from reconciler.store.store import _SELECT_DEVICES
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.world import World, make_settings

READS = {"dmsetup info", "dmsetup status", "dmsetup table"}
RAW = 'filesystem = "none"\nsize = "1MiB"\n'


@contextmanager
def converged(tmp_path: Path, devices: int) -> Iterator[tuple[World, Reconciler, FakeKernel]]:
    """A fake world with `devices` converged devices, its reconciler and its kernel."""
    kernel = FakeKernel()
    world = World(host=kernel, settings=make_settings(tmp_path, "oc"), real=False)
    try:
        for i in range(devices):
            world.spec(f"d{i}", RAW)
        assert world.store is not None
        engine = Reconciler(world.settings, kernel, world.store, clock=world.clock)
        assert engine.run_pass().ok
        yield world, engine, kernel
    finally:
        world.teardown()


def converged_pass_cost(tmp_path: Path, devices: int) -> tuple[list[str], int]:
    """(kinds of kernel calls, SQL statements) of the second converged full pass."""
    with converged(tmp_path, devices) as (world, engine, kernel):
        assert world.store is not None
        assert engine.run_pass().ok  # the pool's ids were read; now nothing has changed
        before = len(kernel.calls)
        statements: list[str] = []
        world.store.trace(statements.append)
        result = engine.run_pass()
        world.store.trace(None)
        assert result.ok and len(result.converged) == devices
        calls = kernel.calls[before:]
        assert ("dmsetup", "status", "oc") in calls, "the pool's status alone"
        return [call_kind(c) for c in calls], len(statements)


def test_converged_pass_is_three_reads_and_constant_sql(tmp_path: Path) -> None:
    """10 or 60 devices: the same three kernel reads (info and table of every device, the
    pool's status) and the same number of SQL statements; no kernel mutation."""
    small_calls, small_sql = converged_pass_cost(tmp_path / "small", 10)
    large_calls, large_sql = converged_pass_cost(tmp_path / "large", 60)
    assert sorted(small_calls) == sorted(large_calls) == sorted(READS)
    assert small_sql == large_sql, "no per-device SQL round trip"


def test_pool_ids_are_read_again_when_the_pool_changes(tmp_path: Path) -> None:
    """thin_ls (a metadata snapshot: two pool messages) runs on a full pass only when the
    pool's transaction id or metadata usage moved, or every tenth full pass."""
    world = World(host=FakeKernel(), settings=make_settings(tmp_path, "oc"), real=False)
    try:
        world.spec("a", 'filesystem = "none"\nsize = "1MiB"\n')
        assert world.store is not None
        engine = Reconciler(world.settings, world.host, world.store, clock=world.clock)
        kernel = world.host
        assert isinstance(kernel, FakeKernel)

        def thin_ls_runs(passes: int) -> int:
            before = len(kernel.calls)
            for _ in range(passes):
                assert engine.run_pass().ok
            return sum(1 for c in kernel.calls[before:] if c[0] == "thin_ls")

        assert thin_ls_runs(2) >= 1
        assert thin_ls_runs(5) == 0
        world.spec("b", 'filesystem = "none"\nsize = "1MiB"\n')
        assert thin_ls_runs(2) == 1, "read once after the pool changed"
        assert thin_ls_runs(10) == 1, "and every tenth full pass"
    finally:
        world.teardown()


def partial_pass_calls(tmp_path: Path, devices: int) -> list[str]:
    """Kernel calls of the partial pass that makes one new device among `devices`."""
    with converged(tmp_path, devices) as (world, engine, kernel):
        world.spec("new", RAW)
        before = len(kernel.calls)
        assert engine.run_pass(only={"new"}).ok
        return [call_kind(c) for c in kernel.calls[before:]]


def test_a_partial_pass_costs_the_same_among_10_or_60_devices(tmp_path: Path) -> None:
    """A spec dropped among many devices: its pass reads the pool and that device only."""
    small = partial_pass_calls(tmp_path / "small", 10)
    large = partial_pass_calls(tmp_path / "large", 60)
    assert small == large
    assert "dmsetup create" in small and small.count("dmsetup info") <= 4


def test_a_full_pass_reads_device_rows_only_when_someone_else_wrote(tmp_path: Path) -> None:
    """The daemon is the only writer of device rows: a converged full pass reuses the rows
    the last pass left. A commit by another connection (another process) makes the next
    pass read them all again, and so does every RECORDS_REREAD_EVERY-th full pass."""
    with converged(tmp_path, 5) as (world, engine, _kernel):
        assert world.store is not None
        store = world.store

        def reads_rows(passes: int = 1) -> int:
            statements: list[str] = []
            store.trace(statements.append)
            for _ in range(passes):
                assert engine.run_pass().ok
            store.trace(None)
            return sum(1 for s in statements if s.startswith(_SELECT_DEVICES))

        reads_rows()
        assert reads_rows() == 0
        other = Store(world.settings.database_path, world.clock)
        try:
            record = other.device("d3")
            assert record is not None
            record.labels = {"edited": "elsewhere"}
            other.save_device(record)
        finally:
            other.close()
        assert reads_rows() == 1
        assert engine.records["d3"].labels == {"edited": "elsewhere"}
        assert reads_rows(RECORDS_REREAD_EVERY) == 1, "and every so many full passes anyway"


def test_a_pass_keeps_no_more_than_one_device_s_machines(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of 12 new devices (one a snapshot): while each is driven, the pass holds its
    machine (and a parent's), never every machine it built: 10,000 of them held 500 MB."""
    held: list[int] = []
    real = PassContext.machine

    def machine(ctx: PassContext, name: str) -> DeviceMachine:
        built = real(ctx, name)
        held.append(len(ctx.machines))
        return built

    monkeypatch.setattr(PassContext, "machine", machine)
    with converged(tmp_path, 0) as (world, engine, _kernel):
        for i in range(11):
            world.spec(f"d{i}", RAW)
        world.spec("snap", 'parent = "d0"\n')
        assert engine.run_pass().ok
    assert held and max(held) <= 2
