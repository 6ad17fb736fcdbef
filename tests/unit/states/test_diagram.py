"""The generated diagram and the one state vocabulary it documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.states import (
    IN_FLIGHT,
    LIVE,
    RESUMES,
    TRANSITIONS,
    DeviceState,
    Trigger,
    is_ready,
)
from reconciler.states.diagram import render
from reconciler.vocabulary import Filesystem

ROOT = Path(__file__).resolve().parents[3]
S = DeviceState


def test_state_diagram_is_current() -> None:
    """docs/state-diagram.md equals what the machine generates (run the diagram module)."""
    committed = (ROOT / "docs" / "state-diagram.md").read_text()
    assert committed == render(), "stale: run `python -m reconciler.states.diagram`"


def test_every_in_flight_state_has_the_step_that_finishes_it() -> None:
    """RESUMES covers exactly the in-flight states, Suspended (mid-reload) among them."""
    assert set(RESUMES) == IN_FLIGHT
    assert S.SUSPENDED in IN_FLIGHT


def test_in_flight_states_are_entered_by_a_begin_trigger() -> None:
    """Each in-flight state is the destination of a trigger that starts a kernel call."""
    entered = {DeviceState(t["dest"]) for t in TRANSITIONS if t["trigger"] != Trigger.FAIL}
    assert entered >= IN_FLIGHT
    assert not (LIVE & IN_FLIGHT)


def test_every_trigger_of_the_machine_is_in_the_vocabulary() -> None:
    """The machine uses exactly the Trigger enum's members."""
    assert {Trigger(t["trigger"]) for t in TRANSITIONS} == set(Trigger)


@pytest.mark.parametrize(("state", "formatted", "filesystem", "mapped", "suspended", "ready"), [
    (S.ACTIVATED, True, "ext4", True, False, True),
    (S.RESUMED, True, "xfs", True, False, True),
    (S.ACTIVATED, False, "ext4", True, False, False),  # mkfs has not run yet
    (S.ACTIVATED, False, "none", True, False, True),  # nothing to format
    (S.ACTIVATED, True, "ext4", False, False, False),  # not in the kernel
    (S.ACTIVATED, True, "ext4", True, True, False),  # suspended in the kernel
    (S.SUSPENDED, True, "ext4", True, True, False),
    (S.CREATED, True, "ext4", False, False, False),
    (S.DEACTIVATED, True, "ext4", False, False, False),
])
def test_ready_means_mapped_running_and_formatted(
    state: DeviceState, formatted: bool, filesystem: str, mapped: bool, suspended: bool,
    ready: bool,
) -> None:
    """is_ready: a live state, mapped and not suspended, with its filesystem made."""
    assert is_ready(state, formatted, Filesystem(filesystem), mapped, suspended) is ready
