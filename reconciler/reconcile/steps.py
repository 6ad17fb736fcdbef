"""One function per step: the kernel effect, bracketed by the device's persisted transitions.

Each step fires the machine's "begin" trigger (the in-flight state is written), makes its
kernel call(s), then fires the "done" trigger. Each is idempotent: a device found in an
in-flight state (a crash, a failed attempt) runs the same step again and gets the same end.

The pool metadata changes (create, remove) follow the crash protocol of `intents`: intend,
change the pool, commit; a retry settles what its failed attempt left first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import structlog

from reconciler.dm.errors import DeviceBusy, DmError, NoData
from reconciler.dm.thin import ThinDevice
from reconciler.reconcile.decide import mkfs_options
from reconciler.reconcile.desired import apply_spec, copy_spec
from reconciler.reconcile.intents import commit_pool_change, intend, settle_pending
from reconciler.reconcile.pass_context import PassContext
from reconciler.specs import DeviceSpec
from reconciler.states import LIVE, DeviceMachine, Step, Trigger, transition
from reconciler.store import DeviceRecord
from reconciler.tools.filesystem import discard_blocks, grow_filesystem, make_filesystem
from reconciler.units import Bytes, Sectors, to_sectors
from reconciler.vocabulary import PoolOp

T = Trigger
log = structlog.get_logger(__name__)

StepFunction = Callable[[PassContext, DeviceRecord, DeviceSpec | None], None]


def _sectors(record: DeviceRecord) -> Sectors:
    return to_sectors(Bytes(record.size_bytes))


def create(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """Provision a thin id: empty, or a snapshot of the parent's (a batch of one: see
    `reconcile.batch` for many)."""
    del spec
    machine = ctx.machine(record.name)
    first = machine.can(T.CREATE)
    if not first and settle_pending(ctx, record):
        return
    if first:
        take_thin_id(ctx, record)
        with ctx.store.transaction():
            machine.fire(T.CREATE)  # the id, with state Creating...
            intend(ctx, record, create_op(record))  # ...and the change, together
    else:
        # A retry: the intent is written anew, as the pool may have moved on meanwhile.
        intend(ctx, record, create_op(record))
    before = ctx.ledger.transaction_id
    send_create(ctx, record)
    ctx.pool.set_transaction_id(before, before + 1)
    commit_pool_change(ctx, record, create_op(record), before + 1)


def take_thin_id(ctx: PassContext, record: DeviceRecord) -> None:
    """A first create: the device's thin id (and a snapshot's origin and filesystem size,
    from its parent), in memory until the Creating state is written with them."""
    record.device_id = ctx.allocate_id()
    if record.parent is not None:
        parent = ctx.records[record.parent]
        record.origin_id = parent.device_id
        record.fs_size_bytes = parent.fs_size_bytes


def create_op(record: DeviceRecord) -> PoolOp:
    """The pool message that provisions the device's thin id."""
    return PoolOp.CREATE_SNAP if record.origin_id is not None else PoolOp.CREATE_THIN


def send_create(ctx: PassContext, record: DeviceRecord) -> None:
    """The pool message alone (create_thin, or create_snap with the origin suspended
    around it); the transaction id is moved by the caller, once for its batch."""
    assert record.device_id is not None
    if record.origin_id is not None and record.parent is not None:
        with _origin_suspended(ctx, record.parent):
            ctx.pool.send_create(record.device_id, record.origin_id)
    else:
        ctx.pool.send_create(record.device_id)


@contextmanager
def _origin_suspended(ctx: PassContext, parent_name: str) -> Iterator[None]:
    """Suspend an active origin around create_snap, as dm-thin's documentation asks: the
    kernel does not refuse an unsuspended one (captured), but the snapshot would then miss
    writes still in flight and a mounted filesystem would not be frozen first."""
    parent = ctx.records[parent_name]
    kernel = ctx.kernel(parent_name)
    if kernel is None:
        yield
        return
    thin = ctx.thin(parent)
    thin.check_ours(kernel.info, "suspend origin")
    if parent.state not in LIVE:
        # Deactivated but still mapped: a deferred remove waits for its user's mount, which
        # can still write. Suspended as any origin; the machine has no live state to record.
        thin.suspend()
        try:
            yield
        finally:
            thin.resume()
        return
    machine = ctx.machine(parent_name)
    machine.fire(T.SUSPEND)
    try:
        thin.suspend()
        machine.fire(T.SUSPENDED)
        yield
    finally:
        # Whatever happened in between, the origin runs again: a suspended device hangs
        # every reader and writer of its filesystem.
        _resume(ctx, parent, machine)


