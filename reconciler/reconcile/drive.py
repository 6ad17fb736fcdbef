"""Driving devices: a pass's two sweeps over them, and one device's step loop (decide, run
the step, and on failure retry or Faulty, as `retry.verdict` says).

The sweeps are breadth-first (`drive_all`): every device is provisioned and activated before
any node is opened, so a burst of filesystems waits for udev once. Each device is driven
alone: an error nobody foresaw stays with it (`drive_contained`).

A failed step is never waited for inside a pass: a temporary error stores when to try again
(`retry_at`, exponential backoff) and the pass moves on; a permanent error, or the last of
`max_attempts` temporary ones, marks the device Faulty with the step and the count. A busy
removal is the exception: it retries every `retry_max` for as long as it takes and never goes
Faulty, because only the holder of the device can end it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import structlog

from reconciler.failures import ClassifiedError
from reconciler.reconcile.decide import (
    Decision,
    Planned,
    Wait,
    describe,
    is_removal,
    next_step,
    spec_changed,
    takes_spec_now,
)
from reconciler.reconcile.desired import new_record, take_spec
from reconciler.reconcile.pass_context import PassContext, PassResult, StepFailed, Stopped
from reconciler.reconcile.retry import Retry, verdict
from reconciler.reconcile.steps import STEPS
from reconciler.specs import DeviceSpec
from reconciler.states import DeviceState, Step, Trigger
from reconciler.store import DeviceRecord

S = DeviceState
log = structlog.get_logger(__name__)

# A device takes at most this many steps in one pass (create, activate, mkfs, reload...).
MAX_STEPS = 16
WAITING_PREFIX = "waiting for parent"
# Steps that open the device's node, which udev must have made first. A pass holds them back
# until every device has been provisioned and activated, then waits for udev once: a burst of
# N filesystems costs one udev round trip instead of N (see drive_all).
OPENS_NODE: frozenset[Step] = frozenset({Step.MKFS, Step.GROW_FS})


def decide(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> Decision:
    """next_step with what this pass knows of the kernel and of the device's parent."""
    return next_step(*ctx.inputs(record, spec))


def plan_line(ctx: PassContext, name: str, spec: DeviceSpec | None) -> Planned:
    """What `reconciler plan` says the next pass does to a device: the decision drive would
    take first, on a copy of its record (nothing is written)."""
    record = ctx.records.get(name)
    if record is None:
        assert spec is not None
        record = new_record(name, spec, 0.0)
    elif takes_spec_now(record, spec):
        # As drive does: a Faulty device's record keeps its old spec, which makes the
        # changed one a RETRY.
        assert spec is not None
        record = replace(record)
        take_spec(record, spec)
    return describe(record, decide(ctx, record, spec), wanted=spec is not None)


def schedule_retries(result: PassResult, records: Mapping[str, DeviceRecord],
                     max_attempts: int) -> None:
    """Note in the result when the first pending device may be tried again, and the first
    among those with attempts left (what `run --once` waits for)."""
    for name in result.pending:
        record = records.get(name)
        if record is None or record.retry_at is None:
            continue
        at = record.retry_at
        result.next_retry_at = min(at, result.next_retry_at or at)
        if record.attempts < max_attempts:
            result.next_budgeted_retry_at = min(at, result.next_budgeted_retry_at or at)


def record_for(ctx: PassContext, name: str, spec: DeviceSpec | None) -> DeviceRecord:
    """The device's record; a new one (saved) for a spec nobody has made yet."""
    record = ctx.records.get(name)
    if record is None:
        assert spec is not None, f"{name}: no record and no spec"
        record = new_record(name, spec, ctx.clock())
        ctx.records[name] = record
        ctx.store.save_device(record)
    return record


def drive(ctx: PassContext, name: str, spec: DeviceSpec | None, result: PassResult,
          held: set[str] | None = None) -> None:
    """Take a device as far toward its spec (None: removal) as it can go in this pass.

    With `held` (a pass's first sweep), stop before a step in OPENS_NODE, or a wait for a
    parent that stopped so, and add the name to `held`: the pass drives it again later."""
    ctx.settled.forget(name)
    record = record_for(ctx, name, spec)
    if record.retry_at is not None and record.retry_at > ctx.clock() and not spec_changed(
            record, spec):
        result.pending[name] = record.error or "waiting to retry"
        return
    if spec is not None and takes_spec_now(record, spec):
        take_spec(record, spec)
        ctx.store.save_device(record)
    for _ in range(MAX_STEPS):
        if ctx.stop_requested():
            raise Stopped
        decision = decide(ctx, record, spec)
        if held is not None and (decision in OPENS_NODE or (
                isinstance(decision, Wait) and record.parent in held)):
            held.add(name)
            return
        if isinstance(decision, Wait):
            _wait(ctx, record, decision, result)
            return
        if decision is None:
            _note_settled(ctx, record, spec)
            break
        try:
            run_step(ctx, record, spec, decision)
        except StepFailed as failed:
            if record.state == S.FAULTY:
                result.faulty[name] = record.error or str(failed)
            else:
                result.pending[name] = record.error or str(failed)
            return
    else:
        result.pending[name] = "did not converge within one pass"
        return
    _settled(ctx, record, spec, result)


