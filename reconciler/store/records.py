"""Plain persisted values, so layers above the store never touch peewee objects.

Records carry the vocabulary's enums and checked thin ids, never their strings: the store
converts a row once, where it maps it to a record (`store.rows`), and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from operator import attrgetter

from reconciler.vocabulary import (
    NO_LABELS,
    DeviceState,
    Filesystem,
    Kind,
    PoolOp,
    Removal,
    ThinId,
    Trigger,
)


@dataclass(slots=True)
class DeviceRecord:
    """One managed thin device as the store knows it (desired fields copied from its spec).
    Slotted: a daemon holds one per device (50,000 of them), and a __dict__ each was 300
    bytes more. `record_fields` reads every field at once."""

    name: str
    state: DeviceState = DeviceState.UNKNOWN
    device_id: ThinId | None = None
    size_bytes: int = 0
    parent: str | None = None
    # The thin id the snapshot was taken from; kept because the parent may be removed later.
    origin_id: ThinId | None = None
    filesystem: Filesystem = Filesystem.NONE
    # The thin id exists in the pool (create_thin/create_snap done, delete not yet).
    provisioned: bool = False
    formatted: bool = False
    # Size the filesystem was made or last grown to (0: none, or not made by us).
    fs_size_bytes: int = 0
    # Something the operator should know that is not an error (e.g. "grow the filesystem").
    notice: str | None = None
    active: bool = True
    readonly: bool = False
    # Replaced, never changed in place: NO_LABELS when empty.
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)
    error: str | None = None
    error_step: str | None = None
    attempts: int = 0
    # When the failed step may be tried again (None: nothing is waiting).
    retry_at: float | None = None
    spec_digest: str = ""
    created_at: float = 0.0
    state_changed_at: float = 0.0


# Every field of a DeviceRecord as one tuple, in their order (attrgetter: one call in C).
record_fields = attrgetter(*(f.name for f in fields(DeviceRecord)))


@dataclass(frozen=True)
class TransitionRecord:
    """One state change of one device, kept as its history."""

    device: str
    from_state: DeviceState
    to_state: DeviceState
    trigger: Trigger
    at: float
    error: str | None = None


@dataclass(frozen=True)
class RejectedSpecRecord:
    """A spec file the last pass could not use, kept so `status` can show it."""

    name: str
    path: str
    error: str
    seen_at: float


@dataclass
class PoolRecord:
    """The thin-pool as we last left it: the transaction id is our write-ahead marker."""

    name: str
    transaction_id: int = 0
    metadata_device: str = ""
    data_device: str = ""
    data_block_sectors: int = 128
    created_at: float = 0.0


class RequestKind(StrEnum):
    """What an operator asks the daemon's thread to do (the values are stored)."""

    RETRY = "retry"
    GC_ORPHANS = "gc-orphans"
    GC_FAULTY = "gc-faulty"
    ADOPT = "adopt"
    # `name` holds the JSON list of the held removals the operator saw and confirmed.
    CONFIRM_REMOVALS = "confirm-removals"


