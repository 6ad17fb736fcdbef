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

The package, by question: `document` types the report (dataclasses, no dict keys between
the parts), `report` builds it, `render` writes it (the table; the JSON, indented or one line
per document), `check` judges it (`status --check`), `watch` writes it again as it changes
(`status --watch`, and Ctrl-C that ends it at once). Importers use the names here.
"""

from reconciler.status.check import Health, Reason, ReasonKind, Verdict, check, render_check
from reconciler.status.document import (
    ConditionReport,
    DeviceReport,
    HistoryStep,
    KernelReport,
    OrphanDevice,
    Orphans,
    PoolReport,
    RejectedSpecReport,
    Report,
    SnapshotReport,
)
from reconciler.status.render import (
    DEFAULT_COLUMNS,
    Column,
    parse_columns,
    render_json,
    render_table,
    table_time,
)
from reconciler.status.report import build_report, collect, iso_time, percent
from reconciler.status.watch import watch

__all__ = [
    "DEFAULT_COLUMNS",
    "Column",
    "ConditionReport",
    "DeviceReport",
    "Health",
    "HistoryStep",
    "KernelReport",
    "OrphanDevice",
    "Orphans",
    "PoolReport",
    "Reason",
    "ReasonKind",
    "RejectedSpecReport",
    "Report",
    "SnapshotReport",
    "Verdict",
    "build_report",
    "check",
    "collect",
    "iso_time",
    "parse_columns",
    "percent",
    "render_check",
    "render_json",
    "render_table",
    "table_time",
    "watch",
]
