"""The pass's safeguards, rule by rule, without a kernel: sources trusted, new devices held by
the pool's reserve and mode (the removal guard: test_holds.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.config import Reserve
from reconciler.dm.types import PoolMode, ThinPoolStatus
from reconciler.reconcile.guards import new_devices_held, source_check
from reconciler.specs import DeviceSpec, SpecSet
from reconciler.units import Bytes, Sectors
from reconciler.vocabulary import Filesystem

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
