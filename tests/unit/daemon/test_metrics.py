"""Prometheus metrics, /healthz and /readyz on the fake kernel: values equal `status --json`,
promtool accepts the exposition, the endpoints' codes, the counters that move, the config key."""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.api.proto import snapshots_pb2 as pb
from reconciler.api.proto import snapshots_pb2_grpc
from reconciler.config import ConfigError, ListenAddress, settings_from_mapping
from reconciler.daemon.health import (
    STALL_AFTER,
    PassKind,
    PassOutcome,
    PoolFigures,
    Snapshot,
    liveness,
    readiness,
    take_snapshot,
)
from reconciler.daemon.metrics import Metrics, MetricsServer
from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.dm.client import DmClient
from reconciler.dm.observed import KernelOp, ObservedDriver
from reconciler.dm.types import PoolMode
from reconciler.states import DeviceState, Step
from reconciler.status import build_report
from reconciler.store import ConditionKind, ConditionRecord, Store, UnknownKind
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.world import FakeClock, World, make_settings, run_in_process

LOOPBACK = ListenAddress("127.0.0.1", 0)  # port 0: the kernel picks a free one


def get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:<port><path>: the status code and the body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


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
        assert value(parsed, "reconciler_pool_mode", mode=mode.value) == \
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


def test_healthz_turns_503_when_the_loop_is_stuck_in_a_step(fake_world: World) -> None:
    """/healthz is 200 while the loop waits, and 503 once a step has run longer than
    STALL_AFTER on the injected monotonic clock; 200 again when it ends."""
    assert fake_world.store is not None
    fake_world.store.close()
    mono = FakeClock(start=1000.0)
    settings = replace(fake_world.settings, metrics_address=LOOPBACK)
    daemon = Daemon(settings, fake_world.host, clock=fake_world.clock, monotonic=mono,
                    wakeups=Wakeups(settle=0.02))
    daemon.start()
    try:
        port = port_of(daemon)
        assert get(port, "/healthz")[0] == 200
        during: list[tuple[int, str]] = []

        def stuck(stopping: bool) -> None:
            del stopping
            during.append(get(port, "/healthz"))
            mono.now += STALL_AFTER + 1
            during.append(get(port, "/healthz"))

        daemon.wakeups.call(stuck)
        daemon.step(timeout=0)
        assert during[0][0] == 200
        assert during[1][0] == 503 and "in one step for 601s" in during[1][1]
        assert len(during[1][1].splitlines()) == 1
        assert get(port, "/healthz")[0] == 200
    finally:
        daemon.close()


def test_readyz_before_the_first_pass_then_ready_then_pool_gone(fake_world: World) -> None:
    """/readyz: 503 before the first pass ends, 200 after it, 503 naming the pool once the
    pool is gone from the kernel (and the next pass saw it)."""
    assert fake_world.store is not None
    fake_world.store.close()
    settings = replace(fake_world.settings, metrics_address=LOOPBACK)
    daemon = Daemon(settings, fake_world.host, clock=fake_world.clock,
                    wakeups=Wakeups(settle=0.02))
    assert daemon.metrics is not None
    early = MetricsServer(LOOPBACK, daemon.metrics, daemon.liveness, daemon.readiness)
    early.start()
    try:
        code, text = get(early.port, "/readyz")
        assert (code, text) == (503, "the first pass has not ended yet\n")
        assert get(early.port, "/healthz")[0] == 200
        assert get(early.port, "/elsewhere")[0] == 404
    finally:
        early.stop()
    daemon.start()
    try:
        port = port_of(daemon)
        code, text = get(port, "/readyz")
        assert code == 200 and text.startswith(f"ok: pool {fake_world.pool} is up")
        DmClient(fake_world.host).remove(fake_world.pool)
        full_pass(fake_world, daemon)
        code, text = get(port, "/readyz")
        assert (code, text) == (503, f"pool {fake_world.pool}: pool is not loaded in the "
                                     "kernel\n")
        assert samples(get(port, "/metrics")[1])[("reconciler_pool_up", ())] == 0
    finally:
        daemon.close()


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


FIGURES = PoolFigures(data_used_bytes=1, data_total_bytes=2, metadata_used_bytes=1,
                      metadata_total_bytes=2, mode=PoolMode.READ_WRITE, transaction_id=3,
                      needs_check=False)


