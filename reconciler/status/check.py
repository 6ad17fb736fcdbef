"""`status --check`: the daemon's verdict (`reconciler.verdict`, the one /readyz gives) drawn
from the status document and whether a daemon holds the root lock, and its one line or JSON
object. Pure: table-tested.
"""

from __future__ import annotations

import json

from reconciler.dm.types import PoolMode
from reconciler.states import DeviceState
from reconciler.status.document import PoolReport, Report
from reconciler.store import ConditionKind
from reconciler.verdict import Facts, PoolFacts, Verdict, judge


def pool_facts(pool: PoolReport) -> PoolFacts:
    """The pool's facts as the status document shows them."""
    return PoolFacts(
        kernel_readable=pool.kernel_readable, loaded=pool.loaded, error=pool.error,
        mode=None if pool.mode is None else PoolMode(pool.mode),
        needs_check=bool(pool.needs_check),
        data_used_bytes=pool.data_used_bytes, data_total_bytes=pool.data_total_bytes,
        data_reserve_bytes=pool.data_reserve_bytes,
        metadata_used_bytes=pool.metadata_used_bytes,
        metadata_total_bytes=pool.metadata_total_bytes,
        metadata_reserve_bytes=pool.metadata_reserve_bytes)


def facts(report: Report | None, daemon_running: bool, store_error: str | None = None) -> Facts:
    """The verdict's facts from the status document (None: no state, or, with `store_error`,
    a store that could not be read) and whether a daemon holds the root lock."""
    if report is None:
        return Facts(daemon_running=daemon_running, store_error=store_error)
    pool = report.pool
    return Facts(
        daemon_running=daemon_running,
        # The daemon says so in the store from its start to the end of its first pass.
        starting=any(c.kind == ConditionKind.STARTING for c in report.conditions),
        pool=pool_facts(pool),
        faulty=[d.name for d in report.devices if d.state == DeviceState.FAULTY],
        rejected=[r.name for r in report.rejected_specs],
        removals_held=pool.removals_held,
        new_devices_held=pool.new_devices_held,
        pass_error=pool.last_pass_error,
        spec_source_error=pool.spec_source_error,
        udev_unreachable=next((c.message for c in report.conditions
                               if c.kind == ConditionKind.UDEV_UNREACHABLE), None),
    )


def check(report: Report | None, daemon_running: bool,
          store_error: str | None = None) -> Verdict:
    """The verdict of `status --check` (its exit code is `verdict.health.exit_code`)."""
    return judge(facts(report, daemon_running, store_error))


def render_check(verdict: Verdict, as_json: bool) -> str:
    """The verdict as one line, or as one JSON object."""
    if as_json:
        return json.dumps(verdict.document()) + "\n"
    return verdict.line() + "\n"
