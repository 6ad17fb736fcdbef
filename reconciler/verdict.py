"""The daemon's one health verdict (starting, ready, degraded, down) and its reasons.

`status --check` and the daemon's probes (/healthz, /readyz, /startupz) each gather the same
`Facts` (status from the store and the kernel, the daemon from what its loop last published)
and ask `judge`, so an operator's command and the kubelet never read two verdicts of one state,
and say it in the same words. Pure and table-tested; it sits below `daemon` and `status`, which
both use it, and names only the kernel's pool modes (`dm.types`) and the config's `Reserve`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.config import Reserve
from reconciler.dm.types import METADATA_BLOCK_BYTES, PoolMode, ThinPoolStatus
from reconciler.units import format_size


class Health(StrEnum):
    """The verdict. Ready and degraded serve (readiness passes); starting is alive but not yet
    ready (the startup probe bounds it); down serves nothing."""

    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    DOWN = "down"

    @property
    def exit_code(self) -> int:
        """`status --check`'s exit code: 0, 1 and 2 as they always were; starting, which came
        later, is 3 (so `[ $? -le 1 ]` is a readiness check and `[ $? -ne 2 ]` a liveness one)."""
        return _EXIT_CODES[self]

    @property
    def ready(self) -> bool:
        """Whether the node's devices are served (/readyz answers 200)."""
        return self in (Health.READY, Health.DEGRADED)


_EXIT_CODES = {Health.READY: 0, Health.DEGRADED: 1, Health.DOWN: 2, Health.STARTING: 3}
# Worst last: the verdict is the worst of its reasons (starting is decided before them).
_SEVERITY = {Health.READY: 0, Health.DEGRADED: 1, Health.DOWN: 2, Health.STARTING: 3}


class ReasonKind(StrEnum):
    """Why the verdict is not ready (the values are `status --check --json`'s `kind`)."""

    # Starting: the first pass of this daemon (recovery included) has not ended.
    FIRST_PASS_RUNNING = "first_pass_running"
    # Down: nothing is being kept, or nothing can be.
    NO_DAEMON = "no_daemon"
    NO_STATE = "no_state"
    STORE_UNUSABLE = "store_unusable"
    KERNEL_UNREADABLE = "kernel_unreadable"
    POOL_NOT_LOADED = "pool_not_loaded"
    POOL_FAILED = "pool_failed"
    POOL_NEEDS_CHECK = "pool_needs_check"
    # The kernel stopped writing the pool's metadata: no device can be made, grown or removed.
    POOL_READ_ONLY = "pool_read_only"
    # Degraded: the daemon runs, but something waits for an operator or for space.
    POOL_OUT_OF_DATA_SPACE = "pool_out_of_data_space"
    FAULTY_DEVICES = "faulty_devices"
    REJECTED_SPECS = "rejected_specs"
    REMOVALS_HELD = "removals_held"
    NEW_DEVICES_HELD = "new_devices_held"
    PASS_FAILED = "pass_failed"
    SPEC_SOURCE = "spec_source"
    DATA_BELOW_RESERVE = "data_below_reserve"
    METADATA_BELOW_RESERVE = "metadata_below_reserve"
    # A note; the verdict stays ready: udev cannot confirm the daemon's cookies (a pod without
    # hostIPC), so the daemon makes the /dev/mapper nodes itself and waits for no udev.
    UDEV_UNREACHABLE = "udev_unreachable"


# A one-line verdict names this many of a reason's names, then counts the rest (JSON lists
# every one): a probe's answer stays short with 10,000 Faulty devices.
NAMES_SHOWN = 10

# Reasons that are a list of names, printed as a count and the names.
_NOUNS = {
    ReasonKind.FAULTY_DEVICES: ("faulty device", "faulty devices"),
    ReasonKind.REJECTED_SPECS: ("rejected spec", "rejected specs"),
    ReasonKind.REMOVALS_HELD: ("removal held", "removals held"),
}


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
            shown = ", ".join(self.names[:NAMES_SHOWN])
            more = len(self.names) - NAMES_SHOWN
            return f"{head} ({shown}{f' and {more} more' if more > 0 else ''})"
        head = self.kind.value.replace("_", " ")
        return f"{head} ({self.message})" if self.message else head

    def document(self) -> dict[str, Any]:
        """The reason in `--check --json`."""
        return {"kind": self.kind.value, "health": self.health.value,
                "count": len(self.names), "names": list(self.names), "message": self.message}


@dataclass(frozen=True)
class Verdict:
    """The verdict and every reason for it, worst first."""

    health: Health
    reasons: tuple[Reason, ...] = ()

    def line(self) -> str:
        """One line: the verdict, then its reasons ("degraded: 1 faulty device (web-1)")."""
        if not self.reasons:
            return self.health.value
        return f"{self.health.value}: " + "; ".join(r.text() for r in self.reasons)

    def document(self) -> dict[str, Any]:
        """What `status --check --json` prints."""
        return {"health": self.health.value, "code": self.health.exit_code,
                "reasons": [r.document() for r in self.reasons]}


@dataclass(frozen=True)
class PoolFacts:
    """The pool as the kernel showed it, in bytes; the reserves are the config's shares."""

    kernel_readable: bool = True
    loaded: bool = False
    # Why the kernel could not be read, or why the pool is not there.
    error: str | None = None
    mode: PoolMode | None = None
    needs_check: bool = False
    data_used_bytes: int | None = None
    data_total_bytes: int | None = None
    data_reserve_bytes: int | None = None
    metadata_used_bytes: int | None = None
    metadata_total_bytes: int | None = None
    metadata_reserve_bytes: int | None = None


