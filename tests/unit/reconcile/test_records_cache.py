"""RecordCache: when a pass may reuse the device records the last pass left, table-tested."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.reconcile.records import RecordCache
from reconciler.store import DeviceRecord, RequestKind, Store
from reconciler.vocabulary import DeviceState

CLOCK = 1_800_000_000.0


def _unsaved_mark(cache: RecordCache) -> None:
    # Changed in memory only: a pass that reads the rows again loses it.
    cache.records["d"].labels = {"in": "memory"}


def _reread(cache: RecordCache) -> bool:
    return cache.records["d"].labels == {}


def _other_connection_writes(cache: RecordCache, path: Path) -> None:
    other = Store(path, lambda: CLOCK)
    try:
        record = other.device("d")
        assert record is not None
        record.spec_digest = "edited elsewhere"
        other.save_device(record)
    finally:
        other.close()


Event = Callable[[RecordCache, Path], None]


@pytest.mark.parametrize(
    ("before", "recovered", "full", "few", "reads", "targeted"),
    [
        # Nothing happened since a normal pass: reused, and a few names may be targeted.
        ([], True, True, False, False, False),
        ([], True, False, True, False, True),
        ([], True, False, False, False, False),
        # Before recovery ran, rows are always read.
        ([], False, True, False, True, False),
        ([], False, False, True, True, False),
        # Someone else committed, or an operator request waits.
        ([_other_connection_writes], True, True, False, True, False),
        ([_other_connection_writes], True, False, True, True, False),
        ([lambda c, p: c.store.add_request(RequestKind.GC_ORPHANS, "")], True, False, True,
         True, False),
        # The last pass was stopped, or an error left a record unsaved.
        ([lambda c, p: c.end_pass(stopped=True)], True, True, False, True, False),
        ([lambda c, p: (c.distrust(), c.end_pass(stopped=False))], True, False, True, True,
         False),
        # `plan` read the rows outside a pass: the next pass does not trust them.
        ([lambda c, p: c.read()], True, False, True, True, False),
        # A reload (Reconciler.reconfigure): the next pass reads them, the one after need not.
        ([lambda c, p: c.stale()], True, False, True, True, False),
        ([lambda c, p: (c.stale(), c.start_pass(True, True, False), c.end_pass(False))], True,
         False, True, False, True),
    ],
)
def test_a_pass_reads_the_rows_unless_the_cache_is_the_store_s(
        tmp_path: Path, before: list[Event], recovered: bool, full: bool, few: bool,
        reads: bool, targeted: bool) -> None:
    """Each situation before a pass reads the rows (or not) and allows targeting as listed."""
    path = tmp_path / "state.db"
    store = Store(path, lambda: CLOCK)
    store.save_device(DeviceRecord("d", state=DeviceState.ACTIVATED, size_bytes=1 << 20))
    cache = RecordCache(store)
    assert cache.start_pass(recovered=True, full=True, few=False) is False
    assert set(cache.records) == {"d"}
    cache.end_pass(stopped=False)
    for event in before:
        event(cache, path)
    _unsaved_mark(cache)
    assert cache.start_pass(recovered, full, few) is targeted
    assert _reread(cache) is reads
    if reads and before and before[0] is _other_connection_writes:
        assert cache.records["d"].spec_digest == "edited elsewhere"
    store.close()


def test_full_passes_read_the_rows_every_so_often_anyway(tmp_path: Path) -> None:
    """The reread_every-th full pass since the last read reads the rows; partial ones do not
    count toward it."""
    store = Store(tmp_path / "state.db", lambda: CLOCK)
    store.save_device(DeviceRecord("d"))
    cache = RecordCache(store, reread_every=3)
    cache.start_pass(recovered=True, full=True, few=False)
    cache.end_pass(stopped=False)
    reads = []
    for full in (True, False, False, True, True, True, True, True):
        _unsaved_mark(cache)
        cache.start_pass(recovered=True, full=full, few=not full)
        cache.end_pass(stopped=False)
        reads.append(_reread(cache))
    assert reads == [False, False, False, False, True, False, False, True]
    store.close()


def test_a_read_takes_removed_rows_and_drops_vanished_ones(tmp_path: Path) -> None:
    """read() makes the dict the store's rows exactly, Removed ones included, in place."""
    store = Store(tmp_path / "state.db", lambda: CLOCK)
    store.save_device(DeviceRecord("gone", state=DeviceState.REMOVED))
    cache = RecordCache(store)
    held = cache.records
    cache.records["stale"] = DeviceRecord("stale")
    cache.read()
    assert cache.records is held
    assert set(cache.records) == {"gone"}
    assert cache.records["gone"].state == "Removed"
    store.close()
