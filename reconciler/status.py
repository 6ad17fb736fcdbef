"""`reconciler status`: the store and the kernel side by side, as a table or as JSON; and
`status --check`, the verdict a probe needs (healthy, degraded, down) drawn from the same
document.

Reads the store (SQLite in WAL mode, so it never blocks a running daemon) and asks the kernel
with three calls; works with the daemon stopped. Usage comes from `dmsetup status`: mapped
sectors x 512 for an active thin device, used blocks x block size for the pool. An inactive
device has no status in the kernel, so its usage is shown as unknown (null).

Every time is UTC and says so: ISO 8601 with `+00:00` in JSON, with `Z` in the table. The
thin id (dm-thin's 24-bit device id) is `thin_id` in JSON and THIN_ID in the table; JSON's
older `device_id` key stays beside it, deprecated, for scripts that read it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from reconciler.config import Settings
from reconciler.dm.driver import make_client
from reconciler.dm.host import Host
from reconciler.dm.pool import mapper_path, thin_device_name
from reconciler.dm.types import METADATA_BLOCK_BYTES, PoolMode
from reconciler.reconcile.observe import KernelDevice, Observation, observe_safely
from reconciler.specs import is_snapshot_device
from reconciler.states import LIVE, DeviceState, is_ready
from reconciler.store import ConditionKind, DeviceRecord, SnapshotRecord, Store
from reconciler.units import format_size


def iso_time(timestamp: float) -> str:
    """A stored timestamp as ISO 8601 UTC, to the millisecond."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def table_time(iso: str, millis: bool = False) -> str:
    """An ISO 8601 UTC time of the document as the table shows it: to the second (or the
    millisecond: a history's steps are that close), the zone said (`2026-12-01T02:40:13Z`),
    one word so that the columns split on spaces."""
    moment = datetime.fromisoformat(iso).astimezone(UTC)
    if millis:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def percent(used: int | None, total: int | None) -> float | None:
    """Used as a percentage of total, to one decimal (None when either is unknown)."""
    if used is None or not total:
        return None
    return round(100 * used / total, 1)


def _pool_report(settings: Settings, store: Store, obs: Observation | None,
                 kernel_error: str | None) -> dict[str, Any]:
    record = store.pool(settings.pool_name)
    report: dict[str, Any] = {
        "name": settings.pool_name,
        "path": f"/dev/mapper/{settings.pool_name}",
        "transaction_id": None,
        "stored_transaction_id": record.transaction_id if record else None,
        "data_used_bytes": None,
        "data_total_bytes": None,
        "metadata_used_bytes": None,
        "metadata_total_bytes": None,
        "data_used_percent": None,
        "metadata_used_percent": None,
        "mode": None,
        "needs_check": None,
        "error": kernel_error,
        # Whether the kernel answered, and whether the pool is in it (status --check).
        "kernel_readable": kernel_error is None,
        "loaded": False,
        # Free space kept back (pool_reserve, pool_metadata_reserve): below it new devices
        # wait and `status --check` says degraded.
        "data_reserve_bytes": None,
        "metadata_reserve_bytes": None,
    }
    status = obs.pool if obs else None
    if status is None:
        if kernel_error is None:
            report["error"] = "pool is not loaded in the kernel"
        return report
    block_bytes = (record.data_block_sectors if record else 128) * 512
    report.update(
        loaded=True,
        data_reserve_bytes=settings.pool_reserve.of(status.total_data_blocks * block_bytes),
        metadata_reserve_bytes=settings.pool_metadata_reserve.of(
            status.total_metadata_blocks * METADATA_BLOCK_BYTES),
        transaction_id=status.transaction_id,
        data_used_bytes=status.used_data_blocks * block_bytes,
        data_total_bytes=status.total_data_blocks * block_bytes,
        metadata_used_bytes=status.used_metadata_blocks * METADATA_BLOCK_BYTES,
        metadata_total_bytes=status.total_metadata_blocks * METADATA_BLOCK_BYTES,
        data_used_percent=percent(status.used_data_blocks, status.total_data_blocks),
        metadata_used_percent=percent(status.used_metadata_blocks,
                                      status.total_metadata_blocks),
        mode=status.mode.value,
        needs_check=status.needs_check,
    )
    return report


