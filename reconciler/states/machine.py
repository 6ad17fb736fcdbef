"""The 14-state device machine (containerd devmapper's states) as a `transitions` Machine.

The words (states, triggers) and their groups live in `reconciler.vocabulary`; this module
only says which trigger moves which state where.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from transitions import EventData, Machine
from transitions.extensions import GraphMachine

from reconciler.vocabulary import DeviceState, Trigger

S = DeviceState
T = Trigger

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": T.CREATE, "source": S.UNKNOWN, "dest": S.CREATING},
    {"trigger": T.CREATED, "source": S.CREATING, "dest": S.CREATED},
    {"trigger": T.ACTIVATE, "source": [S.CREATED, S.DEACTIVATED], "dest": S.ACTIVATING},
    {"trigger": T.ACTIVATED, "source": S.ACTIVATING, "dest": S.ACTIVATED},
    {"trigger": T.SUSPEND, "source": [S.ACTIVATED, S.RESUMED], "dest": S.SUSPENDING},
    {"trigger": T.SUSPENDED, "source": S.SUSPENDING, "dest": S.SUSPENDED},
    # From Suspending too: a suspend that failed may or may not have suspended the device,
    # and a device is never left suspended.
    {"trigger": T.RESUME, "source": [S.SUSPENDING, S.SUSPENDED], "dest": S.RESUMING},
    {"trigger": T.RESUMED, "source": S.RESUMING, "dest": S.RESUMED},
    {"trigger": T.DEACTIVATE, "source": [S.ACTIVATED, S.RESUMED], "dest": S.DEACTIVATING},
    {"trigger": T.DEACTIVATED, "source": S.DEACTIVATING, "dest": S.DEACTIVATED},
    # The kernel no longer has the device (removed behind our back, or a reboot).
    {"trigger": T.VANISHED, "source": [S.ACTIVATED, S.RESUMED, S.SUSPENDED],
     "dest": S.DEACTIVATED},
    {
        "trigger": T.REMOVE,
        "source": [S.UNKNOWN, S.CREATED, S.DEACTIVATED, S.FAULTY],
        "dest": S.REMOVING,
    },
    {"trigger": T.REMOVED, "source": S.REMOVING, "dest": S.REMOVED},
    # An operator hands us a thin id the pool has and the store did not know (an orphan).
    {"trigger": T.ADOPT, "source": [S.UNKNOWN, S.REMOVED], "dest": S.CREATED},
    # A removed name whose spec comes back starts a new life under the same name.
    {"trigger": T.RECREATE, "source": S.REMOVED, "dest": S.UNKNOWN},
    # Leaving Faulty: back to where the pool says the device is (provisioned or not).
    {"trigger": T.RETRY, "source": S.FAULTY, "dest": S.CREATED, "conditions": "is_provisioned"},
    {"trigger": T.RETRY, "source": S.FAULTY, "dest": S.UNKNOWN},
    {"trigger": T.FAIL, "source": "*", "dest": S.FAULTY},
]
# transitions names Enum states by their member name; we want the values ("Unknown") on the
# machine, in the store and in the diagram, so it is given plain strings.
_STATES = [state.value for state in DeviceState]
_TRANSITIONS = [
    {
        key: (
            value.value
            if isinstance(value, StrEnum)
            else [v.value for v in value] if isinstance(value, list) else value
        )
        for key, value in transition.items()
    }
    for transition in TRANSITIONS
]




def _sources(trigger: Trigger) -> frozenset[DeviceState]:
    found: set[DeviceState] = set()
    for transition in TRANSITIONS:
        if transition["trigger"] != trigger:
            continue
        source = transition["source"]
        found |= set(DeviceState) if source == "*" else (
            set(source) if isinstance(source, list) else {source})
    return frozenset(found)


# The states each trigger may be fired from, read off the table above (conditions aside).
SOURCES: dict[Trigger, frozenset[DeviceState]] = {t: _sources(t) for t in Trigger}


@dataclass(frozen=True)
class StateChange:
    """What the machine reports after each transition, for the store and the logs."""

    name: str
    from_state: DeviceState
    to_state: DeviceState
    trigger: Trigger
    error: str | None
    step: str | None


class DeviceMachine:
    """One device's machine; `on_change` persists every transition before the trigger returns.

    The triggers (create, created, activate, ...) are attached by transitions at run time, so
    callers use `fire(Trigger.CREATE)`, which is typed and says which trigger was meant.
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

    def reuse(self, name: str, initial: DeviceState, provisioned: Callable[[], bool],
              on_change: Callable[[StateChange], None]) -> None:
        """Become another device's machine (or the same device's in a later pass): its name,
        state and callbacks replace these; the rules stay (they are every device's)."""
        self.name = name
        self._provisioned = provisioned
        self._on_change = on_change
        self._machine.set_state(initial.value, model=self)

    def forget(self) -> None:
        """Drop the callbacks (and what they hold: a pass's records) while kept as a spare."""
        self._provisioned = _never
        self._on_change = _nowhere

    @property
    def current(self) -> DeviceState:
        """The current state as a DeviceState."""
        return DeviceState(self.state)

    def can(self, trigger: Trigger) -> bool:
        """Whether the table lets `trigger` fire from the current state (conditions aside)."""
        return self.current in SOURCES[trigger]

    def is_provisioned(self, event: EventData) -> bool:
        """Condition: the device's thin id exists in the pool."""
        del event
        return self._provisioned()

    def fire(self, trigger: Trigger, *, error: str | None = None,
             step: str | None = None) -> None:
        """Fire a trigger; raises transitions.MachineError when not allowed from here."""
        getattr(self, trigger.value)(error=error, step=step)

    def _after_change(self, event: EventData) -> None:
        assert event.transition is not None and event.transition.dest is not None
        self._on_change(
            StateChange(
                name=self.name,
                from_state=DeviceState(event.transition.source),
                to_state=DeviceState(event.transition.dest),
                trigger=Trigger(event.event.name),
                error=event.kwargs.get("error"),
                step=event.kwargs.get("step"),
            )
        )


