"""`status --check`: the verdict a probe needs (healthy, degraded, down), drawn from the
status document, and its one line or JSON object. Pure: table-tested.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from reconciler.dm.types import PoolMode
from reconciler.states import DeviceState
from reconciler.status.document import PoolReport, Report
from reconciler.units import format_size


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


def _pool_reasons(pool: PoolReport) -> list[Reason]:
    if not pool.kernel_readable:
        return [Reason(ReasonKind.KERNEL_UNREADABLE, Health.DOWN, message=pool.error)]
    if not pool.loaded:
        return [Reason(ReasonKind.POOL_NOT_LOADED, Health.DOWN, message=pool.error)]
    reasons = []
    mode = PoolMode(str(pool.mode))  # a loaded pool has its mode
    if mode in (PoolMode.FAIL, PoolMode.ERROR):
        reasons.append(Reason(ReasonKind.POOL_FAILED, Health.DOWN, message=f"mode {mode}"))
    elif mode != PoolMode.READ_WRITE:
        # Read-only or out of data space: existing devices still work, nothing new is made.
        reasons.append(Reason(ReasonKind.POOL_READ_ONLY, Health.DEGRADED,
                              message=f"mode {mode}"))
    if pool.needs_check:
        reasons.append(Reason(ReasonKind.POOL_NEEDS_CHECK, Health.DOWN,
                              message="thin_check/thin_repair must run before it is used"))
    for kind, used, total, kept in (
        (ReasonKind.DATA_BELOW_RESERVE, pool.data_used_bytes, pool.data_total_bytes,
         pool.data_reserve_bytes),
        (ReasonKind.METADATA_BELOW_RESERVE, pool.metadata_used_bytes,
         pool.metadata_total_bytes, pool.metadata_reserve_bytes),
    ):
        if used is None or total is None or kept is None:
            continue  # not given by the kernel (a loaded pool's report has all three)
        if total - used < kept:
            reasons.append(Reason(kind, Health.DEGRADED, message=(
                f"{format_size(total - used)} free of {format_size(total)}, "
                f"reserve {format_size(kept)}")))
    return reasons


def check(report: Report | None, daemon_running: bool) -> Verdict:
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
    pool = report.pool
    reasons += _pool_reasons(pool)
    faulty = tuple(d.name for d in report.devices if d.state == DeviceState.FAULTY)
    rejected = tuple(r.name for r in report.rejected_specs)
    named: Sequence[tuple[ReasonKind, tuple[str, ...]]] = (
        (ReasonKind.FAULTY_DEVICES, faulty),
        (ReasonKind.REJECTED_SPECS, rejected),
        (ReasonKind.REMOVALS_HELD, tuple(pool.removals_held)),
    )
    reasons += [Reason(kind, Health.DEGRADED, names) for kind, names in named if names]
    for kind, message in ((ReasonKind.NEW_DEVICES_HELD, pool.new_devices_held),
                          (ReasonKind.PASS_FAILED, pool.last_pass_error),
                          (ReasonKind.SPEC_SOURCE, pool.spec_source_error)):
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
