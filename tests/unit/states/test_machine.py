"""The device machine: the seed's 14 states and the allowed transitions."""

from __future__ import annotations

import pytest
from transitions import MachineError

from reconciler.states import DeviceMachine, DeviceState, SpareMachines, StateChange, Trigger


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



def test_a_spare_machine_becomes_another_device() -> None:
    """Machines outlive their pass as spares (transitions takes long to build one); a spare
    taken for another device has that device's name, state, condition and callback only."""
    spares = SpareMachines(keep=1)
    first: list[StateChange] = []
    dev = spares.take("a", DeviceState.ACTIVATED, lambda: True, first.append)
    dev.fire(Trigger.DEACTIVATE)
    spares.give_back([dev, DeviceMachine("b", DeviceState.UNKNOWN, lambda: False,
                                         first.append)])
    assert len(spares) == 1, "at most `keep` are kept"
    second: list[StateChange] = []
    reused = spares.take("c", DeviceState.UNKNOWN, lambda: False, second.append)
    assert reused is dev and len(spares) == 0
    assert reused.name == "c" and reused.current == DeviceState.UNKNOWN
    reused.fire(Trigger.CREATE)
    assert [(c.name, c.from_state, c.to_state) for c in second] == [
        ("c", DeviceState.UNKNOWN, DeviceState.CREATING)]
    assert len(first) == 1, "the old callback hears nothing more"
    with pytest.raises(MachineError):
        reused.fire(Trigger.ACTIVATE)  # from Creating: the rules are the machine's still
    spares.give_back([reused])
    again = spares.take("e", DeviceState.FAULTY, lambda: True, second.append)
    again.fire(Trigger.RETRY)  # its condition asks the new device's `provisioned`
    assert again is dev and again.current == DeviceState.CREATED
    fresh = spares.take("f", DeviceState.REMOVED, lambda: False, second.append)
    assert fresh is not dev and fresh.current == DeviceState.REMOVED