def _snapshot_report(snap: SnapshotRecord | None) -> dict[str, Any] | None:
    if snap is None:
        return None
    return {
        "key": snap.key,
        "kind": snap.kind,
        "parent": snap.parent_key,
        "labels": dict(snap.labels),
        "removal": snap.removal,
        "created_at": iso_time(snap.created_at),
        "updated_at": iso_time(snap.updated_at),
    }


def _ready(record: DeviceRecord, kernel: KernelDevice | None) -> bool:
    return is_ready(DeviceState(record.state), record.formatted, record.filesystem,
                    mapped=kernel is not None,
                    suspended=kernel is not None and kernel.info.suspended)


def _device_report(settings: Settings, record: DeviceRecord,
                   obs: Observation | None, snap: SnapshotRecord | None) -> dict[str, Any]:
    kname = thin_device_name(settings.pool_name, record.name)
    kernel = obs.device(kname) if obs else None
    used = kernel.status.used_bytes if kernel and kernel.status else None
    # Deactivated, yet still mapped and open: the kernel removes it at its holder's last close.
    deferred = kernel is not None and DeviceState(record.state) not in LIVE \
        and kernel.info.removal_deferred
    return {
        "name": record.name,
        "state": record.state,
        "deferred_removal": deferred,
        "ready": _ready(record, kernel),
        "thin_id": record.device_id,
        # Deprecated: the same as thin_id, kept for scripts written before it was named.
        "device_id": record.device_id,
        "size_bytes": record.size_bytes,
        "used_bytes": used,
        "parent": record.parent,
        "filesystem": record.filesystem,
        "formatted": record.formatted,
        "path": mapper_path(kname) if kernel else None,
        "kernel_name": kname,
        "active": record.active,
        "readonly": record.readonly,
        "error": record.error,
        "error_step": record.error_step,
        "attempts": record.attempts,
        "retry_at": None if record.retry_at is None else iso_time(record.retry_at),
        "notice": record.notice,
        "labels": dict(record.labels),
        # Devices of the snapshotter API: their key and kind (None: a spec file's device).
        "snapshot": _snapshot_report(snap),
        "state_changed_at": iso_time(record.state_changed_at),
        "kernel": None if kernel is None else {
            "suspended": kernel.info.suspended,
            "readonly": kernel.info.readonly,
            "open_count": kernel.info.open_count,
            "thin_id": kernel.table.device_id if kernel.table else None,
        },
    }


def build_report(settings: Settings, store: Store, host: Host,
                 name: str | None = None, include_removed: bool = False) -> dict[str, Any]:
    """The whole status document (what `status --json` prints)."""
    obs, kernel_error = observe_safely(make_client(host, settings.dm_driver),
                                       settings.pool_name)
    records = store.devices(include_removed=include_removed or name is not None)
    if name is not None:
        records = [r for r in records if r.name == name]
    report: dict[str, Any] = {
        "pool": _pool_report(settings, store, obs, kernel_error),
        "devices": [_device_report(settings, r, obs, store.snapshot(r.name)
                                   if is_snapshot_device(r.name) else None)
                    for r in records],
        "rejected_specs": [
            {"name": r.name, "path": r.path, "error": r.error}
            for r in store.rejected_specs()
            if name is None or r.name == name
        ],
    }
    conditions = {c.kind: c for c in store.conditions()}
    report["conditions"] = [
        {"kind": c.kind, "message": c.message, "names": list(c.names), "count": c.count,
         "since": iso_time(c.since), "at": iso_time(c.at)}
        for c in conditions.values()
    ]
    source = conditions.get(ConditionKind.SPEC_SOURCE.value)
    failed = conditions.get(ConditionKind.PASS_FAILED.value)
    held = conditions.get(ConditionKind.REMOVALS_HELD.value)
    space = conditions.get(ConditionKind.NEW_DEVICES_HELD.value)
    report["pool"].update(
        new_devices_held=space.message if space else None,
        spec_source_error=source.message if source else None,
        last_pass_error=failed.message if failed else None,
        removals_held=list(held.names) if held else [],
    )
    orphans = store.orphans()
    report["orphans"] = {
        "thin_ids": [o.thin_id for o in orphans if o.kind == "thin_id"],
        "devices": [{"name": o.name, "thin_id": o.thin_id} for o in orphans
                    if o.kind == "device"],
    }
    if name is not None:
        report["history"] = [
            {"from": t.from_state, "to": t.to_state, "trigger": t.trigger, "at": iso_time(t.at),
             "error": t.error}
            for t in store.history(name)
        ]
    return report


