"""Group commit: one step for many devices at once, durable per batch, recovered per device.

A pass groups the devices whose next step is the same first attempt (a create, an activation,
a deactivation, a removal: `batchable`) and runs them as one batch, as databases do with
commits: one store transaction writes every device's in-flight state (and, for a pool change,
its intent); then every kernel call, device by device; for a pool change, one
`set_transaction_id T T+1` for every message that went through; then one store transaction
records every outcome. Per device, that is two fsync'd commits shared by the batch instead of
two or three of its own, and one transaction id instead of one per device.

Recovery still decides each device alone (`intents.settle_intent`): every intent of a batch
names the same `T -> T+1`, and the pool's metadata (is the thin id there?) says which of the
messages went through. A device whose kernel call fails is handed to `failed` (the drive
loop's retry or Faulty, or its containment) and leaves the batch; the others go on. A retry
of an in-flight state, and the steps that are no batch (mkfs, reload, grow), run per device
(`steps.STEPS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reconciler.reconcile.intents import commit_pool_changes, intend
from reconciler.reconcile.pass_context import PassContext
from reconciler.reconcile.steps import (
    create_op,
    deletes_id,
    map_device,
    send_create,
    send_delete,
    take_thin_id,
    unmap_device,
    unmap_to_delete,
)
from reconciler.specs import DeviceSpec
from reconciler.states import DeviceState, Step, Trigger
from reconciler.store import DeviceRecord
from reconciler.vocabulary import PoolOp

S = DeviceState
T = Trigger

Member = tuple[DeviceRecord, DeviceSpec | None]
# Told of a device whose kernel call raised: it leaves the batch, the others go on.
Failed = Callable[[DeviceRecord, Exception], None]
# A batch: its members, then what to do with one that failed; returns those that took it.
BatchFunction = Callable[[PassContext, Sequence[Member], Failed], list[DeviceRecord]]

# The states from which a step is a first attempt, which a batch may take. Any other (an
# in-flight state left by a crash or a failed attempt, Faulty) is a retry: run per device,
# settling what its attempt left first.
FIRST_ATTEMPT: dict[Step, frozenset[DeviceState]] = {
    Step.CREATE: frozenset({S.UNKNOWN}),
    Step.ACTIVATE: frozenset({S.CREATED, S.DEACTIVATED}),
    Step.DEACTIVATE: frozenset({S.ACTIVATED, S.RESUMED}),
    Step.REMOVE: frozenset({S.UNKNOWN, S.CREATED, S.DEACTIVATED}),
}
# Devices in one batch at most. A pass asks whether to stop (and pings systemd's watchdog)
# between batches, not inside one: 256 kernel calls stay far below WatchdogSec, and a burst
# of 10,000 devices still commits twice per 256.
MAX_BATCH = 256
# The steps whose batch writes intents: a device with one left must settle it first.
WRITES_INTENTS = frozenset({Step.CREATE, Step.REMOVE})


def batchable(step: Step, record: DeviceRecord) -> bool:
    """Whether `step` is a first attempt for this device, which a batch may take."""
    return record.state in FIRST_ATTEMPT.get(step, frozenset())


def run_batch(ctx: PassContext, step: Step, members: Sequence[Member],
              failed: Failed) -> list[DeviceRecord]:
    """Run `step` for every member as one batch; the records that took it."""
    return BATCHES[step](ctx, members, failed)


def cleared(record: DeviceRecord) -> None:
    """A step succeeded: the device's failed attempts are forgotten (saved with its next
    transition)."""
    record.attempts = 0
    record.retry_at = None
    if record.state != S.FAULTY:
        record.error = None


def _each(ctx: PassContext, records: Sequence[DeviceRecord], call: Callable[[DeviceRecord], bool],
          failed: Failed) -> tuple[list[DeviceRecord], list[DeviceRecord]]:
    """Run one device's kernel call after another: (those that succeeded, those whose call
    changed the pool's metadata). A failure leaves the batch."""
    done: list[DeviceRecord] = []
    changed: list[DeviceRecord] = []
    for record in records:
        try:
            moved = call(record)
        except Exception as exc:  # noqa: BLE001 - handed to `failed`: the drive loop classifies or contains it
            failed(record, exc)
        else:
            done.append(record)
            if moved:
                changed.append(record)
        finally:
            ctx.release_machines()  # an origin's, taken to suspend it
    return done, changed


