"""The long-running daemon on the fake kernel: events, resync, retries, busy removal, plan."""

from __future__ import annotations

import errno
import gc
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from reconciler.cli import main
from reconciler.config import load_settings
from reconciler.daemon import service
from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.dm.client import DmClient
from reconciler.reconcile.retry import RetryPolicy
from reconciler.store import Store
from reconciler.testing.config_file import fifo_at, write_config
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.world import World
from reconciler.vocabulary import PlanAction


def state(world: World, name: str) -> str:
    """A device's state as a separate reader (like `status`) sees it."""
    store = Store(world.settings.database_path, world.clock)
    try:
        found = store.device(name)
        return "absent" if found is None else found.state
    finally:
        store.close()


def test_a_dropped_spec_is_made_on_its_file_event(fake_world: World, daemon: Daemon) -> None:
    """Writing a spec file wakes the daemon, which makes just that device."""
    fake_world.spec("web", 'filesystem = "none"\n')
    assert daemon.step(timeout=5)
    assert state(fake_world, "web") == "Activated"
    assert fake_world.kernel_names() == {f"{fake_world.pool}-web"}


def test_a_burst_of_100_spec_files_is_one_pass(fake_world: World, daemon: Daemon) -> None:
    """100 files dropped at once are coalesced into one batch and reconciled in one pass."""
    before = daemon.passes
    for i in range(100):
        fake_world.spec(f"d{i:03}", 'filesystem = "none"\nactive = false\n')
    deadline = time.monotonic() + 10
    while daemon.wakeups.pending() < 100 and time.monotonic() < deadline:
        time.sleep(0.01)  # watchdog delivers on its own thread
    assert daemon.wakeups.pending() == 100
    assert daemon.step(timeout=5)
    assert daemon.passes == before + 1
    assert all(state(fake_world, f"d{i:03}") == "Created" for i in range(100))


def test_resync_repairs_a_device_removed_behind_our_back(fake_world: World,
                                                         daemon: Daemon) -> None:
    """A device removed by hand is made active again by the next periodic resync."""
    fake_world.spec("web", 'filesystem = "none"\n')
    daemon.step(timeout=5)
    kname = f"{fake_world.pool}-web"
    DmClient(fake_world.host).remove(kname)
    fake_world.clock.now += fake_world.settings.resync_interval + 1
    daemon.step(timeout=0)
    assert fake_world.kernel_names() == {kname}
    assert state(fake_world, "web") == "Activated"


def test_a_busy_remove_keeps_retrying_and_never_goes_faulty(fake_world: World,
                                                            daemon: Daemon) -> None:
    """A held-open device whose spec is gone says "busy: held open" until it is released."""
    fake_world.spec("web", 'filesystem = "none"\n')
    daemon.step(timeout=5)
    kname = f"{fake_world.pool}-web"
    fake_world.host.hold_open(kname)  # type: ignore[attr-defined]
    fake_world.unspec("web")
    daemon.step(timeout=5)
    for _ in range(3 * fake_world.settings.max_attempts):
        fake_world.clock.now += fake_world.settings.retry_max + 1
        daemon.step(timeout=0)
    report: dict[str, Any] = fake_world.report()
    (device,) = report["devices"]
    assert device["state"] == "Deactivating"
    assert device["error"].startswith("busy: held open")
    assert kname in fake_world.kernel_names()
    fake_world.host.release(kname)  # type: ignore[attr-defined]
    fake_world.clock.now += fake_world.settings.retry_max + 1
    daemon.step(timeout=0)
    assert state(fake_world, "web") == "Removed"
    assert fake_world.kernel_names() == set()