def _size(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def _key(snapshot: dict[str, Any] | None) -> str:
    if snapshot is None:
        return "-"
    key: str = snapshot["key"]
    if snapshot["removal"]:
        key += " (removed)"
    # containerd's keys can be long digests: keep the column readable, JSON has them whole.
    return key if len(key) <= 40 else key[:19] + "…" + key[-20:]


def _state(device: dict[str, Any]) -> str:
    state: str = device["state"]
    if device["deferred_removal"]:
        return f"{DeviceState.DEACTIVATING.value} (deferred)"
    live = state in LIVE and device["kernel"] is not None
    # Resumed is where a snapshot origin rests after its suspend and resume: for whoever
    # reads the table it is active like any other, so the table says Activated (the JSON
    # and the history keep the machine's own state).
    shown = DeviceState.ACTIVATED.value if state == DeviceState.RESUMED else state
    return shown + (" (not ready)" if live and not device["ready"] else "")


class Column(StrEnum):
    """A column of the device table (`status -o`); the values are the headers."""

    NAME = "NAME"
    KIND = "KIND"
    STATE = "STATE"
    SINCE = "SINCE"
    THIN_ID = "THIN_ID"
    SIZE = "SIZE"
    USED = "USED"
    PARENT = "PARENT"
    KEY = "KEY"
    ERROR = "ERROR"


DEFAULT_COLUMNS: tuple[Column, ...] = tuple(Column)


def parse_columns(text: str) -> tuple[Column, ...]:
    """`-o name,state,thin_id`: the columns named, in that order (any case); a ValueError
    that names the unknown ones and the known ones."""
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in Column.__members__]
    known = ",".join(c.value.lower() for c in Column)
    if unknown:
        raise ValueError(f"unknown column {', '.join(n.lower() for n in unknown)}; "
                         f"choose from {known}")
    if not names:
        raise ValueError(f"no column named; choose from {known}")
    return tuple(Column[name] for name in names)


def _cell(column: Column, d: dict[str, Any]) -> str:
    """One device's cell in one column, never empty (a `-` for nothing)."""
    match column:
        case Column.NAME:
            return str(d["name"])
        case Column.KIND:
            return str(d["snapshot"]["kind"]) if d["snapshot"] else "spec"
        case Column.STATE:
            return _state(d)
        case Column.SINCE:
            return table_time(d["state_changed_at"])
        case Column.THIN_ID:
            return "-" if d["thin_id"] is None else str(d["thin_id"])
        case Column.SIZE:
            return _size(d["size_bytes"])
        case Column.USED:
            return _size(d["used_bytes"])
        case Column.PARENT:
            return str(d["parent"] or "-")
        case Column.KEY:
            return _key(d["snapshot"])
        case Column.ERROR:
            return str(d["error"] or d["notice"] or "-")


def _usage(used: int | None, total: int | None, share: float | None) -> str:
    """`12MiB/256MiB (4.7%)` for the pool line."""
    text = f"{_size(used)}/{_size(total)}"
    return text if share is None else f"{text} ({share:g}%)"


def render_table(report: dict[str, Any], columns: Sequence[Column] = DEFAULT_COLUMNS,
                 headers: bool = True) -> str:
    """Aligned columns for people: the pool line, devices, then rejected specs. Without
    `headers` (for scripts: `--no-headers`) only the device rows, in `columns`."""
    rows = [[_cell(column, d) for column in columns] for d in report["devices"]]
    if headers:
        rows.insert(0, [column.value for column in columns])
    # The last column is not padded: an error message may be long and has spaces.
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(len(columns) - 1)]
    table = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        table.append("  ".join([*cells, row[-1]]).rstrip())
    if not headers:
        return "".join(line + "\n" for line in table)
    pool = report["pool"]
    lines = []
    if pool["error"]:
        lines.append(f"pool {pool['name']}: {pool['error']}")
    else:
        data = _usage(pool["data_used_bytes"], pool["data_total_bytes"],
                      pool["data_used_percent"])
        metadata = _usage(pool["metadata_used_bytes"], pool["metadata_total_bytes"],
                          pool["metadata_used_percent"])
        lines.append(f"pool {pool['name']}: {pool['mode']}, transaction "
                     f"{pool['transaction_id']}, data {data}, metadata {metadata}")
    for condition in report["conditions"]:
        times = f"{condition['count']} times since " if condition["count"] > 1 else "since "
        lines.append(f"{condition['kind'].replace('_', ' ')}: {condition['message']} "
                     f"({times}{table_time(condition['since'])})")
        if condition["names"]:
            lines.append("  " + ", ".join(condition["names"]))
    lines += table
    if report["rejected_specs"]:
        lines.append("")
        lines.append("rejected specs:")
        lines += [f"  {r['name']}: {r['error']} ({r['path']})" for r in report["rejected_specs"]]
    orphans = report["orphans"]
    if orphans["thin_ids"] or orphans["devices"]:
        lines.append("")
        lines.append("orphans (not managed; `reconciler gc --orphans` or `reconciler adopt`):")
        if orphans["thin_ids"]:
            lines.append("  thin ids: " + ", ".join(map(str, orphans["thin_ids"])))
        for device in orphans["devices"]:
            lines.append(f"  device {device['name']} (thin id {device['thin_id']})")
    if "history" in report:
        lines.append("")
        lines.append("history:")
        for item in report["history"]:
            error = f"  error: {item['error']}" if item["error"] else ""
            lines.append(f"  {table_time(item['at'], millis=True)}  {item['from']} -> {item['to']} "
                         f"({item['trigger']}){error}")
    return "\n".join(lines) + "\n"


