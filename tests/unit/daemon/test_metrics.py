"""Prometheus metrics on the fake kernel: values equal `status --json`, promtool accepts the
exposition, HEAD, gzip and OpenMetrics as a scraper asks for them, label values without
spaces, the counters that move, the config key (the probes: test_probes.py)."""

from __future__ import annotations

import errno
import gzip
import http.client
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from reconciler.api.proto import snapshots_pb2 as pb
from reconciler.api.proto import snapshots_pb2_grpc
from reconciler.config import ConfigError, ListenAddress, settings_from_mapping
from reconciler.daemon.health import PassKind, PassOutcome
from reconciler.daemon.metrics import MODE_LABELS, Metrics, serve_exposition
from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.dm.client import DmClient
from reconciler.dm.observed import KernelOp, ObservedDriver
from reconciler.dm.types import PoolMode
from reconciler.states import DeviceState, Step
from reconciler.status import build_report
from reconciler.store import ConditionKind, Store
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.world import FakeClock, World, make_settings, run_in_process
from tests.unit.daemon.http_client import get

LOOPBACK = ListenAddress("127.0.0.1", 0)  # port 0: the kernel picks a free one
# What Prometheus 2.x sends (scrape.go's scrapeAcceptHeader).
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels, parsed by prometheus_client."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """One sample's value."""
    return parsed[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def served(fake_world: World) -> Iterator[Daemon]:
    """A started daemon serving metrics on a loopback port, on the world's fake clock."""
    assert fake_world.store is not None
    fake_world.store.close()
    settings = replace(fake_world.settings, metrics_address=LOOPBACK)
    daemon = Daemon(settings, fake_world.host, clock=fake_world.clock,
                    wakeups=Wakeups(settle=0.02))
    daemon.start()
    fake_world.store = Store(settings.database_path, fake_world.clock)
    yield daemon
    daemon.close()


def port_of(daemon: Daemon) -> int:
    """Where the daemon's metrics are served."""
    assert daemon.metrics_server is not None
    return daemon.metrics_server.port


def full_pass(world: World, daemon: Daemon) -> None:
    """A resync now, on the fake clock."""
    world.clock.now += world.settings.resync_interval + 1
    daemon.step(timeout=0)


def scene(world: World, daemon: Daemon) -> None:
    """Three devices, one of them Faulty (its dm create refused: EINVAL), one rejected spec."""
    assert isinstance(world.host, FakeKernel)
    world.host.faults.fail(Op.CREATE, f"{world.pool}-broken", errno=errno.EINVAL)
    for name in ("web", "db", "broken"):
        world.spec(name, 'filesystem = "none"\nsize = "32MiB"\n')
    world.spec("junk", 'size = "lots"\n')
    full_pass(world, daemon)


def test_metrics_equal_status_json(fake_world: World, served: Daemon) -> None:
    """A scrape shows the pool, devices by state (Faulty included), rejected specs and held
    removals with the values `status --json` (build_report) shows at the same moment."""
    scene(fake_world, served)
    code, text = get(port_of(served), "/metrics")
    assert code == 200
    parsed = samples(text)
    assert fake_world.store is not None
    report = build_report(fake_world.settings, fake_world.store, fake_world.host,
                          include_removed=True)
    pool = report["pool"]
    for key in ("data_used_bytes", "data_total_bytes", "metadata_used_bytes",
                "metadata_total_bytes", "transaction_id"):
        assert value(parsed, f"reconciler_pool_{key}") == pool[key], key
    assert pool["transaction_id"] > 0 and pool["data_total_bytes"] > 0
    assert value(parsed, "reconciler_pool_up") == 1
    assert value(parsed, "reconciler_pool_needs_check") == int(pool["needs_check"])
    for mode in PoolMode:
        assert value(parsed, "reconciler_pool_mode", mode=MODE_LABELS[mode]) == \
            (1 if mode.value == pool["mode"] else 0)
    for state in DeviceState:
        shown = sum(1 for d in report["devices"] if d["state"] == state.value)
        assert value(parsed, "reconciler_devices", state=state.value) == shown, state
    assert value(parsed, "reconciler_devices", state="Faulty") == 1
    assert value(parsed, "reconciler_devices", state="Activated") == 2
    assert value(parsed, "reconciler_rejected_specs") == len(report["rejected_specs"]) == 1
    assert value(parsed, "reconciler_removals_held") == len(pool["removals_held"]) == 0
    shown_kinds = {c["kind"] for c in report["conditions"]}
    for kind in ConditionKind:
        assert value(parsed, "reconciler_condition", kind=kind.value) == \
            int(kind.value in shown_kinds)
    build = [s for s in parsed if s[0] == "reconciler_build_info"]
    assert len(build) == 1 and dict(build[0][1])["version"] == "0.1.0"


def test_held_removals_are_counted_like_status_shows_them(fake_world: World,
                                                          served: Daemon) -> None:
    """Spec files of more devices than max_removals deleted at once: the guard holds them,
    and the metric counts the names status lists."""
    assert fake_world.settings.max_removals == 8
    names = [f"d{i}" for i in range(9)]
    for name in names:
        fake_world.spec(name, 'filesystem = "none"\nactive = false\nsize = "8MiB"\n')
    full_pass(fake_world, served)
    for name in names:
        fake_world.unspec(name)
    full_pass(fake_world, served)
    parsed = samples(get(port_of(served), "/metrics")[1])
    assert fake_world.store is not None
    held = build_report(fake_world.settings, fake_world.store,
                        fake_world.host)["pool"]["removals_held"]
    assert len(held) == len(names)
    assert value(parsed, "reconciler_removals_held") == len(held)
    assert value(parsed, "reconciler_condition", kind="removals_held") == 1


def test_promtool_accepts_the_exposition(fake_world: World, served: Daemon) -> None:
    """`promtool check metrics` finds no problem in a scrape (names, units, help, types)."""
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: scripts/setup installs prometheus"
    scene(fake_world, served)
    text = get(port_of(served), "/metrics")[1]
    checked = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                             capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stderr


def exchange(port: int, method: str, path: str, **headers: str) -> tuple[int, dict[str, str],
                                                                       bytes]:
    """One request: the status, the headers (lower-case names) and the body as sent."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def test_head_answers_what_get_would_without_the_body(fake_world: World,
                                                      served: Daemon) -> None:
    """`curl -I /metrics`: 200 with GET's content type, a length, and no body; the probes
    and a missing path likewise. (The process's own series move between two requests, so
    the length GET would have is checked on a fixed exposition below.)"""
    scene(fake_world, served)
    port = port_of(served)
    code, got, body = exchange(port, "GET", "/metrics")
    assert code == 200 and got["content-length"] == str(len(body)) and len(body) > 1000
    code, head, nothing = exchange(port, "HEAD", "/metrics")
    assert (code, nothing) == (200, b"")
    assert head["content-type"] == got["content-type"] and int(head["content-length"]) > 1000
    for path, status in (("/healthz", 200), ("/readyz", 200), ("/startupz", 200),
                         ("/elsewhere", 404)):
        code, head, nothing = exchange(port, "HEAD", path)
        assert (code, nothing) == (status, b""), path
        assert int(head["content-length"]) == len(exchange(port, "GET", path)[2]), path


def test_a_head_of_the_exposition_carries_the_length_of_its_body() -> None:
    """prometheus_client's app asked as for a GET (it refuses HEAD, or answers it whole):
    a HEAD gets its status and headers, and the length of the body it left out."""
    seen: list[str] = []

    def exposition(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["REQUEST_METHOD"])
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4"),
                                  ("Content-Length", "1")])
        return [b"up 1\n", b"down 0\n"]

    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start(status: str, headers: list[tuple[str, str]], *_: Any) -> Callable[[bytes], None]:
        started.append((status, headers))
        return lambda data: None

    for method, body in (("HEAD", []), ("GET", [b"up 1\ndown 0\n"])):
        answer = serve_exposition(exposition, {"REQUEST_METHOD": method}, start,
                                  head=method == "HEAD")
        assert list(answer) == body
    assert started == 2 * [("200 OK", [("Content-Type", "text/plain; version=0.0.4"),
                                       ("Content-Length", "12")])]
    assert seen == ["GET", "GET"]


def test_the_format_and_encoding_are_the_scrapers_choice(fake_world: World,
                                                         served: Daemon) -> None:
    """No Accept: the text format 0.0.4. Accept naming OpenMetrics (as Prometheus sends it):
    OpenMetrics, which its strict parser reads to its `# EOF` with the same samples.
    Accept-Encoding gzip: the same body gzipped. (promtool check metrics reads only the text
    format: test_promtool_accepts_the_exposition.)"""
    scene(fake_world, served)
    port = port_of(served)
    code, headers, body = exchange(port, "GET", "/metrics")
    assert code == 200 and "content-encoding" not in headers
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = samples(body.decode())
    code, headers, body = exchange(port, "GET", "/metrics", Accept=PROMETHEUS_ACCEPT)
    assert code == 200 and headers["content-type"].startswith("application/openmetrics-text;")
    assert body.endswith(b"# EOF\n")
    families = openmetrics_families(body.decode())  # type: ignore[no-untyped-call]
    opened = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in families for s in family.samples}
    assert {k: v for k, v in opened.items() if k[0].startswith("reconciler_")} == \
        {k: v for k, v in text.items() if k[0].startswith("reconciler_")}
    code, headers, body = exchange(port, "GET", "/metrics", Accept_Encoding="gzip")
    assert code == 200 and headers["content-encoding"] == "gzip"
    assert samples(gzip.decompress(body).decode()).keys() == text.keys()


def test_label_values_are_identifiers_without_spaces(fake_world: World,
                                                     served: Daemon) -> None:
    """Every step of the retries counter (grow_filesystem, not "grow filesystem") and every
    pool mode (fail, error: lower case like the rest) is a value without a space."""
    scene(fake_world, served)
    parsed = samples(get(port_of(served), "/metrics")[1])
    steps = {dict(labels)["step"] for name, labels in parsed
             if name == "reconciler_retries_total"}
    modes = {dict(labels)["mode"] for name, labels in parsed if name == "reconciler_pool_mode"}
    assert steps == {step.value for step in Step} and "grow_filesystem" in steps
    assert modes == {"rw", "ro", "out_of_data_space", "fail", "error"}
    for name, labels in parsed:
        for label, text in labels:
            assert not any(c.isspace() for c in text), (name, label, text)


def test_kernel_calls_errors_retries_and_passes_are_counted(fake_world: World,
                                                           served: Daemon) -> None:
    """A create refused once with EBUSY: the error by op and errno, the retry of the step,
    the calls by op, and the passes by kind and result all move."""
    assert isinstance(fake_world.host, FakeKernel)
    before = samples(get(port_of(served), "/metrics")[1])
    assert not any(name == "reconciler_kernel_call_errors_total" for name, _ in before)
    fake_world.host.faults.fail(Op.CREATE, f"{fake_world.pool}-web", errno=errno.EBUSY)
    fake_world.spec("web", 'filesystem = "none"\nsize = "32MiB"\n')
    full_pass(fake_world, served)
    after = samples(get(port_of(served), "/metrics")[1])
    assert value(after, "reconciler_kernel_call_errors_total", op="create",
                 errno="EBUSY") == 1
    assert value(after, "reconciler_retries_total", step=Step.ACTIVATE.value) == 1
    assert value(after, "reconciler_retries_total", step=Step.CREATE.value) == 0
    assert value(after, "reconciler_passes_total", kind="full", result="not_converged") == 1
    assert value(after, "reconciler_passes_total", kind="full", result="converged") == \
        value(before, "reconciler_passes_total", kind="full", result="converged") == 1
    calls = "reconciler_kernel_call_duration_seconds_count"
    created = value(after, calls, op="create")
    assert created >= 1
    assert value(after, calls, op="message") > value(before, calls, op="message")
    assert value(after, calls, op="info_all") == value(before, calls, op="info_all") + 1
    fake_world.clock.now += 60  # past the retry's backoff
    served.step(timeout=0)
    done = samples(get(port_of(served), "/metrics")[1])
    assert value(done, calls, op="create") > created
    assert value(done, "reconciler_devices", state="Activated") == 1
    assert value(done, "reconciler_passes_total", kind="targeted", result="converged") + \
        value(done, "reconciler_passes_total", kind="full", result="converged") == 2


def test_observed_driver_reports_each_call_and_changes_nothing() -> None:
    """The dm layer's observer hook: every call is told with its op, and an error with its
    errno, while the answer and the exception are the inner driver's."""
    kernel = FakeKernel()
    seen: list[tuple[KernelOp, str | None]] = []

    class Recorder:
        def kernel_call(self, op: KernelOp, seconds: float, errno: str | None) -> None:
            assert seconds >= 0
            seen.append((op, errno))

    client = ObservedDriver(DmClient(kernel), Recorder())
    assert client.info("nothing") is None
    assert client.info_all() == []
    with pytest.raises(Exception, match="nothing"):
        client.remove("nothing")
    assert seen[0] == (KernelOp.INFO, None)
    assert seen[1] == (KernelOp.INFO_ALL, None)
    assert seen[2] == (KernelOp.REMOVE, "ENXIO")


def test_grpc_calls_are_counted_by_method_and_code(tmp_path: Path) -> None:
    """A Stat of a missing key, a Prepare and a List through the real server: counted as
    NOT_FOUND and OK under their methods; the Prepare's passes are counted, and the snapshot
    taken after the call shows its device as `status --json` does, with no resync between."""
    short = Path(tempfile.mkdtemp(prefix="rm", dir="/tmp"))
    sock = short / "snap.sock"
    settings = replace(make_settings(tmp_path, "rtpool", grpc_socket=str(sock)),
                       metrics_address=LOOPBACK)
    daemon = Daemon(settings, FakeKernel(), wakeups=Wakeups(settle=0.01))
    thread = threading.Thread(target=daemon.serve, name="reconcile", daemon=True)
    thread.start()
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            stub = snapshots_pb2_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError):
                stub.Stat(pb.StatSnapshotRequest(snapshotter="x", key="missing"))
            before = samples(get(port_of(daemon), "/metrics")[1])
            stub.Prepare(pb.PrepareSnapshotRequest(snapshotter="x", key="default/1/k"))
            list(stub.List(pb.ListSnapshotsRequest(snapshotter="x")))
        parsed = samples(get(port_of(daemon), "/metrics")[1])
        store = Store(settings.database_path, FakeClock())
        try:
            devices = build_report(settings, store, daemon.host)["devices"]
        finally:
            store.close()
    finally:
        daemon.request_stop()
        thread.join(timeout=20)
        shutil.rmtree(short, ignore_errors=True)
    count = "reconciler_grpc_call_duration_seconds_count"
    assert value(parsed, count, method="Stat", code="NOT_FOUND") == 1
    assert value(parsed, count, method="List", code="OK") == 1
    assert value(parsed, count, method="Prepare", code="OK") == 1
    def targeted(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
        return sum(value(scrape, "reconciler_passes_total", kind="targeted",
                         result=outcome.value) for outcome in PassOutcome)

    assert targeted(parsed) > targeted(before)
    assert any(d["snapshot"] and d["snapshot"]["key"] == "default/1/k" for d in devices)
    for state in DeviceState:
        shown = sum(1 for d in devices if d["state"] == state.value)
        assert value(parsed, "reconciler_devices", state=state.value) == shown, state


def test_the_server_stops_with_the_daemon(fake_world: World, served: Daemon) -> None:
    """After close() nothing listens at the address any more."""
    port = port_of(served)
    assert get(port, "/healthz")[0] == 200
    served.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_run_exits_1_naming_an_address_in_use(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`reconciler run` whose metrics_address another process listens on exits 1 with one
    line naming the address, never a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "config.toml", root_path=tmp_path / "state",
                              pool_name="rtpool", dm_driver="dmsetup",
                              metrics_address=f"127.0.0.1:{port}",
                              loopback_data_size="256MiB", loopback_metadata_size="8MiB")
        capsys.readouterr()
        assert run_in_process(["-c", str(config), "run"], FakeKernel()) == 1
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if not line.startswith("{")]
    assert said == [f"reconciler: metrics_address 127.0.0.1:{port} is in use by another "
                    "process"]
    assert "Traceback" not in err


