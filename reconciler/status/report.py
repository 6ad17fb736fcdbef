"""The status document built: the store and the kernel side by side, as a typed Report
(`status.document`) of the pool, devices, rejected specs, conditions, orphans and history.

Reads the store (SQLite in WAL mode, so it never blocks a running daemon) and asks the kernel
with three calls; works with the daemon stopped. Usage comes from `dmsetup status`: mapped
sectors x 512 for an active thin device, used blocks x block size for the pool. An inactive
device has no status in the kernel, so its usage is shown as unknown (null). Every time is
ISO 8601 UTC with `+00:00`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from reconciler.config import Settings
from reconciler.dm.driver import make_client
from reconciler.dm.host import Host
from reconciler.dm.pool import mapper_path, thin_device_name
from reconciler.dm.types import METADATA_BLOCK_BYTES
from reconciler.reconcile.observe import KernelDevice, Observation, observe_safely
from reconciler.specs import is_snapshot_device
from reconciler.states import LIVE, is_ready
from reconciler.status.check import check
from reconciler.status.document import (
    ConditionReport,
    DeviceReport,
    HistoryStep,
    KernelReport,
    OrphanDevice,
    Orphans,
    PoolReport,
    RejectedSpecReport,
    Report,
    SnapshotReport,
)
from reconciler.store import (
    ConditionKind,
    DeviceRecord,
    OrphanKind,
    SnapshotRecord,
    Store,
    StoreBusy,
    StoreError,
)
from reconciler.verdict import Verdict


def iso_time(timestamp: float) -> str:
    """A stored timestamp as ISO 8601 UTC, to the millisecond."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def percent(used: int | None, total: int | None) -> float | None:
    """Used as a percentage of total, to one decimal (None when either is unknown)."""
    if used is None or not total:
        return None
    return round(100 * used / total, 1)


def _pool_report(settings: Settings, store: Store, obs: Observation | None,
                 kernel_error: str | None) -> PoolReport:
    record = store.pool(settings.pool_name)
    report = PoolReport(
        name=settings.pool_name,
        path=mapper_path(settings.pool_name),
        stored_transaction_id=record.transaction_id if record else None,
        error=kernel_error,
        kernel_readable=kernel_error is None,
    )
    status = obs.pool if obs else None
    if status is None:
        if kernel_error is None:
            return replace(report, error="pool is not loaded in the kernel")
        return report
    block_bytes = (record.data_block_sectors if record else 128) * 512
    return replace(
        report,
        loaded=True,
        data_reserve_bytes=settings.pool_reserve.of(status.total_data_blocks * block_bytes),
        metadata_reserve_bytes=settings.pool_metadata_reserve.of(
            status.total_metadata_blocks * METADATA_BLOCK_BYTES),
        transaction_id=status.transaction_id,
        data_used_bytes=status.used_data_blocks * block_bytes,
        data_total_bytes=status.total_data_blocks * block_bytes,
        metadata_used_bytes=status.used_metadata_blocks * METADATA_BLOCK_BYTES,
        metadata_total_bytes=status.total_metadata_blocks * METADATA_BLOCK_BYTES,
        data_used_percent=percent(status.used_data_blocks, status.total_data_blocks),
        metadata_used_percent=percent(status.used_metadata_blocks,
                                      status.total_metadata_blocks),
        mode=status.mode.value,
        needs_check=status.needs_check,
    )


def _snapshot_report(snap: SnapshotRecord | None) -> SnapshotReport | None:
    if snap is None:
        return None
    return SnapshotReport(
        key=snap.key,
        kind=snap.kind.value,
        parent=snap.parent_key,
        labels=dict(snap.labels),
        removal=None if snap.removal is None else snap.removal.value,
        created_at=iso_time(snap.created_at),
        updated_at=iso_time(snap.updated_at),
    )


def _ready(record: DeviceRecord, kernel: KernelDevice | None) -> bool:
    return is_ready(record.state, record.formatted, record.filesystem,
                    mapped=kernel is not None,
                    suspended=kernel is not None and kernel.info.suspended)


def _kernel_report(kernel: KernelDevice | None) -> KernelReport | None:
    if kernel is None:
        return None
    return KernelReport(suspended=kernel.info.suspended, readonly=kernel.info.readonly,
                        open_count=kernel.info.open_count,
                        thin_id=kernel.table.device_id if kernel.table else None)


