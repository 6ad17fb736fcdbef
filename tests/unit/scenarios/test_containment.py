"""No input kills the daemon: an error nobody foresaw is kept to its device, its request or its
pass, logged with its traceback and shown in `status`."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from reconciler.daemon.service import Daemon
from reconciler.dm.errors import TimedOut, classify
from reconciler.dm.host import SystemHost
from reconciler.reconcile import maintenance, steps
from reconciler.states import Step
from reconciler.store import RequestKind
from reconciler.testing.world import World

NONE = 'filesystem = "none"\nsize = "4MiB"\n'


def test_a_poisoned_pass_keeps_the_daemon_up_and_is_shown(
    fake_world: World, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that raises (a bug) is logged with its traceback, counted, shown in status as
    last_pass_error, and retried with backoff; once it passes again the error clears."""
    def poisoned(ctx: object) -> None:
        raise RuntimeError("poisoned pass")

    monkeypatch.setattr(maintenance, "find_orphans", poisoned)
    fake_world.spec("a", NONE)
    with capture_logs() as logs:
        for _ in range(3):
            daemon.wakeups.resync()
            assert daemon.step(timeout=0)
    failures = [e for e in logs if e["event"] == "pass.failed"]
    assert len(failures) == 3 and failures[-1]["failures"] == 3
    assert all(e.get("exc_info") for e in failures), "logged with its traceback"
    pool: dict[str, Any] = fake_world.report()["pool"]
    assert pool["last_pass_error"] == "RuntimeError: poisoned pass"
    assert fake_world.report()["conditions"][0]["count"] == 3

    monkeypatch.undo()
    fake_world.clock.now += fake_world.settings.retry_max + 1
    assert daemon.step(timeout=0)
    assert fake_world.report()["pool"]["last_pass_error"] is None
    assert fake_world.store is not None
    record = fake_world.store.device("a")
    assert record is not None and record.state == "Activated"


def test_a_bug_in_one_device_step_leaves_the_others_alone(
    fake_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception in one device's step is that device's error (with the
    exception named); the other devices converge in the same pass."""
    real_make_fs = steps.STEPS[Step.MKFS]

    def broken_for_b(ctx: Any, record: Any, spec: Any) -> None:
        if record.name == "b":
            raise ZeroDivisionError("a bug in mkfs for b")
        real_make_fs(ctx, record, spec)

    monkeypatch.setitem(steps.STEPS, Step.MKFS, broken_for_b)
    for name in ("a", "b", "c"):
        fake_world.spec(name, 'size = "64MiB"\n')
    result = fake_world.reconciler().run_pass()
    assert sorted(result.converged) == ["a", "c"]
    assert "ZeroDivisionError: a bug in mkfs for b" in result.pending["b"]
    assert fake_world.store is not None
    b = fake_world.store.device("b")
    assert b is not None and b.error is not None and "a bug in mkfs for b" in b.error
    monkeypatch.undo()
    fake_world.clock.now += 3600
    assert fake_world.run_pass().ok


def test_a_failing_request_does_not_stop_the_pass(
    fake_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator request that raises is logged and dropped; the pass goes on."""
    def broken_gc(ctx: object) -> None:
        raise KeyError("gc bug")

    monkeypatch.setattr(maintenance, "gc_orphans", broken_gc)
    fake_world.spec("a", NONE)
    assert fake_world.store is not None
    fake_world.store.add_request(RequestKind.GC_ORPHANS, "*")
    with capture_logs() as logs:
        assert fake_world.run_pass().ok
    assert any(e["event"] == "request.failed" and "gc bug" in e["error"] for e in logs)


def test_thin_id_exhaustion_is_the_new_devices_error(fake_world: World) -> None:
    """When every thin id is taken the device waits with "no free thin id"; nothing raises."""
    assert fake_world.store is not None
    fake_world.store.max_id = 1
    for name in ("a", "b", "c"):
        fake_world.spec(name, NONE)
    result = fake_world.reconciler().run_pass()
    assert sorted(result.converged) == ["a", "b"]
    assert "no free thin id" in result.pending["c"]


def test_a_program_past_its_time_limit_is_a_temporary_step_error() -> None:
    """A tool that runs past the host's time limit is killed and reported as TimedOut, a
    temporary error of the step that ran it, never an exception out of the process."""
    completed = SystemHost(timeout=0.2).run(["sleep", "5"])
    assert completed.timed_out and completed.rc == 124
    error = classify("mkfs.ext4 /dev/mapper/x", completed)
    assert isinstance(error, TimedOut) and error.temporary
    assert "timed out after 0.2s" in str(error)
