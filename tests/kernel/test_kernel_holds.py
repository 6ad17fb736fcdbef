"""A hold holds on a real kernel (issue 23): held removals survive a new spec file and a
restart, a reload with node_name mistyped removes nothing, and a spec file whose name is not
UTF-8 keeps no good spec from being made; the devices stay in the kernel throughout."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from reconciler.reconcile.holds import Selection
from reconciler.reconcile.maintenance import confirm_request
from reconciler.store import HoldCause, RequestKind
from reconciler.testing.world import World

pytestmark = pytest.mark.kernel
NONE = 'filesystem = "none"\nsize = "4MiB"\n'


def _kernel(world: World, *names: str) -> set[str]:
    return {f"{world.pool}-{n}" for n in names}


def test_held_removals_survive_a_new_spec_file_and_a_restart(real_world: World) -> None:
    """Every spec file of 5 devices deleted: held; a new spec file is made, the 5 stay in the
    kernel through two more passes (each a new Reconciler: a restart); a confirm of two
    removes exactly those two."""
    names = [f"d{i}" for i in range(5)]
    for name in names:
        real_world.spec(name, NONE)
    assert real_world.run_pass().ok
    for name in names:
        real_world.unspec(name)
    assert real_world.run_pass().held == names
    real_world.spec("fresh", NONE)
    for _ in range(2):
        result = real_world.run_pass()
        assert result.removed == [] and result.held == names
    assert real_world.kernel_names() == _kernel(real_world, *names, "fresh")
    assert real_world.store is not None
    real_world.store.add_request(RequestKind.CONFIRM_REMOVALS, confirm_request(
        names[:2], Selection.of(real_world.settings)))
    assert real_world.run_pass().removed == names[:2]
    assert real_world.kernel_names() == _kernel(real_world, *names[2:], "fresh")


def test_a_reload_with_a_mistyped_node_name_removes_nothing(real_world: World) -> None:
    """3 of 5 specs pinned to worker-1: a reload with node_name "wroker-1" holds the 3
    (config) and the kernel keeps all 5; the right name back ends the hold."""
    real_world.settings = replace(real_world.settings, node_name="worker-1")
    for i in range(5):
        real_world.spec(f"d{i}", NONE + ('nodes = ["worker-1"]\n' if i < 3 else ""))
    assert real_world.run_pass().ok
    engine = real_world.reconciler()
    engine.reconfigure(replace(real_world.settings, node_name="wroker-1"))
    result = engine.run_pass()
    assert result.removed == [] and result.held == ["d0", "d1", "d2"]
    assert real_world.store is not None
    held = real_world.store.held_removals()
    assert {h.cause for h in held.values()} == {HoldCause.CONFIG}
    assert real_world.kernel_names() == _kernel(real_world, *(f"d{i}" for i in range(5)))
    engine.reconfigure(real_world.settings)
    assert engine.run_pass().ok
    assert real_world.store.held_removals() == {}


def test_a_name_that_is_not_utf8_wedges_no_pass(real_world: World) -> None:
    """A spec file named b"\\xff.toml" beside a good one: the good one is made, the other is
    a rejected spec with its name escaped, pass after pass."""
    directory = os.fsencode(real_world.settings.specs_path)
    with open(directory + b"/\xff.toml", "w") as bad:
        bad.write(NONE)
    real_world.spec("good", NONE)
    for _ in range(2):
        result = real_world.run_pass()
        assert [r.name for r in result.rejected] == ["\\xff"]
    assert real_world.kernel_names() == _kernel(real_world, "good")