def render_json(report: dict[str, Any], one_line: bool = False) -> str:
    """The report as indented JSON, or (`one_line`, for NDJSON) as one line: JSON escapes
    every newline inside a string, so the document's only newline is its last."""
    if one_line:
        return json.dumps(report, separators=(",", ":")) + "\n"
    return json.dumps(report, indent=2, sort_keys=False) + "\n"


# -- status --check ------------------------------------------------------------------------


class Health(IntEnum):
    """The verdict of `status --check`; its value is the exit code."""

    HEALTHY = 0
    DEGRADED = 1
    DOWN = 2

    @property
    def word(self) -> str:
        """How the verdict is printed ("degraded")."""
        return self.name.lower()


class ReasonKind(StrEnum):
    """Why the verdict is not healthy (the values are `--check --json`'s `kind`)."""

    # Down: nothing is being kept, or nothing can be.
    NO_DAEMON = "no_daemon"
    NO_STATE = "no_state"
    KERNEL_UNREADABLE = "kernel_unreadable"
    POOL_NOT_LOADED = "pool_not_loaded"
    POOL_FAILED = "pool_failed"
    POOL_NEEDS_CHECK = "pool_needs_check"
    # Degraded: the daemon runs, but something waits for an operator or for space.
    FAULTY_DEVICES = "faulty_devices"
    REJECTED_SPECS = "rejected_specs"
    REMOVALS_HELD = "removals_held"
    NEW_DEVICES_HELD = "new_devices_held"
    PASS_FAILED = "pass_failed"
    SPEC_SOURCE = "spec_source"
    POOL_READ_ONLY = "pool_read_only"
    DATA_BELOW_RESERVE = "data_below_reserve"
    METADATA_BELOW_RESERVE = "metadata_below_reserve"


@dataclass(frozen=True)
class Reason:
    """One cause of the verdict: what, how bad, which names (if any), and the detail."""

    kind: ReasonKind
    health: Health
    names: tuple[str, ...] = ()
    message: str | None = None

    def text(self) -> str:
        """The reason as the one-line verdict shows it: "1 faulty device (web-1)"."""
        noun = _NOUNS.get(self.kind)
        if noun is not None:
            singular, plural = noun
            head = f"{len(self.names)} {singular if len(self.names) == 1 else plural}"
            return f"{head} ({', '.join(self.names)})"
        head = self.kind.value.replace("_", " ")
        return f"{head} ({self.message})" if self.message else head

    def document(self) -> dict[str, Any]:
        """The reason in `--check --json`."""
        return {"kind": self.kind.value, "health": self.health.word, "count": len(self.names),
                "names": list(self.names), "message": self.message}


# Reasons that are a list of names, printed as a count and the names.
_NOUNS = {
    ReasonKind.FAULTY_DEVICES: ("faulty device", "faulty devices"),
    ReasonKind.REJECTED_SPECS: ("rejected spec", "rejected specs"),
    ReasonKind.REMOVALS_HELD: ("removal held", "removals held"),
}


