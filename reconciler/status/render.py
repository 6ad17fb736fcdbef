"""The status document for people and scripts: the table with its columns (`status`, `-o`,
`--no-headers`) and the JSON, indented or one line per document (`--json`, `--watch`).

Times in the table say their zone with `Z` and are one word, so columns split on spaces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum

from reconciler.states import LIVE, DeviceState
from reconciler.status.document import DeviceReport, Report, SnapshotReport
from reconciler.units import format_size


def table_time(iso: str, millis: bool = False) -> str:
    """An ISO 8601 UTC time of the document as the table shows it: to the second (or the
    millisecond: a history's steps are that close), the zone said (`2026-12-01T02:40:13Z`),
    one word so that the columns split on spaces."""
    moment = datetime.fromisoformat(iso).astimezone(UTC)
    if millis:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _size(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def _key(snapshot: SnapshotReport | None) -> str:
    if snapshot is None:
        return "-"
    key = snapshot.key
    if snapshot.removal:
        key += " (removed)"
    # containerd's keys can be long digests: keep the column readable, JSON has them whole.
    return key if len(key) <= 40 else key[:19] + "…" + key[-20:]


def _state(device: DeviceReport) -> str:
    state = device.state
    if device.deferred_removal:
        return f"{DeviceState.DEACTIVATING.value} (deferred)"
    live = state in LIVE and device.kernel is not None
    # Resumed is where a snapshot origin rests after its suspend and resume: for whoever
    # reads the table it is active like any other, so the table says Activated (the JSON
    # and the history keep the machine's own state).
    shown = DeviceState.ACTIVATED.value if state == DeviceState.RESUMED else state
    return shown + (" (not ready)" if live and not device.ready else "")


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


def _cell(column: Column, d: DeviceReport) -> str:
    """One device's cell in one column, never empty (a `-` for nothing)."""
    match column:
        case Column.NAME:
            return d.name
        case Column.KIND:
            return str(d.snapshot.kind) if d.snapshot else "spec"
        case Column.STATE:
            return _state(d)
        case Column.SINCE:
            return table_time(d.state_changed_at)
        case Column.THIN_ID:
            return "-" if d.thin_id is None else str(d.thin_id)
        case Column.SIZE:
            return _size(d.size_bytes)
        case Column.USED:
            return _size(d.used_bytes)
        case Column.PARENT:
            return str(d.parent or "-")
        case Column.KEY:
            return _key(d.snapshot)
        case Column.ERROR:
            return str(d.error or d.notice or "-")


def _usage(used: int | None, total: int | None, share: float | None) -> str:
    """`12MiB/256MiB (4.7%)` for the pool line."""
    text = f"{_size(used)}/{_size(total)}"
    return text if share is None else f"{text} ({share:g}%)"


def render_table(report: Report, columns: Sequence[Column] = DEFAULT_COLUMNS,
                 headers: bool = True) -> str:
    """Aligned columns for people: the pool line, devices, then rejected specs. Without
    `headers` (for scripts: `--no-headers`) only the device rows, in `columns`."""
    rows = [[_cell(column, d) for column in columns] for d in report.devices]
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
    return "\n".join([*_pool_lines(report), *table, *_sections(report)]) + "\n"


def _pool_lines(report: Report) -> list[str]:
    """The pool line, then a line (and its names) per condition."""
    pool = report.pool
    lines = []
    if pool.error:
        lines.append(f"pool {pool.name}: {pool.error}")
    else:
        data = _usage(pool.data_used_bytes, pool.data_total_bytes, pool.data_used_percent)
        metadata = _usage(pool.metadata_used_bytes, pool.metadata_total_bytes,
                          pool.metadata_used_percent)
        lines.append(f"pool {pool.name}: {pool.mode}, transaction "
                     f"{pool.transaction_id}, data {data}, metadata {metadata}")
    for condition in report.conditions:
        times = f"{condition.count} times since " if condition.count > 1 else "since "
        lines.append(f"{condition.kind.replace('_', ' ')}: {condition.message} "
                     f"({times}{table_time(condition.since)})")
        if condition.names:
            lines.append("  " + ", ".join(condition.names))
    return lines


def _sections(report: Report) -> list[str]:
    """After the devices: rejected specs, orphans, and a device's history, when there are."""
    lines = []
    if report.rejected_specs:
        lines.append("")
        lines.append("rejected specs:")
        lines += [f"  {r.name}: {r.error} ({r.path})" for r in report.rejected_specs]
    orphans = report.orphans
    if orphans.thin_ids or orphans.devices:
        lines.append("")
        lines.append("orphans (not managed; `reconciler gc --orphans` or `reconciler adopt`):")
        if orphans.thin_ids:
            lines.append("  thin ids: " + ", ".join(map(str, orphans.thin_ids)))
        for device in orphans.devices:
            lines.append(f"  device {device.name} (thin id {device.thin_id})")
    if report.history is not None:
        lines.append("")
        lines.append("history:")
        for item in report.history:
            error = f"  error: {item.error}" if item.error else ""
            lines.append(f"  {table_time(item.at, millis=True)}  {item.from_state} -> "
                         f"{item.to_state} ({item.trigger}){error}")
    return lines


def render_json(report: Report, one_line: bool = False) -> str:
    """The report as indented JSON, or (`one_line`, for NDJSON) as one line: JSON escapes
    every newline inside a string, so the document's only newline is its last."""
    document = report.document()
    if one_line:
        return json.dumps(document, separators=(",", ":")) + "\n"
    return json.dumps(document, indent=2, sort_keys=False) + "\n"
