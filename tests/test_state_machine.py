"""The device machine: the seed's 14 states and the allowed transitions."""

from __future__ import annotations

import pytest
from transitions import MachineError

from reconciler.states import DeviceMachine, DeviceState, StateChange, Trigger


def machine(initial: DeviceState = DeviceState.UNKNOWN, provisioned: bool = False
            ) -> tuple[DeviceMachine, list[StateChange]]:
    changes: list[StateChange] = []
    return DeviceMachine("dev", initial, lambda: provisioned, changes.append), changes


def test_the_machine_has_exactly_the_seed_states() -> None:
    """Unknown ... Removed and Faulty: 14 states, spelt as containerd spells them."""
    assert [s.value for s in DeviceState] == [
        "Unknown", "Creating", "Created", "Activating", "Activated", "Suspending", "Suspended",
        "Resuming", "Resumed", "Deactivating", "Deactivated", "Removing", "Removed", "Faulty",
    ]


def test_every_transition_is_reported_for_persistence() -> None:
    """Each trigger reports from, to and trigger to the store callback."""
    dev, changes = machine()
    for trigger in ("create", "created", "activate", "activated", "suspend", "suspended",
                    "resume", "resumed", "deactivate", "deactivated", "remove", "removed"):
        dev.fire(Trigger(trigger))
    assert [c.to_state.value for c in changes] == [
        "Creating", "Created", "Activating", "Activated", "Suspending", "Suspended",
        "Resuming", "Resumed", "Deactivating", "Deactivated", "Removing", "Removed",
    ]
    assert changes[0].from_state == DeviceState.UNKNOWN


def test_steps_out_of_order_are_refused() -> None:
    """An active device cannot be removed without deactivating it first."""
    dev, _ = machine(DeviceState.ACTIVATED)
    with pytest.raises(MachineError):
        dev.fire(Trigger.REMOVE)
    assert dev.current == DeviceState.ACTIVATED


def test_fail_records_the_error_and_the_step() -> None:
    """Any state can go Faulty, carrying the error text and the step that failed."""
    dev, changes = machine(DeviceState.ACTIVATING)
    dev.fire(Trigger.FAIL, error="boom", step="activate")
    assert dev.current == DeviceState.FAULTY
    assert (changes[-1].error, changes[-1].step) == ("boom", "activate")


@pytest.mark.parametrize(("provisioned", "expected"),
                         [(True, DeviceState.CREATED), (False, DeviceState.UNKNOWN)])
def test_retry_returns_to_where_the_pool_says_the_device_is(
    provisioned: bool, expected: DeviceState
) -> None:
    """A retried Faulty device resumes from Created when its id exists, else from Unknown."""
    dev, _ = machine(DeviceState.FAULTY, provisioned=provisioned)
    dev.fire(Trigger.RETRY)
    assert dev.current == expected

