"""The crash switch: parsed strictly from the environment, firing at exactly its call."""

from __future__ import annotations

import pytest

from reconciler.dm.crash import CRASH_ENV, CrashingHost, CrashPoint, from_environment
from reconciler.testing.fakekernel import FakeKernel


def test_crash_points_are_read_strictly() -> None:
    """before|after:KIND:N with N >= 1, else a ValueError naming the variable."""
    assert CrashPoint.parse("after:dmsetup message:2") == CrashPoint("after",
                                                                     "dmsetup message", 2)
    for bad in ("later:dmsetup message:1", "after:dmsetup message", "after:x:0"):
        with pytest.raises(ValueError, match=CRASH_ENV):
            CrashPoint.parse(bad)


def test_the_switch_fires_before_or_after_the_nth_call_of_its_kind(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash comes at the 2nd `dmsetup ls` (after it ran), and nothing runs after it."""
    fired: list[int] = []
    kernel = FakeKernel()
    host = CrashingHost(kernel, CrashPoint("after", "dmsetup ls", 2),
                        crash=lambda: fired.append(len(kernel.calls)))
    host.run(["dmsetup", "ls"])
    host.run(["dmsetup", "status"])
    assert fired == []
    host.run(["dmsetup", "ls"])
    assert fired == [3]
    with pytest.raises(RuntimeError, match="crashed"):  # a dead process: nothing more runs
        host.run(["dmsetup", "ls"])
    assert fired == [3, 3]
    assert len(kernel.calls) == 3
    monkeypatch.setenv(CRASH_ENV, "before:mkfs.ext4:1")
    wrapped = from_environment(kernel)
    assert isinstance(wrapped, CrashingHost)
    assert wrapped.point == CrashPoint("before", "mkfs.ext4", 1)
    monkeypatch.delenv(CRASH_ENV)
    assert from_environment(kernel) is kernel
