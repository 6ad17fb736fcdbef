"""Rejected specs are logged when their rejection is new or changed, not on every pass."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from structlog.testing import capture_logs

from reconciler.testing.world import World


def _rejected(logs: list[MutableMapping[str, Any]]) -> list[tuple[object, object]]:
    return [(e["name"], e["error"]) for e in logs if e["event"] == "spec.rejected"]


def test_a_broken_spec_is_logged_once_over_two_passes(fake_world: World) -> None:
    """Two passes over the same broken spec log `spec.rejected` once; status keeps it."""
    fake_world.spec("broken", "size = 'huge'\n")
    reconciler = fake_world.reconciler()
    with capture_logs() as logs:
        first = reconciler.run_pass()
        second = reconciler.run_pass()
    assert [r.name for r in first.rejected] == [r.name for r in second.rejected] == ["broken"]
    assert [name for name, _ in _rejected(logs)] == ["broken"]
    assert [r["name"] for r in fake_world.report()["rejected_specs"]] == ["broken"]


def test_a_changed_rejection_is_logged_again(fake_world: World) -> None:
    """A rejection whose reason changes, or that comes back after a fix, is logged anew."""
    fake_world.spec("broken", "size = 'huge'\n")
    reconciler = fake_world.reconciler()
    with capture_logs() as logs:
        reconciler.run_pass()
        fake_world.spec("broken", "size = 12\nfilesystem = 'zfs'\n")
        reconciler.run_pass()
        fake_world.spec("broken", "size = 'huge'\n")
        reconciler.run_pass()
        reconciler.run_pass()
    errors = [error for _, error in _rejected(logs)]
    assert len(errors) == 3 and errors[0] == errors[2] != errors[1]
