"""The store: everything the daemon remembers, in SQLite through peewee.

Only this package imports peewee. Other layers see plain dataclasses (*Record) and call the
Store's methods, each of which commits before it returns, so a crash between two kernel calls
leaves the last step on disk.
"""

from reconciler.store.records import (
    DeviceRecord,
    IntentRecord,
    OrphanRecord,
    PoolRecord,
    RejectedSpecRecord,
    RequestRecord,
    SnapshotRecord,
    TransitionRecord,
)
from reconciler.store.store import MAX_THIN_ID, Store, StoreError, lowest_free_id

__all__ = [
    "MAX_THIN_ID",
    "DeviceRecord",
    "IntentRecord",
    "OrphanRecord",
    "PoolRecord",
    "RejectedSpecRecord",
    "RequestRecord",
    "SnapshotRecord",
    "Store",
    "StoreError",
    "TransitionRecord",
    "lowest_free_id",
]
