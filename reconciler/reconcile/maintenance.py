"""What operators ask for (retry, gc, adopt) and what nobody owns (orphans).

Requests are queued in the store by `reconciler retry/gc/adopt` and run here, in the thread
that owns the pool, at the start of a pass. Orphans are thin ids and dm devices of our pool
that the store does not manage: recorded for `status`, and never deleted except by an
explicit `gc --orphans`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import structlog

from reconciler.dm.errors import DmError
from reconciler.dm.pool import parse_thin_uuid
from reconciler.dm.thin import ThinDevice
from reconciler.dm.udev_sync import NodeWait
from reconciler.failures import ClassifiedError
from reconciler.reconcile.decide import node_wait
from reconciler.reconcile.desired import copy_spec, new_record
from reconciler.reconcile.holds import RemovalGuard, Selection
from reconciler.reconcile.intents import save_transaction_id, settle_pending
from reconciler.reconcile.observe import KernelDevice
from reconciler.reconcile.pass_context import PassContext
from reconciler.reconcile.steps import remove
from reconciler.specs import SpecSet
from reconciler.states import DeviceState, Trigger
from reconciler.store import OrphanKind, OrphanRecord, RequestKind, UnknownKind
from reconciler.vocabulary import ThinId

S = DeviceState
log = structlog.get_logger(__name__)


class RequestRefused(Exception):
    """An operator request that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class RequestOutcome:
    """What one request did (`done`), or why it was not done (`error`); the devices it
    concerns, whose state after the pass the operator is told."""

    done: str = ""
    error: str | None = None
    names: tuple[str, ...] = ()


def take_requests(ctx: PassContext, load_specs: Callable[[], SpecSet],
                  outcomes: dict[int, RequestOutcome] | None = None) -> None:
    """Run every queued operator request; a refused or failed one is logged and dropped.
    Each one's outcome goes to `outcomes` by request id (the control socket answers with it).
    A confirmed removal is marked in the store: the pass (this one) does it.
    """
    for request in ctx.store.take_requests():
        outcome = _take(ctx, request.kind, request.name, request.arg, load_specs)
        if outcomes is not None:
            outcomes[request.id] = outcome


def _take(ctx: PassContext, kind: RequestKind | UnknownKind, name: str, arg: int | None,
          load_specs: Callable[[], SpecSet]) -> RequestOutcome:
    """Run one request; never raises."""
    bound = log.bind(request=str(kind), name=name)
    if isinstance(kind, UnknownKind):
        bound.warning("request.unknown", next="dropped")
        return RequestOutcome(error=f"unknown request {kind.text!r}")
    try:
        if kind == RequestKind.CONFIRM_REMOVALS:
            return confirm_removals(ctx, name)
        if kind == RequestKind.RETRY:
            return RequestOutcome(retry(ctx, name), names=(name,))
        if kind == RequestKind.GC_ORPHANS:
            return RequestOutcome(gc_orphans(ctx))
        if kind == RequestKind.GC_FAULTY:
            released = gc_faulty(ctx)
            return RequestOutcome(f"{len(released)} Faulty devices released",
                                  names=tuple(released))
        if arg is not None:
            adopt(ctx, name, arg, load_specs())
            return RequestOutcome(f"thin id {arg} adopted as {name}", names=(name,))
        bound.warning("request.unknown", reason="adopt without a thin id", next="dropped")
        return RequestOutcome(error="adopt without a thin id")
    except (ClassifiedError, RequestRefused) as exc:
        bound.error("request.failed", error=str(exc), next="fix and ask again")
        return RequestOutcome(error=str(exc), names=(name,) if kind in _NAMED else ())
    except Exception as exc:  # noqa: BLE001 - one request's bug is not the pass's
        error = f"{type(exc).__name__}: {exc}"
        bound.exception("request.failed", error=error, next="reported; the pass goes on")
        return RequestOutcome(error=error, names=(name,) if kind in _NAMED else ())


# Requests about one device, named by the request.
_NAMED = frozenset({RequestKind.RETRY, RequestKind.ADOPT})


def confirm_request(names: Iterable[str], selection: Selection | None) -> str:
    """A confirm-removals request as queued: the names, and the config the operator ran
    with (JSON). Its reader is `confirm_removals`."""
    body: dict[str, object] = {"names": sorted(set(names))}
    if selection is not None:
        body["selection"] = selection.text
    return json.dumps(body)


