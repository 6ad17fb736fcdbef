"""Prometheus metrics, /healthz, /readyz and /startupz over HTTP: prometheus_client's only
home.

Served when `metrics_address` is set, by a bounded wsgiref server on a thread of its own (and
one per connection, at most 64, each request within 10 s: reconciler.daemon.wsgi): the
exposition by prometheus_client's WSGI app (the text format, or OpenMetrics when the
scraper's Accept asks for it, gzipped when its Accept-Encoding allows; a HEAD gets a GET's
headers), the probes by our own. Those threads never
call the kernel or the store: gauges of the pool, the devices and the
conditions are read at scrape time from the last `Snapshot` the reconcile loop published
(reconciler.daemon.health); counters and histograms (passes, kernel calls, retries, gRPC
calls) are moved by the loop and the gRPC workers as things happen, through the observer
hooks the dm and api layers offer (`KernelCallObserver`, `CallObserver`), which know
nothing of Prometheus. Our own `CollectorRegistry`, never the process-global one, so that
two daemons in one process (tests) never share a series.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from reconciler import __version__
from reconciler.config import ListenAddress
from reconciler.daemon.health import Answer, MetricsUnavailable, PassKind, PassOutcome, Snapshot
from reconciler.daemon.wsgi import BoundedWSGIServer
from reconciler.dm.observed import KernelOp
from reconciler.dm.types import PoolMode
from reconciler.states import DeviceState, Step
from reconciler.store import ConditionKind

log = structlog.get_logger(__name__)

# No `_created` series beside each counter and histogram: a second series per label set that
# Prometheus' text format has no use for (the process's start time says as much).
disable_created_metrics()  # type: ignore[no-untyped-call]

# Buckets (seconds). A libdevmapper ioctl takes tens of microseconds, a dmsetup process a few
# milliseconds, a udev-waiting create or remove up to a second or so.
KERNEL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A converged targeted pass takes about a millisecond; a resync of 10,000 devices seconds; a
# first pass that makes filesystems, minutes.
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0, 300.0)
# A Stat is a round trip to the reconcile thread; a root Prepare makes a device; a call
# parked for a retry waits for its device.
GRPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0, 30.0)

# What a GET answers with besides /metrics.
HEALTHZ, READYZ, STARTUPZ, METRICS = "/healthz", "/readyz", "/startupz", "/metrics"

# The kernel's pool modes as label values: lower case, as every other label value of ours is
# (the kernel spells two of them "Fail" and "Error").
MODE_LABELS = {mode: mode.value.lower() for mode in PoolMode}


class Metrics:
    """The daemon's metrics: a registry, the series the loop moves, and the last snapshot."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._snapshot: Snapshot | None = None
        registry = self.registry
        self.pass_seconds = Histogram(
            "reconciler_pass_duration_seconds", "Duration of reconcile passes, by kind.",
            ["kind"], buckets=PASS_BUCKETS, registry=registry)
        self.passes = Counter(
            "reconciler_passes", "Reconcile passes by kind and how they ended.",
            ["kind", "result"], registry=registry)
        self.kernel_seconds = Histogram(
            "reconciler_kernel_call_duration_seconds",
            "Duration of device-mapper calls by operation (its _count: calls made).",
            ["op"], buckets=KERNEL_BUCKETS, registry=registry)
        self.kernel_errors = Counter(
            "reconciler_kernel_call_errors", "Failed device-mapper calls by operation and errno.",
            ["op", "errno"], registry=registry)
        self.retries = Counter(
            "reconciler_retries", "Retries of device steps scheduled after a temporary error.",
            ["step"], registry=registry)
        self.grpc_seconds = Histogram(
            "reconciler_grpc_call_duration_seconds",
            "Duration of snapshots gRPC calls by method and status code (_count: calls).",
            ["method", "code"], buckets=GRPC_BUCKETS, registry=registry)
        Info("reconciler_build", "The running reconciler's version and Python.",
             registry=registry).info({"version": __version__,
                                      "python": ".".join(map(str, sys.version_info[:3]))})
        ProcessCollector(registry=registry)
        registry.register(_SnapshotCollector(self))
        # Every series a dashboard expects is there from the start, at zero.
        for kind in PassKind:
            self.pass_seconds.labels(kind.value)
            for outcome in PassOutcome:
                self.passes.labels(kind.value, outcome.value)
        for op in KernelOp:
            self.kernel_seconds.labels(op.value)
        for step in Step:
            self.retries.labels(step.value)

    # -- from the reconcile loop ---------------------------------------------------------------

    def publish(self, snapshot: Snapshot) -> None:
        """Make `snapshot` what scrapes show (one assignment: a scrape sees one whole one)."""
        self._snapshot = snapshot

    @property
    def snapshot(self) -> Snapshot | None:
        """The last snapshot published."""
        return self._snapshot

    def pass_ended(self, kind: PassKind, outcome: PassOutcome, seconds: float,
                   retries: dict[Step, int]) -> None:
        """Count a pass and the retries it scheduled."""
        self.pass_seconds.labels(kind.value).observe(seconds)
        self.passes.labels(kind.value, outcome.value).inc()
        for step, count in retries.items():
            self.retries.labels(step.value).inc(count)

    def kernel_call(self, op: KernelOp, seconds: float, errno: str | None) -> None:
        """KernelCallObserver: one device-mapper call."""
        self.kernel_seconds.labels(op.value).observe(seconds)
        if errno is not None:
            self.kernel_errors.labels(op.value, errno).inc()

    # -- from gRPC worker threads --------------------------------------------------------------

    def grpc_call(self, method: str, code: str, seconds: float) -> None:
        """CallObserver: one snapshots API call and the status code it ended with."""
        self.grpc_seconds.labels(method, code).observe(seconds)

    # -- from the HTTP thread ------------------------------------------------------------------

    def render(self) -> bytes:
        """Every series in the text exposition format (0.0.4)."""
        return generate_latest(self.registry)


