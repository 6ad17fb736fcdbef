"""What the metrics listener shows, taken on the reconcile thread and read by the HTTP thread.

One thread owns the store, the machines and the kernel (docs/architecture.md), so the HTTP
server that answers /metrics, /healthz and /readyz never calls either. Instead the reconcile
loop publishes a `Snapshot` after each pass (the pool's status read then, device counts by
state from the records it keeps, the conditions in force) and the HTTP thread reads the last
one published: a whole, immutable object swapped in by one assignment. The decisions of
/healthz and /readyz are pure functions of it and of the loop's timestamps (table-tested).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from reconciler.dm.driver import DmDriver
from reconciler.dm.errors import DmError, NoSuchDevice, ParseError
from reconciler.dm.parse import parse_pool_status
from reconciler.dm.types import METADATA_BLOCK_BYTES, PoolMode, ThinPoolStatus
from reconciler.reconcile.pass_context import PassResult
from reconciler.states import DeviceState
from reconciler.store import ConditionKind, ConditionRecord, DeviceRecord

# /healthz: a step (a pass, or the work a wake-up brought) running longer than this means the
# loop is stuck. Generous: a first pass that brings a pool up and makes a burst of
# filesystems takes seconds to a few minutes; a hung kernel call or udev wait does not end.
STALL_AFTER = 600.0

# What status shows for a pool whose device is not there (the same words).
POOL_NOT_LOADED = "pool is not loaded in the kernel"


class PassKind(StrEnum):
    """A full pass (resync, reload, start) or one targeted at the names a wake-up brought."""

    FULL = "full"
    TARGETED = "targeted"


class PassOutcome(StrEnum):
    """How a pass ended."""

    CONVERGED = "converged"  # every device converged, every spec usable, nothing held
    NOT_CONVERGED = "not_converged"  # a device pending or Faulty, a spec rejected, a hold...
    STOPPED = "stopped"  # a stop was asked for: it ended between two steps
    FAILED = "failed"  # it raised (logged, shown as pass_failed, tried again with backoff)

    @classmethod
    def of(cls, result: PassResult | None) -> PassOutcome:
        """The outcome of a pass's result (None: the pass raised)."""
        if result is None:
            return cls.FAILED
        if result.stopped:
            return cls.STOPPED
        return cls.CONVERGED if result.ok else cls.NOT_CONVERGED


@dataclass(frozen=True)
class PoolFigures:
    """The pool as `status --json` shows it: bytes from the kernel's block counts."""

    data_used_bytes: int
    data_total_bytes: int
    metadata_used_bytes: int
    metadata_total_bytes: int
    mode: PoolMode
    transaction_id: int
    needs_check: bool

    @classmethod
    def of(cls, status: ThinPoolStatus, data_block_sectors: int) -> PoolFigures:
        """Figures of a pool status (the block size is the pool's, from the store)."""
        block = data_block_sectors * 512
        return cls(
            data_used_bytes=status.used_data_blocks * block,
            data_total_bytes=status.total_data_blocks * block,
            metadata_used_bytes=status.used_metadata_blocks * METADATA_BLOCK_BYTES,
            metadata_total_bytes=status.total_metadata_blocks * METADATA_BLOCK_BYTES,
            mode=status.mode,
            transaction_id=status.transaction_id,
            needs_check=status.needs_check,
        )


@dataclass(frozen=True)
class Snapshot:
    """The daemon at the end of a pass; never changed once published."""

    pool_name: str
    # None: the pool could not be read (pool_error says why).
    pool: PoolFigures | None
    pool_error: str | None
    # Every state of the vocabulary, zeros included (Removed: the rows the store keeps).
    devices: dict[DeviceState, int]
    rejected_specs: int
    removals_held: int
    conditions: frozenset[ConditionKind]
    # Passes that ended (not failed) since the daemon started.
    passes: int
    last_error: str | None = None
    # The removals held for an operator, by name: /readyz's reason lists them.
    held_names: tuple[str, ...] = ()


def read_pool(client: DmDriver, pool_name: str) -> tuple[ThinPoolStatus | None, str | None]:
    """The pool's status now (one kernel call), or None and why it could not be read."""
    try:
        lines = client.status(pool_name)
    except NoSuchDevice:
        return None, POOL_NOT_LOADED
    except DmError as exc:
        return None, str(exc)
    if len(lines) != 1 or lines[0].target != "thin-pool":
        return None, f"{pool_name} is not a thin-pool"
    try:
        return parse_pool_status(lines[0]), None
    except ParseError as exc:  # a status we cannot read is shown, never raised to the loop
        return None, f"{type(exc).__name__}: {exc}"


