"""`reconciler run`: the long-running daemon, and the snapshots gRPC service when configured.

Level-triggered loop in one thread (the main one), which alone owns the store, the machines
and every kernel call. It wakes on spec-file events (only those names are reconciled), when a
device's retry is due, and every `resync_interval` for a full pass that also repairs what was
changed behind our back in the kernel. Signals: SIGTERM/SIGINT finish the step in flight and
exit 0; SIGHUP reloads the config; SIGUSR1 asks for a full pass now (for operators; the CLI
uses the control socket, `daemon.control`, whose requests are served on this thread by a full
pass each and answered after it: `daemon.requests`). gRPC requests (on the server's worker
threads) are handed to the same thread and answered from there; one whose device must wait
for a retry is parked (never slept on) and answered after a later pass settles it, while the
loop goes on serving everything else: both kinds of caller wait in `daemon.waiters`. Signal
handlers and the checks of a reloaded config are in `daemon.signals`; a reload that passes
them reconfigures the one Reconciler (and the snapshotter) in place.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import structlog

from reconciler.config import Settings
from reconciler.daemon.control import (
    ControlAnswer,
    ControlRequest,
    ControlServer,
)
from reconciler.daemon.health import (
    Answer,
    PassKind,
    PassOutcome,
    StartingCondition,
    liveness,
    readiness,
    snapshot_now,
    startup,
)
from reconciler.daemon.heap import collect_less_often, first_pass
from reconciler.daemon.heap import pin_mmap_threshold as pin_mmap_threshold
from reconciler.daemon.notify import Notifier
from reconciler.daemon.requests import serve_request
from reconciler.daemon.signals import install_signal_handlers, reloaded_settings
from reconciler.daemon.waiters import Waiters
from reconciler.daemon.wakeups import Batch, Wakeups
from reconciler.daemon.watch import SpecWatcher
from reconciler.dm.host import Host
from reconciler.failures import ClassifiedError
from reconciler.reconcile.pass_context import PassResult
from reconciler.reconcile.reconciler import Reconciler
from reconciler.snapshots import Snapshotter, Unavailable
from reconciler.store import ConditionKind, Store, StoreError

if TYPE_CHECKING:
    # Imported where it is served (start): without grpc_socket the daemon never loads grpc or
    # protobuf, so a broken gRPC stack stops only the daemons that serve the snapshots API.
    from reconciler.api.server import ApiServer

    # Imported where metrics are served (__post_init__, start): prometheus_client and the
    # HTTP server it brings are 10 MB of a daemon's memory that has no metrics_address.
    from reconciler.daemon.metrics import Metrics, MetricsServer

T = TypeVar("T")

log = structlog.get_logger(__name__)

def metrics_for(settings: Settings) -> Metrics | None:
    """The metrics to serve at metrics_address; None without one (and no prometheus_client
    loaded)."""
    if settings.metrics_address is None:
        return None
    from reconciler.daemon.metrics import Metrics
    return Metrics()


class Outcome(StrEnum):
    """Where a device stood after the last pass that looked at it (for STATUS=)."""

    CONVERGED = "converged"
    PENDING = "pending"
    FAULTY = "faulty"
    REJECTED = "rejected"


def tally(outcomes: dict[str, Outcome], result: PassResult, only: set[str] | None) -> None:
    """Fold a pass into each device's outcome: a full pass replaces them all, a pass over
    some names only theirs (so a file event's pass does not make the summary forget the
    rest); removed devices leave."""
    if only is None:
        outcomes.clear()
    else:
        for name in only:
            outcomes.pop(name, None)
    for names, outcome in ((result.converged, Outcome.CONVERGED),
                           (result.pending, Outcome.PENDING),
                           (result.faulty, Outcome.FAULTY),
                           ([r.name for r in result.rejected], Outcome.REJECTED)):
        for name in names:
            outcomes[name] = outcome
    for name in result.removed:
        outcomes.pop(name, None)


def summary(outcomes: dict[str, Outcome], result: PassResult) -> str:
    """The one-line STATUS= after a pass: counts of each outcome, and what is held."""
    counts = Counter(outcomes.values())
    text = ", ".join(f"{counts[o]} {o.value}" for o in Outcome)
    if result.held:
        text += f"; {len(result.held)} removals held"
    if result.source_error is not None:
        text += "; spec source error"
    return text


def log_pass_failure(exc: Exception, failures: int, delay: float) -> str:
    """Log a pass that failed (with its traceback when nobody foresaw the error); its error
    as `status` and the control socket say it."""
    foreseen = isinstance(exc, ClassifiedError | StoreError)
    error = str(exc) if foreseen else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ClassifiedError):
        log.error("pass.failed", error=error, errno=exc.errno_name,
                  failures=failures, next=f"full pass again in {delay:.1f}s")
    elif isinstance(exc, StoreError):  # its message says it all (kept busy, no id)
        log.error("pass.failed", error=error, failures=failures,
                  next=f"full pass again in {delay:.1f}s")
    else:
        log.exception("pass.failed", error=error, failures=failures,
                      next=f"full pass again in {delay:.1f}s")
    return error


@dataclass
class Daemon:
    """The reconcile loop and what feeds it."""

    settings: Settings
    host: Host
    config_path: Path | None = None
    clock: Callable[[], float] = time.time
    wakeups: Wakeups = field(default_factory=Wakeups)
    passes: int = 0
    failed_passes: int = 0  # in a row (reset by one that ends): the next full pass backs off
    # What the service manager is told (READY, STATUS, WATCHDOG, RELOADING, STOPPING).
    notifier: Notifier = field(default_factory=Notifier)
    # For durations, /healthz and `last_turn`: never the wall clock, which may jump.
    monotonic: Callable[[], float] = time.monotonic
    reconfigure_logs: Callable[[Settings], None] = lambda s: None  # the CLI's, as logs are

    def __post_init__(self) -> None:
        self.store = Store(self.settings.database_path, self.clock)
        # When `step` last started or ended (monotonic): /healthz tells from it, with
        # `_busy_since` (a step past its wait is working) and `_wait_timeout` (how long the
        # wait it started with may last), whether the loop still turns.
        self.last_turn = self.monotonic()
        self._busy_since: float | None = None
        self._wait_timeout: float | None = None
        # Served when metrics_address is set (start); counters move from the first pass.
        self.metrics = metrics_for(self.settings)
        self.metrics_server: MetricsServer | None = None
        self._stopping = False
        # Whether `status` may show a failed pass (an earlier run may have left one).
        self._pass_failed_shown = True
        # What the store says of the first pass, for `status --check`.
        self._starting = StartingCondition(self.store)
        self._next_resync = self.clock()
        self._next_retry: float | None = None
        self.reconciler = self._new_reconciler()
        self.watcher: SpecWatcher | None = None
        self.api: ApiServer | None = None
        self.control: ControlServer | None = None
        self.last_pass_error: str | None = None  # why the last pass failed (control answers)
        self.waiters = Waiters(self.wakeups, self.clock, lambda: self._stopping,
                               settle_together=self.reconciler.devices.settle)
        self.snapshotter = Snapshotter(self.store, self.settings, self.clock,
                                       self.reconciler.devices, runner=self.waiters.run)
        self._outcomes: dict[str, Outcome] = {}

    def _between_steps(self) -> bool:
        """Asked by a pass before each device step: ping the watchdog if due (a long pass
        starves it no longer than one step), and say whether to stop."""
        self.notifier.kick()
        return self._stopping

    def _new_reconciler(self) -> Reconciler:
        return Reconciler(self.settings, self.host, self.store, clock=self.clock,
                          stop_requested=self._between_steps, kernel_observer=self.metrics,
                          pass_observer=None if self.metrics is None else self._pass_ended,
                          timer=self.monotonic)

    def run_on_loop(self, fn: Callable[[Snapshotter], T]) -> T:
        """Run `fn` on the reconcile thread and wait for its result (for API threads)."""
        return self.waiters.submit(lambda: fn(self.snapshotter))

    def request_stop(self) -> None:
        """Finish the step in flight, then leave the loop."""
        self._stopping = True
        self.wakeups.stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 resyncs (`daemon.signals`)."""
        install_signal_handlers(self.request_stop, self.wakeups)

    def _pass_ended(self, targeted: bool, result: PassResult | None, seconds: float) -> None:
        """PassObserver: count a pass (the loop's, or a snapshotter call's)."""
        assert self.metrics is not None
        self.metrics.pass_ended(PassKind.TARGETED if targeted else PassKind.FULL,
                                PassOutcome.of(result), seconds,
                                result.retries if result is not None else {})

    def _publish(self) -> None:
        """A snapshot for the metrics thread, when one can be taken (health.snapshot_now)."""
        assert self.metrics is not None
        snapshot = snapshot_now(self.store, self.reconciler.client, self.settings,
                                self.reconciler.records.values())
        if snapshot is not None:
            self.metrics.publish(snapshot)

    def _pass(self, only: set[str] | None) -> PassResult | None:
        """One pass; a pass that fails, for any reason, is logged (with its traceback when
        nobody foresaw it), counted and shown in `status`, and a full pass is tried again
        with backoff: the daemon keeps serving `status`, file events and gRPC meanwhile."""
        try:
            result = self.reconciler.run_pass(only) if self.passes else first_pass(
                lambda: self.reconciler.run_pass(only), lambda first: first.ok)
        except Exception as exc:  # noqa: BLE001 - no pass takes the daemon down (logged)
            self.failed_passes += 1
            delay = self.reconciler.policy.delay(self.failed_passes)
            self._next_resync = self.clock() + delay
            error = log_pass_failure(exc, self.failed_passes, delay)
            self._pass_failed_shown = True
            self.last_pass_error = error
            try:
                self.store.set_condition(ConditionKind.PASS_FAILED, error)
            except Exception:  # the store itself may be what failed
                log.exception("condition.not_saved", kind=ConditionKind.PASS_FAILED.value)
            self.notifier.status(f"pass failed ({self.failed_passes} in a row): {error}; "
                                 f"full pass again in {delay:.1f}s")
            return None
        self.failed_passes = 0
        self.last_pass_error = None
        if self._pass_failed_shown:
            try:
                self.store.clear_condition(ConditionKind.PASS_FAILED)
                self._pass_failed_shown = False
            except StoreError as exc:  # kept busy by others: the next pass that ends clears it
                log.warning("condition.not_cleared", kind=ConditionKind.PASS_FAILED.value,
                            error=str(exc), next="clearing it after the next pass")
        self.passes += 1
        log.info("pass.finished", scope="full" if only is None else sorted(only),
                 converged=len(result.converged), pending=result.pending or None,
                 faulty=result.faulty or None,
                 rejected=[r.name for r in result.rejected] or None)
        tally(self._outcomes, result, only)
        self.notifier.status(summary(self._outcomes, result))
        return result

    # -- the control socket ----------------------------------------------------------------

    def control_request(self, request: ControlRequest) -> ControlAnswer:
        """Serve an operator's request on the reconcile thread (for the control socket's
        threads): queue it in the store, run a full pass (which takes it), answer."""
        try:
            return self.waiters.submit(lambda: serve_request(
                request, self.store, self._full_pass, lambda: self.last_pass_error,
                lambda: self.reconciler.request_outcomes, self.reconciler.records))
        except Unavailable as exc:
            return ControlAnswer(ok=False, error=str(exc))

    def _full_pass(self) -> PassResult | None:
        """A full pass now, as a resync (the next periodic one counts from here)."""
        self._next_resync = self.clock() + self.settings.resync_interval
        if self.watcher is not None:
            # Before the pass, so that what changes during it wakes the next one.
            self.watcher.refresh()
        return self._scheduled_pass(None)

    def _scheduled_pass(self, only: set[str] | None) -> PassResult | None:
        """A pass, then the next retry it asks for (none after a pass that failed)."""
        result = self._pass(only)
        self._next_retry = None if result is None else result.next_retry_at
        self._starting.end()  # the first pass has ended (at the latest), as it went
        return result

    def _reload(self) -> None:
        fresh = reloaded_settings(self.config_path, self.settings)
        if fresh is None:
            return
        spec_dir_changed = fresh.specs_path != self.settings.specs_path
        self.settings = fresh
        self.reconfigure_logs(fresh)
        # One engine, one cache of records: calls in progress go on with it.
        self.reconciler.reconfigure(fresh)
        self.snapshotter.reconfigure(fresh)
        if fresh.grpc_socket is not None:
            # A new fs_type or base_image_size: its base is made by the pass that follows.
            self.snapshotter.want_base()
        if spec_dir_changed and self.watcher is not None:
            self.watcher.watch(fresh.specs_path)
        log.info("config.reloaded", path=str(self.config_path))

    def step(self, timeout: float | None = None) -> bool:
        """Wait for one wake-up (or the next deadline) and act on it; False once stopping.
        `last_turn` is stamped as it starts and as it ends, the watchdog pinged if due."""
        self.last_turn = self.monotonic()
        self._wait_timeout = timeout
        try:
            batch = self.wakeups.take(timeout)
            self.notifier.kick()
            self._busy_since = self.monotonic()
            return self._act(batch)
        finally:
            self._busy_since = None
            self.last_turn = self.monotonic()
            self.notifier.kick()

    def liveness(self) -> Answer:
        """/healthz (read from the metrics thread: timestamps, and whether a snapshot is)."""
        started = self.metrics is not None and self.metrics.snapshot is not None
        return liveness(self.monotonic(), self.last_turn, self._busy_since, self._wait_timeout,
                        self.settings.stall_after, started)

    def _act(self, batch: Batch) -> bool:
        """The wake-up's API calls, then a pass if one is due, then parked calls whose time
        came; the metrics' snapshot is taken again after any of them."""
        acted = bool(batch.calls or self.waiters.waiting)
        for work in batch.calls:
            work(self._stopping)
        if batch.stop or self._stopping:
            return False
        if batch.reload:
            self.notifier.reloading()
            try:
                self._reload()
            finally:
                # Also when refused or failed: the daemon goes on with the old config.
                self.notifier.ready()
        now = self.clock()
        if batch.resync or batch.reload or batch.rescan or now >= self._next_resync:
            acted = True
            self._full_pass()
        elif batch.names or (self._next_retry is not None and now >= self._next_retry):
            acted = True
            self._scheduled_pass(batch.names)
        self.waiters.resume()
        if acted and self.metrics is not None:
            self._publish()
        return not self._stopping

    def _refuse_queued(self) -> None:
        for work in self.wakeups.take(0).calls:
            work(True)

    def _timeout(self) -> float:
        deadline = min(at for at in (self._next_resync, self.waiters.next_at(),
                                     self._next_retry) if at is not None)
        wait = max(0.0, deadline - self.clock())
        ping = self.notifier.watchdog_due_in()
        # Idle or not, the loop wakes in time for the watchdog.
        return wait if ping is None else min(wait, ping)

    def start(self) -> None:
        """The control socket, then the first full pass, then file watching. Raises
        SocketUnavailable when the control socket's path is not ours to take."""
        self._next_resync = self.clock()
        self._starting.begin()
        if self.metrics is not None and self.settings.metrics_address is not None:
            # Before the first pass: the probes answer during it, /readyz and /startupz that
            # it is not over. Raises MetricsUnavailable when the address is taken.
            from reconciler.daemon.metrics import HEALTHZ, READYZ, STARTUPZ, MetricsServer
            metrics = self.metrics
            server = MetricsServer(self.settings.metrics_address, metrics, {
                HEALTHZ: self.liveness, READYZ: lambda: readiness(metrics.snapshot),
                STARTUPZ: lambda: startup(metrics.snapshot)})
            server.start()
            self.metrics_server = server
        control = ControlServer(self.settings.control_socket, self.control_request)
        control.start()
        self.control = control
        self.watcher = SpecWatcher(self.settings.specs_path, self.wakeups)
        self.watcher.start()
        if self.settings.grpc_socket is not None:
            # Made by the first pass, so that containerd's first root Prepare runs no mkfs.
            self.snapshotter.want_base()
        collect_less_often()
        pin_mmap_threshold()
        self.step(timeout=0)
        if self.settings.grpc_socket is not None:
            # After the first pass: the pool exists and recovery is done before any request.
            # Raises SocketUnavailable when another process serves that socket.
            from reconciler.api.server import ApiServer

            api = ApiServer(self.settings.grpc_socket, self.run_on_loop, observer=self.metrics)
            api.start()
            self.api = api

    def serve(self) -> int:
        """Run until stopped; exit code 0 after a clean stop. A start that fails (the
        gRPC socket served by another process) raises, after closing what it opened."""
        try:
            self.start()
            self.notifier.ready()
            log.info("daemon.ready", spec_dir=str(self.settings.specs_path),
                     resync_interval=self.settings.resync_interval)
            while self.step(self._timeout()):
                pass
        finally:
            self.notifier.stopping()
            self.close()
        log.info("daemon.stopped", passes=self.passes)
        return 0

    def close(self) -> None:
        """Stop serving and watching, answer what is still queued, close the store."""
        self._stopping = True
        self._refuse_queued()
        self.waiters.refuse()
        if self.control is not None:
            self.control.stop()
            self.control = None
        if self.api is not None:
            self.api.stop()
            self.api = None
        self._refuse_queued()
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        self._starting.end()  # stopped before its first pass ended, maybe
        self.store.close()