def _move_transaction_id(ctx: PassContext, before: int, done: list[DeviceRecord],
                         changed: list[DeviceRecord], failed: Failed) -> int:
    """One set_transaction_id for every message that went through; the pool's transaction
    id after. None went through: it stays. Refused: every device whose message went through
    fails (its intent stays, for its retry to settle: the change is there, the id not)."""
    if not changed:
        return before
    try:
        ctx.pool.set_transaction_id(before, before + 1)
    except Exception as exc:  # noqa: BLE001 - handed to `failed`: the drive loop classifies or contains it
        names = {record.name for record in changed}
        done[:] = [record for record in done if record.name not in names]
        for record in changed:
            failed(record, exc)
        return before
    return before + 1


def create_batch(ctx: PassContext, members: Sequence[Member],
                 failed: Failed) -> list[DeviceRecord]:
    """Provision a thin id for each member (create_thin or create_snap)."""
    records: list[DeviceRecord] = []
    for record, _ in members:
        try:
            take_thin_id(ctx, record)
        except Exception as exc:  # noqa: BLE001 - no free id: that device's error alone
            failed(record, exc)
        else:
            records.append(record)
    if not records:
        return []
    before = ctx.ledger.transaction_id
    with ctx.store.transaction():
        for record in records:
            ctx.fire(record.name, T.CREATE)  # the id, with state Creating...
            intend(ctx, record, create_op(record))  # ...and the change, together

    def send(record: DeviceRecord) -> bool:
        send_create(ctx, record)
        return True

    done, changed = _each(ctx, records, send, failed)
    after = _move_transaction_id(ctx, before, done, changed, failed)
    for record in done:
        cleared(record)
    commit_pool_changes(ctx, [(record, create_op(record)) for record in done], after)
    return done


def remove_batch(ctx: PassContext, members: Sequence[Member],
                 failed: Failed) -> list[DeviceRecord]:
    """Delete each member: its dm device if any, then its thin id and blocks."""
    records = [record for record, _ in members]
    before = ctx.ledger.transaction_id
    with ctx.store.transaction():
        for record in records:
            ctx.fire(record.name, T.REMOVE)
            if deletes_id(record):
                intend(ctx, record, PoolOp.DELETE)

    def delete(record: DeviceRecord) -> bool:
        unmap_to_delete(ctx, record)
        return deletes_id(record) and send_delete(ctx, record)

    done, changed = _each(ctx, records, delete, failed)
    after = _move_transaction_id(ctx, before, done, changed, failed)
    deleted = [record for record in done if deletes_id(record)]
    with ctx.store.transaction():
        for record in done:
            cleared(record)
            if not deletes_id(record):  # no thin id in the pool: nothing more to record
                ctx.fire(record.name, T.REMOVED)
        commit_pool_changes(ctx, [(record, PoolOp.DELETE) for record in deleted], after)
    return done


def _bracketed(begin: Trigger, end: Trigger,
               effect: Callable[[PassContext, DeviceRecord, DeviceSpec | None], None]
               ) -> BatchFunction:
    """A batch of a step that changes no pool metadata: every `begin` in one transaction,
    the kernel effects, every `end` in one transaction."""

    def batch(ctx: PassContext, members: Sequence[Member],
              failed: Failed) -> list[DeviceRecord]:
        with ctx.store.transaction():
            for record, _ in members:
                ctx.fire(record.name, begin)
        specs = {record.name: spec for record, spec in members}

        def call(record: DeviceRecord) -> bool:
            effect(ctx, record, specs[record.name])
            return False

        done, _ = _each(ctx, [record for record, _ in members], call, failed)
        with ctx.store.transaction():
            for record in done:
                cleared(record)
                ctx.fire(record.name, end)
        return done

    return batch


BATCHES: dict[Step, BatchFunction] = {
    Step.CREATE: create_batch,
    Step.ACTIVATE: _bracketed(T.ACTIVATE, T.ACTIVATED, map_device),
    Step.DEACTIVATE: _bracketed(T.DEACTIVATE, T.DEACTIVATED, unmap_device),
    Step.REMOVE: remove_batch,
}
