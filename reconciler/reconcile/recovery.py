"""Make the store and the pool's metadata agree: after a crash, and at every pass after that.

A write-ahead intent names the pool change that was in flight and the transaction id it moves
the pool to. The kernel's transaction id and its list of thin ids tell whether the change
happened: then it is recorded (and a missing set_transaction_id sent); else it is forgotten,
and the device's in-flight state makes the next step do it again. A batch (group commit)
leaves one intent per device, all naming the same range: each is settled alone by its own
thin id, the first visible one sending the batch's set_transaction_id if the crash came
before it, so the changes that reached the pool are kept and the others redone.

Later passes only take the kernel's transaction id (someone else may have moved it) and re-read
the pool's ids when they may have changed.
"""

from __future__ import annotations

import structlog

from reconciler.reconcile.intents import settle_intent
from reconciler.reconcile.pass_context import PassContext

log = structlog.get_logger(__name__)


def recover(ctx: PassContext) -> None:
    """Settle every intent a crash left (see the module docstring and intents.settle_intent)."""
    pool_ids = ctx.read_pool_ids()
    kernel_txn = ctx.obs.pool.transaction_id if ctx.obs.pool else 0
    for intent in ctx.store.intents():
        _, kernel_txn = settle_intent(ctx, intent, pool_ids, kernel_txn)
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
