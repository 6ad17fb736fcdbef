"""One pass's world: what it read (specs, records, the kernel) and what it changes.

A `PassContext` lives from the start of a pass to its end. It holds references to what outlives
the pass (settings, store, pool, the device records the Reconciler caches, the ledger of the
pool's thin ids and transaction id) beside what is the pass's own (the kernel's view, the
machines built from the records, the ids taken). Steps, recovery and maintenance all work on
one; none of them keeps state of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from reconciler.config import Settings
from reconciler.dm.host import Host
from reconciler.dm.pool import ThinPool, thin_device_name
from reconciler.dm.thin import ThinDevice
from reconciler.reconcile.decide import Inputs, Settled, node_wait
from reconciler.reconcile.ledger import PoolLedger
from reconciler.reconcile.observe import KernelDevice, Observation
from reconciler.reconcile.retry import RetryPolicy
from reconciler.specs import DeviceSpec, RejectedSpec
from reconciler.states import (
    SOURCES,
    DeviceMachine,
    DeviceState,
    SpareMachines,
    StateChange,
    Step,
    Trigger,
)
from reconciler.store import DeviceRecord, IdAllocator, Store, TransitionRecord
from reconciler.vocabulary import ThinId

S = DeviceState
log = structlog.get_logger(__name__)


@dataclass
class PassResult:
    """What one pass achieved."""

    converged: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)
    faulty: dict[str, str] = field(default_factory=dict)
    rejected: list[RejectedSpec] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # Earliest time a pending device may be tried again, and the same among devices that
    # have attempts left (what `run --once` waits for).
    next_retry_at: float | None = None
    next_budgeted_retry_at: float | None = None
    stopped: bool = False
    # Removals inferred from absent spec files that the guard held (not done).
    held: list[str] = field(default_factory=list)
    # The spec directory could not be read completely: no spec-file device was touched.
    source_error: str | None = None
    # Retries this pass scheduled (a temporary error's backoff), by step: the daemon's metrics.
    retries: dict[Step, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Everything converged, every spec was usable, nothing was held."""
        return not (self.pending or self.faulty or self.rejected or self.held
                    or self.source_error)


# Told of each pass once it ended, whoever ran it (the daemon's loop or a snapshotter call):
# whether it was given names, its result (None: it raised) and how long it took in seconds.
# The daemon's metrics count passes with it.
PassObserver = Callable[[bool, "PassResult | None", float], None]


@dataclass(slots=True)
class Moved:
    """Where one device went in a pass: its state before the first transition, after the
    last, and every trigger on the way (its one `device.changed` line at the pass's end).
    Slotted: a pass that makes 50,000 devices holds one each until it ends."""

    from_state: DeviceState
    to_state: DeviceState
    triggers: list[Trigger]
    error: str | None = None


class StepFailed(Exception):
    """A step gave up on a device for now; the device is Faulty or scheduled for a retry."""


class Stopped(Exception):
    """A stop was requested; the pass ends between two steps."""