def pool_facts(status: ThinPoolStatus, data_block_sectors: int, data_reserve: Reserve,
               metadata_reserve: Reserve) -> PoolFacts:
    """The facts of a loaded pool's status (the block size is the pool's, from the store)."""
    block = data_block_sectors * 512
    data_total = status.total_data_blocks * block
    metadata_total = status.total_metadata_blocks * METADATA_BLOCK_BYTES
    return PoolFacts(
        loaded=True, mode=status.mode, needs_check=status.needs_check,
        data_used_bytes=status.used_data_blocks * block, data_total_bytes=data_total,
        data_reserve_bytes=data_reserve.of(data_total),
        metadata_used_bytes=status.used_metadata_blocks * METADATA_BLOCK_BYTES,
        metadata_total_bytes=metadata_total,
        metadata_reserve_bytes=metadata_reserve.of(metadata_total))


@dataclass(frozen=True)
class Facts:
    """What the verdict is drawn from, whoever gathered it."""

    daemon_running: bool = True
    # The daemon's first pass (recovery included) has not ended yet.
    starting: bool = False
    # The store could not be read (None: it could, or there is none yet).
    store_error: str | None = None
    # None: there is no state (no database: the daemon never ran).
    pool: PoolFacts | None = None
    faulty: Sequence[str] = ()
    rejected: Sequence[str] = ()
    removals_held: Sequence[str] = ()
    new_devices_held: str | None = None
    pass_error: str | None = None
    spec_source_error: str | None = None
    # Why udev cannot confirm the daemon's udev cookies (the `udev_unreachable` condition).
    udev_unreachable: str | None = None


def _pool_reasons(pool: PoolFacts) -> list[Reason]:
    if not pool.kernel_readable:
        return [Reason(ReasonKind.KERNEL_UNREADABLE, Health.DOWN, message=pool.error)]
    if not pool.loaded or pool.mode is None:
        return [Reason(ReasonKind.POOL_NOT_LOADED, Health.DOWN, message=pool.error)]
    reasons = []
    mode = pool.mode
    if mode in (PoolMode.FAIL, PoolMode.ERROR):
        reasons.append(Reason(ReasonKind.POOL_FAILED, Health.DOWN, message=f"mode {mode}"))
    elif mode == PoolMode.READ_ONLY:
        reasons.append(Reason(ReasonKind.POOL_READ_ONLY, Health.DOWN, message=f"mode {mode}"))
    elif mode == PoolMode.OUT_OF_DATA_SPACE:
        # Existing devices still read, and write where they have blocks; nothing new is made.
        reasons.append(Reason(ReasonKind.POOL_OUT_OF_DATA_SPACE, Health.DEGRADED,
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
            continue  # not given by the kernel (a pool in Fail mode shows no counts)
        if total - used < kept:
            reasons.append(Reason(kind, Health.DEGRADED, message=(
                f"{format_size(total - used)} free of {format_size(total)}, "
                f"reserve {format_size(kept)}")))
    return reasons


def judge(facts: Facts) -> Verdict:
    """The verdict of `facts`. Pure.

    Down: no daemon, no state, the store unusable, the kernel unreadable, no pool in it, the
    pool failed, read-only or in need of a check. Starting (a daemon runs and its first pass
    has not ended): that alone, since what the store and the kernel show is what recovery is
    about to change. Degraded: Faulty devices, rejected specs, work held (removals, new
    devices), a failed pass, a spec source error, a pool out of data space, free space below
    a reserve. Ready: none of these, or only the note that udev cannot confirm our cookies."""
    if facts.daemon_running and facts.starting:
        return Verdict(Health.STARTING, (Reason(ReasonKind.FIRST_PASS_RUNNING, Health.STARTING),))
    reasons: list[Reason] = []
    if not facts.daemon_running:
        reasons.append(Reason(ReasonKind.NO_DAEMON, Health.DOWN,
                              message="the root lock is not held"))
    if facts.store_error is not None:
        reasons.append(Reason(ReasonKind.STORE_UNUSABLE, Health.DOWN, message=facts.store_error))
    elif facts.pool is None:
        reasons.append(Reason(ReasonKind.NO_STATE, Health.DOWN,
                              message="the daemon has not run yet"))
    if facts.pool is not None:
        reasons += _pool_reasons(facts.pool)
    for kind, names in ((ReasonKind.FAULTY_DEVICES, facts.faulty),
                        (ReasonKind.REJECTED_SPECS, facts.rejected),
                        (ReasonKind.REMOVALS_HELD, facts.removals_held)):
        if names:
            reasons.append(Reason(kind, Health.DEGRADED, tuple(sorted(names))))
    for kind, message in ((ReasonKind.NEW_DEVICES_HELD, facts.new_devices_held),
                          (ReasonKind.PASS_FAILED, facts.pass_error),
                          (ReasonKind.SPEC_SOURCE, facts.spec_source_error)):
        if message:
            reasons.append(Reason(kind, Health.DEGRADED, message=message))
    if facts.udev_unreachable:
        # Worked around, nothing waits: shown on every surface, judged ready.
        reasons.append(Reason(ReasonKind.UDEV_UNREACHABLE, Health.READY,
                              message=facts.udev_unreachable))
    # Worst first (stable: otherwise in the order above), so the line leads with what matters.
    reasons.sort(key=lambda r: -_SEVERITY[r.health])
    worst = max((r.health for r in reasons), key=_SEVERITY.__getitem__, default=Health.READY)
    return Verdict(worst, tuple(reasons))
