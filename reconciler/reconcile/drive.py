"""Driving devices: a pass's two sweeps over them, in rounds (decide every device, run the
steps decided, again), and on failure retry or Faulty, as `retry.verdict` says.

The sweeps are breadth-first (`drive_all`): every device is provisioned and activated before
any node is opened, so a burst of filesystems waits for udev once. Within a sweep the first
attempts of one step (every create of a round, every activation...) run as one batch, group
committed (`reconcile.batch`); the rest run one device at a time. An error nobody foresaw
stays with its device, in a batch too (`Sweep.contain`).

A failed step is never waited for inside a pass: a temporary error stores when to try again
(`retry_at`, exponential backoff) and the pass moves on; a permanent error, or the last of
`max_attempts` temporary ones, marks the device Faulty with the step and the count. A busy
removal is the exception: it retries every `retry_max` for as long as it takes and never goes
Faulty, because only the holder of the device can end it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import structlog

from reconciler.failures import ClassifiedError
from reconciler.reconcile.batch import MAX_BATCH, WRITES_INTENTS, batchable, run_batch
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
    """Take a device as far toward its spec (None: removal) as it can go in this pass (a
    sweep of one; an error nobody foresaw is raised).

    With `held` (a pass's first sweep), stop before a step in OPENS_NODE, or a wait for a
    parent that stopped so, and add the name to `held`: the pass drives it again later."""
    Sweep(ctx, result, None, held).run([(name, spec)])


def drive_all(ctx: PassContext, order: Sequence[tuple[str, DeviceSpec | None]],
              result: PassResult, distrust: Callable[[], None]) -> None:
    """Drive every device of `order` (None: its removal), breadth-first: a first sweep
    provisions and activates every device, holding back the steps that open a node; one
    udev wait; then a second sweep finishes those. `distrust` is told when an error nobody
    foresaw may have left a record unsaved (see Sweep.contain)."""
    held: set[str] = set()
    # A device decided on exactly what this pass sees of it (its record, spec, dm device,
    # parent, hold_new: ctx.inputs, taken apart) is not decided again: decide.Settled.
    converged, todo = ctx.settled.split(order, ctx.records, ctx.obs.devices,
                                        ctx.kernel_name(""), ctx.hold_new)
    result.converged.extend(converged)
    Sweep(ctx, result, distrust, held).run(todo)
    if held:
        ctx.pool.client.settle_udev()
        Sweep(ctx, result, distrust).run([(n, spec) for n, spec in order if n in held])


@dataclass(slots=True)
class _Driven:
    """A device in a sweep: its record, its spec and the steps it took."""

    record: DeviceRecord
    spec: DeviceSpec | None
    steps: int = 0

    @property
    def name(self) -> str:
        return self.record.name


class Sweep:
    """Drive devices in rounds: decide every device still going, group the steps, run each
    group (a batch for the first attempts of a create, an activation, a deactivation or a
    removal: reconcile.batch; one device at a time for the rest), and again, until every
    device has nothing more to do in this pass, waits, failed, or took MAX_STEPS steps.

    A device whose parent takes a step in a round is decided again in the next: its
    decision may depend on where the parent ends (a snapshot waits for its parent, is taken
    of its thin id), and no batch then changes what the decision was made on. With
    `distrust`, an error nobody foresaw stays with its device (`contain`); without, it is
    raised. With `held` (a pass's first sweep), steps in OPENS_NODE are held back there."""

    def __init__(self, ctx: PassContext, result: PassResult,
                 distrust: Callable[[], None] | None, held: set[str] | None = None) -> None:
        self.ctx, self.result, self.distrust, self.held = ctx, result, distrust, held

    def run(self, order: Sequence[tuple[str, DeviceSpec | None]]) -> None:
        """Drive these devices (None: their removal) as far as they go in this pass."""
        records = self.ctx.records
        writes = any(name not in records or takes_spec_now(records[name], spec)
                     for name, spec in order)
        # New devices' first rows, changed specs' wishes: one commit for all of them.
        with self.ctx.store.transaction() if writes else contextlib.nullcontext():
            going = [d for name, spec in order if (d := self._admit(name, spec)) is not None]
        while going:
            going = self._round(going)

    def _admit(self, name: str, spec: DeviceSpec | None) -> _Driven | None:
        """The device, ready to be decided; None when it waits for its retry."""
        ctx = self.ctx
        try:
            ctx.settled.forget(name)
            record = record_for(ctx, name, spec)
            if record.retry_at is not None and record.retry_at > ctx.clock() and \
                    not spec_changed(record, spec):
                self.result.pending[name] = record.error or "waiting to retry"
                return None
            if spec is not None and takes_spec_now(record, spec):
                take_spec(record, spec)
                ctx.store.save_device(record)
        except Exception as exc:  # noqa: BLE001 - kept to its device: see contain
            self.contain(name, exc)
            return None
        return _Driven(record, spec)

    def _round(self, going: list[_Driven]) -> list[_Driven]:
        """Decide every device, run the steps decided; those still going after."""
        ctx = self.ctx
        if ctx.stop_requested():
            raise Stopped
        # The decisions beside `going`, not a (device, decision) tuple each: a first pass
        # decides every device at once (3 MB of tuples at 50,000, at the start's peak).
        decisions = [decide(ctx, d.record, d.spec) for d in going]
        stepping = {d.name for d, decision in zip(going, decisions, strict=True)
                    if isinstance(decision, Step)}
        again: list[_Driven] = []
        plan: dict[Step, list[_Driven]] = {}
        for d, decision in zip(going, decisions, strict=True):
            if self._holds(d, decision):
                continue
            if d.spec is not None and d.record.parent in stepping:
                again.append(d)  # decided again once its parent's step is done
            elif isinstance(decision, Step) and d.steps < MAX_STEPS:
                d.steps += 1
                plan.setdefault(decision, []).append(d)
            else:
                self._ends(d, decision)
        for step, group in plan.items():
            again += self._run(step, group)
        return again

    def _holds(self, d: _Driven, decision: Decision) -> bool:
        """Hold the device back for the pass's second sweep (see drive)."""
        if self.held is None or not (decision in OPENS_NODE or (
                isinstance(decision, Wait) and d.record.parent in self.held)):
            return False
        self.held.add(d.name)
        return True

    def _ends(self, d: _Driven, decision: Decision) -> None:
        """The device goes no further in this pass: say where it ended."""
        ctx, record = self.ctx, d.record
        try:
            if isinstance(decision, Wait):
                _wait(ctx, record, decision, self.result)
            elif decision is None:
                _note_settled(ctx, record, d.spec)
                _settled(ctx, record, d.spec, self.result)
            else:
                self.result.pending[d.name] = "did not converge within one pass"
        except Exception as exc:  # noqa: BLE001 - kept to its device: see contain
            self.contain(d.name, exc)

    def _run(self, step: Step, group: list[_Driven]) -> list[_Driven]:
        """Run one step for a group: a batch for its first attempts, one device at a time
        for the others; the devices that took it."""
        ctx = self.ctx
        first = [d for d in group if batchable(step, d.record)]
        if first and step in WRITES_INTENTS:
            pending = {intent.device for intent in ctx.store.intents()}
            first = [d for d in first if d.name not in pending]
        names = {d.name for d in first}
        alone = [d for d in group if d.name not in names]
        took = [d for d in alone if self._one(step, d)]
        for start in range(0, len(first), MAX_BATCH):
            took += self._batch(step, first[start:start + MAX_BATCH])
        return took

    def _one(self, step: Step, d: _Driven) -> bool:
        """Run the step for one device; whether it succeeded."""
        if self.ctx.stop_requested():
            raise Stopped
        try:
            run_step(self.ctx, d.record, d.spec, step)
        except StepFailed as failed:
            self._failed_in_pass(d.record, str(failed))
            return False
        except Exception as exc:  # noqa: BLE001 - kept to its device: see contain
            self.contain(d.name, exc)
            return False
        finally:
            self.ctx.release_machines()
        return True

    def _batch(self, step: Step, group: list[_Driven]) -> list[_Driven]:
        """Run the step for a group as one batch; the devices that took it."""
        ctx = self.ctx
        if ctx.stop_requested():
            raise Stopped
        by_name = {d.name: d for d in group}

        def failed(record: DeviceRecord, exc: Exception) -> None:
            if not isinstance(exc, ClassifiedError):
                self.contain(record.name, exc)
                return
            _failed(ctx, record, step, is_removal(step, by_name[record.name].spec), exc)
            self._failed_in_pass(record, str(exc))

        try:
            took = run_batch(ctx, step, [(d.record, d.spec) for d in group], failed)
        except Exception as exc:  # noqa: BLE001 - kept to its device: see contain
            # The batch's own store writes failed: every device of it is left as it is.
            for d in group:
                self.contain(d.name, exc)
            return []
        finally:
            ctx.release_machines()
        return [by_name[record.name] for record in took]

    def _failed_in_pass(self, record: DeviceRecord, error: str) -> None:
        """A step failed and the device is Faulty or waits for its retry: say which."""
        if record.state == S.FAULTY:
            self.result.faulty[record.name] = record.error or error
        else:
            self.result.pending[record.name] = record.error or error

    def contain(self, name: str, exc: Exception) -> None:
        """An error nobody foresaw, kept to this device: logged with its traceback, shown
        as the device's error, and retried by the next pass (`distrust` is told: what is in
        memory may be ahead of what was saved). Raised again in a sweep without distrust."""
        if self.distrust is None:
            raise exc
        ctx = self.ctx
        error = f"internal error: {type(exc).__name__}: {exc}"
        log.error("device.internal_error", name=name, error=error,
                  next="left as it is; tried again next pass", exc_info=exc)
        self.result.pending[name] = error
        self.distrust()
        with contextlib.suppress(Exception):
            stored = ctx.store.device(name)
            if stored is not None:
                stored.error = error
                ctx.store.save_device(stored)


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