@dataclass
class PassContext:
    """Everything a pass and its steps read and change."""

    settings: Settings
    host: Host
    store: Store
    clock: Callable[[], float]
    policy: RetryPolicy
    pool: ThinPool
    ledger: PoolLedger
    # The Reconciler's records, by name (Removed ones included): changed in place.
    records: dict[str, DeviceRecord]
    obs: Observation = field(default_factory=Observation)
    stop_requested: Callable[[], bool] = lambda: False
    machines: dict[str, DeviceMachine] = field(default_factory=dict)
    # Where machines come from (and go back to at the end of the pass: see SpareMachines).
    spares: SpareMachines = field(default_factory=SpareMachines)
    # Devices found with nothing to do, and what they were decided on (outlives the pass).
    settled: Settled = field(default_factory=Settled)
    # Why new devices wait this pass (the pool's reserve or mode), if they do.
    hold_new: str | None = None
    # Retries scheduled so far in this pass, by step (drive counts them; PassResult shows them).
    retries: Counter[Step] = field(default_factory=Counter)
    # Every device a transition moved in this pass, in the order of their first move.
    moved: dict[str, Moved] = field(default_factory=dict)
    # Built at the pass's first allocation.
    _ids: IdAllocator | None = field(default=None, init=False)

    def kernel_name(self, name: str) -> str:
        """The dm name of a managed device."""
        return thin_device_name(self.settings.pool_name, name)

    def kernel(self, name: str) -> KernelDevice | None:
        """The device as this pass observed it (and kept current since)."""
        return self.obs.device(self.kernel_name(name))

    def inputs(self, record: DeviceRecord, spec: DeviceSpec | None) -> Inputs:
        """What the decision for this device is made on (`next_step(*inputs)`): the record
        and spec given, the device as this pass sees the kernel, its parent's record and
        why new devices wait. Called for every device of a resync: kept to lookups."""
        parent = None if record.parent is None else self.records.get(record.parent)
        return Inputs(record, spec, self.obs.devices.get(self.kernel_name(record.name)),
                      parent, self.hold_new)

    def thin(self, record: DeviceRecord) -> ThinDevice:
        """The kernel side of a device whose thin id is allocated."""
        assert record.device_id is not None, f"{record.name} has no thin id yet"
        return ThinDevice(self.pool, record.name, record.device_id, node_wait(record.name))

    def refresh(self, record: DeviceRecord) -> None:
        """Re-read one device after changing it (info and table; two calls)."""
        kname = self.kernel_name(record.name)
        seen = self.thin(record).observe()
        if seen is None:
            self.obs.devices.pop(kname, None)
        else:
            self.obs.devices[kname] = KernelDevice(info=seen[0], table=seen[1])

    def forget_kernel_device(self, name: str) -> None:
        """The pass removed this device's dm device."""
        self.obs.devices.pop(self.kernel_name(name), None)

    def machine(self, name: str) -> DeviceMachine:
        """The machine of a device, built from its stored state once per pass."""
        if name not in self.machines:
            record = self.records[name]
            self.machines[name] = self.spares.take(
                name, record.state, lambda: record.provisioned, self.persist
            )
        return self.machines[name]

    def fire(self, name: str, trigger: Trigger, *, error: str | None = None,
             step: str | None = None) -> None:
        """Fire one trigger of a device's machine without keeping the machine: a batch fires
        for a hundred devices in turn, and one spare serves them all (building a machine
        costs 58 ms under the VM's emulation). A machine the device holds is used as is."""
        machine = self.machines.get(name)
        if machine is not None:
            machine.fire(trigger, error=error, step=step)
            return
        record = self.records[name]
        machine = self.spares.take(name, record.state, lambda: record.provisioned,
                                   self.persist)
        try:
            machine.fire(trigger, error=error, step=step)
        finally:
            self.spares.give_back([machine])

    def can(self, name: str, trigger: Trigger) -> bool:
        """Whether the device's machine may fire `trigger` now (conditions aside)."""
        machine = self.machines.get(name)
        if machine is not None:
            return machine.can(trigger)
        return self.records[name].state in SOURCES[trigger]

    def release_machines(self) -> None:
        """Give the machines taken so far back to the spares (a step is over): a machine is
        taken again whenever wanted, and holding one per device of a burst of 10,000 held
        460 MB."""
        self.spares.give_back(self.machines.values())
        self.machines.clear()

    def persist(self, change: StateChange) -> None:
        """Write a transition (the record and its history row) before the trigger returns."""
        record = self.records[change.name]
        now = self.clock()
        record.state = change.to_state
        record.state_changed_at = now
        if change.to_state == S.FAULTY:
            record.error, record.error_step = change.error, change.step
            record.retry_at = None
        elif change.trigger in (Trigger.RETRY, Trigger.RECREATE):
            record.error = record.error_step = record.retry_at = None
            record.attempts = 0
        transition = TransitionRecord(
            device=change.name, from_state=change.from_state, to_state=change.to_state,
            trigger=change.trigger, at=now, error=change.error,
        )
        if self.store.in_transaction():
            # Part of a batch's transaction, which lands or rolls back whole: a savepoint
            # of its own would cost two statements per device and guard nothing.
            self.store.save_device(record)
            self.store.record_transition(transition)
        else:
            with self.store.transaction():
                self.store.save_device(record)
                self.store.record_transition(transition)
        # Each transition at debug (filtered out at info before any rendering: its history
        # row keeps it anyway); at info a device's pass is one line (say_moves).
        log.debug("device.state_changed", name=change.name, **{"from": change.from_state.value},
                  to=change.to_state.value, trigger=change.trigger.value, error=change.error)
        moved = self.moved.get(change.name)
        if moved is None:
            self.moved[change.name] = Moved(change.from_state, change.to_state,
                                            [change.trigger], change.error)
        else:
            moved.to_state, moved.error = change.to_state, change.error
            moved.triggers.append(change.trigger)

    def finish(self) -> None:
        """The pass is over: its machines go back to the spares, and each device it moved
        gets its line."""
        self.spares.give_back(self.machines.values())
        self.machines.clear()
        self.say_moves()

    def say_moves(self) -> None:
        """One `device.changed` line per device a transition moved since the last call:
        from the state it started in to the one it ended in, the triggers on the way (and
        the last transition's error: Faulty's, whose step_failed line said so first)."""
        for name, moved in self.moved.items():
            log.info("device.changed", name=name, **{"from": moved.from_state.value},
                     to=moved.to_state.value, triggers=[t.value for t in moved.triggers],
                     error=moved.error)
        self.moved.clear()

    def allocate_id(self) -> ThinId:
        """The lowest thin id neither a live device of ours nor the pool holds (an orphan's
        id is never handed out; a Faulty device's stays quarantined). Kept in memory for the
        pass, so making N devices costs O(N), not a query per device."""
        if self._ids is None:
            taken = {r.device_id for r in self.records.values()
                     if r.device_id is not None and r.state != S.REMOVED}
            self._ids = IdAllocator(taken | (self.ledger.ids or set()), self.store.max_id)
        return self._ids.take()

    def managed_ids(self) -> set[int]:
        """Thin ids the store accounts for: every device's that is not Removed. A Faulty
        device's too, provisioned or not: its create may have reached the pool (its intent is
        settled by its retry), so its id is never an orphan to delete or adopt; the same
        quarantine allocate_id keeps."""
        return {r.device_id for r in self.records.values() if r.device_id is not None
                and (r.provisioned or r.state != S.REMOVED)}

    def read_pool_ids(self) -> set[int]:
        """The pool's thin ids, read now."""
        record = self.store.pool(self.settings.pool_name)
        assert record is not None, "the pool is brought up before any pass"
        return self.ledger.read_ids(self.host, self.settings.pool_name,
                                    record.metadata_device, self.pool.client, self.obs)
