"""peewee table definitions; bound to a database by Store at open time."""

from __future__ import annotations

import peewee

DATABASE = peewee.DatabaseProxy()


class _Base(peewee.Model):
    class Meta:
        database = DATABASE


class DeviceRow(_Base):
    name = peewee.CharField(primary_key=True)
    state = peewee.CharField(index=True)
    device_id = peewee.IntegerField(null=True, index=True)
    size_bytes = peewee.BigIntegerField()
    parent = peewee.CharField(null=True)
    origin_id = peewee.IntegerField(null=True)
    filesystem = peewee.CharField()
    provisioned = peewee.BooleanField(default=False)
    formatted = peewee.BooleanField(default=False)
    active = peewee.BooleanField()
    readonly = peewee.BooleanField()
    labels = peewee.TextField(default="{}")
    error = peewee.TextField(null=True)
    error_step = peewee.CharField(null=True)
    attempts = peewee.IntegerField(default=0)
    spec_digest = peewee.CharField(default="")
    created_at = peewee.FloatField()
    state_changed_at = peewee.FloatField()

    class Meta:
        table_name = "devices"


class TransitionRow(_Base):
    id = peewee.AutoField()
    device = peewee.CharField(index=True)
    from_state = peewee.CharField()
    to_state = peewee.CharField()
    trigger = peewee.CharField()
    at = peewee.FloatField()
    error = peewee.TextField(null=True)

    class Meta:
        table_name = "transitions"


class RejectedSpecRow(_Base):
    name = peewee.CharField(primary_key=True)
    path = peewee.TextField()
    error = peewee.TextField()
    seen_at = peewee.FloatField()

    class Meta:
        table_name = "rejected_specs"


class PoolRow(_Base):
    name = peewee.CharField(primary_key=True)
    transaction_id = peewee.BigIntegerField()
    metadata_device = peewee.TextField()
    data_device = peewee.TextField()
    data_block_sectors = peewee.IntegerField()
    created_at = peewee.FloatField()

    class Meta:
        table_name = "pools"


ALL_MODELS: list[type[peewee.Model]] = [DeviceRow, TransitionRow, RejectedSpecRow, PoolRow]