@dataclass(frozen=True)
class Verdict:
    """`status --check`'s answer: the worst health among the reasons (healthy: none)."""

    reasons: tuple[Reason, ...]

    @property
    def health(self) -> Health:
        """The exit code's meaning."""
        return max((r.health for r in self.reasons), default=Health.HEALTHY)

    def line(self) -> str:
        """One line: the verdict, then its reasons ("degraded: 1 faulty device (web-1)")."""
        if not self.reasons:
            return self.health.word
        return f"{self.health.word}: " + "; ".join(r.text() for r in self.reasons)

    def document(self) -> dict[str, Any]:
        """What `status --check --json` prints."""
        return {"health": self.health.word, "code": int(self.health),
                "reasons": [r.document() for r in self.reasons]}


def _pool_reasons(pool: dict[str, Any]) -> list[Reason]:
    if not pool["kernel_readable"]:
        return [Reason(ReasonKind.KERNEL_UNREADABLE, Health.DOWN, message=pool["error"])]
    if not pool["loaded"]:
        return [Reason(ReasonKind.POOL_NOT_LOADED, Health.DOWN, message=pool["error"])]
    reasons = []
    mode = PoolMode(pool["mode"])
    if mode in (PoolMode.FAIL, PoolMode.ERROR):
        reasons.append(Reason(ReasonKind.POOL_FAILED, Health.DOWN, message=f"mode {mode}"))
    elif mode != PoolMode.READ_WRITE:
        # Read-only or out of data space: existing devices still work, nothing new is made.
        reasons.append(Reason(ReasonKind.POOL_READ_ONLY, Health.DEGRADED,
                              message=f"mode {mode}"))
    if pool["needs_check"]:
        reasons.append(Reason(ReasonKind.POOL_NEEDS_CHECK, Health.DOWN,
                              message="thin_check/thin_repair must run before it is used"))
    for kind, used, total, kept in (
        (ReasonKind.DATA_BELOW_RESERVE, pool["data_used_bytes"], pool["data_total_bytes"],
         pool["data_reserve_bytes"]),
        (ReasonKind.METADATA_BELOW_RESERVE, pool["metadata_used_bytes"],
         pool["metadata_total_bytes"], pool["metadata_reserve_bytes"]),
    ):
        if total - used < kept:
            reasons.append(Reason(kind, Health.DEGRADED, message=(
                f"{format_size(total - used)} free of {format_size(total)}, "
                f"reserve {format_size(kept)}")))
    return reasons


def check(report: dict[str, Any] | None, daemon_running: bool) -> Verdict:
    """The verdict of `status --check`, from the status document (None: there is no state
    yet, the daemon never ran) and whether a daemon holds the root lock. Pure.

    Down (2): no daemon, no state, the kernel unreadable, no pool in it, the pool failed or
    in need of a check. Degraded (1): Faulty devices, rejected specs, work held (removals,
    new devices), a failed pass, a spec source error, a read-only pool, free space below a
    reserve. Healthy (0): none of these."""
    reasons: list[Reason] = []
    if not daemon_running:
        reasons.append(Reason(ReasonKind.NO_DAEMON, Health.DOWN,
                              message="the root lock is not held"))
    if report is None:
        reasons.append(Reason(ReasonKind.NO_STATE, Health.DOWN,
                              message="the daemon has not run yet"))
        return Verdict(tuple(reasons))
    pool = report["pool"]
    reasons += _pool_reasons(pool)
    faulty = tuple(d["name"] for d in report["devices"] if d["state"] == DeviceState.FAULTY)
    rejected = tuple(r["name"] for r in report["rejected_specs"])
    named: Sequence[tuple[ReasonKind, tuple[str, ...]]] = (
        (ReasonKind.FAULTY_DEVICES, faulty),
        (ReasonKind.REJECTED_SPECS, rejected),
        (ReasonKind.REMOVALS_HELD, tuple(pool["removals_held"])),
    )
    reasons += [Reason(kind, Health.DEGRADED, names) for kind, names in named if names]
    for kind, message in ((ReasonKind.NEW_DEVICES_HELD, pool["new_devices_held"]),
                          (ReasonKind.PASS_FAILED, pool["last_pass_error"]),
                          (ReasonKind.SPEC_SOURCE, pool["spec_source_error"])):
        if message:
            reasons.append(Reason(kind, Health.DEGRADED, message=message))
    # Worst first, so that the line leads with what matters.
    reasons.sort(key=lambda r: -r.health)
    return Verdict(tuple(reasons))


def render_check(verdict: Verdict, as_json: bool) -> str:
    """The verdict as one line, or as one JSON object."""
    if as_json:
        return json.dumps(verdict.document()) + "\n"
    return verdict.line() + "\n"
