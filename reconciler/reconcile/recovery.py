"""Make the store and the pool's metadata agree: after a crash, and at every pass after that.

A write-ahead intent names the pool change that was in flight and the transaction id it moves
the pool to. The kernel's transaction id and its list of thin ids tell whether the change
happened: then it is recorded (and a missing set_transaction_id sent); else it is forgotten,
and the device's in-flight state makes the next step do it again. Later passes only take the
kernel's transaction id (someone else may have moved it) and re-read the pool's ids when they
may have changed.
"""

from __future__ import annotations

import structlog

from reconciler.dm.pool import PoolOp
from reconciler.reconcile.pass_context import PassContext
from reconciler.reconcile.steps import record_pool_change, save_transaction_id

log = structlog.get_logger(__name__)


def recover(ctx: PassContext) -> None:
    """Settle every intent a crash left (see the module docstring)."""
    pool_ids = ctx.read_pool_ids()
    kernel_txn = ctx.obs.pool.transaction_id if ctx.obs.pool else 0
    for intent in ctx.store.intents():
        op = PoolOp(intent.op)
        record = ctx.records.get(intent.device)
        visible = (intent.thin_id in pool_ids) == (op != PoolOp.DELETE)
        if kernel_txn == intent.from_txn and visible:
            # The message went through, set_transaction_id did not: finish it.
            ctx.pool.set_transaction_id(intent.from_txn, intent.to_txn)
            kernel_txn = intent.to_txn
        happened = kernel_txn >= intent.to_txn and visible
        log.warning("recovery.intent", name=intent.device, op=op.value,
                    thin_id=intent.thin_id, kernel_transaction_id=kernel_txn,
                    outcome="rolled forward" if happened else "rolled back",
                    next="recording what the pool did" if happened
                    else "the step runs again")
        with ctx.store.transaction():
            save_transaction_id(ctx, kernel_txn)
            ctx.store.drop_intent(intent.device)
            if happened and record is not None:
                record_pool_change(ctx, record, op)
    sync_transaction_id(ctx, kernel_txn)


def sync_transaction_id(ctx: PassContext, kernel: int | None = None) -> None:
    """Take the kernel's transaction id (as observed, or as recovery left it)."""
    record = ctx.store.pool(ctx.settings.pool_name)
    if kernel is None:
        kernel = ctx.obs.pool.transaction_id if ctx.obs.pool else 0
    if record is not None and record.transaction_id != kernel:
        log.warning("pool.transaction_id_differs", stored=record.transaction_id,
                    kernel=kernel, next="continuing from the kernel's value")
        record.transaction_id = kernel
        ctx.store.save_pool(record)
    ctx.ledger.transaction_id = kernel
