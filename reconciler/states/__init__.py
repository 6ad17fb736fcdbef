"""Device state machines: the one place that imports `transitions`.

Each managed device has a machine whose state is persisted by the store before and after every
kernel call: reconcile fires the "begin" trigger (state Creating is written), makes the kernel
call, then fires the "done" trigger (state Created is written). A crash between the two leaves
the in-flight state on disk for recovery to resolve by looking at the kernel.
"""

from reconciler.states.machine import (
    IN_FLIGHT,
    TRANSITIONS,
    DeviceMachine,
    DeviceState,
    StateChange,
    build_graph_machine,
)

__all__ = [
    "IN_FLIGHT",
    "TRANSITIONS",
    "DeviceMachine",
    "DeviceState",
    "StateChange",
    "build_graph_machine",
]