def _resume(ctx: PassContext, record: DeviceRecord, machine: DeviceMachine) -> None:
    """Resume a device this step suspended (or may have: a suspend that failed leaves it
    Suspending): fire the resume, resume, fire resumed. dm accepts resuming a running
    device, so this is right whether or not the kernel had suspended it."""
    with transition(machine, T.RESUME, T.RESUMED):
        ctx.thin(record).resume()


def activate(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """Map the thin id as a dm device (adopting it if the kernel already maps it so)."""
    with transition(ctx.machine(record.name), T.ACTIVATE, T.ACTIVATED):
        map_device(ctx, record, spec)


def map_device(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """activate's kernel effect, between its transitions (a batch brackets many)."""
    del spec
    # mkfs needs a writable device: a read-only one is made read-only after its mkfs.
    readonly = record.readonly and record.formatted
    ctx.thin(record).activate(_sectors(record), readonly, ctx.obs.pool_number)
    ctx.refresh(record)


def make_fs(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """mkfs, once in a device's life."""
    del spec
    make_filesystem(ctx.host, record.filesystem, ctx.thin(record).open_node(),
                    mkfs_options(record.name, record.filesystem, ctx.settings.fs_options))
    record.formatted = True
    record.fs_size_bytes = record.size_bytes
    ctx.store.save_device(record)
    log.info("device.formatted", name=record.name, filesystem=record.filesystem)


def grow_fs(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """Grow an unmounted filesystem to the device (ext4 offline, xfs on a temporary mount of
    its own); one the tools cannot grow gets a notice saying so."""
    del spec
    if grow_filesystem(ctx.host, record.filesystem, ctx.thin(record).open_node(),
                       ctx.settings.grow_mounts_path):
        record.fs_size_bytes = record.size_bytes
        log.info("device.filesystem_grown", name=record.name, size_bytes=record.size_bytes)
    else:
        record.notice = (f"the {record.filesystem} filesystem still has "
                         f"{record.fs_size_bytes} bytes: grow it where it is mounted")
        log.warning("device.filesystem_not_grown", name=record.name, notice=record.notice)
    ctx.store.save_device(record)


def reload(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """Swap in the table the record wants (read-only flag, length) via suspend/resume."""
    del spec
    machine = ctx.machine(record.name)
    thin = ctx.thin(record)
    kernel = ctx.kernel(record.name)
    thin.check_ours(kernel.info if kernel else None, "reload")
    if kernel is not None and kernel.table is not None and record.fs_size_bytes and \
            kernel.info.open_count > 0 and kernel.table.length < _sectors(record):
        record.notice = ("grown while open: grow its filesystem where it is mounted "
                         "(resize2fs DEVICE or xfs_growfs MOUNTPOINT)")
    # Suspend, load, resume: each stage the machine is not already past (a crash or a
    # failed attempt may have left it at any of them) runs, as its table allows.
    if machine.can(T.SUSPEND):
        machine.fire(T.SUSPEND)
    try:
        if machine.can(T.SUSPENDED):
            thin.suspend()
            machine.fire(T.SUSPENDED)
        if machine.can(T.RESUME):
            thin.load(_sectors(record), record.readonly)
            machine.fire(T.RESUME)
        thin.resume()
    except DmError:
        # Never leave it suspended: resume with the table it had (a resume after a failed
        # load swaps nothing in); the reload is tried again with the step's backoff.
        with suppress(DmError):
            _resume(ctx, record, machine)
        with suppress(DmError):
            ctx.refresh(record)
        raise
    ctx.refresh(record)
    machine.fire(T.RESUMED)


def deactivate(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """Remove the dm device; on the way to deletion (no spec), first discard its blocks if
    the config asks (only a writable live device can be discarded).

    A device that is still open (a commit while its user's mount is still there, an
    `active = false` while mounted) is deactivated the way containerd's devmapper does it:
    flushed (suspend and resume), then removed with the kernel's deferred remove, so it goes
    when its last opener closes it. A user's open mount is never a fault; until it closes,
    status shows the device as deactivating (deferred). Deletion does not take this path:
    a device to be deleted waits for its holder (decide.is_removal)."""
    with transition(ctx.machine(record.name), T.DEACTIVATE, T.DEACTIVATED):
        unmap_device(ctx, record, spec)


def unmap_device(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """deactivate's kernel effect, between its transitions (a batch brackets many)."""
    thin = ctx.thin(record)
    kernel = ctx.kernel(record.name)
    if kernel is not None and not thin.ours(kernel.info):
        # Someone else's device under our name: ours is not mapped, theirs is left alone.
        log.warning("device.not_ours", name=record.name, kernel_name=thin.kernel_name,
                    uuid=kernel.info.uuid, next="left alone")
        return
    if kernel is None:
        return
    if spec is None and ctx.settings.discard_blocks and not kernel.info.readonly:
        discard_blocks(ctx.host, thin.open_node())
    if spec is not None and kernel.info.open_count > 0:
        _deactivate_deferred(ctx, record, thin, kernel.info.open_count)
        return
    try:
        thin.remove()
    except DeviceBusy:
        if spec is None:
            raise
        # Opened since the pass looked (or udev probing it): the same as above.
        _deactivate_deferred(ctx, record, thin, None)
    else:
        ctx.forget_kernel_device(record.name)


def _deactivate_deferred(ctx: PassContext, record: DeviceRecord, thin: ThinDevice,
                         open_count: int | None) -> None:
    """Flush an open device and leave its removal to the kernel (at its last close)."""
    thin.flush()
    thin.remove(deferred=True)
    ctx.refresh(record)
    log.info("device.deactivation_deferred", name=record.name, open_count=open_count,
             next="the kernel removes it when its last opener closes it")


def remove(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """Delete the device: its dm device if any, then its thin id and blocks (a batch of one:
    see `reconcile.batch` for many)."""
    del spec
    machine = ctx.machine(record.name)
    if machine.can(T.REMOVE):
        # A create a failed attempt left pending is settled first: had it happened, its thin
        # id is deleted below, not leaked; had it not, its intent must not outlive the
        # device (a restart would credit the id, given since to another, to this name).
        settle_pending(ctx, record)
        machine.fire(T.REMOVE)
    elif settle_pending(ctx, record):
        return
    unmap_to_delete(ctx, record)
    if not deletes_id(record):
        machine.fire(T.REMOVED)
        return
    intend(ctx, record, PoolOp.DELETE)
    before = ctx.ledger.transaction_id
    after = before + 1 if send_delete(ctx, record) else before
    if after != before:
        ctx.pool.set_transaction_id(before, after)
    commit_pool_change(ctx, record, PoolOp.DELETE, after)


def deletes_id(record: DeviceRecord) -> bool:
    """Whether removing the device deletes a thin id from the pool."""
    return record.provisioned and record.device_id is not None


def unmap_to_delete(ctx: PassContext, record: DeviceRecord) -> None:
    """Remove a device's dm device before its thin id is deleted, if it is ours."""
    kernel = ctx.kernel(record.name)
    if record.device_id is None or kernel is None:
        return
    thin = ctx.thin(record)
    if thin.ours(kernel.info):
        thin.remove()
        ctx.forget_kernel_device(record.name)
    else:
        log.warning("device.not_ours", name=record.name, kernel_name=thin.kernel_name,
                    uuid=kernel.info.uuid, next="left alone; only our thin id is deleted")


def send_delete(ctx: PassContext, record: DeviceRecord) -> bool:
    """The delete message alone; False when the pool no longer had the id (what the step
    wanted, and no change: the transaction id is not to move for it)."""
    assert record.device_id is not None
    try:
        ctx.pool.send_delete(record.device_id)
    except NoData:
        return False
    return True


def vanished(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """The kernel lost a live device (removed behind our back, a reboot): note it."""
    del spec
    ctx.machine(record.name).fire(T.VANISHED)


def recreate(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """A removed name whose spec came back: a new life under the same name."""
    assert spec is not None
    copy_spec(record, spec)
    record.device_id = None
    record.origin_id = None
    record.formatted = False
    record.fs_size_bytes = 0
    record.notice = None
    ctx.machine(record.name).fire(T.RECREATE)


def retry(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """A Faulty device whose spec changed: take the new spec and try again."""
    assert spec is not None
    settle_pending(ctx, record)
    if record.provisioned:
        apply_spec(record, spec)
    else:
        copy_spec(record, spec)
    ctx.machine(record.name).fire(T.RETRY)


STEPS: dict[Step, StepFunction] = {
    Step.CREATE: create,
    Step.ACTIVATE: activate,
    Step.MKFS: make_fs,
    Step.RELOAD: reload,
    Step.GROW_FS: grow_fs,
    Step.DEACTIVATE: deactivate,
    Step.REMOVE: remove,
    Step.VANISHED: vanished,
    Step.RECREATE: recreate,
    Step.RETRY: retry,
}
