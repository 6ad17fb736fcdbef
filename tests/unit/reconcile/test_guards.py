"""The pass's safeguards, rule by rule, without a kernel: removals held, sources trusted, new
devices held by the pool's reserve and mode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.config import Reserve
from reconciler.dm.types import PoolMode, ThinPoolStatus
from reconciler.reconcile.guards import held_removals, new_devices_held, removals, source_check
from reconciler.specs import DeviceSpec, SpecSet
from reconciler.store import DeviceRecord
from reconciler.units import Bytes, Sectors
from reconciler.vocabulary import DeviceState, Filesystem

BLOCK = 64 << 10
POOL = ThinPoolStatus(length=Sectors(1 << 20), mode=PoolMode.READ_WRITE, transaction_id=1,
                      used_metadata_blocks=100, total_metadata_blocks=2048,
                      used_data_blocks=100, total_data_blocks=4096, held_metadata_root=None,
                      discard_passdown=True, error_if_no_space=False, needs_check=False,
                      metadata_low_watermark=None)
TEN = Reserve(percent=10.0)


@pytest.mark.parametrize(("pool", "data", "metadata", "held"), [
    (None, TEN, TEN, None),  # not observed: nothing to judge by
    (POOL, TEN, TEN, None),
    (replace(POOL, used_data_blocks=3700), TEN, TEN, "data space below its reserve"),
    (replace(POOL, used_data_blocks=3686), TEN, TEN, None),  # 410 free >= 409.6 kept
    (replace(POOL, used_metadata_blocks=1900), TEN, TEN, "metadata space below its reserve"),
    (replace(POOL, used_data_blocks=4000), Reserve(size=1 << 20), TEN, None),
    (replace(POOL, used_data_blocks=4090), Reserve(size=1 << 20), TEN, "data space"),
    (POOL, Reserve(), Reserve(), None),  # no reserve at all
    (replace(POOL, mode=PoolMode.READ_ONLY), TEN, TEN, "pool is ro"),
    (replace(POOL, mode=PoolMode.OUT_OF_DATA_SPACE), TEN, TEN, "out_of_data_space"),
    (replace(POOL, needs_check=True), TEN, TEN, "needs_check"),
])
def test_new_devices_wait_below_the_reserve_or_in_a_bad_mode(
    pool: ThinPoolStatus | None, data: Reserve, metadata: Reserve, held: str | None
) -> None:
    """new_devices_held: the reason new devices wait, or None."""
    reason = new_devices_held(pool, BLOCK, data, metadata)
    if held is None:
        assert reason is None
    else:
        assert reason is not None and held in reason


@pytest.mark.parametrize(("inferred", "files", "limit", "confirmed", "held"), [
    (set(), 5, 8, set(), set()),
    ({"a"}, 5, 8, set(), set()),
    ({"a"}, 1, 8, set(), set()),  # the only device: a person deleted its only file
    ({"a", "b"}, 2, 8, set(), {"a", "b"}),  # every spec-file device
    ({f"d{i}" for i in range(8)}, 12, 8, set(), set()),  # at the limit
    ({f"d{i}" for i in range(9)}, 12, 8, set(), {f"d{i}" for i in range(9)}),
    ({f"d{i}" for i in range(9)}, 12, None, set(), set()),  # unlimited
    ({"a", "b"}, 2, None, set(), {"a", "b"}),  # unlimited still guards "everything"
    ({"a", "b", "c"}, 3, 8, {"a", "b"}, {"c"}),  # confirmed ones go
])
def test_the_removal_guard(inferred: set[str], files: int, limit: int | None,
                           confirmed: set[str], held: set[str]) -> None:
    """held_removals: more than the limit, or every spec-file device, waits for a person."""
    assert held_removals(inferred, files, limit, confirmed) == held


def _records(*names: str) -> dict[str, DeviceRecord]:
    return {n: DeviceRecord(name=n, state=DeviceState.ACTIVATED) for n in names}


def test_removals_never_come_from_an_unreadable_source() -> None:
    """With a source error only the snapshotter's (explicit) removals are made."""
    records = _records("a", "b", "snap-3")
    unwanted, held = removals(records, frozenset(), records, "spec_dir gone", 8, set(), False)
    assert unwanted == {"snap-3"} and held == set()


def test_the_snapshotters_removals_are_not_counted_or_held() -> None:
    """Twelve API removals at once pass; they are explicit calls."""
    records = _records(*(f"snap-{i}" for i in range(12)), "keep")
    unwanted, held = removals(records, frozenset({"keep"}), records, None, 1, set(), False)
    assert held == set() and len(unwanted) == 12


def test_allow_removals_lifts_the_guard() -> None:
    """`run --once --allow-removals`: everything unwanted goes."""
    records = _records("a", "b", "c")
    unwanted, held = removals(records, frozenset(), records, None, 1, set(), True)
    assert unwanted == {"a", "b", "c"} and held == set()


def _spec_set(device: int | None, names: tuple[str, ...] = ()) -> SpecSet:
    specs = {n: DeviceSpec(name=n, size=Bytes(1 << 20), filesystem=Filesystem.NONE) for n in names}
    return SpecSet(specs=specs, rejected=(), directory_device=device)


@pytest.mark.parametrize(("read", "known", "error", "remembered"), [
    (_spec_set(7, ("a",)), None, False, 7),  # first read: remember its filesystem
    (_spec_set(7), None, False, 7),  # an empty first read is remembered too
    (_spec_set(7, ("a",)), 7, False, 7),
    (_spec_set(9), 7, True, 7),  # empty, elsewhere: a missing mount
    (_spec_set(9, ("a",)), 7, False, 9),  # moved, with its files: taken
    (_spec_set(7), 7, False, 7),  # empty where it always was: the guard decides
])
def test_the_source_check(read: SpecSet, known: int | None, error: bool,
                          remembered: int) -> None:
    """source_check: an empty directory on another filesystem is a source error."""
    checked, device = source_check(read, Path("/specs"), known)
    assert (checked.source_error is not None) is error
    assert device == remembered