GOOD_ADDRESSES: list[tuple[str, ListenAddress, str]] = [
    ("127.0.0.1:9560", ListenAddress("127.0.0.1", 9560), "127.0.0.1:9560"),
    ("0.0.0.0:1", ListenAddress("0.0.0.0", 1), "0.0.0.0:1"),
    ("[::1]:9560", ListenAddress("::1", 9560), "[::1]:9560"),
    ("[::]:65535", ListenAddress("::", 65535), "[::]:65535"),
    ("[0:0::1]:80", ListenAddress("::1", 80), "[::1]:80"),
    ("localhost:9560", ListenAddress("localhost", 9560), "localhost:9560"),
    ("node-1.example.org:9100", ListenAddress("node-1.example.org", 9100),
     "node-1.example.org:9100"),
]


@pytest.mark.parametrize(("raw", "parsed", "shown"), GOOD_ADDRESSES)
def test_metrics_address_accepts(raw: str, parsed: ListenAddress, shown: str) -> None:
    """host:port and [v6]:port are read into a ListenAddress that prints back the same."""
    settings = settings_from_mapping({"metrics_address": raw})
    assert settings.metrics_address == parsed
    assert str(settings.metrics_address) == shown


BAD_ADDRESSES: list[object] = [
    9560, "9560", ":9560", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
    "127.0.0.1:-1", "127.0.0.1:http", "127.0.0.1:\uff19\uff15\uff16\uff10", "::1:9560",
    "[::1]", "[zz]:80",
    "[127.0.0.1]:80", "999.1.1.1:80", "1.2.3:80", "a b:80", "-x:80", "x\n:80", "", True,
    ["127.0.0.1:9560"], {"a": 1},
]


