"""The fake kernel's objects: dm devices, their tables, pool targets and loop devices, and the
`Refused` an ioctl raises with the kernel's errno.

Plain data, below every part of the model (`model.Kernel` and the mixins it is made of), so
that each part can name them without importing another part.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.testing.fakekernel.metadata import PoolMetadata

DM_MAJOR = 254
LOOP_MAJOR = 7
SECTOR = 512

# One target line as the kernel returns it: start, length, target type, parameters.
KernelLine = tuple[int, int, str, str]


class Refused(Exception):
    """The kernel refuses an ioctl with this errno."""

    def __init__(self, number: int) -> None:
        super().__init__(os.strerror(number))
        self.number = number


def io_error(number: int, path: str) -> OSError:
    """The OSError a failed read or write of `path` raises."""
    return OSError(number, os.strerror(number), path)


@dataclass
class Loop:
    """An attached loop device: its backing file and the size it had when attached."""

    path: Path
    size: int
    autoclear: bool = False  # detached while in use: goes when its last user does


@dataclass(frozen=True)
class Table:
    """A loaded one-target table, devices resolved to (major, minor) as the kernel keeps them."""

    length: int
    target: str
    devices: tuple[tuple[int, int], ...]
    args: tuple[str, ...]
    readonly: bool
    metadata_key: str = ""  # thin-pool only: the metadata's backing file

    def params(self) -> str:
        """The parameters as the kernel prints them back (`dmsetup table`)."""
        return self._params

    @functools.cached_property
    def _params(self) -> str:
        # Made once per loaded table: a listing prints 10,000 of them on every resync.
        numbers = [f"{major}:{minor}" for major, minor in self.devices]
        if self.target == "thin-pool":
            block, low, *features = self.args
            return " ".join([*numbers, block, low, str(len(features)), *features]) + " "
        return " ".join([*numbers, *self.args])


@dataclass
class PoolTarget:
    """A live thin-pool target: geometry and the no-space state the status shows."""

    metadata: PoolMetadata
    data_path: Path
    data_blocks: int
    block_sectors: int
    low_water_blocks: int
    requested_error_if_no_space: bool
    error_if_no_space: bool
    out_of_data_space: bool = False
    low_water_triggered: bool = False
    # The kernel stopped writing the metadata after an I/O error on it: "ro" (read-only) or
    # "Fail"; None while it writes. Messages are refused then (EOPNOTSUPP, as dm-thin's
    # pool_message does in either mode), and `needs_check` asks for thin_check.
    metadata_failure: str | None = None
    needs_check: bool = False

    @property
    def block_bytes(self) -> int:
        """Bytes per data block."""
        return self.block_sectors * SECTOR

    def free_blocks(self) -> int:
        """Data blocks not mapped by any thin."""
        return self.data_blocks - len(self.metadata.refcounts)


@dataclass
class DmDevice:
    """One device-mapper device."""

    name: str
    uuid: str
    minor: int
    live: Table | None = None
    inactive: Table | None = None
    suspended: bool = False
    holders: int = 0  # opened by hold_open (a mount, a process)
    deferred_remove: bool = False  # removed while open: goes at its last close
    events: int = 0
    pool: PoolTarget | None = None

    @property
    def number(self) -> tuple[int, int]:
        """(major, minor)."""
        return DM_MAJOR, self.minor

    def references(self) -> set[tuple[int, int]]:
        """Devices its tables hold open (an inactive table holds them too)."""
        return {d for table in (self.live, self.inactive) if table for d in table.devices}
