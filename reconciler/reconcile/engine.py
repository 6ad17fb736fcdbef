"""One reconcile pass: read every spec, observe the kernel, drive every device to its spec.

Level-triggered: each device's next step is decided from its stored state, its spec and what
the kernel shows, never from the event that woke us. Every kernel call sits between two
transitions of the device's machine, each persisted by the store, so a crash leaves the step in
flight on disk. A state written while a call was in flight (Creating, Activating, ...) is
resolved on the next pass by doing that call again: each call here is idempotent.

A failed step is never waited for inside a pass: a temporary error stores when to try again
(`retry_at`, exponential backoff) and the pass moves on; the caller (`run --once` or the daemon)
decides when to run the next pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import cast

import structlog

from reconciler.config import Settings
from reconciler.dm.driver import make_client
from reconciler.dm.errors import DeviceBusy, DeviceExists, DmError, NoData, NoSuchDevice
from reconciler.dm.filesystem import (
    discard_blocks,
    grow_filesystem,
    inodes_used,
    make_filesystem,
)
from reconciler.dm.host import Host
from reconciler.dm.metadata import exclusive_bytes, list_thin_ids
from reconciler.dm.parse import single_thin_table
from reconciler.dm.pool import ThinPool, table_matches, thin_device_name, thin_uuid
from reconciler.dm.types import describe_table
from reconciler.reconcile.observe import (
    KernelDevice,
    Observation,
    ParsedTargets,
    observe,
    observe_names,
)
from reconciler.reconcile.pool_setup import prepare_pool
from reconciler.reconcile.retry import RetryPolicy
from reconciler.specs import (
    Defaults,
    DeviceSpec,
    Filesystem,
    RejectedSpec,
    SpecFileCache,
    SpecSet,
    inherit,
    load_spec_dir,
    load_spec_files,
    stored_spec,
)
from reconciler.states import DeviceMachine, DeviceState, StateChange
from reconciler.store import (
    DeviceRecord,
    IntentRecord,
    OrphanRecord,
    RejectedSpecRecord,
    Store,
    TransitionRecord,
    lowest_free_id,
)
from reconciler.units import Bytes, Sectors, to_sectors

S = DeviceState
log = structlog.get_logger(__name__)

LIVE = (S.ACTIVATED, S.RESUMED)
# States a device is left in between the start and the end of a kernel step.
IN_FLIGHT = frozenset({S.CREATING, S.ACTIVATING, S.SUSPENDING, S.SUSPENDED, S.RESUMING,
                       S.DEACTIVATING, S.REMOVING})
# Full passes re-read the pool's thin ids (thin_ls) at least this often, changed or not.
POOL_IDS_EVERY = 10
# A partial pass over at most this many devices observes just them (three calls each).
TARGETED_MAX = 16
# A full pass reuses the records the last pass left when no one else wrote the database;
# every this many full passes it reads them again anyway (belt and braces: a resync is
# where anything missed gets caught).
RECORDS_REREAD_EVERY = 10
# A device takes at most this many steps in one pass (create, activate, mkfs, reload...).
MAX_STEPS = 16


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

    @property
    def ok(self) -> bool:
        """Everything converged and every spec was usable."""
        return not (self.pending or self.faulty or self.rejected)


class StepFailed(Exception):
    """A step gave up on a device for now; the device is Faulty or scheduled for a retry."""


class Waiting(Exception):
    """A device cannot take its next step yet (its parent is not ready); not an error."""


class RequestRefused(Exception):
    """An operator request that cannot be done as asked; the message says why."""


class Stopped(Exception):
    """A stop was requested; the pass ends between two steps."""


@dataclass
class _Step:
    name: str
    run: Callable[[], None]
    # Whether a busy device makes this step wait rather than fail (removal, never --force).
    removal: bool = False


class Reconciler:
    """Drives every device toward its spec, one pass at a time. Not thread-safe: one thread
    owns it, its store and its machines."""

    def __init__(
        self,
        settings: Settings,
        host: Host,
        store: Store,
        clock: Callable[[], float] = time.time,
        policy: RetryPolicy | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.host = host
        self.store = store
        self.clock = clock
        self.policy = policy or RetryPolicy(
            initial=settings.retry_initial, maximum=settings.retry_max,
            max_attempts=settings.max_attempts,
        )
        self.stop_requested = stop_requested
        # The kernel boundary: libdevmapper in-process or dmsetup (dm.driver decides).
        self.client = make_client(host, settings.dm_driver)
        self.pool: ThinPool | None = None
        self.records: dict[str, DeviceRecord] = {}
        self.machines: dict[str, DeviceMachine] = {}
        self.obs = Observation()
        self.transaction_id = 0
        # Thin ids the pool holds, read with thin_ls at start-up and on every full pass, and
        # kept current by our own changes in between. None until first read.
        self.pool_ids: set[int] | None = None
        self.recovered = False
        self._spec_cache = SpecFileCache()
        # Whether self.records is what the store holds (the last pass ended normally).
        self._records_current = False
        self._full_passes_since_read = 0
        self._parsed = ParsedTargets()
        # The pool's (transaction id, used metadata blocks) when pool_ids was read.
        self._pool_ids_seen: tuple[int, int] | None = None
        self._full_passes = 0
        # Ids taken in this pass (None: not computed yet) and where the next search starts.
        self._taken: set[int] | None = None
        self._id_floor = 0

    # -- pass ------------------------------------------------------------------------------

    def load_specs(self, changed: Iterable[str] | None = None) -> SpecSet:
        """Every desired device: the spec directory (parsed with the config's defaults) and
        the specs the snapshotter API keeps in the store. With `changed`, only those names'
        files are read again; the others are as the last scan left them."""
        defaults = Defaults(size=self.settings.base_image_size,
                            filesystem=_fs(self.settings.fs_type))
        if changed is None:
            from_files = load_spec_dir(self.settings.specs_path, defaults, self._spec_cache)
        else:
            from_files = load_spec_files(self.settings.specs_path, changed, defaults,
                                         self._spec_cache)
        stored = {}
        for snap in self.store.snapshots():
            # A committed snapshot rests inactive; one removed until Cleanup rests too.
            active = snap.removal is None and (snap.kind != "committed" or snap.exposed)
            stored[snap.name] = stored_spec(
                snap.name, snap.size_bytes, snap.filesystem, snap.parent, active,
                readonly=snap.kind != "active", labels=snap.labels,
            )
        return SpecSet(specs={**from_files.specs, **stored}, rejected=from_files.rejected)

    def _begin(self, only: set[str] | None = None
               ) -> tuple[dict[str, DeviceSpec], SpecSet, list[RejectedSpec], set[str] | None]:
        """Specs, records and the kernel's view for a pass, and (a partial pass) the names
        it drives: those asked for, their snapshots and every device whose retry is due.

        A partial pass over a few names, once recovered and with no operator request
        waiting, reuses the records the last pass left (this thread is the only writer of
        device rows) and observes only those devices, their parents and any device whose
        retry is due: its cost then does not grow with the number of devices.
        """
        assert self.pool is not None
        few = only is not None and len(only) <= TARGETED_MAX
        spec_set = self.load_specs(only if few else None)
        # Checked every pass, so that "written by others" covers exactly the last pass.
        others = self.store.written_by_others()
        current = (self.recovered and self._records_current and not others
                   and not self.store.has_requests())
        targeted = current and few
        self._full_passes_since_read += only is None
        reuse = targeted or (current and self._full_passes_since_read < RECORDS_REREAD_EVERY)
        if not reuse:
            self.records = {r.name: r for r in self.store.devices(include_removed=True)}
            self._full_passes_since_read = 0
        self._records_current = False
        self.machines = {}
        self._taken = None
        specs, rejected = self._resolve_against_store(spec_set)
        chosen: set[str] | None = None
        if only is not None:
            chosen = self._with_snapshots(only, specs)
            chosen |= {n for n in self.records if self._retry_due(n)}
        if targeted and chosen is not None:
            names = chosen | {p for n in chosen if (p := self._parent_of(n, specs)) is not None}
            if len(names) <= TARGETED_MAX:
                self.obs = observe_names(self.pool.client, self.settings.pool_name,
                                         [self.kernel_name(n) for n in sorted(names)])
                return specs, spec_set, rejected, chosen
        self.obs = observe(self.pool.client, self.settings.pool_name, self._parsed)
        return specs, spec_set, rejected, chosen

    def _parent_of(self, name: str, specs: dict[str, DeviceSpec]) -> str | None:
        spec = specs.get(name)
        if spec is not None and spec.parent is not None:
            return spec.parent
        record = self.records.get(name)
        return record.parent if record is not None else None

    def run_pass(self, only: Iterable[str] | None = None) -> PassResult:
        """Read specs, observe the kernel, and drive devices as far as they can go now.

        With `only`, drive just those names (and their snapshots), plus any device whose
        retry is due: what a file event asks for, without touching the rest.
        """
        if self.pool is None:
            self.pool = prepare_pool(self.settings, self.host, self.store, self.clock(),
                                     self.client)
        only = None if only is None else set(only)
        specs, spec_set, rejected, chosen = self._begin(only)
        if not self.recovered:
            self._recover()
        else:
            self._sync_transaction_id()
            if only is None and self._pool_may_have_changed():
                self._read_pool_ids()
        self._take_requests()
        if only is None:
            self._find_orphans()

        result = PassResult(rejected=rejected)
        self.store.replace_rejected_specs(
            RejectedSpecRecord(r.name, r.path, r.error, self.clock()) for r in rejected
        )
        for item in rejected:
            log.warning("spec.rejected", name=item.name, path=item.path, error=item.error,
                        next="fix the file; the device (if any) is left as it is")

        # Every device, or those _begin chose; parents before their snapshots, unwanted
        # devices last.
        order: list[tuple[str, DeviceSpec | None]] = [
            (n, specs[n]) for n in _parents_first(specs) if chosen is None or n in chosen]
        unwanted = self.records if chosen is None else chosen
        order += [(n, None) for n in sorted(unwanted) if n not in spec_set.names
                  and n in self.records and self.records[n].state != S.REMOVED]
        try:
            for name, spec in order:
                self._drive(name, spec, result)
        except Stopped:
            result.stopped = True
            log.info("pass.stopped", next="exiting; every finished step is persisted")
        self._schedule(result)
        self._records_current = not result.stopped
        return result

    def _with_snapshots(self, names: set[str], specs: dict[str, DeviceSpec]) -> set[str]:
        """Names plus every spec'd descendant: a parent's change may unblock its snapshots."""
        grown = set(names)
        changed = True
        while changed:
            changed = False
            for name, spec in specs.items():
                if name not in grown and spec.parent in grown:
                    grown.add(name)
                    changed = True
        return grown

    def _retry_due(self, name: str) -> bool:
        record = self.records.get(name)
        return record is not None and record.retry_at is not None \
            and record.retry_at <= self.clock()

    def _schedule(self, result: PassResult) -> None:
        for name in result.pending:
            record = self.records.get(name)
            if record is None or record.retry_at is None:
                continue
            at = record.retry_at
            result.next_retry_at = min(at, result.next_retry_at or at)
            if record.attempts < self.policy.max_attempts:
                result.next_budgeted_retry_at = min(at, result.next_budgeted_retry_at or at)

    # -- recovery --------------------------------------------------------------------------

    def _pool_may_have_changed(self) -> bool:
        """Whether the pool's list of thin ids must be read again (a metadata snapshot and
        thin_ls: two pool messages and a process) on this full pass: when its transaction
        id or metadata usage moved since the last read, and every POOL_IDS_EVERY full passes
        anyway (an id made by someone who does not move the transaction id)."""
        self._full_passes += 1
        pool = self.obs.pool
        seen = None if pool is None else (pool.transaction_id, pool.used_metadata_blocks)
        return (self.pool_ids is None or seen != self._pool_ids_seen
                or self._full_passes % POOL_IDS_EVERY == 0)

    def _read_pool_ids(self) -> set[int]:
        assert self.pool is not None
        record = self.store.pool(self.settings.pool_name)
        assert record is not None
        pool = self.obs.pool
        self._pool_ids_seen = None if pool is None else (pool.transaction_id,
                                                         pool.used_metadata_blocks)
        self.pool_ids = list_thin_ids(self.host, self.settings.pool_name, record.metadata_device,
                                      self.client)
        return self.pool_ids

    def _recover(self) -> None:
        """Make the store and the pool's metadata agree after whatever stopped us last.

        A write-ahead intent names the change in flight and the transaction id it moves the
        pool to. The kernel's transaction id and its list of thin ids tell whether the change
        happened: then it is recorded (and a missing set_transaction_id sent); else it is
        forgotten, and the device's in-flight state makes the next step do it again.
        """
        assert self.pool is not None
        pool_ids = self._read_pool_ids()
        kernel_txn = self.obs.pool.transaction_id if self.obs.pool else 0
        for intent in self.store.intents():
            record = self.records.get(intent.device)
            visible = (intent.thin_id in pool_ids) == (intent.op != "delete")
            if kernel_txn == intent.from_txn and visible:
                # The message went through, set_transaction_id did not: finish it.
                self.pool.set_transaction_id(intent.from_txn, intent.to_txn)
                kernel_txn = intent.to_txn
            happened = kernel_txn >= intent.to_txn and visible
            log.warning("recovery.intent", name=intent.device, op=intent.op,
                        thin_id=intent.thin_id, kernel_transaction_id=kernel_txn,
                        outcome="rolled forward" if happened else "rolled back",
                        next="recording what the pool did" if happened
                        else "the step runs again")
            with self.store.transaction():
                self._save_transaction_id(kernel_txn)
                self.store.drop_intent(intent.device)
                if happened and record is not None:
                    self._record_pool_change(record, intent.op)
        self._sync_transaction_id(kernel_txn)
        self.recovered = True

    def _record_pool_change(self, record: DeviceRecord, op: str) -> None:
        """What the store learns once a pool change is known to be done."""
        machine = self.machine(record.name)
        if op == "delete":
            record.provisioned = False
            if machine.current == S.REMOVING:
                machine.fire("removed")
            else:
                self.store.save_device(record)
            return
        record.provisioned = True
        # Snapshots carry their parent's filesystem; devices without one need no mkfs.
        record.formatted = record.parent is not None or record.filesystem == "none"
        if machine.current == S.CREATING:
            machine.fire("created")
        else:
            self.store.save_device(record)

    def managed_ids(self) -> set[int]:
        """Thin ids the store accounts for (provisioned, or being created)."""
        return {r.device_id for r in self.records.values() if r.device_id is not None
                and (r.provisioned or r.state == S.CREATING)}

    def _find_orphans(self) -> None:
        """Record what our pool holds that the store does not manage; never delete it."""
        now = self.clock()
        orphans = [OrphanRecord("thin_id", str(i), i, now)
                   for i in sorted((self.pool_ids or set()) - self.managed_ids())]
        prefix = f"{self.settings.pool_name}-"
        managed_names = {self.kernel_name(n) for n, r in self.records.items()
                         if r.state != S.REMOVED}
        for kname, device in sorted(self.obs.devices.items()):
            ours = device.table is not None and device.table.pool == self.obs.pool_number
            if (kname.startswith(prefix) or ours) and kname not in managed_names:
                thin_id = device.table.device_id if device.table is not None else None
                orphans.append(OrphanRecord("device", kname, thin_id, now))
        if orphans:
            log.warning("pool.orphans", orphans=[o.name for o in orphans],
                        next="left alone: `reconciler gc --orphans` or `reconciler adopt`")
        self.store.replace_orphans(orphans)

    def _sync_transaction_id(self, kernel: int | None = None) -> None:
        """Take the kernel's transaction id (as observed, or as recovery left it)."""
        record = self.store.pool(self.settings.pool_name)
        if kernel is None:
            kernel = self.obs.pool.transaction_id if self.obs.pool else 0
        if record is not None and record.transaction_id != kernel:
            log.warning("pool.transaction_id_differs", stored=record.transaction_id,
                        kernel=kernel, next="continuing from the kernel's value")
            record.transaction_id = kernel
            self.store.save_pool(record)
        self.transaction_id = kernel

    def _save_transaction_id(self, value: int) -> None:
        self.transaction_id = value
        record = self.store.pool(self.settings.pool_name)
        if record is not None:
            record.transaction_id = value
            self.store.save_pool(record)

    def service_requests(self) -> None:
        """Bring the pool up, recover, and run queued operator requests; drive no device.

        What `reconciler gc` and `adopt` do when no daemon is running.
        """
        if self.pool is None:
            self.pool = prepare_pool(self.settings, self.host, self.store, self.clock(),
                                     self.client)
        self._begin()
        if not self.recovered:
            self._recover()
        self._take_requests()
        self._read_pool_ids()
        self._find_orphans()

    def _take_requests(self) -> None:
        """Run operator requests (queued by `reconciler retry/gc/adopt`) in the owning thread."""
        for request in self.store.take_requests():
            bound = log.bind(request=request.kind, name=request.name)
            try:
                if request.kind == "retry":
                    self._request_retry(request.name)
                elif request.kind == "gc-orphans":
                    self._gc_orphans()
                elif request.kind == "gc-faulty":
                    self._gc_faulty()
                elif request.kind == "adopt" and request.arg is not None:
                    self._adopt(request.name, request.arg)
                else:
                    bound.warning("request.unknown")
            except (DmError, RequestRefused) as exc:
                bound.error("request.failed", error=str(exc), next="fix and ask again")

    def _request_retry(self, name: str) -> None:
        record = self.records.get(name)
        if record is None or record.state != S.FAULTY:
            raise RequestRefused(f"{name!r} is not Faulty "
                                 f"({record.state if record else 'no such device'})")
        log.info("request.retry", name=name)
        self.machine(name).fire("retry")

    def _gc_orphans(self) -> None:
        """Delete thin ids the pool has and the store does not manage, unless one is in use."""
        assert self.pool is not None
        in_use = {d.table.device_id for d in self.obs.devices.values()
                  if d.table is not None and d.table.pool == self.obs.pool_number}
        for thin_id in sorted(self._read_pool_ids() - self.managed_ids()):
            if thin_id in in_use:
                log.warning("gc.orphan_in_use", thin_id=thin_id,
                            next="remove its dm device first; left alone")
                continue
            before = self.transaction_id
            self._save_transaction_id(self.pool.delete(thin_id, before))
            assert self.pool_ids is not None
            self.pool_ids.discard(thin_id)
            log.info("gc.orphan_deleted", thin_id=thin_id)

    def _gc_faulty(self) -> None:
        """Release every Faulty device: its dm device, its thin id, its row (Removed)."""
        for name, record in sorted(self.records.items()):
            if record.state == S.FAULTY:
                log.info("gc.faulty", name=name, thin_id=record.device_id)
                self._remove(record)

    def _adopt(self, name: str, thin_id: int) -> None:
        """Make orphan thin id `thin_id` the device `name`, as its spec file describes it."""
        spec_set = self.load_specs()
        spec = spec_set.specs.get(name)
        record = self.records.get(name)
        if spec is None:
            raise RequestRefused(f"adopt {name}: write a valid {name}.toml in "
                                 f"{self.settings.specs_path} first")
        if record is not None and record.state != S.REMOVED:
            raise RequestRefused(f"adopt {name}: a device of that name exists "
                                 f"({record.state})")
        if thin_id not in self._read_pool_ids() or thin_id in self.managed_ids():
            raise RequestRefused(f"adopt {name}: thin id {thin_id} is not an orphan of the pool")
        now = self.clock()
        record = record or DeviceRecord(name=name, created_at=now, state_changed_at=now)
        _copy_spec(record, spec)
        record.device_id = thin_id
        record.origin_id = None
        record.provisioned = True
        # Its blocks are someone's data: never mkfs it, never assume its filesystem's size.
        record.formatted = True
        record.fs_size_bytes = 0
        self.records[name] = record
        self.store.save_device(record)
        self.machine(name).fire("adopt")
        log.info("request.adopted", name=name, thin_id=thin_id)

    def _resolve_against_store(
        self, spec_set: SpecSet
    ) -> tuple[dict[str, DeviceSpec], list[RejectedSpec]]:
        """Inherit from stored parents that have no spec; reject what cannot be done.

        A spec that asks an existing device for the impossible (a new parent or filesystem, a
        smaller size) is rejected, and the device is left as it is.
        """
        specs: dict[str, DeviceSpec] = {}
        rejected = list(spec_set.rejected)

        def reject(name: str, error: str) -> None:
            path = str(self.settings.specs_path / f"{name}.toml")
            rejected.append(RejectedSpec(name, path, error))

        for name, spec in spec_set.specs.items():
            own = self.records.get(name)
            existing = own if own is not None and own.provisioned else None
            if spec.parent is not None and spec.parent not in spec_set.specs:
                parent = self.records.get(spec.parent)
                if existing is not None:
                    # Already made: a snapshot no longer needs its parent.
                    spec = inherit(spec, existing.size_bytes, _fs(existing.filesystem))
                elif parent is not None and parent.provisioned:
                    spec = inherit(spec, parent.size_bytes, _fs(parent.filesystem))
                else:
                    reject(name, f"key 'parent': parent {spec.parent!r} does not exist "
                           "(no spec file and no device)")
                    continue
            problem = _impossible_change(existing, spec) if existing is not None else None
            if problem is not None:
                reject(name, problem)
                continue
            specs[name] = spec
        return specs, sorted(rejected, key=lambda r: r.name)

    # -- plan ------------------------------------------------------------------------------

    def plan(self) -> list[tuple[str, str]]:
        """What the next pass would do to each device, without doing anything.

        Observes the kernel (read-only) and reads the store; nothing is written.
        """
        self.pool = self.pool or ThinPool(self.host, self.settings.pool_name, self.client)
        if self.pool.client.info(self.settings.pool_name) is None:
            return [("(pool)", f"create pool {self.settings.pool_name}")]
        specs, spec_set, rejected, _ = self._begin()
        actions = [(r.name, f"nothing: spec rejected ({r.error})") for r in rejected]
        for name in _parents_first(specs):
            actions.append((name, self._describe(name, specs[name])))
        for name, record in sorted(self.records.items()):
            if name not in spec_set.names and record.state != S.REMOVED:
                actions.append((name, self._describe(name, None)))
        return sorted(actions)

    def _describe(self, name: str, spec: DeviceSpec | None) -> str:
        record = self.records.get(name)
        if record is None:
            assert spec is not None
            record = DeviceRecord(name=name)
            _copy_spec(record, spec)
        elif spec is not None:
            record = replace(record)
            _apply_spec(record, spec)
        try:
            step = self._next_step(record, spec)
        except Waiting as wait:
            return f"nothing yet: {wait}"
        if step is None:
            if record.state == S.FAULTY:
                return "nothing: Faulty (change the spec or run `reconciler retry`)"
            return "nothing"
        if step.name == "create" and record.parent is not None:
            return f"snapshot of {record.parent}"
        return step.name

    # -- one device ------------------------------------------------------------------------

    def _record(self, name: str, spec: DeviceSpec | None) -> DeviceRecord:
        record = self.records.get(name)
        if record is None:
            assert spec is not None
            now = self.clock()
            record = DeviceRecord(name=name, created_at=now, state_changed_at=now)
            _copy_spec(record, spec)
            self.records[name] = record
            self.store.save_device(record)
        return record

    def machine(self, name: str) -> DeviceMachine:
        """The machine of a device, built from its stored state once per pass."""
        if name not in self.machines:
            record = self.records[name]
            self.machines[name] = DeviceMachine(
                name, DeviceState(record.state), lambda: record.provisioned, self._persist
            )
        return self.machines[name]

    def _persist(self, change: StateChange) -> None:
        record = self.records[change.name]
        now = self.clock()
        record.state = change.to_state.value
        record.state_changed_at = now
        if change.to_state == S.FAULTY:
            record.error, record.error_step = change.error, change.step
            record.retry_at = None
        elif change.trigger in ("retry", "recreate"):
            record.error = record.error_step = record.retry_at = None
            record.attempts = 0
        with self.store.transaction():
            self.store.save_device(record)
            self.store.record_transition(TransitionRecord(
                device=change.name, from_state=change.from_state.value,
                to_state=change.to_state.value, trigger=change.trigger, at=now,
                error=change.error,
            ))
        log.info("device.state_changed", name=change.name, **{"from": change.from_state.value},
                 to=change.to_state.value, trigger=change.trigger, error=change.error)

    def _drive(self, name: str, spec: DeviceSpec | None, result: PassResult) -> None:
        record = self._record(name, spec)
        spec_changed = spec is not None and record.spec_digest != spec.digest
        if record.retry_at is not None and record.retry_at > self.clock() and not spec_changed:
            result.pending[name] = record.error or "waiting to retry"
            return
        if spec is not None and record.state != S.FAULTY and spec_changed:
            _apply_spec(record, spec)
            self.store.save_device(record)
        for _ in range(MAX_STEPS):
            if self.stop_requested():
                raise Stopped
            try:
                step = self._next_step(record, spec)
            except Waiting as wait:
                if record.error != str(wait):
                    record.error = str(wait)
                    self.store.save_device(record)
                result.pending[name] = str(wait)
                log.info("device.waiting", name=name, reason=str(wait), next="next pass")
                return
            if step is None:
                break
            try:
                self._run_step(record, step)
            except StepFailed as failed:
                if record.state == S.FAULTY:
                    result.faulty[name] = record.error or str(failed)
                else:
                    result.pending[name] = record.error or str(failed)
                return
        else:
            result.pending[name] = "did not converge within one pass"
            return
        if record.state == S.FAULTY:
            result.faulty[name] = record.error or "Faulty"
        elif record.state == S.REMOVED:
            if spec is None:
                result.removed.append(name)
        else:
            if record.error is not None and record.error.startswith("waiting for parent"):
                record.error = None
                self.store.save_device(record)
            result.converged.append(name)

    def _run_step(self, record: DeviceRecord, step: _Step) -> None:
        bound = log.bind(name=record.name, step=step.name)
        try:
            step.run()
        except DmError as exc:
            record.attempts += 1
            now = self.clock()
            busy_removal = step.removal and isinstance(exc, DeviceBusy)
            if busy_removal or (exc.temporary and not self.policy.exhausted(record.attempts)):
                delay = self.policy.delay(record.attempts)
                record.retry_at = now + delay
                prefix = "busy: held open; " if busy_removal else ""
                record.error = f"{prefix}{step.name}: {exc} (attempt {record.attempts}" + (
                    "" if busy_removal else f"/{self.policy.max_attempts}") + ")"
                self.store.save_device(record)
                bound.warning("device.step_failed", error=str(exc), errno=exc.errno_name,
                              attempt=record.attempts, decision="temporary",
                              next=f"retry in {delay:.2f}s")
                raise StepFailed(str(exc)) from exc
            reason = "permanent" if not exc.temporary else "attempts exhausted"
            bound.error("device.step_failed", error=str(exc), errno=exc.errno_name,
                        attempt=record.attempts, decision=reason, next="marking Faulty")
            self.machine(record.name).fire(
                "fail", error=f"{step.name}: {exc} ({reason} after {record.attempts} "
                f"attempt{'s' if record.attempts != 1 else ''})", step=step.name
            )
            raise StepFailed(str(exc)) from exc
        if record.attempts or record.retry_at is not None or (
            record.error is not None and record.state != S.FAULTY
        ):
            record.attempts = 0
            record.retry_at = None
            record.error = None
            self.store.save_device(record)

    # -- deciding --------------------------------------------------------------------------

    def kernel_name(self, name: str) -> str:
        """The dm name of a managed device."""
        return thin_device_name(self.settings.pool_name, name)

    def measure(self, name: str) -> tuple[int | None, int | None]:
        """Bytes only this device maps in the pool (thin_ls EXCLUSIVE_BYTES: what a snapshot
        wrote beyond its origin) and inodes its filesystem uses, read now (None: unknown, e.g.
        inodes of an inactive device)."""
        if self.pool is None:
            self.pool = prepare_pool(self.settings, self.host, self.store, self.clock(),
                                     self.client)
        record = self.store.device(name)
        pool = self.store.pool(self.settings.pool_name)
        if record is None or record.device_id is None or not record.provisioned or pool is None:
            return None, None
        used = exclusive_bytes(self.host, self.settings.pool_name, pool.metadata_device,
                               self.client)
        kname = self.kernel_name(name)
        inodes = None
        if self.pool.client.info(kname) is not None:
            inodes = inodes_used(self.host, f"/dev/mapper/{kname}")
        return used.get(record.device_id), inodes

    def _kernel(self, name: str) -> KernelDevice | None:
        return self.obs.device(self.kernel_name(name))

    def _resume_step(self, state: DeviceState, record: DeviceRecord,
                     spec: DeviceSpec | None) -> _Step:
        """The step a device stopped in the middle of (a crash, a failed attempt) runs again."""
        in_flight = {
            S.CREATING: ("create", self._create, False),
            S.ACTIVATING: ("activate", self._activate, False),
            S.SUSPENDING: ("reload", self._reload, False),
            S.SUSPENDED: ("reload", self._reload, False),
            S.RESUMING: ("reload", self._reload, False),
            S.DEACTIVATING: ("deactivate", (lambda r: self._deactivate(r, discard=True))
                             if spec is None else self._deactivate, spec is None),
            S.REMOVING: ("remove", self._remove, True),
        }
        label, action, removal = in_flight[state]
        return _Step(label, lambda: action(record), removal)

    def _next_step(self, record: DeviceRecord, spec: DeviceSpec | None) -> _Step | None:
        """The next step for a device; reads only (plan relies on that)."""
        state = DeviceState(record.state)
        name = record.name
        if state in IN_FLIGHT:
            return self._resume_step(state, record, spec)
        kernel = self._kernel(name)
        if state in LIVE and kernel is None:
            return _Step("vanished", lambda: self.machine(name).fire("vanished"))

        if spec is None:
            if state == S.REMOVED:
                return None
            if state in LIVE:
                return _Step("deactivate", lambda: self._deactivate(record, discard=True),
                             removal=True)
            return _Step("remove", lambda: self._remove(record), removal=True)

        if state == S.REMOVED:
            return _Step("recreate", lambda: self._recreate(record, spec))
        if state == S.FAULTY:
            if record.spec_digest != spec.digest:
                return _Step("retry", lambda: self._retry(record, spec))
            return None
        if state == S.UNKNOWN:
            self._check_parent(record)
            return _Step("create", lambda: self._create(record))
        if state in (S.CREATED, S.DEACTIVATED):
            if kernel is not None or spec.active or not record.formatted:
                return _Step("activate", lambda: self._activate(record))
            return None
        # Live: format once, then match mode and size, grow the filesystem, match `active`.
        assert kernel is not None
        if not record.formatted:
            return _Step("mkfs", lambda: self._format(record))
        if not spec.active:
            # Mode and size are loaded with the table at the next activation.
            return _Step("deactivate", lambda: self._deactivate(record))
        if kernel.info.readonly != record.readonly or self._length_differs(record, kernel):
            return _Step("reload", lambda: self._reload(record))
        if self._fs_needs_growing(record, kernel):
            return _Step("grow filesystem", lambda: self._grow_fs(record))
        return None

    def _length_differs(self, record: DeviceRecord, kernel: KernelDevice) -> bool:
        return kernel.table is not None and kernel.table.length != to_sectors(
            Bytes(record.size_bytes)
        )

    def _fs_needs_growing(self, record: DeviceRecord, kernel: KernelDevice) -> bool:
        # Only filesystems we made are grown, only unmounted, and only once per size.
        return (
            record.filesystem != "none"
            and 0 < record.fs_size_bytes < record.size_bytes
            and kernel.info.open_count == 0
            and not kernel.info.readonly
            and record.notice is None
        )

    def _check_parent(self, record: DeviceRecord) -> None:
        if record.parent is None:
            return
        parent = self.records.get(record.parent)
        ready = (S.CREATED, S.ACTIVATED, S.RESUMED, S.DEACTIVATED)
        if parent is None or not parent.provisioned or parent.state not in ready:
            state = "not created yet" if parent is None else parent.state
            raise Waiting(f"waiting for parent {record.parent!r} ({state})")
        if not parent.formatted:
            raise Waiting(f"waiting for parent {record.parent!r} to get its filesystem")

    # -- kernel steps ----------------------------------------------------------------------

    def _create(self, record: DeviceRecord) -> None:
        assert self.pool is not None
        machine = self.machine(record.name)
        before = self.transaction_id
        if machine.current == S.UNKNOWN:
            record.device_id = self._allocate_id()
            if record.parent is not None:
                parent = self.records[record.parent]
                record.origin_id = parent.device_id
                record.fs_size_bytes = parent.fs_size_bytes
        op = "create_snap" if record.origin_id is not None else "create_thin"
        if machine.current == S.UNKNOWN:
            with self.store.transaction():
                machine.fire("create")  # the id, with state Creating...
                self._intend(record, op, before)  # ...and the change, together
        else:
            # A retry: the intent is written anew, as the pool may have moved on meanwhile.
            self._intend(record, op, before)
        assert record.device_id is not None
        if record.origin_id is not None and record.parent is not None:
            with self._origin_suspended(record.parent):
                after = self.pool.create_snap(record.device_id, record.origin_id, before)
        else:
            after = self.pool.create_thin(record.device_id, before)
        self._commit_pool_change(record, "create", after)

    def _allocate_id(self) -> int:
        """The lowest thin id neither a live device of ours nor the pool holds (an orphan's
        id is never handed out; a Faulty device's stays quarantined). Kept in memory for the
        pass, so making N devices costs O(N), not a query per device."""
        if self._taken is None:
            self._taken = {r.device_id for r in self.records.values()
                           if r.device_id is not None and r.state != S.REMOVED}
            self._taken |= self.pool_ids or set()
            self._id_floor = 0
        new = lowest_free_id(self._taken, self._id_floor, self.store.max_id)
        self._taken.add(new)
        self._id_floor = new + 1
        return new

    def _commit_pool_change(self, record: DeviceRecord, op: str, transaction_id: int) -> None:
        """The pool did `op`: its new transaction id, the device's new state and the end of
        the intent are one store transaction."""
        assert record.device_id is not None
        if self.pool_ids is not None:
            if op == "delete":
                self.pool_ids.discard(record.device_id)
            else:
                self.pool_ids.add(record.device_id)
        with self.store.transaction():
            self._save_transaction_id(transaction_id)
            self.store.drop_intent(record.name)
            self._record_pool_change(record, op)

    def _intend(self, record: DeviceRecord, op: str, before: int) -> None:
        assert record.device_id is not None
        self.store.save_intent(IntentRecord(
            device=record.name, op=op, thin_id=record.device_id, origin_id=record.origin_id,
            from_txn=before, to_txn=before + 1, at=self.clock(),
        ))

    @contextmanager
    def _origin_suspended(self, parent_name: str) -> Iterator[None]:
        """Suspend an active origin around create_snap, as dm-thin's documentation asks: the
        kernel does not refuse an unsuspended one (captured), but the snapshot would then miss
        writes still in flight and a mounted filesystem would not be frozen first."""
        assert self.pool is not None
        parent = self.records[parent_name]
        if parent.state not in LIVE or self._kernel(parent_name) is None:
            yield
            return
        machine = self.machine(parent_name)
        kname = self.kernel_name(parent_name)
        machine.fire("suspend")
        self.pool.client.suspend(kname)
        machine.fire("suspended")
        try:
            yield
        finally:
            machine.fire("resume")
            self.pool.client.resume(kname)
            machine.fire("resumed")

    def _wanted_table(self, record: DeviceRecord) -> str:
        assert self.pool is not None and record.device_id is not None
        return self.pool.thin_table(record.device_id, _sectors(record.size_bytes)).line()

    def _activate(self, record: DeviceRecord) -> None:
        assert self.pool is not None and record.device_id is not None
        machine = self.machine(record.name)
        if machine.current in (S.CREATED, S.DEACTIVATED):
            machine.fire("activate")
        kname = self.kernel_name(record.name)
        wanted = self.pool.thin_table(record.device_id, _sectors(record.size_bytes))
        # mkfs needs a writable device: a read-only one is made read-only after its mkfs.
        readonly = record.readonly and record.formatted
        try:
            self.pool.client.create(kname, wanted.line(), thin_uuid(self.settings.pool_name,
                                    record.device_id), readonly=readonly)
        except (DeviceBusy, DeviceExists) as exc:
            # dm answers EBUSY when the name is taken. Adopt it if it is exactly our device;
            # otherwise it is a conflict an operator must clear, worth retrying meanwhile.
            lines = self.pool.client.table(kname)
            loaded = single_thin_table(lines)
            if loaded is None or not table_matches(loaded, wanted, self.obs.pool_number):
                raise DeviceBusy(
                    f"activate {kname}",
                    detail=f"a dm device named {kname} already exists with table "
                    f"{describe_table(lines)!r}, not ours ({wanted.line()!r})",
                ) from exc
        self._refresh(record.name)
        machine.fire("activated")

    def _refresh(self, name: str) -> None:
        """Re-read one device after changing it (info and table; two calls)."""
        assert self.pool is not None
        kname = self.kernel_name(name)
        info = self.pool.client.info(kname)
        if info is None:
            self.obs.devices.pop(kname, None)
            return
        table = single_thin_table(self.pool.client.table(kname))
        self.obs.devices[kname] = KernelDevice(info=info, table=table)

    def _format(self, record: DeviceRecord) -> None:
        device = f"/dev/mapper/{self.kernel_name(record.name)}"
        make_filesystem(self.host, record.filesystem, device, self.settings.fs_options)
        record.formatted = True
        record.fs_size_bytes = record.size_bytes
        self.store.save_device(record)
        log.info("device.formatted", name=record.name, filesystem=record.filesystem)

    def _grow_fs(self, record: DeviceRecord) -> None:
        device = f"/dev/mapper/{self.kernel_name(record.name)}"
        if grow_filesystem(self.host, record.filesystem, device):
            record.fs_size_bytes = record.size_bytes
            log.info("device.filesystem_grown", name=record.name, size_bytes=record.size_bytes)
        else:
            record.notice = (f"the {record.filesystem} filesystem still has "
                             f"{record.fs_size_bytes} bytes: grow it while mounted "
                             "(xfs_growfs MOUNTPOINT)")
            log.warning("device.filesystem_not_grown", name=record.name, notice=record.notice)
        self.store.save_device(record)

    def _reload(self, record: DeviceRecord) -> None:
        """Swap in the table the record wants (read-only flag, length) via suspend/resume."""
        assert self.pool is not None
        machine = self.machine(record.name)
        kname = self.kernel_name(record.name)
        client = self.pool.client
        kernel = self._kernel(record.name)
        if kernel is not None and kernel.table is not None and record.fs_size_bytes and \
                kernel.info.open_count > 0 and kernel.table.length < _sectors(record.size_bytes):
            record.notice = ("grown while open: grow its filesystem where it is mounted "
                             "(resize2fs DEVICE or xfs_growfs MOUNTPOINT)")
        if machine.current in LIVE:
            machine.fire("suspend")
        if machine.current == S.SUSPENDING:
            client.suspend(kname)
            machine.fire("suspended")
        if machine.current == S.SUSPENDED:
            client.load(kname, self._wanted_table(record), readonly=record.readonly)
            machine.fire("resume")
        client.resume(kname)
        self._refresh(record.name)
        machine.fire("resumed")

    def _deactivate(self, record: DeviceRecord, discard: bool = False) -> None:
        """Remove the dm device; on the way to deletion, first discard its blocks if the
        config asks (only a writable live device can be discarded)."""
        assert self.pool is not None
        machine = self.machine(record.name)
        if machine.current in LIVE:
            machine.fire("deactivate")
        kname = self.kernel_name(record.name)
        kernel = self._kernel(record.name)
        if discard and self.settings.discard_blocks and kernel is not None \
                and not kernel.info.readonly:
            discard_blocks(self.host, f"/dev/mapper/{kname}")
        with suppress(NoSuchDevice):  # already gone: the goal of this step
            self.pool.client.remove(kname)
        self.obs.devices.pop(kname, None)
        machine.fire("deactivated")

    def _remove(self, record: DeviceRecord) -> None:
        assert self.pool is not None
        machine = self.machine(record.name)
        if machine.current != S.REMOVING:
            machine.fire("remove")
        kname = self.kernel_name(record.name)
        if self.obs.device(kname) is not None:
            with suppress(NoSuchDevice):
                self.pool.client.remove(kname)
            self.obs.devices.pop(kname, None)
        if not record.provisioned or record.device_id is None:
            machine.fire("removed")
            return
        before = self.transaction_id
        self._intend(record, "delete", before)
        after = before
        with suppress(NoData):  # the pool no longer has the id: what this step wanted
            after = self.pool.delete(record.device_id, before)
        self._commit_pool_change(record, "delete", after)

    def _recreate(self, record: DeviceRecord, spec: DeviceSpec) -> None:
        _copy_spec(record, spec)
        record.device_id = None
        record.origin_id = None
        record.formatted = False
        record.fs_size_bytes = 0
        record.notice = None
        self.machine(record.name).fire("recreate")

    def _retry(self, record: DeviceRecord, spec: DeviceSpec) -> None:
        if record.provisioned:
            _apply_spec(record, spec)
        else:
            _copy_spec(record, spec)
        self.machine(record.name).fire("retry")


