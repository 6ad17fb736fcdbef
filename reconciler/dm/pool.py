"""The thin-pool (containerd's PoolDevice): make it or adopt it, and change its metadata.

Every metadata change (create_thin, create_snap, delete) is followed by
`set_transaction_id old new`, so the pool's transaction id counts our changes and recovery can
tell which of them the kernel has seen.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from reconciler.dm.client import DmClient
from reconciler.dm.driver import DmDriver
from reconciler.dm.errors import CommandFailed, InvalidArgument, classify
from reconciler.dm.host import Host
from reconciler.dm.parse import parse_pool_status, parse_pool_table
from reconciler.dm.types import ThinPoolStatus, ThinPoolTable, ThinTable, describe_table
from reconciler.units import Sectors
from reconciler.vocabulary import MAX_THIN_ID, PoolOp, ThinId

# dm-thin's on-disk superblock: magic (le64) at byte 32 of metadata block 0.
THIN_SUPERBLOCK_MAGIC = 27022010
METADATA_BLOCK = 4096
LOW_WATER_MARK = 32768
UUID_PREFIX = "RECONCILER-v1"


class PoolMismatch(InvalidArgument):
    """A device of the pool's name is loaded with a different table: refused, never replaced."""


class MetadataCheckFailed(CommandFailed):
    """thin_check found the pool's metadata damaged: the pool is not loaded over it."""


def thin_device_name(pool: str, name: str) -> str:
    """The dm name of a managed device: exactly `<pool>-<name>`."""
    return f"{pool}-{name}"


def mapper_path(kernel_name: str) -> str:
    """The device node udev makes for a dm device of that name (a managed device's name is
    `thin_device_name`'s): the one place the /dev/mapper path is spelled."""
    return f"/dev/mapper/{kernel_name}"


def thin_uuid(pool: str, device_id: ThinId) -> str:
    """The dm uuid of a thin device we activate; recovery parses the id back from it."""
    return f"{UUID_PREFIX}-{pool}-{device_id}"


def pool_uuid(pool: str) -> str:
    """The dm uuid of the pool device."""
    return f"{UUID_PREFIX}-{pool}-pool"


def parse_thin_uuid(pool: str, uuid: str) -> ThinId | None:
    """The thin id in a uuid made by thin_uuid for this pool, else None (a number no pool
    can hold as a thin id was not written by thin_uuid either)."""
    prefix = f"{UUID_PREFIX}-{pool}-"
    rest = uuid[len(prefix):] if uuid.startswith(prefix) else ""
    if not rest.isdigit() or int(rest) > MAX_THIN_ID:
        return None
    return ThinId(int(rest))


@dataclass(frozen=True)
class PoolDevices:
    """The block devices under the pool and the pool's geometry."""

    metadata_device: str
    data_device: str
    data_block_sectors: int


def device_number(host: Host, path: str) -> str:
    """`major:minor` of a block device, as dm tables print it."""
    completed = host.run(["stat", "-L", "-c", "%t:%T", path])
    if not completed.ok:
        raise classify(f"stat {path}", completed)
    text = completed.stdout.strip()
    major, _sep, minor = text.partition(":")
    try:
        return f"{int(major, 16)}:{int(minor, 16)}"
    except ValueError:
        raise CommandFailed(
            f"stat {path}", completed, f"unexpected device number {text!r}"
        ) from None


def device_sectors(host: Host, path: str) -> Sectors:
    """Size of a block device in 512-byte sectors."""
    completed = host.run(["blockdev", "--getsz", path])
    if not completed.ok or not completed.stdout.strip().isdigit():
        raise classify(f"blockdev --getsz {path}", completed)
    return Sectors(int(completed.stdout.strip()))


def has_thin_superblock(host: Host, metadata_device: str) -> bool:
    """Whether the metadata device already holds a dm-thin superblock."""
    block = host.read(metadata_device, 0, METADATA_BLOCK)
    if len(block) < 40:
        return False
    (magic,) = struct.unpack_from("<Q", block, 32)
    return bool(magic == THIN_SUPERBLOCK_MAGIC)


