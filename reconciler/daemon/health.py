"""What the metrics listener shows, taken on the reconcile thread and read by the HTTP thread.

One thread owns the store, the machines and the kernel (docs/architecture.md), so the HTTP
server that answers /metrics, /healthz, /readyz and /startupz never calls either. Instead the
reconcile loop publishes a `Snapshot` after each pass (the pool's status read then, device
counts by state from the records it keeps, the conditions in force, and the daemon's verdict
drawn from them by `reconciler.verdict`, as `status --check` draws it) and the HTTP thread
reads the last one published: a whole, immutable object swapped in by one assignment. The
probes' answers are pure functions of it and of the loop's timestamps (table-tested).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import structlog

from reconciler.config import Reserve, Settings
from reconciler.dm.driver import DmDriver
from reconciler.dm.errors import DmError, NoSuchDevice, ParseError
from reconciler.dm.parse import parse_pool_status
from reconciler.dm.types import METADATA_BLOCK_BYTES, PoolMode, ThinPoolStatus
from reconciler.reconcile.pass_context import PassResult
from reconciler.states import DeviceState
from reconciler.store import (
    ConditionKind,
    ConditionRecord,
    DeviceRecord,
    Store,
    StoreBusy,
    StoreError,
)
from reconciler.verdict import Facts, Health, PoolFacts, Verdict, judge, pool_facts

log = structlog.get_logger(__name__)

# What status shows for a pool whose device is not there (the same words).
POOL_NOT_LOADED = "pool is not loaded in the kernel"


class MetricsUnavailable(RuntimeError):
    """The metrics address cannot be listened on (in use, not ours, not resolvable). Here,
    not in daemon.metrics, so that the CLI can catch it without loading prometheus_client
    into a daemon that serves no metrics."""


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

    # None: the pool could not be read (the verdict says why).
    pool: PoolFigures | None
    # Every state of the vocabulary, zeros included (Removed: the rows the store keeps).
    devices: dict[DeviceState, int]
    rejected_specs: int
    removals_held: int
    conditions: frozenset[ConditionKind]
    # The daemon's verdict then (`reconciler.verdict`): what /readyz and `status --check` say.
    verdict: Verdict


@dataclass(frozen=True)
class PoolRead:
    """The pool's status as read now, or why it could not be read."""

    status: ThinPoolStatus | None
    error: str | None = None
    # False: the kernel itself did not answer (or answered what cannot be parsed).
    kernel_readable: bool = True


def read_pool(client: DmDriver, pool_name: str) -> PoolRead:
    """The pool's status now (one kernel call), or why it could not be read, in the words
    `status` uses for the same."""
    try:
        lines = client.status(pool_name)
    except NoSuchDevice:
        return PoolRead(None, POOL_NOT_LOADED)
    except DmError as exc:
        return PoolRead(None, str(exc), kernel_readable=False)
    if len(lines) != 1 or lines[0].target != "thin-pool":
        return PoolRead(None, POOL_NOT_LOADED)  # status sees no pool there either
    try:
        return PoolRead(parse_pool_status(lines[0]))
    except ParseError as exc:  # a status we cannot read is shown, never raised to the loop
        return PoolRead(None, str(exc), kernel_readable=False)


def count_states(records: Iterable[DeviceRecord]) -> dict[DeviceState, int]:
    """Devices by state, every state of the vocabulary present."""
    counts = Counter(record.state for record in records)
    return {state: counts.get(state, 0) for state in DeviceState}


@dataclass(frozen=True)
class StoreRead:
    """What a snapshot reads from the store: the pool's block size, the rejected specs and
    the conditions in force; or, when the store could not be read, why."""

    data_block_sectors: int = 128
    rejected: Sequence[str] = ()
    conditions: Sequence[ConditionRecord] = ()
    error: str | None = None


def read_store(store: Store, pool_name: str) -> StoreRead:
    """What a snapshot reads from the store. A store that cannot be read says why (the
    verdict is then down); StoreBusy is raised: the store works, others hold it a while."""
    try:
        record = store.pool(pool_name)
        return StoreRead(record.data_block_sectors if record is not None else 128,
                         [r.name for r in store.rejected_specs()], store.conditions())
    except StoreBusy:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever it is, the store is not usable
        return StoreRead(error=str(exc) if isinstance(exc, StoreError)
                         else f"{type(exc).__name__}: {exc}")


