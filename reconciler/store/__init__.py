"""The store: everything the daemon remembers, in SQLite through peewee.

Only this package imports peewee. Other layers see plain dataclasses (*Record) and call the
Store's methods, each of which commits before it returns, so a crash between two kernel calls
leaves the last step on disk.
"""

from reconciler.store.records import (
    BASE_KIND,
    ConditionKind,
    ConditionRecord,
    DeviceRecord,
    IntentRecord,
    OrphanRecord,
    PoolRecord,
    RejectedSpecRecord,
    RequestKind,
    RequestRecord,
    SnapshotRecord,
    TransitionRecord,
)
from reconciler.store.store import MAX_THIN_ID, IdAllocator, Store, StoreError

__all__ = [
    "BASE_KIND",
    "MAX_THIN_ID",
    "ConditionKind",
    "ConditionRecord",
    "DeviceRecord",
    "IdAllocator",
    "IntentRecord",
    "OrphanRecord",
    "PoolRecord",
    "RejectedSpecRecord",
    "RequestKind",
    "RequestRecord",
    "SnapshotRecord",
    "Store",
    "StoreError",
    "TransitionRecord",
]