def test_retry_brings_a_faulty_device_back(fake_world: World, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A conflict makes a device Faulty; once cleared, `reconciler retry` makes it Activated."""
    fake_world.spec("web", 'filesystem = "none"\n')
    fake_world.run_pass(RetryPolicy(max_attempts=1))
    kname = f"{fake_world.pool}-other"
    DmClient(fake_world.host).create(kname, "0 8 zero", "someone-else")
    fake_world.spec("other", 'filesystem = "none"\n')
    result = fake_world.run_pass(RetryPolicy(initial=1.0, max_attempts=2, jitter=0.0))
    assert "other" in result.faulty
    DmClient(fake_world.host).remove(kname)
    assert fake_world.run_pass().faulty  # Faulty devices wait for the operator
    config = write_config(tmp_path / "config.toml", root_path=fake_world.settings.root_path,
                          pool_name=fake_world.pool)
    assert main(["-c", str(config), "retry", "other"], host=fake_world.host) == 0
    assert "retry done" in capsys.readouterr().out
    assert fake_world.run_pass().ok
    assert state(fake_world, "other") == "Activated"
    assert main(["-c", str(config), "retry", "other"], host=fake_world.host) == 1


def test_plan_says_what_the_next_pass_would_do(fake_world: World) -> None:
    """plan lists create/snapshot/activate/remove per device and changes nothing."""
    fake_world.spec("keep", 'filesystem = "none"\n')
    fake_world.spec("cold", 'filesystem = "none"\nactive = false\n')
    fake_world.spec("gone", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    fake_world.spec("cold", 'filesystem = "none"\nactive = true\n')
    fake_world.spec("new", 'filesystem = "none"\n')
    fake_world.spec("snap", 'parent = "keep"\n')
    fake_world.spec("grow", 'filesystem = "none"\n')
    fake_world.unspec("gone")
    calls_before = len(fake_world.host.calls)  # type: ignore[attr-defined]
    plan = dict(fake_world.reconciler().plan())
    assert plan == {
        "cold": (PlanAction.ACTIVATE, "activate"),
        "gone": (PlanAction.REMOVE, "remove: deactivate, then delete its thin id"),
        "grow": (PlanAction.CREATE, "create"),
        "keep": (PlanAction.NONE, "nothing"),
        "new": (PlanAction.CREATE, "create"),
        "snap": (PlanAction.SNAPSHOT, "snapshot of keep"),
    }
    mutating = [c for c in fake_world.host.calls[calls_before:]  # type: ignore[attr-defined]
                if c[:2] not in (("dmsetup", "info"), ("dmsetup", "status"),
                                 ("dmsetup", "table"))]
    assert mutating == []


def test_stop_ends_a_pass_between_steps(fake_world: World) -> None:
    """A stop lets the step in flight finish (create_thin and Created), then ends the pass."""
    fake_world.spec("a", 'filesystem = "none"\n')
    reconciler = fake_world.reconciler()
    assert fake_world.store is not None
    store = fake_world.store
    # Asked to stop as soon as the first transition is persisted.
    reconciler.stop_requested = lambda: bool(store.history("a"))
    result = reconciler.run_pass()
    assert result.stopped
    assert state(fake_world, "a") == "Created"


def test_an_api_call_waiting_for_a_retry_is_parked_while_the_loop_serves_others(
    fake_world: World, daemon: Daemon
) -> None:
    """A Prepare whose create_snap (of the base) fails once (EBUSY) is answered after the
    retry's pass; the reconcile thread never sleeps meanwhile and answers a Stat in between."""
    kname = f"{fake_world.pool}-snap-1"
    assert isinstance(fake_world.host, FakeKernel)
    fake_world.host.faults.fail(Op.MESSAGE, fake_world.pool, errno=errno.EBUSY,
                                verb="create_snap")
    answers: dict[str, Any] = {}

    def ask(label: str, call: Any) -> threading.Thread:
        def run() -> None:
            try:
                answers[label] = daemon.run_on_loop(call)
            except Exception as exc:  # noqa: BLE001 - the test reads it
                answers[label] = exc
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    prepare = ask("prepare", lambda s: s.prepare("default/1/k"))
    _step_until(daemon, lambda: daemon.waiters.waiting > 0)
    assert "prepare" not in answers, "parked until the device settles"
    assert state(fake_world, "snap-1") == "Creating"

    stat = ask("stat", lambda s: s.stat("default/1/k"))
    _step_until(daemon, lambda: "stat" in answers)
    stat.join(timeout=5)
    assert answers["stat"].name == "default/1/k"
    assert "prepare" not in answers

    device = daemon.store.device("snap-1")
    assert device is not None and device.retry_at is not None
    fake_world.clock.now = device.retry_at
    daemon.step(timeout=0)
    prepare.join(timeout=5)
    (mount,) = answers["prepare"]
    assert mount.source == f"/dev/mapper/{kname}"
    assert state(fake_world, "snap-1") == "Activated"
    assert fake_world.clock.slept == [], "the reconcile thread never slept"
    assert daemon.waiters.waiting == 0


def _step_until(daemon: Daemon, done: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        daemon.step(timeout=0.05)


def _write_config(world: World, path: Path, **extra: object) -> None:
    """A config file giving exactly the world's settings, plus the `extra` keys."""
    write_config(path, root_path=world.settings.root_path, pool_name=world.pool,
                 loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                 base_image_size="64MiB", dm_driver=world.settings.dm_driver, **extra)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("resync_interval", math.nan),
        ("resync_interval", math.inf),
        ("retry_max", 1e308),
        ("fs_options", "-E 'x"),
        ("max_removals", 0),
        ("grpc_socket", "/tmp/" + "s" * 120),
        ("resync_interval", {"x": 1}),  # a [table] where a value belongs
    ],
)
def test_a_reload_with_a_bad_value_keeps_the_old_settings(
    fake_world: World, tmp_path: Path, key: str, value: object
) -> None:
    """SIGHUP with a broken config logs config.reload_failed naming the key and goes on with
    the settings it had."""
    config = tmp_path / "config.toml"
    _write_config(fake_world, config)
    assert fake_world.store is not None
    fake_world.store.close()
    daemon = Daemon(load_settings(config), fake_world.host, config_path=config,
                    clock=fake_world.clock, wakeups=Wakeups(settle=0.01))
    try:
        daemon.start()
        before = daemon.settings
        _write_config(fake_world, config, **{key: value})
        daemon.wakeups.reload()
        with capture_logs() as events:
            assert daemon.step(timeout=0)
        failed = [e for e in events if e["event"] == "config.reload_failed"]
        assert [e["key"] for e in failed] == [key]
        assert daemon.settings is before
        fake_world.spec("web", 'filesystem = "none"\n')
        fake_world.clock.now += before.resync_interval + 1
        assert daemon.step(timeout=0)
        assert state(fake_world, "web") == "Activated"
    finally:
        daemon.close()