def _device_report(settings: Settings, record: DeviceRecord,
                   obs: Observation | None, snap: SnapshotRecord | None) -> DeviceReport:
    kname = thin_device_name(settings.pool_name, record.name)
    kernel = obs.device(kname) if obs else None
    used = kernel.status.used_bytes if kernel and kernel.status else None
    # Deactivated, yet still mapped and open: the kernel removes it at its holder's last close.
    deferred = kernel is not None and record.state not in LIVE \
        and kernel.info.removal_deferred
    thin_id = None if record.device_id is None else int(record.device_id)
    return DeviceReport(
        name=record.name,
        state=record.state.value,
        deferred_removal=deferred,
        ready=_ready(record, kernel),
        thin_id=thin_id,
        device_id=thin_id,
        size_bytes=record.size_bytes,
        used_bytes=used,
        parent=record.parent,
        filesystem=record.filesystem.value,
        formatted=record.formatted,
        path=mapper_path(kname) if kernel else None,
        kernel_name=kname,
        active=record.active,
        readonly=record.readonly,
        error=record.error,
        error_step=record.error_step,
        attempts=record.attempts,
        retry_at=None if record.retry_at is None else iso_time(record.retry_at),
        notice=record.notice,
        labels=dict(record.labels),
        snapshot=_snapshot_report(snap),
        state_changed_at=iso_time(record.state_changed_at),
        kernel=_kernel_report(kernel),
    )


def collect(settings: Settings, store: Store, host: Host,
            name: str | None = None, include_removed: bool = False) -> Report:
    """The whole status report (what `status` shows): one device and its history with
    `name`, Removed devices too with `include_removed`."""
    obs, kernel_error = observe_safely(
        make_client(host, settings.dm_driver, settings.udev_timeout), settings.pool_name)
    records = store.devices(include_removed=include_removed or name is not None)
    if name is not None:
        records = [r for r in records if r.name == name]
    conditions = {c.kind: c for c in store.conditions()}
    source = conditions.get(ConditionKind.SPEC_SOURCE)
    failed = conditions.get(ConditionKind.PASS_FAILED)
    held = conditions.get(ConditionKind.REMOVALS_HELD)
    space = conditions.get(ConditionKind.NEW_DEVICES_HELD)
    pool = replace(
        _pool_report(settings, store, obs, kernel_error),
        new_devices_held=space.message if space else None,
        spec_source_error=source.message if source else None,
        last_pass_error=failed.message if failed else None,
        removals_held=tuple(held.names) if held else (),
    )
    orphans = store.orphans()
    return Report(
        pool=pool,
        devices=tuple(_device_report(settings, r, obs, store.snapshot(r.name)
                                     if is_snapshot_device(r.name) else None)
                      for r in records),
        rejected_specs=tuple(RejectedSpecReport(r.name, r.path, r.error)
                             for r in store.rejected_specs()
                             if name is None or r.name == name),
        conditions=tuple(ConditionReport(str(c.kind), c.message, tuple(c.names), c.count,
                                         iso_time(c.since), iso_time(c.at))
                         for c in conditions.values()),
        orphans=Orphans(
            thin_ids=tuple(int(o.thin_id) for o in orphans
                           if o.kind is OrphanKind.THIN_ID and o.thin_id is not None),
            devices=tuple(OrphanDevice(o.name, None if o.thin_id is None else int(o.thin_id))
                          for o in orphans if o.kind is OrphanKind.DEVICE),
        ),
        history=None if name is None else tuple(
            HistoryStep(t.from_state.value, t.to_state.value, t.trigger.value, iso_time(t.at),
                        t.error)
            for t in store.history(name)),
    )


def build_report(settings: Settings, store: Store, host: Host,
                 name: str | None = None, include_removed: bool = False) -> dict[str, Any]:
    """The whole status document (what `status --json` prints): `collect`'s report as JSON
    shapes, for scripts and tests that read it by key."""
    return collect(settings, store, host, name, include_removed).document()


def checked(settings: Settings, host: Host, daemon_running: bool) -> Verdict:
    """`status --check`'s verdict: the report judged (none before the daemon ever ran). A
    store that cannot be read is a verdict (down); one kept busy by others is raised, as
    every command raises it (it works: ask again)."""
    if not settings.database_path.exists():
        return check(None, daemon_running)
    try:
        store = Store(settings.database_path, time.time)
        try:
            report = collect(settings, store, host)
        finally:
            store.close()
    except StoreBusy:
        raise
    except StoreError as exc:
        return check(None, daemon_running, store_error=str(exc))
    return check(report, daemon_running)
