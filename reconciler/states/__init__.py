"""Device state machines: the one place that imports `transitions`, and the one vocabulary.

Each managed device has a machine whose state is persisted by the store before and after every
kernel call: reconcile fires the "begin" trigger (state Creating is written), makes the kernel
call, then fires the "done" trigger (state Created is written). A crash between the two leaves
the in-flight state on disk for recovery to resolve by looking at the kernel.

`reconciler.vocabulary` (a base-layer module the store may import too) names the states,
triggers and steps and groups them (IN_FLIGHT, LIVE, which step resumes which in-flight
state, is_ready); this package re-exports them; `machine` says which trigger moves where.
"""

from reconciler.states.machine import (
    SOURCES,
    TRANSITIONS,
    DeviceMachine,
    SpareMachines,
    StateChange,
    build_graph_machine,
    transition,
)
from reconciler.vocabulary import (
    IN_FLIGHT,
    LIVE,
    RESTING_PROVISIONED,
    RESUMES,
    DeviceState,
    Step,
    Trigger,
    is_ready,
)

__all__ = [
    "IN_FLIGHT",
    "LIVE",
    "RESTING_PROVISIONED",
    "RESUMES",
    "SOURCES",
    "TRANSITIONS",
    "DeviceMachine",
    "DeviceState",
    "SpareMachines",
    "StateChange",
    "Step",
    "Trigger",
    "build_graph_machine",
    "is_ready",
    "transition",
]
