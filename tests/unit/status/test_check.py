"""`reconciler status --check`: the verdict table (each condition, its exit code and reason)
and the command's exit codes with a daemon process over the fake kernel and without."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.daemon.lock import RootLock, lock_held
from reconciler.status import (
    ConditionReport,
    DeviceReport,
    Health,
    PoolReport,
    ReasonKind,
    RejectedSpecReport,
    Report,
    check,
    collect,
)
from reconciler.store import StoreBusy
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.faults import Op
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import World, wait_for

REPO = Path(__file__).resolve().parents[3]
MIB = 1 << 20


def _device(name: str, state: str) -> DeviceReport:
    """A device of the report as `check` reads it: its name and state (the rest as a fresh
    spec file's device would show)."""
    return DeviceReport(
        name=name, state=state, deferred_removal=False, ready=False, thin_id=None,
        device_id=None, size_bytes=MIB, used_bytes=None, parent=None, filesystem="none",
        formatted=False, path=None, kernel_name=f"pool-{name}", active=True, readonly=False,
        error=None, error_step=None, attempts=0, retry_at=None, notice=None, labels={},
        snapshot=None, state_changed_at="2026-12-01T02:40:13.000+00:00", kernel=None)


def healthy_report(**pool: Any) -> Report:
    """A status report with nothing wrong, pool fields replaced by `pool`."""
    fields: dict[str, Any] = {
        "name": "pool", "path": "/dev/mapper/pool", "error": None, "kernel_readable": True,
        "loaded": True, "mode": "rw",
        "needs_check": False, "data_used_bytes": 10 * MIB, "data_total_bytes": 256 * MIB,
        "data_reserve_bytes": 25 * MIB, "metadata_used_bytes": MIB,
        "metadata_total_bytes": 8 * MIB, "metadata_reserve_bytes": MIB // 2,
        "new_devices_held": None, "spec_source_error": None, "last_pass_error": None,
        "removals_held": (),
    }
    fields.update(pool)
    fields["removals_held"] = tuple(fields["removals_held"])
    return Report(pool=PoolReport(**fields), devices=(_device("web-1", "Activated"),))


def with_devices(*states: tuple[str, str]) -> Report:
    """A healthy report whose devices are (name, state) pairs."""
    return replace(healthy_report(), devices=tuple(_device(n, s) for n, s in states))


def with_rejected(*names: str) -> Report:
    """A healthy report with these rejected specs."""
    return replace(healthy_report(), rejected_specs=tuple(
        RejectedSpecReport(n, f"/specs/{n}.toml", "bad") for n in names))


NOT_LOADED = "pool is not loaded in the kernel"
STARTING = ConditionReport("starting", "the daemon's first pass has not ended", (), 1,
                           "2026-12-01T02:40:13.000+00:00", "2026-12-01T02:40:13.000+00:00")
UDEV = ConditionReport("udev_unreachable", "udevd runs elsewhere", (), 1,
                       "2026-12-01T02:40:13.000+00:00", "2026-12-01T02:40:13.000+00:00")
CASES: list[tuple[str, Report | None, bool, Health, list[ReasonKind], str]] = [
    ("ready", healthy_report(), True, Health.READY, [], "ready"),
    ("no daemon", healthy_report(), False, Health.DOWN, [ReasonKind.NO_DAEMON],
     "down: no daemon (the root lock is not held)"),
    ("no state yet", None, True, Health.DOWN, [ReasonKind.NO_STATE],
     "down: no state (the daemon has not run yet)"),
    ("no state, no daemon", None, False, Health.DOWN,
     [ReasonKind.NO_DAEMON, ReasonKind.NO_STATE],
     "down: no daemon (the root lock is not held); no state (the daemon has not run yet)"),
    ("kernel unreadable",
     healthy_report(kernel_readable=False, loaded=False, error="info pool: dmsetup: not found"),
     True, Health.DOWN, [ReasonKind.KERNEL_UNREADABLE],
     "down: kernel unreadable (info pool: dmsetup: not found)"),
    ("no pool in the kernel", healthy_report(loaded=False, error=NOT_LOADED), True,
     Health.DOWN, [ReasonKind.POOL_NOT_LOADED], f"down: pool not loaded ({NOT_LOADED})"),
    ("pool in fail mode", healthy_report(mode="Fail"), True, Health.DOWN,
     [ReasonKind.POOL_FAILED], "down: pool failed (mode Fail)"),
    ("pool in error mode", healthy_report(mode="Error"), True, Health.DOWN,
     [ReasonKind.POOL_FAILED], "down: pool failed (mode Error)"),
    ("pool needs_check", healthy_report(needs_check=True), True, Health.DOWN,
     [ReasonKind.POOL_NEEDS_CHECK],
     "down: pool needs check (thin_check/thin_repair must run before it is used)"),
    ("pool read-only: its metadata is not written", healthy_report(mode="ro"), True,
     Health.DOWN, [ReasonKind.POOL_READ_ONLY], "down: pool read only (mode ro)"),
    ("pool out of data space", healthy_report(mode="out_of_data_space"), True,
     Health.DEGRADED, [ReasonKind.POOL_OUT_OF_DATA_SPACE],
     "degraded: pool out of data space (mode out_of_data_space)"),
    ("one faulty device", with_devices(("web-1", "Faulty"), ("db", "Activated")), True,
     Health.DEGRADED, [ReasonKind.FAULTY_DEVICES], "degraded: 1 faulty device (web-1)"),
    ("two faulty devices", with_devices(("a", "Faulty"), ("b", "Faulty")), True,
     Health.DEGRADED, [ReasonKind.FAULTY_DEVICES], "degraded: 2 faulty devices (a, b)"),
    ("devices on their way are not a fault",
     with_devices(("a", "Creating"), ("b", "Deactivated"), ("c", "Created")), True,
     Health.READY, [], "ready"),
    ("a rejected spec", with_rejected("bad"), True, Health.DEGRADED,
     [ReasonKind.REJECTED_SPECS], "degraded: 1 rejected spec (bad)"),
    ("removals held", healthy_report(removals_held=["a", "b"]), True, Health.DEGRADED,
     [ReasonKind.REMOVALS_HELD], "degraded: 2 removals held (a, b)"),
    ("new devices held", healthy_report(new_devices_held="pool is ro: new devices wait"),
     True, Health.DEGRADED, [ReasonKind.NEW_DEVICES_HELD],
     "degraded: new devices held (pool is ro: new devices wait)"),
    ("a failed pass", healthy_report(last_pass_error="OSError: boom"), True,
     Health.DEGRADED, [ReasonKind.PASS_FAILED], "degraded: pass failed (OSError: boom)"),
    ("a spec source error", healthy_report(spec_source_error="spec_dir is missing"), True,
     Health.DEGRADED, [ReasonKind.SPEC_SOURCE], "degraded: spec source (spec_dir is missing)"),
    ("data space below the reserve", healthy_report(data_used_bytes=240 * MIB), True,
     Health.DEGRADED, [ReasonKind.DATA_BELOW_RESERVE],
     "degraded: data below reserve (16MiB free of 256MiB, reserve 25MiB)"),
    ("data space just at the reserve", healthy_report(data_used_bytes=231 * MIB), True,
     Health.READY, [], "ready"),
    ("metadata space below the reserve", healthy_report(metadata_used_bytes=8 * MIB - 256 * 1024),
     True, Health.DEGRADED, [ReasonKind.METADATA_BELOW_RESERVE],
     "degraded: metadata below reserve (256KiB free of 8MiB, reserve 512KiB)"),
    ("down outranks degraded and leads the line",
     healthy_report(removals_held=["a"], needs_check=True), True, Health.DOWN,
     [ReasonKind.POOL_NEEDS_CHECK, ReasonKind.REMOVALS_HELD],
     "down: pool needs check (thin_check/thin_repair must run before it is used); "
     "1 removal held (a)"),
    ("the store cannot be read", None, True, Health.DOWN, [ReasonKind.STORE_UNUSABLE],
     "down: store unusable (reconciler.db is not a SQLite database)"),
    ("the daemon's first pass has not ended: starting, and nothing else",
     replace(with_devices(("web-1", "Faulty")), conditions=(STARTING,)), True,
     Health.STARTING, [ReasonKind.FIRST_PASS_RUNNING], "starting: first pass running"),
    ("a starting condition without a daemon is what a crash left", replace(
        healthy_report(), conditions=(STARTING,)), False, Health.DOWN, [ReasonKind.NO_DAEMON],
     "down: no daemon (the root lock is not held)"),
    ("udev that cannot confirm our cookies is a note: still ready",
     replace(healthy_report(), conditions=(UDEV,)), True, Health.READY,
     [ReasonKind.UDEV_UNREACHABLE], "ready: udev unreachable (udevd runs elsewhere)"),
    ("names beyond ten are counted", with_devices(*((f"d{i:02}", "Faulty") for i in range(12))),
     True, Health.DEGRADED, [ReasonKind.FAULTY_DEVICES],
     "degraded: 12 faulty devices (d00, d01, d02, d03, d04, d05, d06, d07, d08, d09 and 2 "
     "more)"),
]


@pytest.mark.parametrize(("report", "running", "health", "kinds", "line"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_verdict_of_each_condition(report: Report | None, running: bool,
                                       health: Health, kinds: list[ReasonKind],
                                       line: str) -> None:
    """Each condition gives its health (the exit code), its reason kinds and its line."""
    unusable = "reconciler.db is not a SQLite database" if ReasonKind.STORE_UNUSABLE in kinds \
        else None
    verdict = check(report, running, unusable)
    assert verdict.health == health
    assert [r.kind for r in verdict.reasons] == kinds
    assert verdict.line() == line


def test_the_json_verdict_has_structured_reasons() -> None:
    """--json's object: health word, code, and each reason's kind, health, names, message."""
    report = replace(with_devices(("web-1", "Faulty")),
                     rejected_specs=(RejectedSpecReport("bad", "/s/bad.toml", "x"),))
    assert check(report, True).document() == {
        "health": "degraded", "code": 1,
        "reasons": [
            {"kind": "faulty_devices", "health": "degraded", "count": 1, "names": ["web-1"],
             "message": None},
            {"kind": "rejected_specs", "health": "degraded", "count": 1, "names": ["bad"],
             "message": None},
        ],
    }


def test_a_real_status_document_has_every_field_the_check_reads(fake_world: World) -> None:
    """build_report's document after a converged pass: healthy with a daemon, and the pool's
    reserves are the configured shares of its size."""
    fake_world.spec("a", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    report = fake_world.report()
    pool = report["pool"]
    assert (pool["kernel_readable"], pool["loaded"]) == (True, True)
    assert pool["data_reserve_bytes"] == pool["data_total_bytes"] // 10
    assert pool["metadata_reserve_bytes"] == pool["metadata_total_bytes"] // 10
    assert fake_world.store is not None
    typed = collect(fake_world.settings, fake_world.store, fake_world.host)
    assert typed.document() == report
    assert check(typed, True).line() == "ready"
    assert check(typed, False).health == Health.DOWN


# -- the command ------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config over a small loopback pool with an empty spec_dir."""
    path = _write_config(tmp_path / "config.toml", tmp_path / "state", tmp_path / "specs")
    (tmp_path / "specs").mkdir()
    return path


def _write_config(path: Path, state: Path, specs: Path) -> Path:
    """The check tests' config: a small loopback pool, short retries, dmsetup."""
    return write_config(path, root_path=state, spec_dir=specs, pool_name="checkpool",
                        loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                        base_image_size="32MiB", retry_initial="100ms", retry_max="1s",
                        dm_driver="dmsetup")


def run_check(config: Path, host: FakeKernel, capsys: pytest.CaptureFixture[str],
              *extra: str) -> tuple[int, str]:
    """`status --check` in this process: its exit code and what it printed."""
    capsys.readouterr()
    code = main(["-c", str(config), "status", "--check", *extra], host=host)
    return code, capsys.readouterr().out


def test_without_state_or_daemon_the_check_says_down(config: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing ever ran: exit 2, both reasons on the line."""
    assert run_check(config, FakeKernel(), capsys) == (
        2, "down: no daemon (the root lock is not held); no state (the daemon has not run "
        "yet)\n")


def test_a_faulty_device_without_a_daemon_and_then_with_the_lock_held(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A device Faulty (a permanent create error): down while no daemon holds the lock,
    degraded naming the device once one does, healthy after it is removed."""
    specs = config.parent / "specs"
    (specs / "web-1.toml").write_text('filesystem = "none"\n')
    (specs / "db.toml").write_text('filesystem = "none"\n')
    host = FakeKernel()
    host.faults.fail(Op.CREATE, "checkpool-web-1", errno=errno.EINVAL, times=100)
    assert main(["-c", str(config), "run", "--once"], host=host) == 1
    code, out = run_check(config, host, capsys)
    assert (code, out) == (2, "down: no daemon (the root lock is not held); "
                              "1 faulty device (web-1)\n")
    lock = RootLock(config.parent / "state")
    lock.acquire()  # as a running daemon would
    try:
        assert run_check(config, host, capsys) == (1, "degraded: 1 faulty device (web-1)\n")
        code, out = run_check(config, host, capsys, "--json")
        assert code == 1
        assert json.loads(out) == {"health": "degraded", "code": 1, "reasons": [
            {"kind": "faulty_devices", "health": "degraded", "count": 1, "names": ["web-1"],
             "message": None}]}
    finally:
        lock.release()
    (specs / "web-1.toml").unlink()
    assert main(["-c", str(config), "run", "--once"], host=host) == 0
    lock.acquire()
    try:
        assert run_check(config, host, capsys) == (0, "ready\n")
    finally:
        lock.release()


@pytest.mark.parametrize("extra", [["web-1"], ["--watch"], ["--watch", "1"]], ids=" ".join)
def test_check_with_a_name_or_watch_is_a_usage_error(
        config: Path, extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--check is one verdict for the whole daemon: a NAME or --watch exits 2 and says so."""
    capsys.readouterr()
    assert main(["-c", str(config), "status", "--check", *extra], host=FakeKernel()) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "reconciler: status --check takes no NAME and no --watch\n"


@contextmanager
def daemon_process(config: Path) -> Iterator[DaemonProcess]:
    """`reconciler run` over a fake kernel in a process of its own, holding the root lock;
    stopped with SIGTERM (it must exit 0) unless the body stopped it."""
    log_path = config.parent / "daemon.log"
    log_path.write_bytes(b"")
    process = DaemonProcess(config, fake_kernel=True, log=log_path, cwd=REPO).start()
    try:
        wait_for("the daemon's first pass",
                 lambda: b"daemon.ready" in log_path.read_bytes(), 60)
        yield process
    finally:
        assert process.stop() == 0, log_path.read_text()[-3000:]


def test_check_follows_a_daemon_process(config: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """With the daemon running: ready (0); a spec it rejects: degraded (1) naming it; the
    daemon stopped: down (2). The daemon's fake kernel lives in its process, so this
    process reads one of its own, where a pool of the same name was made beside it."""
    host = FakeKernel()
    beside = _write_config(config.parent / "beside.toml", config.parent / "beside-state",
                           config.parent / "beside-specs")
    (config.parent / "beside-specs").mkdir()
    assert main(["-c", str(beside), "run", "--once"], host=host) == 0
    state = config.parent / "state"
    with daemon_process(config) as process:
        assert lock_held(state)
        assert run_check(config, host, capsys) == (0, "ready\n")
        (config.parent / "specs" / "bad.toml").write_text("colour = 'red'\n")
        wait_for("the daemon to reject bad.toml",
                 lambda: run_check(config, host, capsys)[0] == 1, 60)
        assert run_check(config, host, capsys) == (1, "degraded: 1 rejected spec (bad)\n")
        assert process.stop() == 0
    assert not lock_held(state)
    assert run_check(config, host, capsys) == (
        2, "down: no daemon (the root lock is not held); 1 rejected spec (bad)\n")


def test_a_store_that_cannot_be_read_is_down_and_a_busy_one_is_an_error(
        config: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A database file that is not SQLite: down (2) saying so, the daemon's verdict of the
    same store; one kept busy by others: exit 1 and one line on stderr, as every command."""
    state = config.parent / "state"
    assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 0
    database = state / "reconciler.db"
    for side in (state / "reconciler.db-wal", state / "reconciler.db-shm"):
        side.unlink(missing_ok=True)
    database.write_bytes(b"not a database, " * 512)
    code, out = run_check(config, FakeKernel(), capsys)
    assert code == 2
    assert out.startswith("down: no daemon (the root lock is not held); store unusable (")
    assert str(database) in out and out.count("\n") == 1

    def busy(*args: object, **kwargs: object) -> None:
        raise StoreBusy(f"the database {database} stayed busy through 7 tries")

    monkeypatch.setattr("reconciler.status.report.Store", busy)
    capsys.readouterr()
    assert main(["-c", str(config), "status", "--check"], host=FakeKernel()) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"reconciler: the database {database} stayed busy through 7 tries\n"
