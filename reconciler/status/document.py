"""The status document's types: one frozen dataclass per part, fields in the order and with
the names `status --json` prints them.

`status.report` fills them from the store and the kernel; `status.render` writes them (the
table reads fields, the JSON is `Report.document()`); `status.check` judges them. Nothing
here reads anything: a Report is plain data, so each renderer and the verdict are
table-tested on hand-made ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PoolReport:
    """The pool: the kernel's view (None where it could not be read), the store's, and the
    conditions the daemon raised about it."""

    name: str
    path: str
    transaction_id: int | None = None
    stored_transaction_id: int | None = None
    data_used_bytes: int | None = None
    data_total_bytes: int | None = None
    metadata_used_bytes: int | None = None
    metadata_total_bytes: int | None = None
    data_used_percent: float | None = None
    metadata_used_percent: float | None = None
    mode: str | None = None
    needs_check: bool | None = None
    error: str | None = None
    # Whether the kernel answered, and whether the pool is in it (status --check).
    kernel_readable: bool = True
    loaded: bool = False
    # Free space kept back (pool_reserve, pool_metadata_reserve): below it new devices wait
    # and `status --check` says degraded.
    data_reserve_bytes: int | None = None
    metadata_reserve_bytes: int | None = None
    new_devices_held: str | None = None
    spec_source_error: str | None = None
    last_pass_error: str | None = None
    removals_held: tuple[str, ...] = ()


@dataclass(frozen=True)
class SnapshotReport:
    """A device of the snapshotter API: its containerd key and kind."""

    key: str
    kind: str
    parent: str | None
    labels: Mapping[str, str]
    removal: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class KernelReport:
    """A mapped device as the kernel shows it."""

    suspended: bool
    readonly: bool
    open_count: int
    thin_id: int | None


@dataclass(frozen=True)
class DeviceReport:
    """One device: its record, and the kernel's view when it is mapped."""

    name: str
    state: str
    deferred_removal: bool
    ready: bool
    thin_id: int | None
    # Deprecated: the same as thin_id, kept for scripts written before it was named.
    device_id: int | None
    size_bytes: int
    used_bytes: int | None
    parent: str | None
    filesystem: str
    formatted: bool
    path: str | None
    kernel_name: str
    active: bool
    readonly: bool
    error: str | None
    error_step: str | None
    attempts: int
    retry_at: str | None
    notice: str | None
    labels: Mapping[str, str]
    # Devices of the snapshotter API: their key and kind (None: a spec file's device).
    snapshot: SnapshotReport | None
    state_changed_at: str
    kernel: KernelReport | None


@dataclass(frozen=True)
class RejectedSpecReport:
    """A spec file that could not be used, and why."""

    name: str
    path: str
    error: str


@dataclass(frozen=True)
class ConditionReport:
    """A condition the daemon keeps (a held removal, a failed pass...), since when."""

    kind: str
    message: str
    names: tuple[str, ...]
    count: int
    since: str
    at: str


@dataclass(frozen=True)
class OrphanDevice:
    """A dm device of our pool that no record manages."""

    name: str
    thin_id: int | None


@dataclass(frozen=True)
class Orphans:
    """What the pool holds and the store does not manage."""

    thin_ids: tuple[int | None, ...] = ()
    devices: tuple[OrphanDevice, ...] = ()


@dataclass(frozen=True)
class HistoryStep:
    """One state change of a device (`status NAME`)."""

    from_state: str
    to_state: str
    trigger: str
    at: str
    error: str | None

    def document(self) -> dict[str, Any]:
        """The step as JSON shows it (`from`, a keyword here, is its key)."""
        return {"from": self.from_state, "to": self.to_state, "trigger": self.trigger,
                "at": self.at, "error": self.error}


# `status --json`'s `schema_version`: raised when a key goes or changes its meaning (keys are
# added within a version); README's "JSON documents" says what each version holds.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Report:
    """The whole status document; `history` only for one device (`status NAME`)."""

    pool: PoolReport
    devices: tuple[DeviceReport, ...] = ()
    rejected_specs: tuple[RejectedSpecReport, ...] = ()
    conditions: tuple[ConditionReport, ...] = ()
    orphans: Orphans = field(default_factory=Orphans)
    history: tuple[HistoryStep, ...] | None = None

    def document(self) -> dict[str, Any]:
        """The report as `status --json` prints it: key for key, in the same order."""
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "pool": _plain(asdict(self.pool)),
            "devices": [_plain(asdict(d)) for d in self.devices],
            "rejected_specs": [_plain(asdict(r)) for r in self.rejected_specs],
            "conditions": [_plain(asdict(c)) for c in self.conditions],
            "orphans": _plain(asdict(self.orphans)),
        }
        if self.history is not None:
            doc["history"] = [step.document() for step in self.history]
        return doc


def _plain(value: Any) -> Any:
    """JSON's shapes: tuples as lists, mappings as dicts (json writes both the same; a
    caller of `build_report` compares lists)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