@pytest.mark.parametrize("raw", BAD_ADDRESSES)
def test_metrics_address_refuses(raw: object) -> None:
    """Anything but host:port (port 1-65535, v6 in brackets) is a ConfigError naming the key."""
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({"metrics_address": raw})
    assert refused.value.key == "metrics_address"
    assert "\n" not in str(refused.value)


def test_metrics_are_off_by_default(fake_world: World, daemon: Daemon) -> None:
    """Without metrics_address nothing is served and no observer wraps the driver."""
    assert fake_world.settings.metrics_address is None
    assert daemon.metrics is None and daemon.metrics_server is None
    assert not isinstance(daemon.reconciler.client, ObservedDriver)


def test_passes_and_series_exist_at_zero_before_anything_happens() -> None:
    """A fresh registry already has every pass kind/result, kernel op and step at zero, and
    no snapshot gauges (nothing read yet)."""
    metrics = Metrics()
    parsed = samples(metrics.render().decode())
    for kind in PassKind:
        for outcome in PassOutcome:
            assert value(parsed, "reconciler_passes_total", kind=kind.value,
                         result=outcome.value) == 0
    for op in KernelOp:
        assert value(parsed, "reconciler_kernel_call_duration_seconds_count", op=op.value) == 0
    assert not any(name == "reconciler_pool_up" for name, _ in parsed)
