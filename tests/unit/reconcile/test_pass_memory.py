"""The shape of a pass's peak memory, counted, not measured: what a pass holds at once.

A pass that sees every device reads the kernel's listings before the spec files, so the
listings' transport (their bytes and text at once: 15 MB at 50,000 devices) is gone before
the spec set is made beside the last one; a pass over a few names still reads the specs
first (they decide which devices it observes). A sweep's per-device objects are slotted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from reconciler.reconcile import drive
from reconciler.reconcile import reconciler as engine_module
from reconciler.reconcile.desired import load_specs
from reconciler.reconcile.observe import observe, observe_names
from reconciler.reconcile.reconciler import TARGETED_MAX
from reconciler.testing.stage import Stage

RAW = 'filesystem = "none"\nsize = "1MiB"\n'


@pytest.fixture
def order(stage: Stage, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each pass did first: "observe" (every device), "names" (a few), "specs"."""
    events: list[str] = []

    def noting(event: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def noted(*args: Any, **kwargs: Any) -> Any:
            events.append(event)
            return real(*args, **kwargs)
        return noted

    monkeypatch.setattr(engine_module, "observe", noting("observe", observe))
    monkeypatch.setattr(engine_module, "observe_names",
                        noting("names", observe_names))
    monkeypatch.setattr(engine_module, "load_specs",
                        noting("specs", load_specs))
    return events


def _passes(stage: Stage, order: list[str], only: list[str] | None) -> list[str]:
    order.clear()
    assert stage.engine.run_pass(only).ok
    # The first two events are the pass's own view; requests may read specs again later.
    return order[:2]


def test_a_full_pass_reads_the_kernel_before_the_spec_files(stage: Stage,
                                                           order: list[str]) -> None:
    stage.world.spec("a", RAW)
    assert _passes(stage, order, None) == ["observe", "specs"]
    # A pass after a change too: a spec file edited, the next resync.
    stage.world.spec("a", 'filesystem = "none"\nsize = "2MiB"\n')
    assert _passes(stage, order, None) == ["observe", "specs"]


def test_a_burst_of_names_reads_the_kernel_before_the_spec_files(stage: Stage,
                                                                 order: list[str]) -> None:
    """More names than a targeted pass observes one by one: the whole listing, first."""
    assert stage.engine.run_pass().ok
    names = [f"b{i}" for i in range(TARGETED_MAX + 1)]
    for name in names:
        stage.world.spec(name, RAW)
    assert _passes(stage, order, names) == ["observe", "specs"]
    assert set(names) <= set(stage.engine.records)


def test_a_few_names_read_the_specs_first_and_observe_only_them(stage: Stage,
                                                              order: list[str]) -> None:
    """The specs name the parents a targeted pass also observes: they come first."""
    assert stage.engine.run_pass().ok
    stage.world.spec("c", RAW)
    assert _passes(stage, order, ["c"]) == ["specs", "names"]
    assert "c" in stage.engine.records


def test_a_sweeps_device_is_slotted() -> None:
    """One per device in a first pass's sweep (50,000 at once): no __dict__ each."""
    assert "__slots__" in vars(drive._Driven)
    assert "__dict__" not in vars(drive._Driven)
