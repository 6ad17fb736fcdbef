"""The store: everything the daemon remembers, in SQLite through peewee.

Only this package imports peewee. Other layers see plain dataclasses (*Record) and call the
Store's methods, each of which commits before it returns, so a crash between two kernel calls
leaves the last step on disk. Records carry the vocabulary's enums and checked thin ids;
`rows` converts them to and from the columns' strings and integers, once.
"""

from reconciler.store.database import StoreBusy, StoreError
from reconciler.store.records import (
    ConditionKind,
    ConditionRecord,
    DeviceRecord,
    HeldRemoval,
    HoldCause,
    IntentRecord,
    OrphanKind,
    OrphanRecord,
    PoolRecord,
    RejectedSpecRecord,
    RemovalEvent,
    RequestKind,
    RequestRecord,
    SnapshotRecord,
    TransitionRecord,
    UnknownKind,
)
from reconciler.store.rows import RowError
from reconciler.store.store import MAX_THIN_ID, IdAllocator, Store

__all__ = [
    "MAX_THIN_ID",
    "ConditionKind",
    "ConditionRecord",
    "DeviceRecord",
    "HeldRemoval",
    "HoldCause",
    "IdAllocator",
    "IntentRecord",
    "OrphanKind",
    "OrphanRecord",
    "PoolRecord",
    "RejectedSpecRecord",
    "RemovalEvent",
    "RequestKind",
    "RequestRecord",
    "RowError",
    "SnapshotRecord",
    "Store",
    "StoreBusy",
    "StoreError",
    "TransitionRecord",
    "UnknownKind",
]
