"""The 14-state device machine (containerd devmapper's states) as a `transitions` Machine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from transitions import EventData, Machine
from transitions.extensions import GraphMachine


class DeviceState(StrEnum):
    """Where a device is in its life; the values are what the store and `status` show."""

    UNKNOWN = "Unknown"
    CREATING = "Creating"
    CREATED = "Created"
    ACTIVATING = "Activating"
    ACTIVATED = "Activated"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    RESUMING = "Resuming"
    RESUMED = "Resumed"
    DEACTIVATING = "Deactivating"
    DEACTIVATED = "Deactivated"
    REMOVING = "Removing"
    REMOVED = "Removed"
    FAULTY = "Faulty"


S = DeviceState

# States in which a kernel call was in flight when they were written.
IN_FLIGHT = frozenset(
    {S.CREATING, S.ACTIVATING, S.SUSPENDING, S.RESUMING, S.DEACTIVATING, S.REMOVING}
)
# States in which the device is live in the kernel (a dm device with a table).
LIVE = frozenset({S.ACTIVATED, S.RESUMED, S.SUSPENDED})

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "create", "source": S.UNKNOWN, "dest": S.CREATING},
    {"trigger": "created", "source": S.CREATING, "dest": S.CREATED},
    {"trigger": "activate", "source": [S.CREATED, S.DEACTIVATED], "dest": S.ACTIVATING},
    {"trigger": "activated", "source": S.ACTIVATING, "dest": S.ACTIVATED},
    {"trigger": "suspend", "source": [S.ACTIVATED, S.RESUMED], "dest": S.SUSPENDING},
    {"trigger": "suspended", "source": S.SUSPENDING, "dest": S.SUSPENDED},
    {"trigger": "resume", "source": S.SUSPENDED, "dest": S.RESUMING},
    {"trigger": "resumed", "source": S.RESUMING, "dest": S.RESUMED},
    {"trigger": "deactivate", "source": [S.ACTIVATED, S.RESUMED], "dest": S.DEACTIVATING},
    {"trigger": "deactivated", "source": S.DEACTIVATING, "dest": S.DEACTIVATED},
    # The kernel no longer has the device (removed behind our back, or a reboot).
    {"trigger": "vanished", "source": [S.ACTIVATED, S.RESUMED, S.SUSPENDED], "dest": S.DEACTIVATED},
    {
        "trigger": "remove",
        "source": [S.UNKNOWN, S.CREATED, S.DEACTIVATED, S.FAULTY],
        "dest": S.REMOVING,
    },
    {"trigger": "removed", "source": S.REMOVING, "dest": S.REMOVED},
    # An operator hands us a thin id the pool has and the store did not know (an orphan).
    {"trigger": "adopt", "source": [S.UNKNOWN, S.REMOVED], "dest": S.CREATED},
    # A removed name whose spec comes back starts a new life under the same name.
    {"trigger": "recreate", "source": S.REMOVED, "dest": S.UNKNOWN},
    # Leaving Faulty: back to where the pool says the device is (provisioned or not).
    {"trigger": "retry", "source": S.FAULTY, "dest": S.CREATED, "conditions": "is_provisioned"},
    {"trigger": "retry", "source": S.FAULTY, "dest": S.UNKNOWN},
    {"trigger": "fail", "source": "*", "dest": S.FAULTY},
]
# transitions names Enum states by their member name; we want the values ("Unknown") on the
# machine, in the store and in the diagram, so it is given plain strings.
_STATES = [state.value for state in DeviceState]
_TRANSITIONS = [
    {
        key: (
            value.value
            if isinstance(value, DeviceState)
            else [v.value for v in value] if isinstance(value, list) else value
        )
        for key, value in transition.items()
    }
    for transition in TRANSITIONS
]


@dataclass(frozen=True)
class StateChange:
    """What the machine reports after each transition, for the store and the logs."""

    name: str
    from_state: DeviceState
    to_state: DeviceState
    trigger: str
    error: str | None
    step: str | None


class DeviceMachine:
    """One device's machine; `on_change` persists every transition before the trigger returns.

    The triggers (create, created, activate, ...) are attached by transitions at run time, so
    callers use `fire("create")`, which is typed and says which trigger was meant.
    """

    state: str

    def __init__(
        self,
        name: str,
        initial: DeviceState,
        provisioned: Callable[[], bool],
        on_change: Callable[[StateChange], None],
    ) -> None:
        self.name = name
        self._provisioned = provisioned
        self._on_change = on_change
        self._machine = Machine(
            model=self,
            states=_STATES,
            transitions=_TRANSITIONS,
            initial=initial.value,
            auto_transitions=False,
            send_event=True,
            after_state_change="_after_change",
        )

    @property
    def current(self) -> DeviceState:
        """The current state as a DeviceState."""
        return DeviceState(self.state)

    def is_provisioned(self, event: EventData) -> bool:
        """Condition: the device's thin id exists in the pool."""
        del event
        return self._provisioned()

    def fire(self, trigger: str, *, error: str | None = None, step: str | None = None) -> None:
        """Fire a trigger; raises transitions.MachineError when not allowed from here."""
        getattr(self, trigger)(error=error, step=step)

    def may(self, trigger: str) -> bool:
        """Whether `trigger` is allowed from the current state."""
        return bool(self._machine.get_triggers(self.state).count(trigger))

    def _after_change(self, event: EventData) -> None:
        assert event.transition is not None and event.transition.dest is not None
        self._on_change(
            StateChange(
                name=self.name,
                from_state=DeviceState(event.transition.source),
                to_state=DeviceState(event.transition.dest),
                trigger=event.event.name,
                error=event.kwargs.get("error"),
                step=event.kwargs.get("step"),
            )
        )


def build_graph_machine() -> Any:
    """A GraphMachine of the same states and transitions, for drawing the diagram."""

    class _Model:
        def is_provisioned(self) -> bool:
            return False

    model = _Model()
    GraphMachine(
        model=model,
        states=_STATES,
        transitions=_TRANSITIONS,
        initial=S.UNKNOWN.value,
        auto_transitions=False,
        graph_engine="mermaid",
        show_conditions=True,
    )
    return model
