"""What keeps a pass from doing harm, and what it tells the operator about the whole daemon.

A pass is level-triggered: it would remove whatever no spec names and make whatever one
does. These guards stand between that and the kernel. The source check: an unreadable spec
directory, or one that looks like a missing mount, proves nothing about deleted files. The
reserve: new devices wait while the pool runs low. (The removal guard, which holds removals
inferred from absent files for a person, is `holds`.) What they decide is shown as
conditions in `status`. Pure functions, but for the two small classes that remember across passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import structlog

from reconciler.config import Reserve, Settings
from reconciler.dm.types import METADATA_BLOCK_BYTES, PoolMode, ThinPoolStatus
from reconciler.specs import SpecSet
from reconciler.store import ConditionKind, Store
from reconciler.units import format_size

log = structlog.get_logger(__name__)
# Data usage (percent of the pool) whose crossing on the way up is worth a warning.
USAGE_THRESHOLDS = (50, 75, 90, 95)


def source_check(spec_set: SpecSet, directory: Path, known_device: int | None
                 ) -> tuple[SpecSet, int | None]:
    """Whether a completely read spec directory can be trusted to say what was deleted, and
    the filesystem to remember for it.

    An empty spec directory on another filesystem than the one it was last read on is most
    likely a mount point whose mount is missing (not yet mounted at boot, or unmounted): its
    emptiness is a source error, not a request to remove everything. A directory with files
    on a new filesystem (moved on purpose) is taken, and its filesystem remembered.
    """
    device = spec_set.directory_device
    if spec_set.source_error is not None or device is None:
        return spec_set, known_device
    empty = not spec_set.specs and not spec_set.rejected
    if known_device is not None and device != known_device and empty:
        return replace(spec_set, source_error=(
            f"spec_dir {directory} is empty and on another filesystem (device {device}) "
            f"than when it last held specs (device {known_device}): is a mount missing? "
            "Nothing is removed until its files are back")), known_device
    if known_device is None or not empty:
        return spec_set, device
    return spec_set, known_device


def new_devices_held(pool: ThinPoolStatus | None, block_bytes: int, data: Reserve,
                     metadata: Reserve) -> str | None:
    """Why new devices and snapshots must wait (not be made) now, if they must: a pool that
    is not read-write or needs a check, or free space below its reserve. Devices that exist
    are never affected; what waits is made once space is freed or the pool grown."""
    if pool is None:
        return None
    if pool.mode != PoolMode.READ_WRITE:
        return f"pool is {pool.mode.value}: new devices wait until it is read-write again"
    if pool.needs_check:
        return "pool needs_check is set: new devices wait until thin_check/thin_repair ran"
    free_blocks = pool.total_data_blocks - pool.used_data_blocks
    kept = data.of(pool.total_data_blocks * block_bytes)
    if free_blocks * block_bytes < kept:
        return (f"pool data space below its reserve: {format_size(free_blocks * block_bytes)}"
                f" free of {format_size(pool.total_data_blocks * block_bytes)}, reserve "
                f"{data} ({format_size(kept)}): new devices wait until space is freed")
    meta_free = (pool.total_metadata_blocks - pool.used_metadata_blocks) * METADATA_BLOCK_BYTES
    meta_total = pool.total_metadata_blocks * METADATA_BLOCK_BYTES
    meta_kept = metadata.of(meta_total)
    if meta_free < meta_kept:
        return (f"pool metadata space below its reserve: {format_size(meta_free)} free of "
                f"{format_size(meta_total)}, reserve {metadata} ({format_size(meta_kept)}): "
                "new devices wait until space is freed")
    return None


class UsageWatch:
    """Logs when the pool's data usage climbs past a threshold (once per crossing)."""

    def __init__(self) -> None:
        self.level = 0

    def see(self, pool: ThinPoolStatus | None, reserve: Reserve) -> None:
        """Take a pool status; warn if usage rose past a threshold since the last one."""
        if pool is None or not pool.total_data_blocks:
            return
        percent = 100 * pool.used_data_blocks / pool.total_data_blocks
        level = max((t for t in USAGE_THRESHOLDS if percent >= t), default=0)
        if level > self.level:
            log.warning("pool.usage_rising", used_percent=round(percent, 1), threshold=level,
                        reserve=str(reserve), next="free space or grow the pool; below the "
                        "reserve new devices wait")
        self.level = level


class SourceGuard:
    """source_check, with the spec directory's filesystem remembered in the store."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._key = f"spec_dir_device:{settings.specs_path}"
        self._directory = settings.specs_path
        self._store = store
        known = store.fact(self._key)
        self._device = int(known) if known is not None else None

    def check(self, spec_set: SpecSet, remember: bool = True) -> SpecSet:
        """The spec set, with a source error if its directory cannot be trusted; the
        directory's filesystem is remembered unless `remember` is false (plan writes
        nothing)."""
        checked, device = source_check(spec_set, self._directory, self._device)
        if remember and device is not None and device != self._device:
            self._store.set_fact(self._key, str(device))
            self._device = device
        return checked


# Conditions the daemon works around by itself: logged as warnings.
WORKED_AROUND = frozenset({ConditionKind.UDEV_UNREACHABLE})


class Conditions:
    """The conditions a Reconciler sets in the store, written and logged only on a change."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # Kinds that may be set in the store (an earlier run's too, until cleared once).
        self._maybe_set: set[ConditionKind] = set(ConditionKind)
        # What each condition set here last said (message, names).
        self._said: dict[ConditionKind, tuple[str, tuple[str, ...]]] = {}

    def say(self, kind: ConditionKind, message: str | None, names: Iterable[str] = ()) -> None:
        """Set a condition (message given) or clear it (None)."""
        if message is None:
            if kind in self._maybe_set:
                self._store.clear_condition(kind)
                self._maybe_set.discard(kind)
                self._said.pop(kind, None)
                log.info(f"condition.{kind.value}_cleared")
            return
        said = (message, tuple(sorted(names)))
        if self._said.get(kind) == said:
            return
        record = self._store.set_condition(kind, message, said[1])
        self._said[kind] = said
        self._maybe_set.add(kind)
        # A condition the daemon works around (udev unreachable: it makes the nodes) is a
        # warning; the others leave something undone until an operator acts.
        emit = log.warning if kind in WORKED_AROUND else log.error
        emit(f"condition.{kind.value}", message=message, count=record.count,
             names=list(record.names) or None)
