"""The Reconciler: the long-lived object that runs passes, and what it keeps between them.

One pass reads every spec, observes the kernel, and drives every device to its spec (see
`drive`); the Reconciler keeps what makes the next pass cheap and correct: the pool, the
device records (the reconcile thread is their only writer; `records` says when to read them
again), parse caches, and the ledger of the pool's thin ids and transaction id (`ledger`).
Not thread-safe: one thread owns it, its store and its machines.

Where things are: desired state in `desired`, the decision in `decide` (its inputs built by
`PassContext.inputs`), the steps in `steps`, the crash protocol they follow in `intents`, the
sweeps and one device's loop in `drive` (retry or Faulty: `retry.verdict`), crash recovery in
`recovery`, operator requests and orphans in `maintenance`, the pass's world in
`pass_context`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog

from reconciler.config import Settings
from reconciler.dm.driver import DmDriver, make_client
from reconciler.dm.host import Host
from reconciler.dm.observed import KernelCallObserver, ObservedDriver
from reconciler.dm.pool import ThinPool, thin_device_name
from reconciler.reconcile import maintenance, recovery
from reconciler.reconcile.decide import Planned, Settled
from reconciler.reconcile.desired import (
    Ordering,
    RejectionLog,
    StoredSpecs,
    load_specs,
    parents_first,
    resolve_against_store,
    with_descendants,
)
from reconciler.reconcile.drive import drive_all, plan_line, schedule_retries
from reconciler.reconcile.engine_devices import EngineDevices
from reconciler.reconcile.guards import (
    Conditions,
    SourceGuard,
    UsageWatch,
    new_devices_held,
)
from reconciler.reconcile.holds import RemovalGuard, held_message
from reconciler.reconcile.ledger import PoolLedger
from reconciler.reconcile.observe import ParsedTargets, observe, observe_names
from reconciler.reconcile.pass_context import (
    PassContext,
    PassObserver,
    PassResult,
    Stopped,
)
from reconciler.reconcile.pool_setup import prepare_pool
from reconciler.reconcile.records import RecordCache
from reconciler.reconcile.retry import RetryPolicy
from reconciler.specs import DeviceSpec, RejectedSpec, SpecFileCache, SpecSet
from reconciler.states import DeviceState, SpareMachines
from reconciler.store import ConditionKind, DeviceRecord, RejectedSpecRecord, Store
from reconciler.tools.filesystem import undo_grow_mounts
from reconciler.vocabulary import PlanAction

S = DeviceState
log = structlog.get_logger(__name__)

# Full passes re-read the pool's thin ids (thin_ls) at least this often, changed or not.
POOL_IDS_EVERY = 10
# A partial pass over at most this many devices observes just them (three calls each).
TARGETED_MAX = 16


@dataclass
class _Desired:
    """A pass's specs: resolved against the store, and the names any source wants."""

    specs: Mapping[str, DeviceSpec]
    names: frozenset[str]
    rejected: list[RejectedSpec]
    # The spec directory could not be read completely: no spec-file device is touched.
    source_error: str | None = None
    # Spec files for other nodes than this one (their devices here are unwanted).
    elsewhere: tuple[str, ...] = ()


