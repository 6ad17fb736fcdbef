"""DeviceMachine.can and transition(): the begin/done bracket read off the machine's table."""

from __future__ import annotations

import pytest

from reconciler.states import DeviceMachine, DeviceState, StateChange, Trigger, transition

S = DeviceState
T = Trigger


def _machine(state: DeviceState) -> tuple[DeviceMachine, list[StateChange]]:
    changes: list[StateChange] = []
    return DeviceMachine("d", state, lambda: True, changes.append), changes


@pytest.mark.parametrize(
    ("state", "trigger", "allowed"),
    [
        (S.UNKNOWN, T.CREATE, True),
        (S.CREATING, T.CREATE, False),
        (S.CREATED, T.ACTIVATE, True),
        (S.DEACTIVATED, T.ACTIVATE, True),
        (S.ACTIVATING, T.ACTIVATE, False),
        (S.RESUMED, T.SUSPEND, True),
        (S.SUSPENDING, T.RESUME, True),
        (S.SUSPENDED, T.RESUME, True),
        (S.ACTIVATED, T.RESUME, False),
        (S.REMOVING, T.REMOVE, False),
        (S.FAULTY, T.REMOVE, True),
        (S.REMOVED, T.FAIL, True),
    ],
)
def test_can_follows_the_transition_table(state: DeviceState, trigger: Trigger,
                                          allowed: bool) -> None:
    """can() is true exactly where the table has the trigger leave the state."""
    machine, _ = _machine(state)
    assert machine.can(trigger) is allowed


def test_transition_fires_begin_then_done() -> None:
    """From a resting state the bracket writes the in-flight state, then the done state."""
    machine, changes = _machine(S.CREATED)
    with transition(machine, T.ACTIVATE, T.ACTIVATED):
        inside = machine.current
    assert (inside, machine.current) == (S.ACTIVATING, S.ACTIVATED)
    assert [(c.from_state, c.to_state) for c in changes] == [
        (S.CREATED, S.ACTIVATING), (S.ACTIVATING, S.ACTIVATED)]


def test_transition_already_in_flight_only_finishes() -> None:
    """A machine a crash left in flight is past `begin`: only `done` is fired."""
    machine, changes = _machine(S.DEACTIVATING)
    with transition(machine, T.DEACTIVATE, T.DEACTIVATED):
        pass
    assert machine.current == S.DEACTIVATED
    assert [c.trigger for c in changes] == [T.DEACTIVATED]


def test_transition_body_that_raises_leaves_the_in_flight_state() -> None:
    """A failed kernel effect leaves the step in flight for the next attempt."""
    machine, changes = _machine(S.ACTIVATED)
    bracket = transition(machine, T.SUSPEND, T.SUSPENDED)
    with pytest.raises(OSError, match="suspend failed"), bracket:
        raise OSError("suspend failed")
    assert machine.current == S.SUSPENDING
    assert [c.trigger for c in changes] == [T.SUSPEND]