def confirm_removals(ctx: PassContext, request: str) -> RequestOutcome:
    """Confirm the held removals a request names, if held under the config it was sent
    with and this daemon runs with. A bare JSON list is an older CLI's: it names no config.
    """
    try:
        body = json.loads(request)
    except ValueError:
        body = None
    selection = None
    if isinstance(body, dict):
        selection = Selection.parse(body.get("selection"))
        body = body.get("names")
    names = [n for n in body if isinstance(n, str)] if isinstance(body, list) else []
    confirmed, refused = RemovalGuard(ctx.settings, ctx.store).confirm(names, selection)
    log.info("request.removals_confirmed", names=confirmed, refused=refused or None)
    return RequestOutcome(f"{len(confirmed)} removals confirmed",
                          error="; ".join(refused) if refused else None,
                          names=tuple(confirmed))


def retry(ctx: PassContext, name: str) -> str:
    """Take a Faulty device out of Faulty, back to where the pool says it is."""
    record = ctx.records.get(name)
    if record is None or record.state != S.FAULTY:
        raise RequestRefused(f"{name!r} is not Faulty "
                             f"({record.state if record else 'no such device'})")
    log.info("request.retry", name=name)
    failed_at = record.error_step  # the transition clears it
    # A change its last attempt started may have happened: the machine must know.
    settle_pending(ctx, record)
    ctx.machine(name).fire(Trigger.RETRY)
    return f"{name} taken out of Faulty" + (f" (it had failed at {failed_at})"
                                             if failed_at else "")


def gc_orphans(ctx: PassContext) -> str:
    """Delete thin ids the pool has and the store does not manage, unless one is in use;
    says which."""
    deleted: list[int] = []
    kept: list[int] = []
    in_use = {d.table.device_id for d in ctx.obs.devices.values()
              if d.table is not None and d.table.pool == ctx.obs.pool_number}
    for thin_id in sorted(ctx.read_pool_ids() - ctx.managed_ids()):
        if thin_id in in_use:
            log.warning("gc.orphan_in_use", thin_id=thin_id,
                        next="remove its dm device first; left alone")
            kept.append(thin_id)
            continue
        save_transaction_id(ctx, ctx.pool.delete(ThinId(thin_id), ctx.ledger.transaction_id))
        assert ctx.ledger.ids is not None
        ctx.ledger.ids.discard(thin_id)
        log.info("gc.orphan_deleted", thin_id=thin_id)
        deleted.append(thin_id)
    text = f"orphan thin ids deleted: {deleted or 'none'}"
    return text + (f"; left in use: {kept}" if kept else "")


def gc_faulty(ctx: PassContext) -> list[str]:
    """Release every Faulty device: its dm device, its thin id, its row (Removed); returns
    their names."""
    released = []
    for name, record in sorted(ctx.records.items()):
        if record.state == S.FAULTY:
            log.info("gc.faulty", name=name, thin_id=record.device_id)
            released.append(name)
            remove(ctx, record, None)
    return released


def adopt(ctx: PassContext, name: str, thin_id: int, spec_set: SpecSet) -> None:
    """Make orphan thin id `thin_id` the device `name`, as its spec file describes it."""
    spec = spec_set.specs.get(name)
    record = ctx.records.get(name)
    if spec is None:
        raise RequestRefused(f"adopt {name}: write a valid {name}.toml in "
                             f"{ctx.settings.specs_path} first")
    if record is not None and record.state != S.REMOVED:
        raise RequestRefused(f"adopt {name}: a device of that name exists ({record.state})")
    if thin_id not in ctx.read_pool_ids() or thin_id in ctx.managed_ids():
        raise RequestRefused(f"adopt {name}: thin id {thin_id} is not an orphan of the pool")
    if record is None:
        record = new_record(name, spec, ctx.clock())
    else:
        copy_spec(record, spec)
    record.device_id = ThinId(thin_id)
    record.origin_id = None
    record.provisioned = True
    # Its blocks are someone's data: never mkfs it, never assume its filesystem's size.
    record.formatted = True
    record.fs_size_bytes = 0
    ctx.records[name] = record
    ctx.store.save_device(record)
    ctx.machine(name).fire(Trigger.ADOPT)
    log.info("request.adopted", name=name, thin_id=thin_id)