class Reconciler:
    """Drives every device toward its spec, one pass at a time."""

    def __init__(
        self,
        settings: Settings,
        host: Host,
        store: Store,
        clock: Callable[[], float] = time.time,
        policy: RetryPolicy | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
        allow_removals: bool = False,
        kernel_observer: KernelCallObserver | None = None,
        pass_observer: PassObserver | None = None,
        timer: Callable[[], float] = time.perf_counter,
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
        self.client: DmDriver = make_client(host, settings.dm_driver, settings.udev_timeout)
        if kernel_observer is not None:  # the daemon's metrics: every call counted and timed
            self.client = ObservedDriver(self.client, kernel_observer)
        self.pass_observer = pass_observer
        # Measures passes for pass_observer: a duration, never a time of day.
        self._timer = timer
        self.pool: ThinPool | None = None
        self._cache = RecordCache(store)
        self.records: dict[str, DeviceRecord] = self._cache.records
        self.ledger = PoolLedger()
        self._spares = SpareMachines()
        self.recovered = False
        self._spec_cache = SpecFileCache()
        self._stored_specs = StoredSpecs()
        self._parsed = ParsedTargets()
        self._settled = Settled()
        self._ordering = Ordering()
        self._full_passes = 0
        # `run --once --allow-removals`: the removal guard is off for this process.
        self.allow_removals = allow_removals
        # What the removal guard holds, its window and the config it judged under: stored.
        self.removal_guard = RemovalGuard(settings, store)
        # What each operator request the last pass took did, by request id (the daemon
        # answers its control socket's callers with it); only the last pass's are kept.
        self.request_outcomes: dict[int, maintenance.RequestOutcome] = {}
        self._source = SourceGuard(settings, store)
        self._conditions = Conditions(store)
        self._usage = UsageWatch()
        self._rejection_log = RejectionLog()
        # What the snapshotter may ask of devices (reconcile.devices): settle, open_count...
        self.devices = EngineDevices(self)

    def reconfigure(self, settings: Settings) -> None:
        """Go on with a reloaded config: what derives from the settings is made again, the
        parse and decision caches start empty (a default may have changed), and the rest
        stays: the pool and its kernel client, the ledger, recovery done, the records (read
        again by the next pass), the observers, and whoever holds `devices`."""
        self.settings = settings
        self.policy = RetryPolicy(initial=settings.retry_initial, maximum=settings.retry_max,
                                  max_attempts=settings.max_attempts)
        self._source = SourceGuard(settings, self.store)
        self.removal_guard = RemovalGuard(settings, self.store)
        self._spec_cache = SpecFileCache()
        self._stored_specs = StoredSpecs()
        self._parsed = ParsedTargets()
        self._settled = Settled()
        self._ordering = Ordering()
        self._cache.stale()

    # -- what outlives a pass ----------------------------------------------------------------

    def ensure_pool(self) -> ThinPool:
        """The pool, brought up (created or adopted) on first use."""
        if self.pool is None:
            self.pool = prepare_pool(self.settings, self.host, self.store, self.clock(),
                                     self.client)
            # Before the first pass observes: a mount a crash left while growing an xfs
            # holds its device open, and an open device is never grown.
            undone = undo_grow_mounts(self.host, self.settings.grow_mounts_path)
            if undone:
                log.warning("filesystem.grow_mounts_undone", mount_points=undone,
                            next="growing those filesystems again")
        return self.pool

    def kernel_name(self, name: str) -> str:
        """The dm name of a managed device."""
        return thin_device_name(self.settings.pool_name, name)

    def load_specs(self, changed: Iterable[str] | None = None,
                   incremental: bool = False) -> SpecSet:
        """Every desired device, from spec files and the store (see `desired.load_specs`);
        `incremental`: the store's specs as last read, plus what this process saved since."""
        stored = self._stored_specs.read(self.store, incremental)
        return load_specs(self.settings, stored, self._spec_cache, changed, self.records)

    def _context(self, pool: ThinPool) -> PassContext:
        return PassContext(
            settings=self.settings, host=self.host, store=self.store, clock=self.clock,
            policy=self.policy, pool=pool, ledger=self.ledger, records=self.records,
            stop_requested=self.stop_requested, spares=self._spares, settled=self._settled,
        )

    def _desired(self, spec_set: SpecSet, remember: bool = True) -> _Desired:
        spec_set = self._source.check(spec_set, remember)
        specs, rejected = resolve_against_store(spec_set, self.records, self.settings)
        return _Desired(specs, spec_set.names, rejected, spec_set.source_error, spec_set.elsewhere)

    # -- a pass ------------------------------------------------------------------------------

    def run_pass(self, only: Iterable[str] | None = None) -> PassResult:
        """Read specs, observe the kernel, and drive devices as far as they can go now.

        With `only`, drive just those names (and their snapshots), plus any device whose
        retry is due: what a file event asks for, without touching the rest. The pass
        observer, if any, hears of it however it ends.
        """
        if self.pass_observer is None:
            return self._pass(only)
        start = self._timer()
        result: PassResult | None = None
        try:
            result = self._pass(only)
            return result
        finally:
            self.pass_observer(only is not None, result, self._timer() - start)

    def _pass(self, only: Iterable[str] | None) -> PassResult:
        # udev is waited for only where it confirms our cookies; else an operator is told.
        self._conditions.say(ConditionKind.UDEV_UNREACHABLE, self.client.udev_sync().problem)
        ctx = self._context(self.ensure_pool())
        # udev handles a pass's device events together (a step opening a node settles first).
        try:
            with ctx.pool.client.deferred_udev():
                return self._run_pass(ctx, None if only is None else set(only))
        finally:
            ctx.finish()

    def _run_pass(self, ctx: PassContext, wanted: set[str] | None) -> PassResult:
        desired, chosen = self._begin(ctx, wanted)
        self._watch_pool_space(ctx)
        if not self.recovered:
            recovery.recover(ctx)
            maintenance.remake_nodes(ctx)
            self.recovered = True
        else:
            recovery.sync_transaction_id(ctx)
            if wanted is None and self._pool_may_have_changed(ctx):
                ctx.read_pool_ids()
        maintenance.resume_suspended(ctx)
        self.request_outcomes = {}
        maintenance.take_requests(ctx, self.load_specs, self.request_outcomes)
        if wanted is None:
            maintenance.find_orphans(ctx)

        result = PassResult(rejected=desired.rejected, source_error=desired.source_error)
        self.store.replace_rejected_specs(
            RejectedSpecRecord(r.name, r.path, r.error, self.clock()) for r in desired.rejected
        )
        self._rejection_log.say(desired.rejected)
        self._conditions.say(ConditionKind.SPEC_SOURCE, desired.source_error)

        # Every device, or those _begin chose; parents before their snapshots, unwanted
        # devices last (less those whose removal is held, or that no source may judge).
        order: list[tuple[str, DeviceSpec | None]] = [
            (n, desired.specs[n]) for n in self._ordering.parents_first(desired.specs)
            if chosen is None or n in chosen]
        unwanted = self._unwanted(desired, chosen, result)
        order += [(n, None) for n in sorted(unwanted)]
        try:
            drive_all(ctx, order, result, self._cache.distrust)
        except Stopped:
            result.stopped = True
            log.info("pass.stopped", next="exiting; every finished step is persisted")
        result.retries = dict(ctx.retries)
        schedule_retries(result, self.records, self.policy.max_attempts)
        self._cache.end_pass(result.stopped)
        return result

    def _watch_pool_space(self, ctx: PassContext) -> None:
        """Say when data usage climbs past a threshold, and whether new devices must wait."""
        self._usage.see(ctx.obs.pool, self.settings.pool_reserve)
        ctx.hold_new = new_devices_held(ctx.obs.pool, self.settings.data_block_size,
                                        self.settings.pool_reserve,
                                        self.settings.pool_metadata_reserve)
        self._conditions.say(ConditionKind.NEW_DEVICES_HELD, ctx.hold_new)

    def _unwanted(self, desired: _Desired, chosen: set[str] | None,
                  result: PassResult) -> set[str]:
        """The devices this pass takes away, less what the removal guard holds (holds.py)."""
        unwanted = self.removal_guard.removals(
            self.records, desired.names, self.records if chosen is None else chosen,
            desired.source_error, self.allow_removals, complete=chosen is None,
            now=self.clock())
        waiting = self.removal_guard.waiting()
        result.held = sorted(waiting)
        self._conditions.say(ConditionKind.REMOVALS_HELD, held_message(waiting) or None,
                             waiting)
        return unwanted

    def _begin(self, ctx: PassContext, only: set[str] | None
               ) -> tuple[_Desired, set[str] | None]:
        """Specs, records and the kernel's view for a pass, and (a partial pass) the names
        it drives: those asked for, their snapshots and every device whose retry is due.

        A partial pass over a few names, once recovered and with no operator request
        waiting, reuses the records the last pass left (this thread is the only writer of
        device rows) and observes only those devices, their parents and any device whose
        retry is due: its cost then does not grow with the number of devices.
        """
        few = only is not None and len(only) <= TARGETED_MAX
        targeted = self._cache.start_pass(self.recovered, only is None, few)
        # A pass sure to see every device reads the kernel's listings before the spec files:
        # the listings' transport (their bytes and text at once, 15 MB at 50,000 devices)
        # is gone before the spec set is made beside the last one (the peak of every pass
        # after a spec file's change).
        full = None if targeted else observe(ctx.pool.client, self.settings.pool_name,
                                             self._parsed)
        # After the records: the specs' parents are resolved against the devices made.
        spec_set = self.load_specs(only if few else None, incremental=targeted)
        desired = self._desired(spec_set)
        chosen: set[str] | None = None
        if only is not None:
            chosen = with_descendants(only, desired.specs)
            now = self.clock()
            chosen |= {n for n, r in self.records.items()
                       if r.retry_at is not None and r.retry_at <= now}
        if targeted and chosen is not None:
            names = chosen | {p for n in chosen
                              if (p := _parent_of(n, desired.specs, self.records)) is not None}
            if len(names) <= TARGETED_MAX:
                ctx.obs = observe_names(ctx.pool.client, self.settings.pool_name,
                                        [self.kernel_name(n) for n in sorted(names)])
                return desired, chosen
        ctx.obs = full if full is not None else observe(ctx.pool.client,
                                                        self.settings.pool_name, self._parsed)
        return desired, chosen

    def _pool_may_have_changed(self, ctx: PassContext) -> bool:
        """Whether the pool's list of thin ids must be read again (a metadata snapshot and
        thin_ls: two pool messages and a process) on this full pass: when its transaction
        id or metadata usage moved since the last read, and every POOL_IDS_EVERY full passes
        anyway (an id made by someone who does not move the transaction id)."""
        self._full_passes += 1
        return (self.ledger.changed_since_read(ctx.obs)
                or self._full_passes % POOL_IDS_EVERY == 0)

    # -- no devices driven -------------------------------------------------------------------

    def service_requests(self) -> None:
        """Bring the pool up, recover, and run queued operator requests; drive no device:
        what `reconciler gc` and `adopt` do when no daemon is running."""
        ctx = self._context(self.ensure_pool())
        self._begin(ctx, None)
        if not self.recovered:
            recovery.recover(ctx)
            self.recovered = True
        self.request_outcomes = {}
        maintenance.take_requests(ctx, self.load_specs, self.request_outcomes)
        ctx.read_pool_ids()
        maintenance.find_orphans(ctx)
        ctx.finish()

    def plan(self) -> list[tuple[str, Planned]]:
        """What the next pass would do to each device, by name, without doing anything.

        Observes the kernel (read-only) and reads the store; nothing is written, and no
        counter of the passes moves.
        """
        pool = self.pool or ThinPool(self.host, self.settings.pool_name, self.client)
        if pool.client.info(self.settings.pool_name) is None:
            return [("(pool)", Planned(PlanAction.CREATE_POOL,
                                       f"create pool {self.settings.pool_name}"))]
        ctx = self._context(pool)
        self._cache.read()
        desired = self._desired(self.load_specs(), remember=False)
        ctx.obs = observe(pool.client, self.settings.pool_name, self._parsed)
        actions = [(r.name, Planned(PlanAction.NONE, f"nothing: spec rejected ({r.error})"))
                   for r in desired.rejected]
        for name in parents_first(desired.specs):
            actions.append((name, plan_line(ctx, name, desired.specs[name])))
        held = self.removal_guard.waiting()
        for name, record in sorted(self.records.items()):
            if name in held and name not in desired.names:
                actions.append((name, Planned(PlanAction.HELD, (
                    f"nothing: removal held ({held[name].reason}); "
                    "`reconciler confirm-removals` to let it be done"))))
            elif name not in desired.names and record.state != S.REMOVED:
                actions.append((name, plan_line(ctx, name, None)))
        live = {n for n, r in self.records.items() if r.state != S.REMOVED}
        actions += [(n, Planned(PlanAction.NONE, "nothing: its spec is for other nodes than "
                                f"{self.settings.node_name}"))
                    for n in desired.elsewhere if n not in live]
        return sorted(actions)


def _parent_of(name: str, specs: Mapping[str, DeviceSpec],
               records: Mapping[str, DeviceRecord]) -> str | None:
    """A device's parent: its spec's, or its record's when it has no spec (a removal)."""
    spec = specs.get(name)
    if spec is not None and spec.parent is not None:
        return spec.parent
    record = records.get(name)
    return record.parent if record is not None else None
