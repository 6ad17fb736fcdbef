"""Bring the thin-pool up from the settings: loopback files and loop devices, then the pool."""

from __future__ import annotations

import structlog

from reconciler.config import Settings
from reconciler.dm.driver import DmDriver
from reconciler.dm.host import Host
from reconciler.dm.pool import PoolDevices, ThinPool
from reconciler.store import PoolRecord, Store
from reconciler.tools.loopback import LoopbackFiles, attach_loop, ensure_file

log = structlog.get_logger(__name__)


def pool_devices(settings: Settings, host: Host) -> PoolDevices:
    """The pool's metadata and data devices: the configured ones, or attached loopback files."""
    block_sectors = settings.data_block_size // 512
    if settings.data_device is not None and settings.metadata_device is not None:
        return PoolDevices(str(settings.metadata_device), str(settings.data_device),
                           block_sectors)
    files = LoopbackFiles.under(settings.root_path)
    for path, size in ((files.metadata, settings.loopback_metadata_size),
                       (files.data, settings.loopback_data_size)):
        if ensure_file(path, size):
            log.info("loopback.file_created", path=str(path), size_bytes=size)
    # Metadata first: a fresh machine then gives the pool the same loop numbers every time.
    metadata, attached_meta = attach_loop(host, files.metadata)
    data, attached_data = attach_loop(host, files.data)
    log.info("loopback.attached", metadata=metadata, data=data,
             reused=not (attached_meta or attached_data))
    return PoolDevices(metadata, data, block_sectors)


def prepare_pool(settings: Settings, host: Host, store: Store, now: float,
                 client: DmDriver | None = None) -> ThinPool:
    """Create or adopt the pool and make sure the store has its record."""
    pool = ThinPool(host, settings.pool_name, client)
    devices = pool_devices(settings, host)
    record = store.pool(settings.pool_name)
    outcome = pool.ensure(devices, may_zero_metadata=record is None)
    status = pool.status()
    if record is None:
        record = PoolRecord(
            name=settings.pool_name,
            transaction_id=status.transaction_id,
            metadata_device=devices.metadata_device,
            data_device=devices.data_device,
            data_block_sectors=devices.data_block_sectors,
            created_at=now,
        )
    else:
        record.metadata_device = devices.metadata_device
        record.data_device = devices.data_device
    store.save_pool(record)
    log.info(f"pool.{outcome}", pool=settings.pool_name, transaction_id=status.transaction_id,
             data_blocks=status.total_data_blocks)
    return pool