class _SnapshotCollector:
    """Gauges read from the last snapshot at scrape time; none before the first one."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self._metrics.snapshot
        if snap is None:
            return
        up = GaugeMetricFamily("reconciler_pool_up",
                               "1 when the pool's status could be read after the last pass.")
        up.add_metric([], 0 if snap.pool is None else 1)
        yield up
        pool = snap.pool
        if pool is not None:
            for name, value, text in (
                ("data_used_bytes", pool.data_used_bytes, "Data space the pool has mapped."),
                ("data_total_bytes", pool.data_total_bytes, "Data space of the pool."),
                ("metadata_used_bytes", pool.metadata_used_bytes, "Metadata space in use."),
                ("metadata_total_bytes", pool.metadata_total_bytes, "Metadata space."),
                ("transaction_id", pool.transaction_id,
                 "The pool's transaction id (counts our metadata changes)."),
                ("needs_check", int(pool.needs_check),
                 "1 when the pool's metadata needs thin_check."),
            ):
                gauge = GaugeMetricFamily(f"reconciler_pool_{name}", text)
                gauge.add_metric([], value)
                yield gauge
            # A state set: one series per mode, 1 for the one the pool is in.
            mode = GaugeMetricFamily("reconciler_pool_mode",
                                     "The pool's mode (1 for the one it is in, else 0).",
                                     labels=["mode"])
            for each, label in MODE_LABELS.items():
                mode.add_metric([label], int(each == pool.mode))
            yield mode
        devices = GaugeMetricFamily("reconciler_devices", "Managed devices by state.",
                                    labels=["state"])
        for state in DeviceState:
            devices.add_metric([state.value], snap.devices.get(state, 0))
        yield devices
        for name, value, text in (
            ("rejected_specs", snap.rejected_specs, "Spec files the last pass rejected."),
            ("removals_held", snap.removals_held,
             "Removals held by the removal guard for an operator's confirmation."),
        ):
            gauge = GaugeMetricFamily(f"reconciler_{name}", text)
            gauge.add_metric([], value)
            yield gauge
        condition = GaugeMetricFamily("reconciler_condition",
                                      "1 for each condition in force (as `status` shows).",
                                      labels=["kind"])
        for kind in ConditionKind:
            condition.add_metric([kind.value], int(kind in snap.conditions))
        yield condition

    def describe(self) -> list[Metric]:
        """Nothing to describe ahead: the names depend on whether the pool was read."""
        return []


class MetricsServer:
    """GET /metrics and the probes (each path's answer a callable) on `address`, from a
    thread of its own."""

    def __init__(self, address: ListenAddress, metrics: Metrics,
                 probes: Mapping[str, Callable[[], Answer]]) -> None:
        self.address = address
        self._metrics = metrics
        self._probes = dict(probes)
        self._server: BoundedWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the configured one, or the kernel's pick for port 0)."""
        assert self._server is not None
        return self._server.server_port

    def start(self) -> None:
        """Listen and serve; MetricsUnavailable (naming the address) when that cannot be."""
        where = f"metrics_address {self.address}"
        try:
            found = socket.getaddrinfo(self.address.host, self.address.port,
                                       type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise MetricsUnavailable(f"{where}: cannot resolve {self.address.host}: "
                                     f"{exc.strerror}") from None
        family, _, _, _, sockaddr = found[0]
        try:
            self._server = BoundedWSGIServer(family, sockaddr, self._app())
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MetricsUnavailable(f"{where} is in use by another process") from None
            raise MetricsUnavailable(f"{where} cannot be listened on: "
                                     f"{exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        log.info("metrics.serving", address=str(self.address), paths=[METRICS, *self._probes])

    def stop(self) -> None:
        """Stop serving and close the socket; requests in flight finish on their threads."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def _app(self) -> WSGIApplication:
        """GET (or HEAD) /metrics from prometheus_client's app, the probes ours."""
        exposition = make_wsgi_app(self._metrics.registry)
        probes = self._probes
        known = ", ".join([METRICS, *probes])

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
            head = method == "HEAD"
            if method not in ("GET", "HEAD"):
                return _text(start_response, HTTPStatus.METHOD_NOT_ALLOWED,
                             f"{method}: GET and HEAD are served\n", head,
                             [("Allow", "GET, HEAD")])
            if path == METRICS:
                return serve_exposition(exposition, environ, start_response, head)
            probe = probes.get(path)
            if probe is not None:
                answer = probe()
                return _text(start_response, HTTPStatus(answer.code), answer.reason + "\n",
                             head)
            return _text(start_response, HTTPStatus.NOT_FOUND, f"not found: {known} are\n",
                         head)

        return app


def serve_exposition(exposition: WSGIApplication, environ: WSGIEnvironment,
                start_response: StartResponse, head: bool) -> Iterable[bytes]:
    """prometheus_client's answer to a GET (its app refuses HEAD, or, older, answers it
    with a body), with the length of its body; for a HEAD, its headers alone."""
    answer: list[tuple[str, list[tuple[str, str]]]] = []

    def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        del exc_info
        answer.append((status, headers))
        return lambda data: None

    body = b"".join(exposition({**environ, "REQUEST_METHOD": "GET"}, keep))
    status, headers = answer[0]
    start_response(status, [*((k, v) for k, v in headers if k.lower() != "content-length"),
                            ("Content-Length", str(len(body)))])
    return [] if head else [body]


def _text(start_response: StartResponse, status: HTTPStatus, text: str, head: bool,
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    """A plain-text answer (its headers only, for HEAD)."""
    body = text.encode()
    start_response(f"{status.value} {status.phrase}",
                   [("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))), *(extra or [])])
    return [] if head else [body]
