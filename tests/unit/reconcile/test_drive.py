"""reconcile.drive: one device's step loop (retry or Faulty on failure, the spec-change test)
and a pass's sweeps, on the fake kernel; results read from the store and the kernel."""

from __future__ import annotations

import errno

import pytest

from reconciler.reconcile import steps
from reconciler.reconcile.drive import drive, drive_all, plan_line
from reconciler.reconcile.pass_context import PassContext, PassResult
from reconciler.specs import DeviceSpec
from reconciler.states import DeviceState, Step
from reconciler.store import DeviceRecord
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.faults import Op
from reconciler.testing.stage import POLICY, Stage
from reconciler.testing.world import World
from reconciler.vocabulary import PlanAction

S = DeviceState


def _drive(stage: Stage, name: str, spec: DeviceSpec | None) -> PassResult:
    result = PassResult()
    drive(stage.context(), name, spec, result)
    return result


def _fail_create_thin(stage: Stage, code: int, times: int = 1) -> None:
    stage.kernel.faults.fail(Op.MESSAGE, stage.world.pool, errno=code, times=times,
                             verb="create_thin")


def test_drive_takes_a_new_device_to_its_spec_in_one_call(stage: Stage) -> None:
    """A spec nobody made yet: created, activated and formatted in one drive."""
    spec = stage.spec("a", 'filesystem = "ext4"\n')
    result = _drive(stage, "a", spec)
    assert result.converged == ["a"] and result.ok
    row = stage.stored("a")
    assert row.state == S.ACTIVATED and row.formatted and row.error is None
    assert stage.kernel.filesystem(stage.kernel_name("a")) == "ext4"


def test_a_temporary_failure_waits_for_its_retry_then_converges(stage: Stage) -> None:
    """A busy pool: the row keeps the error, the attempt and when to retry; before then the
    device is not touched; at that time it converges and the error is cleared."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    _fail_create_thin(stage, errno.EBUSY)
    result = _drive(stage, "a", spec)
    row = stage.stored("a")
    assert "a" in result.pending
    assert row.attempts == 1 and row.retry_at == stage.world.clock() + POLICY.initial
    assert row.error is not None and row.error.startswith("create:")
    assert row.error.endswith("(attempt 1/3)")

    assert "a" in _drive(stage, "a", spec).pending
    assert stage.stored("a").state == S.CREATING, "not tried before its time"

    stage.world.clock.now += POLICY.initial
    assert _drive(stage, "a", spec).converged == ["a"]
    row = stage.stored("a")
    assert (row.state, row.attempts, row.retry_at, row.error) == (
        S.ACTIVATED, 0, None, None)
    assert stage.kernel_name("a") in stage.kernel.devices
    assert stage.store.intent("a") is None


def test_exhausted_retries_mark_device_faulty(stage: Stage) -> None:
    """The last of max_attempts temporary failures marks the device Faulty with the count."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    _fail_create_thin(stage, errno.EBUSY, times=POLICY.max_attempts)
    for _ in range(POLICY.max_attempts):
        result = _drive(stage, "a", spec)
        stage.world.clock.now += POLICY.maximum
    row = stage.stored("a")
    assert row.state == S.FAULTY and row.retry_at is None
    assert row.error is not None and "attempts exhausted after 3 attempts" in row.error
    assert result.faulty == {"a": row.error}


