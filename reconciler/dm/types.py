"""Typed values of what the kernel reports (*Status, *Info) and what we load (*Table).

Lengths are Sectors, sizes Bytes, pool allocations data blocks: each says its unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from reconciler.units import Bytes, Sectors
from reconciler.vocabulary import ThinId


# Slotted, these and KernelDevice below: a daemon keeps several per dm device (50,000 of
# them), and a __dict__ each was about 100 bytes more.
@dataclass(frozen=True, slots=True)
class DeviceListing:
    """One line of `dmsetup ls`: a dm device's name and device number."""

    name: str
    major: int
    minor: int


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """`dmsetup info` of one device: tables present, suspension, mode and open count."""

    name: str
    uuid: str
    major: int
    minor: int
    live_table: bool
    inactive_table: bool
    suspended: bool
    readonly: bool
    open_count: int
    segments: int
    events: int
    # A deferred remove is pending: the kernel removes the device when its last opener
    # closes it. libdevmapper reports it; dmsetup's columns have no field for it (False).
    deferred_remove: bool = False

    @property
    def removal_deferred(self) -> bool:
        """Whether a deferred remove may be pending: the kernel's flag where the driver reads
        it (libdevmapper); through dmsetup, which has no column for it, an open device stands
        for it (we defer every deactivation of an open device)."""
        return self.deferred_remove or self.open_count > 0


@dataclass(frozen=True, slots=True)
class TargetLine:
    """One line of a table or status: start, length, target type and its own words."""

    start: Sectors
    length: Sectors
    target: str
    params: str

    def text(self) -> str:
        """The line as dmsetup prints it, without a trailing space."""
        return f"{self.start} {self.length} {self.target} {self.params}".strip()


def describe_table(lines: list[TargetLine]) -> str:
    """A whole table on one line, for error messages ("none" when there is no table)."""
    return "; ".join(line.text() for line in lines) or "none"


@dataclass(frozen=True, slots=True)
class ThinTable:
    """The table of a thin device: `0 <length> thin <pool> <id>`."""

    length: Sectors
    pool: str
    device_id: ThinId

    def line(self) -> str:
        """The table as dmsetup takes it."""
        return f"0 {self.length} thin {self.pool} {self.device_id}"


@dataclass(frozen=True, slots=True)
class ThinPoolTable:
    """The table of a thin-pool over its metadata and data devices."""

    length: Sectors
    metadata_device: str
    data_device: str
    data_block_sectors: int
    low_water_mark: int
    features: tuple[str, ...] = ()

    def line(self) -> str:
        """The table as dmsetup takes it."""
        words = [
            "0", str(self.length), "thin-pool", self.metadata_device, self.data_device,
            str(self.data_block_sectors), str(self.low_water_mark),
        ]
        if self.features:
            words += [str(len(self.features)), *self.features]
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class ThinStatus:
    """`dmsetup status` of a thin device: how much of it is mapped in the pool."""

    length: Sectors
    failed: bool
    mapped_sectors: Sectors
    highest_mapped_sector: Sectors | None

    @property
    def used_bytes(self) -> Bytes:
        """Bytes this device has mapped in the pool (shared blocks included)."""
        return Bytes(self.mapped_sectors * 512)


class PoolMode(StrEnum):
    """The thin-pool's health as its status reports it."""

    READ_WRITE = "rw"
    READ_ONLY = "ro"
    OUT_OF_DATA_SPACE = "out_of_data_space"
    FAIL = "Fail"
    ERROR = "Error"


@dataclass(frozen=True, slots=True)
class ThinPoolStatus:
    """`dmsetup status` of a thin-pool (see the kernel's thin-provisioning.rst)."""

    length: Sectors
    mode: PoolMode
    transaction_id: int
    used_metadata_blocks: int
    total_metadata_blocks: int
    used_data_blocks: int
    total_data_blocks: int
    held_metadata_root: int | None
    discard_passdown: bool
    error_if_no_space: bool
    needs_check: bool
    metadata_low_watermark: int | None


METADATA_BLOCK_BYTES = 4096


@dataclass(frozen=True, slots=True)
class KernelDevice:
    """One dm device as observed: info, and for thin devices their table and status.
    Immutable: one observation's object stands for the device until the kernel says
    otherwise, and a pass that changes the device puts a new one in its place."""

    info: DeviceInfo
    table: ThinTable | None = None
    status: ThinStatus | None = None