def test_a_reload_with_a_fifo_at_the_config_path_keeps_the_loop_going(
    fake_world: World, tmp_path: Path
) -> None:
    """SIGHUP with a FIFO put at the config's path: config.reload_failed (not a regular
    file) at once, the old settings kept, and the loop goes on making devices."""
    config = tmp_path / "config.toml"
    _write_config(fake_world, config)
    assert fake_world.store is not None
    fake_world.store.close()
    daemon = Daemon(load_settings(config), fake_world.host, config_path=config,
                    clock=fake_world.clock, wakeups=Wakeups(settle=0.01))
    try:
        daemon.start()
        before = daemon.settings
        config.unlink()
        with fifo_at(config):
            daemon.wakeups.reload()
            with capture_logs() as events:
                assert daemon.step(timeout=0)
            failed = [e["error"] for e in events if e["event"] == "config.reload_failed"]
            assert len(failed) == 1 and "FIFO" in failed[0] and str(config) in failed[0]
            assert daemon.settings is before
            fake_world.spec("web", 'filesystem = "none"\n')
            _step_until(daemon, lambda: state(fake_world, "web") == "Activated")
    finally:
        daemon.close()


def test_a_reload_to_a_missing_spec_dir_does_not_make_it(fake_world: World,
                                                          tmp_path: Path) -> None:
    """A typo in spec_dir reloaded by SIGHUP is not created by the watcher; once the operator
    makes the directory, a full pass starts watching it."""
    config = tmp_path / "config.toml"
    _write_config(fake_world, config, spec_dir=fake_world.settings.specs_path)
    assert fake_world.store is not None
    fake_world.store.close()
    daemon = Daemon(load_settings(config), fake_world.host, config_path=config,
                    clock=fake_world.clock, wakeups=Wakeups(settle=0.01))
    typo = tmp_path / "spces"
    try:
        daemon.start()
        _write_config(fake_world, config, spec_dir=typo)
        daemon.wakeups.reload()
        assert daemon.step(timeout=0)
        assert daemon.settings.specs_path == typo
        assert not typo.exists()
        typo.mkdir()
        daemon.wakeups.resync()
        assert daemon.step(timeout=0)
        (typo / "web.toml").write_text('filesystem = "none"\n')
        _step_until(daemon, lambda: state(fake_world, "web") == "Activated")
    finally:
        daemon.close()


