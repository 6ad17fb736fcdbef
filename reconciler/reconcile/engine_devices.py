"""EngineDevices: the Reconciler's answers to the devices seam (`reconcile.devices`).

It sits beside the Reconciler, which hands one out as `devices`: a settle is a partial pass
of that Reconciler judged on the records the pass left in memory; the other questions read
the kernel through the Reconciler's pool. It sees the Reconciler through `Engine`, the few
things it uses, so that a reload that reconfigures the Reconciler is seen at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from reconciler.config import Settings
from reconciler.dm.host import Host
from reconciler.dm.pool import ThinPool, mapper_path, thin_device_name
from reconciler.reconcile.devices import (
    Failed,
    Ready,
    RetryAt,
    Settle,
    Verdict,
    needs_kernel_look,
    usable,
)
from reconciler.reconcile.pass_context import PassResult
from reconciler.store import DeviceRecord, Store
from reconciler.tools.filesystem import inodes_used
from reconciler.tools.thin_ls import exclusive_bytes


class Engine(Protocol):
    """What EngineDevices uses of the Reconciler."""

    settings: Settings
    host: Host
    store: Store
    records: dict[str, DeviceRecord]

    def run_pass(self, only: Sequence[str] | None = None) -> PassResult:
        """A (partial) pass."""
        ...

    def ensure_pool(self) -> ThinPool:
        """The pool, brought up on first use."""
        ...


class EngineDevices:
    """`reconcile.devices.Devices` over a Reconciler."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _kernel_name(self, name: str) -> str:
        return thin_device_name(self._engine.settings.pool_name, name)

    def settle(self, names: Sequence[str]) -> Settle:
        """Drive these devices now, then judge them on the records the pass left."""
        result = self._engine.run_pass(only=list(names))
        records: Mapping[str, DeviceRecord] = self._engine.records
        retries = [record.retry_at for name in names if name in result.pending
                   and (record := records.get(name)) is not None
                   and record.retry_at is not None]
        verdict = self._verdict(names, records)
        return RetryAt(min(retries), verdict) if retries else verdict

    def _verdict(self, names: Sequence[str], records: Mapping[str, DeviceRecord]) -> Verdict:
        for name in names:
            record = records.get(name)
            if record is None:
                return Failed(None)
            if not self._usable(record):
                return Failed(record.error)
        return Ready()

    def _usable(self, record: DeviceRecord) -> bool:
        state = record.state
        mapped = suspended = False
        if needs_kernel_look(state, record.active):
            info = self._engine.ensure_pool().client.info(self._kernel_name(record.name))
            mapped, suspended = info is not None, info is not None and info.suspended
        return usable(state, record.active, record.provisioned, record.formatted,
                      record.filesystem, mapped=mapped, suspended=suspended)

    def open_count(self, name: str) -> int:
        """How many openers the device has now (0: not mapped); raises DmError."""
        info = self._engine.ensure_pool().client.info(self._kernel_name(name))
        return 0 if info is None else info.open_count

    def exclusive_bytes(self, names: Sequence[str]) -> dict[str, int]:
        """Bytes only each device maps in the pool (thin_ls EXCLUSIVE_BYTES: what it wrote
        beyond its origin), by name, from one thin_ls on a metadata snapshot; a device whose
        thin id is not made is left out (and no thin_ls runs when none has one)."""
        engine = self._engine
        ids = {}
        for name in names:
            device = engine.store.device(name)
            if device is not None and device.device_id is not None and device.provisioned:
                ids[name] = device.device_id
        pool_record = engine.store.pool(engine.settings.pool_name)
        if not ids or pool_record is None:
            return {}
        pool = engine.ensure_pool()
        used = exclusive_bytes(engine.host, pool.name, pool_record.metadata_device,
                               pool.client)
        return {name: used[thin_id] for name, thin_id in ids.items() if thin_id in used}

    def inodes(self, name: str) -> int | None:
        """Inodes the device's filesystem uses, from its superblock (None: not mapped, or
        neither ext4 nor xfs)."""
        pool = self._engine.ensure_pool()
        kernel_name = self._kernel_name(name)
        if pool.client.info(kernel_name) is None:
            return None
        return inodes_used(self._engine.host, mapper_path(kernel_name))

    def mount_source(self, name: str) -> str:
        """The device's /dev/mapper path."""
        return mapper_path(self._kernel_name(name))