@dataclass(frozen=True)
class UnknownKind:
    """A kind this version does not know, as the row holds it: written by a newer version
    (a request from a newer CLI, a condition of a newer daemon), so reported, never fatal."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class RequestRecord:
    """An operator's request (e.g. retry a Faulty device), queued for the daemon's thread."""

    id: int
    # A request from a newer CLI is an UnknownKind: reported and dropped, never fatal.
    kind: RequestKind | UnknownKind
    name: str
    at: float
    arg: int | None = None


@dataclass(frozen=True)
class IntentRecord:
    """A pool metadata change about to be made (write-ahead): recovery finishes or undoes it.

    `to_txn` is the transaction id the pool moves to with the change: seeing it in the kernel
    proves the change happened.
    """

    device: str
    op: PoolOp
    thin_id: ThinId
    origin_id: ThinId | None
    from_txn: int
    to_txn: int
    at: float


class OrphanKind(StrEnum):
    """What an orphan is (the values are stored)."""

    # A thin id in the pool's metadata that no record accounts for.
    THIN_ID = "thin_id"
    # A dm device of our pool (by name or by table) that no record accounts for.
    DEVICE = "device"


@dataclass(frozen=True)
class OrphanRecord:
    """Something of our pool that the store does not manage: a thin id or a dm device."""

    kind: OrphanKind
    name: str
    thin_id: ThinId | None
    seen_at: float


@dataclass
class SnapshotRecord:
    """A containerd-style snapshot: a key, a kind and labels over one managed device.

    The device (`name`, "snap-<seq>") is driven like any other; this record is its stored
    spec. Kernel names come from `seq`, never from the key, which may hold any text. A base
    (Kind.BASE) has a negative seq, its device is "snap-base-<n>", and its key names the
    filesystem it holds.
    """

    name: str
    seq: int
    key: str
    # A base is a formatted, empty filesystem each root snapshot is a snapshot of: containerd
    # never sees one, so the queries that answer its calls leave them out.
    kind: Kind
    parent_key: str | None = None
    # The parent's device name (its "snap-<seq>").
    parent: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    filesystem: Filesystem = Filesystem.EXT4
    # A committed snapshot is kept inactive unless its mounts were asked for (read-only).
    exposed: bool = False
    # What its device should be, as the snapshotter decided from the kind (reconcile reads
    # these as the device's spec and knows nothing of kinds).
    active: bool = True
    readonly: bool = False
    # None: live; else how the API removed it (its device kept until Cleanup, or to go).
    removal: Removal | None = None
    # Inodes in use on the parent's filesystem when this snapshot was taken: usage excludes
    # them. (Bytes need no such base: thin_ls counts blocks shared with the parent apart.)
    base_inodes: int = 0
    # Bytes only this snapshot's device maps (thin_ls's EXCLUSIVE_BYTES: what it wrote beyond
    # its origin) once committed; None: not measured yet. Commit leaves it None (no process
    # in Commit); it is measured, with every other unmeasured one in one thin_ls, when a
    # Usage asks or before a child is taken (the child would share the blocks), then fixed.
    exclusive_bytes: int | None = None
    # Inodes in use beyond `base_inodes`, read from the superblock at commit (in-process).
    used_inodes: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    removed_at: float | None = None

    @property
    def wanted(self) -> bool:
        """Whether its device is wanted (live, or removed but kept until Cleanup): the rows
        `Store.snapshots` returns."""
        return self.removal is None or self.removal is Removal.PENDING


class ConditionKind(StrEnum):
    """Something about the whole daemon an operator must see (the values are stored)."""

    # The spec directory could not be read completely: nothing is removed meanwhile.
    SPEC_SOURCE = "spec_source"
    # Removals inferred from deleted spec files, held until an operator confirms them.
    REMOVALS_HELD = "removals_held"
    # A pass failed with an error nobody foresaw; it is retried with backoff.
    PASS_FAILED = "pass_failed"
    # New devices wait: the pool is below its reserve, not read-write, or needs a check.
    NEW_DEVICES_HELD = "new_devices_held"
    # The daemon started and its first pass (recovery included) has not ended: `status
    # --check` says starting while a daemon holds the root lock.
    STARTING = "starting"
    # udev runs but cannot confirm our udev cookies (another IPC namespace: a pod without
    # hostIPC): the daemon makes the /dev/mapper nodes itself. Working, nothing waits.
    UDEV_UNREACHABLE = "udev_unreachable"


class HoldCause(StrEnum):
    """Why the removal guard holds a removal (the values are stored)."""

    # More removals inferred from absent spec files than max_removals within removal_window.
    COUNT = "count"
    # Every spec-file device at once (two or more): a wrong spec_dir, a lost mount, `rm *`.
    EVERYTHING = "everything"
    # The config changed what is selected (spec_dir, node_name): a reload is no request.
    CONFIG = "config"


@dataclass(frozen=True)
class HeldRemoval:
    """A removal the guard held: it waits, across passes and restarts, until an operator
    confirms it (`confirmed_at`) under the same config, or its spec returns."""

    name: str
    # A cause written by a newer version is an UnknownKind: still held, shown as written.
    cause: HoldCause | UnknownKind
    reason: str
    held_at: float
    # The config the removal was held under (reconcile.holds.Selection, as text): a confirm
    # is taken only from an operator whose config selects the same.
    selection: str
    confirmed_at: float | None = None


@dataclass(frozen=True)
class RemovalEvent:
    """A removal the guard let through without a confirm, counted in its sliding window."""

    id: int
    name: str
    at: float
    # The removal is under way (its device not Removed, its spec not back): counted once.
    open: bool = True


@dataclass(frozen=True)
class ConditionRecord:
    """A condition in force: what, since when, how often, and the names it concerns."""

    kind: ConditionKind | UnknownKind
    message: str
    names: tuple[str, ...] = ()
    count: int = 1
    since: float = 0.0
    at: float = 0.0