def test_pin_mmap_threshold_sets_glibcs_threshold_to_its_default() -> None:
    """One mallopt(M_MMAP_THRESHOLD, 128 KiB), and its answer is what pinning says."""
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    assert service.pin_mmap_threshold(mallopt)
    assert calls == [(-3, 128 * 1024)]
    assert not service.pin_mmap_threshold(lambda param, value: 0)


def test_the_daemon_pins_the_mmap_threshold_before_its_first_pass(
        fake_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned once per start, before the first pass allocates the listings' texts."""
    passes_then: list[int] = []
    assert fake_world.store is not None
    fake_world.store.close()
    running = Daemon(fake_world.settings, fake_world.host, clock=fake_world.clock,
                     wakeups=Wakeups(settle=0.02))

    def pin() -> bool:
        passes_then.append(running.passes)
        return True

    monkeypatch.setattr(service, "pin_mmap_threshold", pin)
    try:
        running.start()
        assert passes_then == [0] and running.passes == 1
    finally:
        running.close()


def test_a_daemon_without_metrics_address_never_loads_prometheus_client(
        tmp_path: Path) -> None:
    """prometheus_client (and the HTTP server it brings: 10 MB of a daemon) is loaded only
    to serve metrics_address: a daemon started and closed without it, and the CLI's catch of
    MetricsUnavailable, leave it unloaded."""
    code = (
        "import sys\n"
        "from reconciler.config import settings_from_mapping\n"
        "from reconciler.daemon.health import MetricsUnavailable\n"
        "from reconciler.daemon.service import Daemon\n"
        "from reconciler.testing.fakekernel import FakeKernel\n"
        f"settings = settings_from_mapping({{'root_path': {str(tmp_path / 'state')!r}}})\n"
        "daemon = Daemon(settings, FakeKernel())\n"
        "daemon.start()\n"
        "assert daemon.passes == 1 and daemon.metrics is None\n"
        "daemon.close()\n"
        "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("broken", "collections"), [(False, 0), (True, 1)])
def test_the_first_pass_runs_with_the_cyclic_collector_paused(
        fake_world: World, monkeypatch: pytest.MonkeyPatch, broken: bool,
        collections: int) -> None:
    """The first pass builds what lives as long as the daemon: no collection walks it while
    it is built; the heap is frozen after it, collected first only when that pass did not
    end clean (its failures' cycles); every later pass runs with the collector on."""
    fake_world.spec("a", 'filesystem = "none"\n')
    if broken:
        fake_world.spec("b", "size = \n")
    assert fake_world.store is not None
    fake_world.store.close()
    calls: list[str] = []

    def collect(*_: int) -> int:
        calls.append("collect")
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    running = Daemon(fake_world.settings, fake_world.host, clock=fake_world.clock,
                     wakeups=Wakeups(settle=0.02))
    enabled: list[bool] = []
    run_pass = running.reconciler.run_pass

    def noting(only: Any = None) -> Any:
        enabled.append(gc.isenabled())
        return run_pass(only)

    monkeypatch.setattr(running.reconciler, "run_pass", noting)
    try:
        running.start()
        assert running.passes == 1 and gc.isenabled()
        assert calls == ["collect"] * collections + ["freeze"]
        running._full_pass()
        assert enabled == [False, True] and gc.isenabled()
        assert calls == ["collect"] * collections + ["freeze"]
    finally:
        running.close()