def count_states(records: Iterable[DeviceRecord]) -> dict[DeviceState, int]:
    """Devices by state, every state of the vocabulary present."""
    counts = Counter(record.state for record in records)
    return {state: counts.get(state, 0) for state in DeviceState}


def take_snapshot(pool_name: str, pool: ThinPoolStatus | None, pool_error: str | None,
                  data_block_sectors: int, records: Iterable[DeviceRecord],
                  rejected_specs: int, conditions: Iterable[ConditionRecord],
                  passes: int) -> Snapshot:
    """The snapshot of what the reconcile thread just read."""
    in_force = {c.kind: c for c in conditions}
    held = in_force.get(ConditionKind.REMOVALS_HELD)
    failed = in_force.get(ConditionKind.PASS_FAILED)
    return Snapshot(
        pool_name=pool_name,
        pool=None if pool is None else PoolFigures.of(pool, data_block_sectors),
        pool_error=pool_error,
        devices=count_states(records),
        rejected_specs=rejected_specs,
        removals_held=len(held.names) if held is not None else 0,
        # A kind this version does not know (a newer one wrote it) is no series of ours.
        conditions=frozenset(kind for kind in in_force if isinstance(kind, ConditionKind)),
        passes=passes,
        last_error=failed.message if failed is not None else None,
        held_names=held.names if held is not None else (),
    )


@dataclass(frozen=True)
class Verdict:
    """An endpoint's answer: ok (200) or not (503), and a one-line reason."""

    ok: bool
    reason: str

    @property
    def code(self) -> int:
        """The HTTP status code."""
        return 200 if self.ok else 503


def liveness(now: float, last_turn: float, busy_since: float | None,
             wait_timeout: float | None, stall_after: float = STALL_AFTER) -> Verdict:
    """/healthz: the loop is turning. Busy (a step started at `busy_since`): alive while the
    step is younger than `stall_after`. Waiting (since `last_turn`, for at most
    `wait_timeout`, None: until woken): alive until that wait should have ended, plus the
    same margin. All times are the monotonic clock's."""
    if busy_since is not None:
        age = now - busy_since
        if age > stall_after:
            return Verdict(False, f"the reconcile loop has been in one step for {age:.0f}s "
                                  f"(more than {stall_after:.0f}s)")
        return Verdict(True, "ok: the reconcile loop is working")
    deadline = last_turn + (math.inf if wait_timeout is None else wait_timeout) + stall_after
    if now > deadline:
        return Verdict(False, f"the reconcile loop has not turned for {now - last_turn:.0f}s")
    return Verdict(True, "ok: the reconcile loop is waiting")


# /readyz names this many held removals; the rest are counted (status lists every one).
HELD_SHOWN = 10
# Ready all the same: the nodes are there, made by the daemon instead of udev.
UDEV_UNREACHABLE_REASON = ("udev unreachable: udev cannot confirm the daemon's udev cookies "
                           "(no hostIPC: true?), so the daemon makes the /dev/mapper nodes "
                           "itself and never waits for udev (`reconciler status`)")


def readiness(snapshot: Snapshot | None) -> Verdict:
    """/readyz: the first pass has ended and the pool is up."""
    if snapshot is None:
        return Verdict(False, "the first pass has not ended yet")
    if snapshot.pool is None:
        return Verdict(False, f"pool {snapshot.pool_name}: {snapshot.pool_error}")
    if snapshot.passes == 0:
        return Verdict(False, f"no pass has ended yet: {snapshot.last_error}")
    reason = f"ok: pool {snapshot.pool_name} is up; passes ended: {snapshot.passes}"
    if snapshot.held_names:
        # Ready (the node serves its devices), yet an operator must see what waits for them.
        shown = ", ".join(snapshot.held_names[:HELD_SHOWN])
        more = len(snapshot.held_names) - HELD_SHOWN
        reason += (f"; {len(snapshot.held_names)} removals held: {shown}"
                   + (f" and {more} more" if more > 0 else "") + " (`reconciler status`)")
    if ConditionKind.UDEV_UNREACHABLE in snapshot.conditions:
        reason += "; " + UDEV_UNREACHABLE_REASON
    return Verdict(True, reason)
