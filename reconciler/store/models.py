"""peewee table definitions, made per database so two Stores in one process never share one.

peewee binds a model class to one database; a module-level binding would make the daemon's
store and a status reader in the same process (or two tests) write into each other's file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peewee


@dataclass(frozen=True)
class Models:
    """The model classes of one database."""

    # Any: peewee's fields are descriptors mypy cannot see through on classes made at run time.
    Device: Any
    Transition: Any
    RejectedSpec: Any
    Pool: Any
    Request: Any
    Intent: Any
    Orphan: Any
    Snapshot: Any
    Condition: Any
    Fact: Any
    HeldRemoval: Any
    RemovalEvent: Any

    def all(self) -> list[type[peewee.Model]]:
        """Every table, for create_tables."""
        return [self.Device, self.Transition, self.RejectedSpec, self.Pool, self.Request,
                self.Intent, self.Orphan, self.Snapshot, self.Condition, self.Fact,
                self.HeldRemoval, self.RemovalEvent]


def bind_models(database: peewee.Database) -> Models:
    """Define the tables anew, bound to `database`."""
    device, transition = _device_tables()
    pool, intent = _pool_tables()
    rejected, request, orphan, condition, fact = _operator_tables()
    held, event = _removal_tables()
    models = Models(device, transition, rejected, pool, request, intent, orphan,
                    _snapshot_table(), condition, fact, held, event)
    for model in models.all():
        model.bind(database)
    return models


def _device_tables() -> tuple[Any, ...]:
    """The managed devices and their history."""

    class DeviceRow(peewee.Model):
        name = peewee.CharField(primary_key=True)
        state = peewee.CharField(index=True)
        device_id = peewee.IntegerField(null=True, index=True)
        size_bytes = peewee.BigIntegerField()
        parent = peewee.CharField(null=True)
        origin_id = peewee.IntegerField(null=True)
        filesystem = peewee.CharField()
        provisioned = peewee.BooleanField(default=False)
        formatted = peewee.BooleanField(default=False)
        fs_size_bytes = peewee.BigIntegerField(default=0)
        notice = peewee.TextField(null=True)
        active = peewee.BooleanField()
        readonly = peewee.BooleanField()
        labels = peewee.TextField(default="{}")
        error = peewee.TextField(null=True)
        error_step = peewee.CharField(null=True)
        attempts = peewee.IntegerField(default=0)
        retry_at = peewee.FloatField(null=True)
        spec_digest = peewee.CharField(default="")
        created_at = peewee.FloatField()
        state_changed_at = peewee.FloatField()

        class Meta:
            table_name = "devices"

    class TransitionRow(peewee.Model):
        id = peewee.AutoField()
        device = peewee.CharField(index=True)
        from_state = peewee.CharField()
        to_state = peewee.CharField()
        trigger = peewee.CharField()
        at = peewee.FloatField()
        error = peewee.TextField(null=True)

        class Meta:
            table_name = "transitions"

    return DeviceRow, TransitionRow


def _pool_tables() -> tuple[Any, ...]:
    """The pool and its write-ahead intents."""

    class PoolRow(peewee.Model):
        name = peewee.CharField(primary_key=True)
        transaction_id = peewee.BigIntegerField()
        metadata_device = peewee.TextField()
        data_device = peewee.TextField()
        data_block_sectors = peewee.IntegerField()
        created_at = peewee.FloatField()

        class Meta:
            table_name = "pools"

    class IntentRow(peewee.Model):
        device = peewee.CharField(primary_key=True)
        op = peewee.CharField()
        thin_id = peewee.IntegerField()
        origin_id = peewee.IntegerField(null=True)
        from_txn = peewee.BigIntegerField()
        to_txn = peewee.BigIntegerField()
        at = peewee.FloatField()

        class Meta:
            table_name = "intents"

    return PoolRow, IntentRow


def _snapshot_table() -> Any:
    """The snapshotter API's stored specs."""

    class SnapshotRow(peewee.Model):
        name = peewee.CharField(primary_key=True)
        seq = peewee.IntegerField(unique=True)
        key = peewee.TextField(index=True)
        kind = peewee.CharField()
        parent_key = peewee.TextField(null=True, index=True)
        parent = peewee.CharField(null=True)
        labels = peewee.TextField(default="{}")
        size_bytes = peewee.BigIntegerField()
        filesystem = peewee.CharField()
        exposed = peewee.BooleanField(default=False)
        active = peewee.BooleanField(default=True)
        readonly = peewee.BooleanField(default=False)
        removal = peewee.CharField(null=True, index=True)
        base_inodes = peewee.BigIntegerField(default=0)
        exclusive_bytes = peewee.BigIntegerField(null=True)
        used_inodes = peewee.BigIntegerField(default=0)
        created_at = peewee.FloatField()
        updated_at = peewee.FloatField()
        removed_at = peewee.FloatField(null=True)

        class Meta:
            table_name = "snapshots"

    return SnapshotRow


def _operator_tables() -> tuple[Any, ...]:
    """What operators and the last pass leave for others to read."""

    class RejectedSpecRow(peewee.Model):
        name = peewee.CharField(primary_key=True)
        path = peewee.TextField()
        error = peewee.TextField()
        seen_at = peewee.FloatField()

        class Meta:
            table_name = "rejected_specs"

    class RequestRow(peewee.Model):
        id = peewee.AutoField()
        kind = peewee.CharField()
        name = peewee.CharField()
        at = peewee.FloatField()
        arg = peewee.IntegerField(null=True)

        class Meta:
            table_name = "requests"

    class OrphanRow(peewee.Model):
        id = peewee.AutoField()
        kind = peewee.CharField()
        name = peewee.CharField()
        thin_id = peewee.IntegerField(null=True)
        seen_at = peewee.FloatField()

        class Meta:
            table_name = "orphans"

    class ConditionRow(peewee.Model):
        kind = peewee.CharField(primary_key=True)
        message = peewee.TextField()
        names = peewee.TextField(default="[]")
        count = peewee.IntegerField(default=1)
        since = peewee.FloatField()
        at = peewee.FloatField()

        class Meta:
            table_name = "conditions"

    class FactRow(peewee.Model):
        key = peewee.CharField(primary_key=True)
        value = peewee.TextField()

        class Meta:
            table_name = "facts"

    return RejectedSpecRow, RequestRow, OrphanRow, ConditionRow, FactRow


def _removal_tables() -> tuple[Any, ...]:
    """The removal guard's memory: what it holds, and what it let through lately."""

    class HeldRemovalRow(peewee.Model):
        name = peewee.CharField(primary_key=True)
        cause = peewee.CharField()
        reason = peewee.TextField()
        held_at = peewee.FloatField()
        selection = peewee.TextField()
        confirmed_at = peewee.FloatField(null=True)

        class Meta:
            table_name = "held_removals"

    class RemovalEventRow(peewee.Model):
        id = peewee.AutoField()
        name = peewee.CharField()
        at = peewee.FloatField(index=True)
        # The removal is under way (its device not Removed yet): it is never counted twice.
        open = peewee.BooleanField(default=True)

        class Meta:
            table_name = "removal_events"

    return HeldRemovalRow, RemovalEventRow
