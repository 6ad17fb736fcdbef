"""What should exist: every spec, from files and from the store, checked against the devices.

Two sources of desired devices, one shape: spec files (parsed by `reconciler.specs`) and
specs kept in the store by the snapshotter API (its rows say size, filesystem, parent, active
and read-only; what a containerd kind means is the snapshotter's business, not ours). Their
parents are resolved once, by `specs.resolve`, given the devices the store holds as made. A
spec that asks an existing device for the impossible is rejected here, and its device is
left as it is.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping

import structlog

from reconciler.config import Settings
from reconciler.specs import (
    Defaults,
    DeviceSpec,
    KnownDevice,
    RejectedSpec,
    SpecFileCache,
    SpecSet,
    scan_spec_dir,
    scan_spec_files,
    stored_spec,
)
from reconciler.store import DeviceRecord, SnapshotRecord, Store
from reconciler.units import Bytes
from reconciler.vocabulary import NO_LABELS, DeviceState, Filesystem

log = structlog.get_logger(__name__)


class RejectionLog:
    """`spec.rejected`, once per rejection that is new or changed: the rejected specs as last
    logged are kept by name (path, reason); status and the store list them all every pass.
    One gone and come back is new again."""

    def __init__(self) -> None:
        self._logged: dict[str, tuple[str, str]] = {}

    def say(self, rejected: Iterable[RejectedSpec]) -> None:
        """Log what is new or changed in `rejected`, every rejected spec of a pass."""
        now: dict[str, tuple[str, str]] = {}
        for item in rejected:
            now[item.name] = (item.path, item.error)
            if self._logged.get(item.name) != now[item.name]:
                log.warning("spec.rejected", name=item.name, path=item.path, error=item.error,
                            next="fix the file; the device (if any) is left as it is")
        self._logged = now


class StoredSpecs:
    """The specs the store keeps (the snapshotter's rows), read whole once, then only the
    rows this process saved since (`Store.take_saved_snapshots`): a targeted pass (one
    snapshotter call) then costs the same however many snapshots there are, e.g. at the top
    of a chain of 128 layers. Read whole again for every full pass and whenever another
    process wrote the store."""

    def __init__(self) -> None:
        self._specs: dict[str, DeviceSpec] | None = None

    def read(self, store: Store, incremental: bool) -> dict[str, DeviceSpec]:
        """The stored specs now, by device name."""
        saved = store.take_saved_snapshots()
        if not incremental or self._specs is None:
            self._specs = {row.name: _stored(row) for row in store.snapshots()}
            return self._specs
        for name in saved:
            row = store.snapshot(name)
            if row is not None and row.wanted:
                self._specs[name] = _stored(row)
            else:
                self._specs.pop(name, None)
        return self._specs


def _stored(row: SnapshotRecord) -> DeviceSpec:
    return stored_spec(row.name, row.size_bytes, row.filesystem, row.parent, row.active,
                       readonly=row.readonly, labels=row.labels)


def load_specs(settings: Settings, stored: dict[str, DeviceSpec], cache: SpecFileCache,
               changed: Iterable[str] | None = None,
               records: Mapping[str, DeviceRecord] | None = None) -> SpecSet:
    """Every desired device: the spec directory (parsed with the config's defaults) and the
    specs the store keeps (`stored`), parents resolved against each other and against the
    devices of `records` made already. With `changed`, only those names' files are read
    again; the others are as the last scan left them in `cache`. Only the spec files for
    the config's `node_name` are wanted; the others are the set's `elsewhere`."""
    defaults = Defaults(size=settings.base_image_size, filesystem=Filesystem(settings.fs_type))
    allow = settings.allow_foreign_specs
    node = settings.node_name
    if changed is None:
        files = scan_spec_dir(settings.specs_path, defaults, cache, allow_foreign=allow,
                              node=node)
    else:
        files = scan_spec_files(settings.specs_path, changed, defaults, cache,
                                allow_foreign=allow, node=node)
    return cache.resolved(files, settings.specs_path, stored, known_devices(records or {}))


class MadeDevices(Mapping[str, KnownDevice]):
    """The devices made already, as a snapshot of them (or one of them) inherits them:
    looked up a name at a time, never built whole. A resolution asks only for the parents
    that have no spec; building all 10,000 of a resync's would cost more than the rest of
    the resolution."""

    def __init__(self, records: Mapping[str, DeviceRecord]) -> None:
        self._records = records

    def __getitem__(self, name: str) -> KnownDevice:
        record = self._records.get(name)
        if record is None or not record.provisioned:
            raise KeyError(name)
        return KnownDevice(Bytes(record.size_bytes), record.filesystem)

    def __iter__(self) -> Iterator[str]:
        return (name for name, record in self._records.items() if record.provisioned)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def known_devices(records: Mapping[str, DeviceRecord]) -> MadeDevices:
    """The devices made already, as a snapshot of them (or one of them) inherits them."""
    return MadeDevices(records)


def resolve_against_store(
    spec_set: SpecSet, records: dict[str, DeviceRecord], settings: Settings
) -> tuple[Mapping[str, DeviceSpec], list[RejectedSpec]]:
    """Reject what cannot be done to a device that exists: a spec that asks it for the
    impossible (a new parent or filesystem, a smaller size) is rejected, and the device is
    left as it is. (Parents were resolved once, by `load_specs`.)
    """
    rejected = list(spec_set.rejected)
    problems: dict[str, str] = {}
    get = records.get
    for name, spec in spec_set.specs.items():
        own = get(name)
        if own is not None and own.provisioned:
            problem = impossible_change(own, spec)
            if problem is not None:
                problems[name] = problem
    for name, problem in problems.items():
        rejected.append(RejectedSpec(name, str(settings.specs_path / f"{name}.toml"), problem))
    # Nothing rejected (a resync's usual case): the spec set's own dict, which nobody changes.
    specs = {n: s for n, s in spec_set.specs.items() if n not in problems} if problems \
        else spec_set.specs
    return specs, sorted(rejected, key=lambda r: r.name)


def impossible_change(record: DeviceRecord, spec: DeviceSpec) -> str | None:
    """Why an existing device cannot become what its spec now says, if it cannot."""
    if spec.parent != record.parent:
        return (f"key 'parent': the device exists with parent {record.parent!r}; "
                "a device cannot change its parent (remove it and make a new one)")
    if spec.filesystem != record.filesystem:
        return (f"key 'filesystem': the device exists with {record.filesystem.value!r}; "
                "its filesystem is never remade")
    if spec.size < record.size_bytes:
        return (f"key 'size': {spec.size} bytes is smaller than the device's "
                f"{record.size_bytes}; thin devices are never shrunk")
    return None


def parents_first(specs: Mapping[str, DeviceSpec]) -> list[str]:
    """Spec names, each after its parent (when the parent has a spec), else by name.

    Iterative, so a long chain of snapshots does not run into Python's recursion limit.
    """
    ordered: list[str] = []
    seen: set[str] = set()
    for start in sorted(specs):
        chain: list[str] = []
        name: str | None = start
        while name is not None and name in specs and name not in seen:
            seen.add(name)
            chain.append(name)
            name = specs[name].parent
        ordered.extend(reversed(chain))
    return ordered


class Ordering:
    """parents_first, again only when a spec changed: the order depends on nothing but each
    spec's name and parent, so the same spec objects (the spec cache hands back the same
    object for an unchanged file) in the same order give the last order back."""

    def __init__(self) -> None:
        self._last: tuple[list[DeviceSpec], tuple[str, ...]] | None = None

    def parents_first(self, specs: Mapping[str, DeviceSpec]) -> tuple[str, ...]:
        """parents_first(specs), remembered."""
        values = list(specs.values())
        last = self._last
        if last is not None and len(last[0]) == len(values) \
                and all(map(operator.is_, last[0], values)):
            return last[1]
        order = tuple(parents_first(specs))
        self._last = (values, order)
        return order


def with_descendants(names: set[str], specs: Mapping[str, DeviceSpec]) -> set[str]:
    """Names plus every spec'd descendant: a parent's change may unblock its snapshots."""
    children: dict[str, list[str]] = {}
    for name, spec in specs.items():
        if spec.parent is not None:
            children.setdefault(spec.parent, []).append(name)
    grown = set(names)
    todo = list(names)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in grown:
                grown.add(child)
                todo.append(child)
    return grown


def new_record(name: str, spec: DeviceSpec, now: float) -> DeviceRecord:
    """The record of a device a spec asks for and nobody made yet."""
    record = DeviceRecord(name=name, created_at=now, state_changed_at=now)
    copy_spec(record, spec)
    return record


def copy_spec(record: DeviceRecord, spec: DeviceSpec) -> None:
    """Everything from the spec, for a device not yet made."""
    record.parent = spec.parent
    record.filesystem = spec.filesystem
    apply_spec(record, spec)


def take_spec(record: DeviceRecord, spec: DeviceSpec) -> None:
    """A changed spec into its record: all of it for a device nothing was done to yet (its
    parent and filesystem may still change), else what an existing device can follow."""
    if record.state == DeviceState.UNKNOWN and not record.provisioned:
        copy_spec(record, spec)
    else:
        apply_spec(record, spec)


def apply_spec(record: DeviceRecord, spec: DeviceSpec) -> None:
    """The spec's wishes an existing device can follow (size, mode, labels, active)."""
    if spec.size != record.size_bytes:
        record.notice = None
    record.size_bytes = spec.size
    record.active = spec.active
    record.readonly = spec.readonly
    record.labels = dict(spec.labels) if spec.labels else NO_LABELS
    record.spec_digest = spec.digest