class ThinPool:
    """One thin-pool device and the metadata operations on it."""

    def __init__(self, host: Host, name: str, client: DmDriver | None = None) -> None:
        self.host = host
        self.client: DmDriver = client if client is not None else DmClient(host)
        self.name = name

    @property
    def path(self) -> str:
        """The pool's device node."""
        return mapper_path(self.name)

    def desired_table(self, devices: PoolDevices) -> ThinPoolTable:
        """The pool table for these devices: all whole data blocks of the data device."""
        sectors = device_sectors(self.host, devices.data_device)
        usable = Sectors(sectors - sectors % devices.data_block_sectors)
        if usable <= 0:
            raise InvalidArgument(
                "pool table", detail=f"data device {devices.data_device} holds no whole block"
            )
        return ThinPoolTable(
            length=usable,
            metadata_device=devices.metadata_device,
            data_device=devices.data_device,
            data_block_sectors=devices.data_block_sectors,
            low_water_mark=LOW_WATER_MARK,
        )

    def ensure(self, devices: PoolDevices, may_zero_metadata: bool) -> str:
        """Create the pool, or adopt a loaded one whose table is equivalent: "created"/"adopted".

        The metadata's first block is zeroed only when `may_zero_metadata` (the pool is new to
        us) and the device holds no thin superblock: existing pool metadata is never wiped.
        """
        wanted = self.desired_table(devices)
        if self.client.info(self.name) is not None:
            lines = self.client.table(self.name)
            loaded = [parse_pool_table(t) for t in lines if t.target == "thin-pool"]
            resolved = ThinPoolTable(
                length=wanted.length,
                metadata_device=device_number(self.host, wanted.metadata_device),
                data_device=device_number(self.host, wanted.data_device),
                data_block_sectors=wanted.data_block_sectors,
                low_water_mark=wanted.low_water_mark,
            )
            if len(lines) != 1 or len(loaded) != 1 or not _equivalent(loaded[0], resolved):
                found = describe_table(lines)
                raise PoolMismatch(
                    f"adopt pool {self.name}",
                    detail=f"a device named {self.name} is loaded with table {found!r}, "
                    f"expected {resolved.line()!r}; refusing to touch it",
                )
            return "adopted"
        if has_thin_superblock(self.host, devices.metadata_device):
            # Existing metadata (a restart or a reboot): check it before the kernel trusts it.
            self.check_metadata(devices.metadata_device)
        elif may_zero_metadata:
            self.host.write(devices.metadata_device, 0, bytes(METADATA_BLOCK))
        self.client.create(self.name, wanted.line(), pool_uuid(self.name))
        return "created"

    def check_metadata(self, metadata_device: str) -> None:
        """thin_check the (unloaded) metadata; raises MetadataCheckFailed with a repair hint."""
        completed = self.host.run(["thin_check", metadata_device])
        if not completed.ok:
            raise MetadataCheckFailed(
                f"thin_check {metadata_device}", completed,
                f"pool metadata on {metadata_device} failed thin_check: "
                f"{' '.join(completed.stderr.split())}; refusing to load pool {self.name}. "
                f"Repair it with `thin_repair -i {metadata_device} -o NEW_DEVICE` (then use "
                "NEW_DEVICE as metadata_device) or restore a metadata backup",
            )

    def status(self) -> ThinPoolStatus:
        """The pool's status (transaction id, usage, health)."""
        lines = self.client.status(self.name)
        if len(lines) != 1:
            raise CommandFailed(f"status {self.name}", detail=f"{len(lines)} targets, expected 1")
        return parse_pool_status(lines[0])

    def thin_table(self, device_id: ThinId, length: Sectors) -> ThinTable:
        """The table that activates thin id `device_id` with `length` sectors."""
        return ThinTable(length=length, pool=self.path, device_id=device_id)

    def _metadata_change(self, words: list[str], transaction_id: int) -> int:
        self.client.message(self.name, words)
        self.set_transaction_id(transaction_id, transaction_id + 1)
        return transaction_id + 1

    def set_transaction_id(self, old: int, new: int) -> None:
        """Move the pool's transaction id; the kernel refuses when `old` is not current."""
        self.client.message(self.name, ["set_transaction_id", str(old), str(new)])

    def create_thin(self, device_id: ThinId, transaction_id: int) -> int:
        """Provision an empty thin id; returns the pool's new transaction id."""
        return self._metadata_change([PoolOp.CREATE_THIN, str(device_id)], transaction_id)

    def create_snap(self, device_id: ThinId, origin_id: ThinId, transaction_id: int) -> int:
        """Provision `device_id` as a snapshot of `origin_id` (suspend an active origin first)."""
        return self._metadata_change(
            [PoolOp.CREATE_SNAP, str(device_id), str(origin_id)], transaction_id
        )

    def delete(self, device_id: ThinId, transaction_id: int) -> int:
        """Release a thin id and its blocks; returns the pool's new transaction id."""
        return self._metadata_change([PoolOp.DELETE, str(device_id)], transaction_id)

    def send_create(self, device_id: ThinId, origin_id: ThinId | None = None) -> None:
        """create_thin (create_snap of `origin_id` when given) alone, the transaction id left
        where it is: a batch of changes moves it once (set_transaction_id) for all of them."""
        if origin_id is None:
            self.client.message(self.name, [PoolOp.CREATE_THIN, str(device_id)])
        else:
            self.client.message(self.name, [PoolOp.CREATE_SNAP, str(device_id), str(origin_id)])

    def send_delete(self, device_id: ThinId) -> None:
        """delete alone, the transaction id left where it is (see send_create)."""
        self.client.message(self.name, [PoolOp.DELETE, str(device_id)])


def _equivalent(loaded: ThinPoolTable, wanted: ThinPoolTable) -> bool:
    # The low water mark and features are tunables; the devices and geometry are identity.
    return (
        loaded.length == wanted.length
        and loaded.metadata_device == wanted.metadata_device
        and loaded.data_device == wanted.data_device
        and loaded.data_block_sectors == wanted.data_block_sectors
    )


def table_matches(loaded: ThinTable, wanted: ThinTable, pool_number: str) -> bool:
    """Whether a live thin table is the one we would load (pool given by major:minor)."""
    return (
        loaded.device_id == wanted.device_id
        and loaded.length == wanted.length
        and loaded.pool in (pool_number, wanted.pool)
    )


__all__ = [
    "MetadataCheckFailed",
    "PoolDevices",
    "PoolMismatch",
    "PoolOp",
    "ThinPool",
    "table_matches",
    "thin_device_name",
    "thin_uuid",
]