def _ours(ctx: PassContext, candidates: Iterable[tuple[str, KernelDevice]]
          ) -> Iterator[tuple[str, ThinDevice]]:
    """The `candidates` (dm name, as observed) under our pool's prefix with our uuid, as ours.
    Callers pick candidates cheaply first: a pass sees every device, 50,000 at scale."""
    prefix = f"{ctx.settings.pool_name}-"
    for kname, device in sorted(candidates):
        if not kname.startswith(prefix):
            continue
        thin_id = parse_thin_uuid(ctx.settings.pool_name, device.info.uuid)
        if thin_id is None:
            continue  # not ours
        name = kname.removeprefix(prefix)
        yield kname, ThinDevice(ctx.pool, name, thin_id, node_wait(name))


def resume_suspended(ctx: PassContext) -> None:
    """Resume every device of ours the kernel shows suspended. Within a pass no step leaves
    one so (each suspend is paired with a resume on every path), so one found at the start
    of a pass was left by a crash or by a resume the kernel refused: its filesystem's
    readers and writers hang until it runs again. Only devices with our uuid are touched."""
    suspended = [(k, d) for k, d in ctx.obs.devices.items() if d.info.suspended]
    for kname, thin in _ours(ctx, suspended):
        try:
            thin.resume()
        except DmError as exc:
            log.error("device.still_suspended", kernel_name=kname, error=str(exc),
                      next="tried again next pass")
            continue
        log.warning("device.resumed", kernel_name=kname, reason="found suspended",
                    next="its steps go on as their state says")
        seen = thin.observe()
        if seen is not None:
            ctx.obs.devices[kname] = KernelDevice(info=seen[0], table=seen[1])


def remake_nodes(ctx: PassContext) -> None:
    """Make the /dev/mapper node of every running device of ours that udev leaves alone
    (NodeWait.NODE), at the daemon's first pass. libdevmapper makes such a node in this
    process after the call (a pass's, when its udev batch settles), so a crash in between,
    or a pod's fresh /dev, leaves a mapped device without one, and nobody else makes it.
    A resume of a running device changes nothing in the kernel; libdevmapper makes the node
    if it is missing or wrong. (Suspended ones: resume_suspended.)"""
    prefix = f"{ctx.settings.pool_name}-"
    running = [(k, d) for k, d in ctx.obs.devices.items() if not d.info.suspended
               and node_wait(k.removeprefix(prefix)) is NodeWait.NODE]
    for kname, thin in _ours(ctx, running):
        try:
            thin.resume()
        except DmError as exc:
            log.error("device.node_not_made", kernel_name=kname, error=str(exc),
                      next="made when the device is next activated or resumed")


def find_orphans(ctx: PassContext) -> None:
    """Record what our pool holds that the store does not manage; never delete it."""
    now = ctx.clock()
    orphans = [OrphanRecord(OrphanKind.THIN_ID, str(i), ThinId(i), now)
               for i in sorted((ctx.ledger.ids or set()) - ctx.managed_ids())]
    prefix = f"{ctx.settings.pool_name}-"
    # prefix + name is ctx.kernel_name(name), without a call per device of a resync; told
    # by the record of what follows the prefix, not by a set of every managed device's dm
    # name (50,000 strings made and dropped by each full pass).
    records, cut = ctx.records, len(prefix)

    def managed(kname: str) -> bool:
        record = records.get(kname[cut:]) if kname.startswith(prefix) else None
        return record is not None and record.state != S.REMOVED

    for kname in sorted(k for k in ctx.obs.devices if not managed(k)):
        device = ctx.obs.devices[kname]
        ours = device.table is not None and device.table.pool == ctx.obs.pool_number
        if kname.startswith(prefix) or ours:
            # A device we activated names its thin id in its uuid even without a table.
            thin_id = device.table.device_id if device.table is not None \
                else parse_thin_uuid(ctx.settings.pool_name, device.info.uuid)
            orphans.append(OrphanRecord(
                OrphanKind.DEVICE, kname, None if thin_id is None else ThinId(thin_id), now))
    if orphans:
        log.warning("pool.orphans", orphans=[o.name for o in orphans],
                    next="left alone: `reconciler gc --orphans` or `reconciler adopt`")
    ctx.store.replace_orphans(orphans)
