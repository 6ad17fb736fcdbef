"""The decision's inputs built once (PassContext.inputs) and the one spec-change test
(decide.spec_changed, decide.takes_spec_now)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.reconcile.decide import Inputs, next_step, spec_changed, takes_spec_now
from reconciler.reconcile.drive import drive, record_for
from reconciler.reconcile.pass_context import PassResult
from reconciler.specs import DeviceSpec
from reconciler.states import DeviceState
from reconciler.store import DeviceRecord
from reconciler.testing.stage import Stage

S = DeviceState


def test_inputs_name_the_record_spec_kernel_device_parent_and_hold(stage: Stage) -> None:
    """A snapshot's inputs: its record and spec as given, its dm device as the pass sees it,
    its parent's record, and why new devices wait; next_step(*inputs) decides on them."""
    parent_spec = stage.spec("p", 'filesystem = "ext4"\n')
    assert "p" in _converged(stage, "p", parent_spec)
    child_spec = stage.spec("c", 'parent = "p"\n')
    assert "c" in _converged(stage, "c", child_spec)
    ctx = stage.context()
    ctx.hold_new = "pool data space below its reserve"
    record = ctx.records["c"]
    inputs = ctx.inputs(record, child_spec)
    assert inputs.record is record and inputs.spec is child_spec
    assert inputs.parent is ctx.records["p"]
    assert inputs.kernel is not None and inputs.kernel is ctx.kernel("c")
    assert inputs.kernel.info.name == stage.kernel_name("c")
    assert inputs.hold_new == "pool data space below its reserve"
    assert next_step(*inputs) is None


def test_inputs_of_an_unmapped_device_without_parent(stage: Stage) -> None:
    """A device nobody made: no dm device, no parent."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    ctx = stage.context()
    inputs = ctx.inputs(record_for(ctx, "a", spec), spec)
    assert (inputs.kernel, inputs.parent, inputs.hold_new) == (None, None, None)
    assert inputs == Inputs(ctx.records["a"], spec, None, None, None)


def _converged(stage: Stage, name: str, spec: DeviceSpec) -> list[str]:
    result = PassResult()
    drive(stage.context(), name, spec, result)
    return result.converged


@pytest.mark.parametrize(
    ("state", "digest", "changed", "takes_now"),
    [
        (S.ACTIVATED, "v1", False, False),
        (S.ACTIVATED, "v2", True, True),
        (S.CREATING, "v2", True, True),
        (S.REMOVED, "v2", True, True),
        # A Faulty device's changed spec is what makes next_step say RETRY; the retry step
        # takes the spec, not the drive loop.
        (S.FAULTY, "v2", True, False),
        (S.FAULTY, "v1", False, False),
    ],
)
def test_spec_change_table(stage: Stage, state: DeviceState, digest: str, changed: bool,
                           takes_now: bool) -> None:
    """spec_changed compares the digest the record last took; takes_spec_now is that, but
    never for a Faulty device."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    record = DeviceRecord("a", state=state, spec_digest="v1")
    now = replace(spec, digest=digest)
    assert spec_changed(record, now) is changed
    assert takes_spec_now(record, now) is takes_now
    assert not spec_changed(record, None), "no spec: nothing to compare"
