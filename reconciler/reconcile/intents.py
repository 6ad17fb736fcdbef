"""The crash protocol: every pool metadata change is an intent first, then a commit.

Pool metadata changes (create_thin, create_snap, delete) are the ones a crash could leave
ambiguous, so each is first written as an intent (`intend`: the thin id, and the transaction
ids the pool moves from and to) in the same store transaction as the device's in-flight
state, and `commit_pool_changes` records the outcome. Changes are made in batches (group
commit, `reconcile.batch`): one store transaction writes the intents of every device of a
phase, all with the same `from_txn = T` and `to_txn = T + 1`; then every message; then one
`set_transaction_id T T+1`; then one transaction records every outcome. A single device's
step is a batch of one.

An intent left behind (a crash, a failed attempt) is settled from what the pool shows
(`settle_intent`), device by device: the change happened when its thin id is visible (there
after a create, gone after a delete) and the pool's transaction id reached `to_txn`; a
change that is visible while the id is still `from_txn` (the crash fell between the messages
and the batch's set_transaction_id) is finished by sending it. Each device is decided alone:
in a batch cut short, the changes sent are rolled forward and the others back. Start-up
recovery (`reconcile.recovery`) and a step's own retry (`settle_pending`) both settle this way,
so a retry never sends a change the pool already took. Thin ids are never handed out while
the pool holds them (`PassContext.allocate_id`), so a visible id is always this intent's.

Sits between the steps and batches (which use it) and the pass context (whose store, pool and
ledger it writes); it runs no step itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from reconciler.reconcile.pass_context import PassContext
from reconciler.states import Trigger
from reconciler.store import DeviceRecord, IntentRecord
from reconciler.vocabulary import Filesystem, PoolOp

T = Trigger
log = structlog.get_logger(__name__)


def intend(ctx: PassContext, record: DeviceRecord, op: PoolOp) -> None:
    """Write the change about to be made, and the transaction id its batch moves the pool to
    (from the ledger's: every intent of one batch names the same two)."""
    assert record.device_id is not None
    before = ctx.ledger.transaction_id
    ctx.store.save_intent(IntentRecord(
        device=record.name, op=op, thin_id=record.device_id, origin_id=record.origin_id,
        from_txn=before, to_txn=before + 1, at=ctx.clock(),
    ))


def save_transaction_id(ctx: PassContext, value: int) -> None:
    """The pool's transaction id moved to `value` (in memory and in the store)."""
    ctx.ledger.transaction_id = value
    ctx.store.save_transaction_id(ctx.settings.pool_name, value)


def record_pool_change(ctx: PassContext, record: DeviceRecord, op: PoolOp) -> None:
    """What the store learns once a pool change is known to be done."""
    if op == PoolOp.DELETE:
        record.provisioned = False
        done = T.REMOVED
    else:
        record.provisioned = True
        # Snapshots carry their parent's filesystem; devices without one need no mkfs.
        record.formatted = record.parent is not None or record.filesystem == Filesystem.NONE
        done = T.CREATED
    if ctx.can(record.name, done):
        ctx.fire(record.name, done)
    else:
        ctx.store.save_device(record)


def settle_intent(ctx: PassContext, intent: IntentRecord, pool_ids: set[int],
                  kernel_txn: int) -> tuple[bool, int]:
    """Decide from the pool whether the change an intent names happened; record it if so
    (sending the set_transaction_id that may be missing), forget the intent either way.
    Returns whether it happened and the pool's transaction id after.

    The kernel's transaction id and its list of thin ids tell: the change is visible (the
    id exists after a create, is gone after a delete) and the transaction id reached the
    intent's target. Start-up recovery and a step's own retry both settle this way, so a
    retry never sends a change the pool already took.
    """
    op = intent.op
    record = ctx.records.get(intent.device)
    visible = (intent.thin_id in pool_ids) == (op != PoolOp.DELETE)
    if kernel_txn == intent.from_txn and visible:
        # The message went through, set_transaction_id did not: finish it.
        ctx.pool.set_transaction_id(intent.from_txn, intent.to_txn)
        kernel_txn = intent.to_txn
    happened = kernel_txn >= intent.to_txn and visible
    log.warning("pool.intent_settled", name=intent.device, op=op, thin_id=intent.thin_id,
                kernel_transaction_id=kernel_txn,
                outcome="rolled forward" if happened else "rolled back",
                next="recording what the pool did" if happened else "the step runs again")
    with ctx.store.transaction():
        save_transaction_id(ctx, kernel_txn)
        ctx.store.drop_intent(intent.device)
        if happened and record is not None:
            record_pool_change(ctx, record, op)
    return happened, kernel_txn


def settle_pending(ctx: PassContext, record: DeviceRecord) -> bool:
    """Before a step runs again (its own retry, or a device leaving Faulty): whether the
    pool change its failed attempt started did happen (then it is recorded now, and must not
    be sent again). Costs a status and a thin_ls, and only when an intent is left."""
    intent = ctx.store.intent(record.name)
    if intent is None:
        return False
    kernel_txn = ctx.pool.status().transaction_id
    happened, _ = settle_intent(ctx, intent, ctx.read_pool_ids(), kernel_txn)
    return happened


def commit_pool_change(ctx: PassContext, record: DeviceRecord, op: PoolOp,
                       transaction_id: int) -> None:
    """The pool did `op` for one device (see commit_pool_changes)."""
    commit_pool_changes(ctx, [(record, op)], transaction_id)


def commit_pool_changes(ctx: PassContext, changes: Sequence[tuple[DeviceRecord, PoolOp]],
                        transaction_id: int) -> None:
    """The pool made each change (a batch's): its new transaction id, the devices' new
    states and the end of their intents are one store transaction."""
    ids = ctx.ledger.ids
    if ids is not None:
        for record, op in changes:
            assert record.device_id is not None
            if op == PoolOp.DELETE:
                ids.discard(record.device_id)
            else:
                ids.add(record.device_id)
    with ctx.store.transaction():
        save_transaction_id(ctx, transaction_id)
        for record, op in changes:
            ctx.store.drop_intent(record.name)
            record_pool_change(ctx, record, op)