def take_snapshot(pool: PoolRead, reserves: tuple[Reserve, Reserve],
                  records: Iterable[DeviceRecord], stored: StoreRead) -> Snapshot:
    """The snapshot of what the reconcile thread just read (the reserves: data, metadata)."""
    in_force = {c.kind: c for c in stored.conditions}
    held = in_force.get(ConditionKind.REMOVALS_HELD)
    records = list(records)
    status = pool.status
    if status is None:
        facts_of_pool = PoolFacts(kernel_readable=pool.kernel_readable, error=pool.error)
    else:
        facts_of_pool = pool_facts(status, stored.data_block_sectors, *reserves)

    def message(kind: ConditionKind) -> str | None:
        condition = in_force.get(kind)
        return condition.message if condition is not None else None

    verdict = judge(Facts(
        pool=facts_of_pool, store_error=stored.error,
        faulty=[r.name for r in records if r.state == DeviceState.FAULTY],
        rejected=stored.rejected, removals_held=held.names if held is not None else (),
        new_devices_held=message(ConditionKind.NEW_DEVICES_HELD),
        pass_error=message(ConditionKind.PASS_FAILED),
        spec_source_error=message(ConditionKind.SPEC_SOURCE),
        udev_unreachable=message(ConditionKind.UDEV_UNREACHABLE)))
    return Snapshot(
        pool=None if status is None else PoolFigures.of(status, stored.data_block_sectors),
        devices=count_states(records),
        rejected_specs=len(stored.rejected),
        removals_held=len(held.names) if held is not None else 0,
        # A kind this version does not know (a newer one wrote it) is no series of ours.
        conditions=frozenset(kind for kind in in_force if isinstance(kind, ConditionKind)),
        verdict=verdict,
    )


def snapshot_now(store: Store, client: DmDriver, settings: Settings,
                 records: Iterable[DeviceRecord]) -> Snapshot | None:
    """The snapshot after a turn of the loop: the pool read now (a pass's own observation is
    from its start), the records' states, what the store says; None when the store is kept
    busy by others (the metrics keep the last one) or anything else went wrong (logged)."""
    try:
        stored = read_store(store, settings.pool_name)
    except StoreBusy as exc:
        log.warning("metrics.snapshot_skipped", error=str(exc),
                    next="a snapshot after the next pass")
        return None
    try:
        return take_snapshot(read_pool(client, settings.pool_name),
                             (settings.pool_reserve, settings.pool_metadata_reserve),
                             records, stored)
    except Exception:  # the metrics then show the last snapshot; the loop goes on
        log.exception("metrics.snapshot_failed", next="trying again after the next pass")
        return None


class StartingCondition:
    """The `starting` condition in the store: said from the daemon's start to the end of its
    first pass, for `status --check`, which cannot see the daemon's memory. A store that
    refuses is logged, and asked again at the next end."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._shown = False

    def begin(self) -> None:
        """The first pass is about to run."""
        self._say(True)

    def end(self) -> None:
        """The first pass has ended (or the daemon stops): no longer starting."""
        if self._shown:
            self._say(False)

    def _say(self, starting: bool) -> None:
        try:
            if starting:
                self._store.set_condition(ConditionKind.STARTING,
                                          "the daemon's first pass has not ended")
            else:
                self._store.clear_condition(ConditionKind.STARTING)
            self._shown = starting
        except Exception as exc:  # noqa: BLE001 - the store itself may be what failed
            log.warning("condition.not_saved", kind=ConditionKind.STARTING.value,
                        error=str(exc), next="trying again after the next pass")
            self._shown = True


# Before the first snapshot: the first pass (recovery included) has not ended.
STARTING = judge(Facts(starting=True))


@dataclass(frozen=True)
class Answer:
    """A probe's answer: ok (200) or not (503), and a one-line reason."""

    ok: bool
    reason: str

    @property
    def code(self) -> int:
        """The HTTP status code."""
        return 200 if self.ok else 503


def liveness(now: float, last_turn: float, busy_since: float | None,
             wait_timeout: float | None, stall_after: float, started: bool) -> Answer:
    """/healthz: the loop is turning. Starting (no pass ended yet): alive, however long the
    first pass takes, since the startup probe bounds it (a recovery may run thin_check over
    a large pool). Busy (a step started at `busy_since`): alive while the step is younger
    than `stall_after`. Waiting (since `last_turn`, for at most `wait_timeout`, None: until
    woken): alive until that wait should have ended, plus the same margin. All times are
    the monotonic clock's."""
    if not started:
        return Answer(True, "alive: starting (first pass running; the startup probe bounds it)")
    if busy_since is not None:
        age = now - busy_since
        if age > stall_after:
            return Answer(False, f"stalled: the reconcile loop has been in one step for "
                                 f"{age:.0f}s (more than stall_after, {stall_after:g}s)")
        return Answer(True, "alive: the reconcile loop is working")
    deadline = last_turn + (math.inf if wait_timeout is None else wait_timeout) + stall_after
    if now > deadline:
        return Answer(False, f"stalled: the reconcile loop has not turned for "
                             f"{now - last_turn:.0f}s")
    return Answer(True, "alive: the reconcile loop is waiting")


def readiness(snapshot: Snapshot | None) -> Answer:
    """/readyz: the verdict is ready or degraded (the node's devices are served); the
    answer is the verdict's line, as `status --check` prints it."""
    verdict = STARTING if snapshot is None else snapshot.verdict
    return Answer(verdict.health.ready, verdict.line())


def startup(snapshot: Snapshot | None) -> Answer:
    """/startupz: the first pass has ended, whatever the verdict it left (restarting a
    daemon whose pool failed would mend nothing); the verdict's line."""
    verdict = STARTING if snapshot is None else snapshot.verdict
    return Answer(verdict.health != Health.STARTING, verdict.line())