def snapshot(**changes: Any) -> Snapshot:
    """A snapshot of a pool that is up after one pass, with `changes`."""
    base = Snapshot(pool_name="p", pool=FIGURES, pool_error=None, devices={},
                    rejected_specs=0, removals_held=0, conditions=frozenset(), passes=1)
    return replace(base, **changes)


LIVENESS: list[tuple[float, float, float | None, float | None, bool]] = [
    # now, last_turn, busy_since, wait_timeout -> healthy
    (100.0, 100.0, None, None, True),  # waiting, for as long as it takes
    (1e9, 100.0, None, None, True),  # waiting without a deadline: a quiet daemon is alive
    (100.0 + 30 + STALL_AFTER, 100.0, None, 30.0, True),  # at the end of its margin
    (100.0 + 30 + STALL_AFTER + 1, 100.0, None, 30.0, False),  # a wait that never ended
    (100.0 + STALL_AFTER, 0.0, 100.0, 30.0, True),  # a step as long as the bound
    (100.0 + STALL_AFTER + 1, 0.0, 100.0, 30.0, False),  # a step stuck past it
]


@pytest.mark.parametrize(("now", "last_turn", "busy_since", "wait_timeout", "healthy"),
                         LIVENESS)
def test_liveness_table(now: float, last_turn: float, busy_since: float | None,
                        wait_timeout: float | None, healthy: bool) -> None:
    """/healthz's rule: waiting is alive until the wait should have ended plus the margin; a
    step is alive while younger than STALL_AFTER."""
    verdict = liveness(now, last_turn, busy_since, wait_timeout)
    assert verdict.ok is healthy
    assert verdict.code == (200 if healthy else 503)


READINESS: list[tuple[Snapshot | None, int, str]] = [
    (None, 503, "the first pass has not ended yet"),
    (snapshot(pool=None, pool_error="pool is not loaded in the kernel", passes=0), 503,
     "pool p: pool is not loaded in the kernel"),
    (snapshot(pool=None, pool_error="pool is not loaded in the kernel"), 503,
     "pool p: pool is not loaded in the kernel"),
    (snapshot(passes=0, last_error="EIO"), 503, "no pass has ended yet: EIO"),
    (snapshot(), 200, "ok: pool p is up; passes ended: 1"),
    (snapshot(held_names=("a", "b")), 200, "ok: pool p is up; passes ended: 1; 2 removals "
     "held: a, b (`reconciler status`)"),
    (snapshot(held_names=tuple(f"d{i:02}" for i in range(12))), 200,
     "ok: pool p is up; passes ended: 1; 12 removals held: d00, d01, d02, d03, d04, d05, d06, "
     "d07, d08, d09 and 2 more (`reconciler status`)"),
    # Ready: the nodes are made by the daemon instead of udev; the reason says so (issue 25).
    (snapshot(conditions=frozenset({ConditionKind.UDEV_UNREACHABLE})), 200,
     "ok: pool p is up; passes ended: 1; udev unreachable: udev cannot confirm the daemon's "
     "udev cookies (no hostIPC: true?), so the daemon makes the /dev/mapper nodes itself and "
     "never waits for udev (`reconciler status`)"),
]


@pytest.mark.parametrize(("snap", "code", "reason"), READINESS)
def test_readiness_table(snap: Snapshot | None, code: int, reason: str) -> None:
    """/readyz's rule: the first pass ended and the pool is up; else 503 and why."""
    verdict = readiness(snap)
    assert (verdict.code, verdict.reason) == (code, reason)


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


def test_snapshot_keeps_the_conditions_it_knows_and_counts_held_names() -> None:
    """take_snapshot: held removals are the condition's names, the pass_failed message is the
    last error, and a kind this version does not know (written by a newer one) is left out."""
    snap = take_snapshot(
        "p", None, "pool is not loaded in the kernel", 128, [], 2,
        [ConditionRecord(ConditionKind.REMOVALS_HELD, "2 held", ("a", "b")),
         ConditionRecord(ConditionKind.PASS_FAILED, "EIO: boom"),
         ConditionRecord(UnknownKind("from_the_future"), "?")],
        passes=0)
    assert snap.removals_held == 2 and snap.rejected_specs == 2
    assert snap.conditions == {ConditionKind.REMOVALS_HELD, ConditionKind.PASS_FAILED}
    assert snap.last_error == "EIO: boom"
    assert snap.devices == dict.fromkeys(DeviceState, 0)
    assert readiness(snap).reason == "pool p: pool is not loaded in the kernel"