def test_a_faulty_device_is_left_alone_until_its_spec_changes(stage: Stage) -> None:
    """A permanent error: Faulty at once; driven again with the same spec nothing happens;
    a changed spec takes it out of Faulty and it converges."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    _fail_create_thin(stage, errno.EINVAL)
    assert "a" in _drive(stage, "a", spec).faulty
    row = stage.stored("a")
    assert row.state == S.FAULTY and row.error is not None
    assert "permanent after 1 attempt" in row.error

    again = _drive(stage, "a", spec)
    assert "a" in again.faulty and stage.stored("a").state == S.FAULTY
    assert stage.kernel_name("a") not in stage.kernel.devices

    changed = stage.spec("a", 'filesystem = "none"\nlabels = { team = "x" }\n')
    assert _drive(stage, "a", changed).converged == ["a"]
    row = stage.stored("a")
    assert row.state == S.ACTIVATED and row.labels == {"team": "x"}
    assert row.spec_digest == changed.digest


def test_plan_says_what_the_pass_does_to_a_faulty_device_whose_spec_changed(
        stage: Stage) -> None:
    """plan_line decides on the record as the drive would: a Faulty device whose spec changed
    is retried (it said "nothing: Faulty" while the pass retried), and with the spec as it
    was, nothing happens to it."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    _fail_create_thin(stage, errno.EINVAL)
    assert "a" in _drive(stage, "a", spec).faulty
    assert plan_line(stage.context(), "a", spec).summary.startswith("nothing: Faulty")

    changed = stage.spec("a", 'filesystem = "none"\nlabels = { team = "x" }\n')
    assert plan_line(stage.context(), "a", changed) == (PlanAction.RETRY, Step.RETRY.value)
    assert _drive(stage, "a", changed).converged == ["a"]
    assert stage.stored("a").state == S.ACTIVATED


def test_a_changed_spec_does_not_wait_for_a_scheduled_retry(stage: Stage) -> None:
    """A spec that changed while a retry was scheduled is driven at once."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    _fail_create_thin(stage, errno.EBUSY)
    assert "a" in _drive(stage, "a", spec).pending
    changed = stage.spec("a", 'filesystem = "none"\nsize = "32MiB"\n')
    assert _drive(stage, "a", changed).converged == ["a"]
    row = stage.stored("a")
    assert row.size_bytes == 32 << 20 and row.state == S.ACTIVATED


def test_an_unforeseen_error_stays_with_its_device(stage: Stage,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """drive_all: a step that raises something nobody foresaw leaves that device pending
    with the error in its row and the cache distrusted; the other device converges."""
    real_make_fs = steps.STEPS[Step.MKFS]

    def broken_for_a(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None) -> None:
        if record.name == "a":
            raise RuntimeError("a bug")
        real_make_fs(ctx, record, spec)

    monkeypatch.setitem(steps.STEPS, Step.MKFS, broken_for_a)
    order = [("a", stage.spec("a", 'filesystem = "ext4"\n')),
             ("b", stage.spec("b", 'filesystem = "ext4"\n'))]
    result = PassResult()
    distrusted: list[bool] = []
    ctx = stage.context()
    drive_all(ctx, order, result, lambda: distrusted.append(True))
    assert result.converged == ["b"]
    assert result.pending == {"a": "internal error: RuntimeError: a bug"}
    assert stage.stored("a").error == "internal error: RuntimeError: a bug"
    assert distrusted == [True]
    assert stage.kernel.filesystem(stage.kernel_name("b")) == "ext4"
    assert not ctx.machines, "every machine went back to the spares"


def test_a_device_not_made_yet_takes_its_new_parent_and_filesystem(fake_world: World) -> None:
    """A snapshot waiting for a Faulty parent whose spec drops the parent is made as the new
    spec says, not left waiting for the old parent forever. Found by the seeded simulation."""
    kernel = fake_world.host
    assert isinstance(kernel, FakeKernel)
    fake_world.spec("p", 'filesystem = "none"\nsize = "4MiB"\n')
    fake_world.spec("c", 'parent = "p"\n')
    kernel.faults.fail(Op.MESSAGE, errno=errno.EIO, verb="create_thin")
    reconciler = fake_world.reconciler()
    assert "c" in reconciler.run_pass().pending
    fake_world.spec("c", 'filesystem = "none"\nsize = "8MiB"\n')
    reconciler.run_pass()
    assert fake_world.store is not None
    made = fake_world.store.device("c")
    assert made is not None and made.state == S.ACTIVATED and made.parent is None
    assert f"{fake_world.pool}-c" in fake_world.kernel_names()