def _sectors(size: int) -> Sectors:
    return to_sectors(Bytes(size))


def _fs(value: str) -> Filesystem:
    return cast(Filesystem, value)


def _copy_spec(record: DeviceRecord, spec: DeviceSpec) -> None:
    """Everything from the spec, for a device not yet made."""
    record.parent = spec.parent
    record.filesystem = spec.filesystem
    _apply_spec(record, spec)


def _apply_spec(record: DeviceRecord, spec: DeviceSpec) -> None:
    """The spec's wishes an existing device can follow (size, mode, labels, active)."""
    if spec.size != record.size_bytes:
        record.notice = None
    record.size_bytes = spec.size
    record.active = spec.active
    record.readonly = spec.readonly
    record.labels = dict(spec.labels)
    record.spec_digest = spec.digest


def _impossible_change(record: DeviceRecord, spec: DeviceSpec) -> str | None:
    """Why an existing device cannot become what its spec now says, if it cannot."""
    if spec.parent != record.parent:
        return (f"key 'parent': the device exists with parent {record.parent!r}; "
                "a device cannot change its parent (remove it and make a new one)")
    if spec.filesystem != record.filesystem:
        return (f"key 'filesystem': the device exists with {record.filesystem!r}; "
                "its filesystem is never remade")
    if spec.size < record.size_bytes:
        return (f"key 'size': {spec.size} bytes is smaller than the device's "
                f"{record.size_bytes}; thin devices are never shrunk")
    return None


def _parents_first(specs: dict[str, DeviceSpec]) -> list[str]:
    ordered: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        parent = specs[name].parent
        if parent is not None and parent in specs:
            visit(parent)
        ordered.append(name)

    for name in sorted(specs):
        visit(name)
    return ordered