@contextmanager
def transition(machine: DeviceMachine, begin: Trigger, done: Trigger) -> Iterator[None]:
    """Bracket a kernel effect with its persisted transitions: fire `begin` (its in-flight
    state is written), run the body, fire `done`. A machine `begin` cannot fire from is
    taken to be already past it (a crash or a failed attempt left the step in flight): the
    body runs again, as every step is idempotent. A body that raises leaves the in-flight
    state for the next attempt; `done` is not fired."""
    if machine.can(begin):
        machine.fire(begin)
    yield
    machine.fire(done)


def _never() -> bool:
    return False


def _nowhere(change: StateChange) -> None:
    raise AssertionError(f"a spare machine fired: {change}")


class SpareMachines:
    """Machines kept from one pass for the next. transitions builds a machine's triggers and
    transitions anew each time (1 ms natively, 58 ms under the VM's emulation: most of a
    Prepare's own CPU), while the rules are the same for every device; a pass takes a spare
    and gives machines back, up to `keep` of them: a device's when its drive ends, and those
    recovery or maintenance took when the pass ends."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._spares: list[DeviceMachine] = []

    def __len__(self) -> int:
        return len(self._spares)

    def take(self, name: str, initial: DeviceState, provisioned: Callable[[], bool],
             on_change: Callable[[StateChange], None]) -> DeviceMachine:
        """A machine for device `name` in state `initial`: a spare if there is one."""
        if not self._spares:
            return DeviceMachine(name, initial, provisioned, on_change)
        machine = self._spares.pop()
        machine.reuse(name, initial, provisioned, on_change)
        return machine

    def give_back(self, machines: Iterable[DeviceMachine]) -> None:
        """Keep these (their pass is over) as spares, up to `keep`."""
        for machine in machines:
            if len(self._spares) >= self.keep:
                return
            machine.forget()
            self._spares.append(machine)


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
