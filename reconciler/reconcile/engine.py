"""One reconcile pass: read every spec, observe the kernel, drive every device to its spec.

Level-triggered: each device's next step is decided from its stored state, its spec and what
the kernel shows, never from the event that woke us. Every kernel call sits between two
transitions of the device's machine, each persisted by the store, so a crash leaves the step in
flight on disk. A state written while a call was in flight (Creating, Activating, ...) is
resolved on the next pass by doing that call again: each call here is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import cast

import structlog

from reconciler.config import Settings
from reconciler.dm.errors import DeviceBusy, DeviceExists, DmError, NoData, NoSuchDevice
from reconciler.dm.filesystem import make_filesystem
from reconciler.dm.host import Host
from reconciler.dm.pool import ThinPool, table_matches, thin_device_name, thin_uuid
from reconciler.dm.types import DeviceInfo
from reconciler.reconcile.observe import KernelDevice, Observation, observe
from reconciler.reconcile.pool_setup import prepare_pool
from reconciler.reconcile.retry import RetryPolicy
from reconciler.specs import (
    Defaults,
    DeviceSpec,
    Filesystem,
    RejectedSpec,
    SpecSet,
    inherit,
    load_spec_dir,
)
from reconciler.states import DeviceMachine, DeviceState, StateChange
from reconciler.store import DeviceRecord, RejectedSpecRecord, Store, TransitionRecord
from reconciler.units import Bytes, Sectors, to_sectors

S = DeviceState
log = structlog.get_logger(__name__)

LIVE = (S.ACTIVATED, S.RESUMED)
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

    @property
    def ok(self) -> bool:
        """Everything converged and every spec was usable."""
        return not (self.pending or self.faulty or self.rejected)


class StepFailed(Exception):
    """A step gave up on a device; the device is Faulty or waits for the next pass."""


class Waiting(Exception):
    """A device cannot take its next step yet (its parent is not ready); not an error."""


@dataclass
class _Step:
    name: str
    run: Callable[[], None]


class Reconciler:
    """Drives every device toward its spec, one pass at a time."""

    def __init__(
        self,
        settings: Settings,
        host: Host,
        store: Store,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.policy = policy or RetryPolicy()
        self.pool: ThinPool | None = None
        self.records: dict[str, DeviceRecord] = {}
        self.machines: dict[str, DeviceMachine] = {}
        self.obs = Observation()
        self.transaction_id = 0

    # -- pass ------------------------------------------------------------------------------

    def load_specs(self) -> SpecSet:
        """The spec directory, parsed with the config's defaults."""
        defaults = Defaults(size=self.settings.base_image_size,
                            filesystem="ext4" if self.settings.fs_type == "ext4" else "xfs")
        return load_spec_dir(self.settings.specs_path, defaults)

    def run_pass(self) -> PassResult:
        """Read specs, observe the kernel, and drive each device as far as it can go."""
        if self.pool is None:
            self.pool = prepare_pool(self.settings, self.host, self.store, self.clock())
        spec_set = self.load_specs()
        self.obs = observe(self.pool.client, self.settings.pool_name)
        self._sync_transaction_id()
        self.records = {r.name: r for r in self.store.devices(include_removed=True)}
        self.machines = {}

        result = PassResult()
        specs, rejected = self._resolve_against_store(spec_set)
        result.rejected = rejected
        self.store.replace_rejected_specs(
            RejectedSpecRecord(r.name, r.path, r.error, self.clock()) for r in rejected
        )
        for item in rejected:
            log.warning("spec.rejected", name=item.name, path=item.path, error=item.error,
                        next="fix the file; the device (if any) is left as it is")

        keep = spec_set.names
        for name in _parents_first(specs):
            self._drive(name, specs[name], result)
        for name, record in sorted(self.records.items()):
            if name not in keep and record.state != S.REMOVED:
                self._drive(name, None, result)
        return result

    def _sync_transaction_id(self) -> None:
        assert self.pool is not None
        record = self.store.pool(self.settings.pool_name)
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
        elif change.trigger in ("retry", "recreate"):
            record.error = record.error_step = None
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
        bound = log.bind(name=name)
        record = self._record(name, spec)
        for _ in range(MAX_STEPS):
            try:
                step = self._next_step(record, spec)
            except Waiting as wait:
                record.error = str(wait)
                self.store.save_device(record)
                result.pending[name] = str(wait)
                bound.info("device.waiting", reason=str(wait), next="next pass")
                return
            if step is None:
                break
            try:
                self._run_step(record, step)
            except StepFailed as failed:
                if record.state == S.FAULTY:
                    result.faulty[name] = str(failed)
                else:
                    result.pending[name] = str(failed)
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
            result.converged.append(name)

    def _run_step(self, record: DeviceRecord, step: _Step) -> None:
        bound = log.bind(name=record.name, step=step.name)
        while True:
            try:
                step.run()
            except DmError as exc:
                record.attempts += 1
                if exc.temporary and not self.policy.exhausted(record.attempts):
                    delay = self.policy.delay(record.attempts)
                    record.error = f"{exc} (attempt {record.attempts}/" \
                                   f"{self.policy.max_attempts})"
                    self.store.save_device(record)
                    bound.warning("device.step_failed", error=str(exc), errno=exc.errno_name,
                                  attempt=record.attempts, decision="temporary",
                                  next=f"retry in {delay:.2f}s")
                    self.sleep(delay)
                    continue
                reason = "permanent" if not exc.temporary else "attempts exhausted"
                bound.error("device.step_failed", error=str(exc), errno=exc.errno_name,
                            attempt=record.attempts, decision=reason, next="marking Faulty")
                self.machine(record.name).fire(
                    "fail", error=f"{step.name}: {exc} ({reason} after {record.attempts} "
                    f"attempt{'s' if record.attempts != 1 else ''})", step=step.name
                )
                raise StepFailed(str(exc)) from exc
            if record.attempts or record.error:
                record.attempts = 0
                record.error = None
                self.store.save_device(record)
            return

    # -- deciding --------------------------------------------------------------------------

    def kernel_name(self, name: str) -> str:
        """The dm name of a managed device."""
        return thin_device_name(self.settings.pool_name, name)

    def _kernel(self, name: str) -> KernelDevice | None:
        return self.obs.device(self.kernel_name(name))

    def _next_step(self, record: DeviceRecord, spec: DeviceSpec | None) -> _Step | None:
        state = DeviceState(record.state)
        name = record.name
        in_flight = {
            S.CREATING: lambda: _Step("create", lambda: self._create(record)),
            S.ACTIVATING: lambda: _Step("activate", lambda: self._activate(record)),
            S.SUSPENDING: lambda: _Step("reload", lambda: self._reload(record)),
            S.SUSPENDED: lambda: _Step("reload", lambda: self._reload(record)),
            S.RESUMING: lambda: _Step("reload", lambda: self._reload(record)),
            S.DEACTIVATING: lambda: _Step("deactivate", lambda: self._deactivate(record)),
            S.REMOVING: lambda: _Step("remove", lambda: self._remove(record)),
        }
        if state in in_flight:
            return in_flight[state]()
        kernel = self._kernel(name)
        if state in LIVE and kernel is None:
            return _Step("vanished", lambda: self.machine(name).fire("vanished"))

        if spec is None:
            if state == S.REMOVED:
                return None
            if state in LIVE:
                return _Step("deactivate", lambda: self._deactivate(record))
            return _Step("remove", lambda: self._remove(record))

        if state == S.REMOVED:
            return _Step("recreate", lambda: self._recreate(record, spec))
        if state == S.FAULTY:
            if record.spec_digest != spec.digest:
                return _Step("retry", lambda: self._retry(record, spec))
            return None
        _update_soft_fields(record, spec, self.store)
        if state == S.UNKNOWN:
            self._check_parent(record)
            return _Step("create", lambda: self._create(record))
        if state in (S.CREATED, S.DEACTIVATED):
            if kernel is not None or spec.active or not record.formatted:
                return _Step("activate", lambda: self._activate(record))
            return None
        # Live: format once, then match mode and size, then match `active`.
        assert kernel is not None
        if not record.formatted:
            return _Step("mkfs", lambda: self._format(record))
        if kernel.info.readonly != record.readonly or self._length_differs(record, kernel):
            return _Step("reload", lambda: self._reload(record))
        if not spec.active:
            return _Step("deactivate", lambda: self._deactivate(record))
        return None

    def _length_differs(self, record: DeviceRecord, kernel: KernelDevice) -> bool:
        return kernel.table is not None and kernel.table.length != to_sectors(
            Bytes(record.size_bytes)
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
        if machine.current == S.UNKNOWN:
            record.device_id = self.store.allocate_id()
            if record.parent is not None:
                record.origin_id = self.records[record.parent].device_id
            machine.fire("create")  # persists the id with state Creating: our intent
        assert record.device_id is not None
        before = self.transaction_id
        try:
            if record.origin_id is not None and record.parent is not None:
                with self._origin_suspended(record.parent):
                    after = self.pool.create_snap(record.device_id, record.origin_id, before)
            else:
                after = self.pool.create_thin(record.device_id, before)
        except DeviceExists:
            # The id is there already. Ours only if the pool counted our change (a crash
            # after the message); otherwise it belongs to someone else and is not touched.
            status = self.pool.status()
            if status.transaction_id != before + 1:
                raise
            after = status.transaction_id
        self._save_transaction_id(after)
        record.provisioned = True
        # Snapshots carry their parent's filesystem; devices without one need no mkfs.
        record.formatted = record.parent is not None or record.filesystem == "none"
        machine.fire("created")

    @contextmanager
    def _origin_suspended(self, parent_name: str) -> Iterator[None]:
        """The kernel requires an active origin to be suspended while it is snapshotted."""
        assert self.pool is not None
        parent = self.records[parent_name]
        kernel = self._kernel(parent_name)
        if parent.state not in LIVE or kernel is None:
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
            from reconciler.dm.parse import parse_thin_table
            loaded = [parse_thin_table(t) for t in lines if t.target == "thin"]
            if not (len(lines) == 1 and loaded
                    and table_matches(loaded[0], wanted, self.obs.pool_number)):
                found = "; ".join(f"{t.start} {t.length} {t.target} {t.params}" for t in lines)
                raise DeviceBusy(
                    f"activate {kname}",
                    detail=f"a dm device named {kname} already exists with table "
                    f"{found or 'none'!r}, not ours ({wanted.line()!r})",
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
        from reconciler.dm.parse import parse_thin_table
        lines = self.pool.client.table(kname)
        table = parse_thin_table(lines[0]) if len(lines) == 1 and lines[0].target == "thin" \
            else None
        self.obs.devices[kname] = KernelDevice(info=info, table=table)

    def _format(self, record: DeviceRecord) -> None:
        device = f"/dev/mapper/{self.kernel_name(record.name)}"
        make_filesystem(self.host, record.filesystem, device, self.settings.fs_options)
        record.formatted = True
        self.store.save_device(record)
        log.info("device.formatted", name=record.name, filesystem=record.filesystem)

    def _reload(self, record: DeviceRecord) -> None:
        """Swap in the table the record wants (read-only flag, length) via suspend/resume."""
        assert self.pool is not None
        machine = self.machine(record.name)
        kname = self.kernel_name(record.name)
        client = self.pool.client
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

    def _deactivate(self, record: DeviceRecord) -> None:
        assert self.pool is not None
        machine = self.machine(record.name)
        if machine.current in LIVE:
            machine.fire("deactivate")
        kname = self.kernel_name(record.name)
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
        if record.provisioned and record.device_id is not None:
            with suppress(NoData):  # the pool no longer has the id: what this step wanted
                self._save_transaction_id(
                    self.pool.delete(record.device_id, self.transaction_id)
                )
            record.provisioned = False
        machine.fire("removed")

    def _recreate(self, record: DeviceRecord, spec: DeviceSpec) -> None:
        _copy_spec(record, spec)
        record.device_id = None
        record.origin_id = None
        record.formatted = False
        self.machine(record.name).fire("recreate")

    def _retry(self, record: DeviceRecord, spec: DeviceSpec) -> None:
        if not record.provisioned:
            _copy_spec(record, spec)
        self.machine(record.name).fire("retry")


def _sectors(size: int) -> Sectors:
    return to_sectors(Bytes(size))


def _copy_spec(record: DeviceRecord, spec: DeviceSpec) -> None:
    record.size_bytes = spec.size
    record.parent = spec.parent
    record.filesystem = spec.filesystem
    record.active = spec.active
    record.readonly = spec.readonly
    record.labels = dict(spec.labels)
    record.spec_digest = spec.digest


def _fs(value: str) -> Filesystem:
    return cast(Filesystem, value)


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


def _update_soft_fields(record: DeviceRecord, spec: DeviceSpec, store: Store) -> None:
    """Take the spec's wishes that need no new device (mode, size, labels, active)."""
    if record.spec_digest == spec.digest:
        return
    record.size_bytes = spec.size
    record.active = spec.active
    record.readonly = spec.readonly
    record.labels = dict(spec.labels)
    record.spec_digest = spec.digest
    store.save_device(record)


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


__all__ = ["DeviceInfo", "PassResult", "Reconciler"]