def drive_all(ctx: PassContext, order: Sequence[tuple[str, DeviceSpec | None]],
              result: PassResult, distrust: Callable[[], None]) -> None:
    """Drive every device of `order` (None: its removal), breadth-first: a first sweep
    provisions and activates every device, holding back the steps that open a node; one
    udev wait; then a second sweep finishes those. `distrust` is told when an error nobody
    foresaw may have left a record unsaved (see drive_contained)."""
    held: set[str] = set()
    unchanged, converged = ctx.settled.unchanged_parts, result.converged
    records, devices, hold_new = ctx.records, ctx.obs.devices, ctx.hold_new
    prefix = ctx.kernel_name("")
    for name, spec in order:
        # A device decided on exactly what this pass sees of it (its record, spec, dm
        # device, parent, hold_new: ctx.inputs, taken apart) is not decided again:
        # decide.Settled. This loop runs 10,000 times a resync: kept to lookups and one
        # comparison, with no call per device but that one.
        record = records.get(name)
        if spec is not None and record is not None and unchanged(
                record, spec, devices.get(prefix + name),
                None if record.parent is None else records.get(record.parent), hold_new):
            converged.append(name)
        else:
            drive_contained(ctx, name, spec, result, distrust, held)
    if held:
        ctx.pool.client.settle_udev()
        for name, spec in order:
            if name in held:
                drive_contained(ctx, name, spec, result, distrust)


def drive_contained(ctx: PassContext, name: str, spec: DeviceSpec | None, result: PassResult,
                    distrust: Callable[[], None], held: set[str] | None = None) -> None:
    """drive(), with an error nobody foresaw kept to this device: logged with its
    traceback, shown as the device's error, and retried by the next pass (`distrust` is
    told: what is in memory may be ahead of what was saved)."""
    try:
        drive(ctx, name, spec, result, held)
    except Stopped:
        raise
    except Exception as exc:
        error = f"internal error: {type(exc).__name__}: {exc}"
        log.exception("device.internal_error", name=name, error=error,
                      next="left as it is; tried again next pass")
        result.pending[name] = error
        distrust()
        with contextlib.suppress(Exception):
            stored = ctx.store.device(name)
            if stored is not None:
                stored.error = error
                ctx.store.save_device(stored)
    finally:
        # A machine is taken again (from the spares) whenever wanted: kept for the whole
        # pass, a burst's 10,000 machines held 460 MB. Given back now, the spares keep
        # what transitions would otherwise build again for the next device.
        ctx.spares.give_back(ctx.machines.values())
        ctx.machines.clear()


def _note_settled(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
    """Remember what a device with nothing to do was decided on, when it ends converged with
    nothing for _settled to write: a later pass may then skip it (decide.Settled)."""
    if spec is None or record.state in (S.FAULTY, S.REMOVED) or record.error is not None \
            or record.retry_at is not None:
        return
    ctx.settled.remember(ctx.inputs(record, spec))


def _wait(ctx: PassContext, record: DeviceRecord, wait: Wait, result: PassResult) -> None:
    if record.error != wait.reason:
        record.error = wait.reason
        ctx.store.save_device(record)
    result.pending[record.name] = wait.reason
    log.info("device.waiting", name=record.name, reason=wait.reason, next="next pass")


def _settled(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None,
             result: PassResult) -> None:
    """Nothing more to do for the device in this pass: say where it ended."""
    if record.state == S.FAULTY:
        result.faulty[record.name] = record.error or "Faulty"
    elif record.state == S.REMOVED:
        if spec is None:
            result.removed.append(record.name)
    else:
        if record.error is not None and record.error.startswith(WAITING_PREFIX):
            record.error = None
            ctx.store.save_device(record)
        result.converged.append(record.name)


def run_step(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None,
             step: Step) -> None:
    """Run one step; on a kernel error schedule a retry or mark the device Faulty, then raise
    StepFailed. A success clears the device's error and attempt count."""
    try:
        STEPS[step](ctx, record, spec)
    except ClassifiedError as exc:  # the kernel's (DmError) or a program's (ToolError)
        _failed(ctx, record, step, is_removal(step, spec), exc)
        raise StepFailed(str(exc)) from exc
    if record.attempts or record.retry_at is not None or (
        record.error is not None and record.state != S.FAULTY
    ):
        record.attempts = 0
        record.retry_at = None
        record.error = None
        ctx.store.save_device(record)


def _failed(ctx: PassContext, record: DeviceRecord, step: Step, removal: bool,
            exc: ClassifiedError) -> None:
    bound = log.bind(name=record.name, step=step.value)
    record.attempts += 1
    # EBUSY from dm (DeviceBusy) or from a program (blkdiscard on a device still held).
    choice = verdict(ctx.policy, record.attempts, exc.temporary,
                     removal and exc.errno_name == "EBUSY")
    if isinstance(choice, Retry):
        record.retry_at = ctx.clock() + choice.delay
        ctx.retries[step] += 1
        prefix = "busy: held open; " if choice.busy else ""
        budget = "" if choice.busy else f"/{ctx.policy.max_attempts}"
        record.error = f"{prefix}{step.value}: {exc} (attempt {record.attempts}{budget})"
        ctx.store.save_device(record)
        bound.warning("device.step_failed", error=str(exc), errno=exc.errno_name,
                      attempt=record.attempts, decision="temporary",
                      next=f"retry in {choice.delay:.2f}s")
        return
    bound.error("device.step_failed", error=str(exc), errno=exc.errno_name,
                attempt=record.attempts, decision=choice.reason, next="marking Faulty")
    plural = "s" if record.attempts != 1 else ""
    ctx.machine(record.name).fire(
        Trigger.FAIL, error=f"{step.value}: {exc} ({choice.reason} after {record.attempts} "
        f"attempt{plural})", step=step.value,
    )
