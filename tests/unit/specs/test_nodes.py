"""Per-node specs: a spec's `nodes` globs select the nodes it is for, by the daemon's
`node_name`; a spec that is not for this node is not there (its device goes under the removal
guard, like a deleted file's), and a snapshot here of a parent that is not is rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.config import NODE_NAME_ENV, Settings, default_node_name, settings_from_mapping
from reconciler.specs import (
    Defaults,
    DeviceSpec,
    SpecError,
    is_for_node,
    parse_spec,
    select_for_node,
)
from reconciler.store import ConditionKind, RequestKind
from reconciler.testing.world import World
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem, PlanAction

DEFAULTS = Defaults(size=Bytes(4 << 20), filesystem=Filesystem.NONE)
NONE = 'filesystem = "none"\nsize = "4MiB"\n'


@pytest.mark.parametrize(
    ("patterns", "node", "expected"),
    [
        (None, "anything", True),
        (("worker-*",), "worker-1", True),
        (("worker-*",), "worker-", True),
        (("worker-*",), "gpu-3", False),
        (("worker-*", "gpu-3"), "gpu-3", True),
        (("gpu-3",), "gpu-30", False),
        (("gpu-?",), "gpu-3", True),
        (("gpu-?",), "gpu-30", False),
        (("gpu-[0-4]",), "gpu-3", True),
        (("gpu-[!0-4]",), "gpu-3", False),
        (("Worker-*",), "worker-1", False),  # case-sensitive, as node names are
        (("*",), "x", True),
        (("worker-*.eu",), "worker-1.us", False),
    ],
)
def test_node_selection(patterns: tuple[str, ...] | None, node: str, expected: bool) -> None:
    """A spec is for a node when any of its globs matches the node's whole name (fnmatchcase);
    a spec without `nodes` is for every node."""
    assert is_for_node(patterns, node) is expected


def _spec(name: str, parent: str | None = None, nodes: tuple[str, ...] | None = None
          ) -> DeviceSpec:
    return DeviceSpec(name=name, size=Bytes(4 << 20), filesystem=Filesystem.NONE, parent=parent,
                      nodes=nodes)


@pytest.mark.parametrize(
    ("specs", "node", "here", "rejected", "elsewhere"),
    [
        ([_spec("a"), _spec("b", nodes=("gpu-*",))], "worker-1", {"a"}, set(), ("b",)),
        ([_spec("a"), _spec("b", nodes=("gpu-*",))], "gpu-1", {"a", "b"}, set(), ()),
        ([_spec("a"), _spec("b", nodes=("gpu-*",))], None, {"a", "b"}, set(), ()),
        # A snapshot for this node of a parent that is not: rejected, named.
        ([_spec("base", nodes=("gpu-*",)), _spec("snap", parent="base")], "worker-1",
         set(), {"snap"}, ("base",)),
        # A snapshot for other nodes of a parent here: simply not here.
        ([_spec("base"), _spec("snap", parent="base", nodes=("gpu-*",))], "worker-1",
         {"base"}, set(), ("snap",)),
        # Both for other nodes: neither is here, nothing is rejected.
        ([_spec("base", nodes=("gpu-*",)), _spec("snap", parent="base", nodes=("gpu-*",))],
         "worker-1", set(), set(), ("base", "snap")),
        # A parent with no spec at all is reconcile's question, not selection's.
        ([_spec("snap", parent="elsewhere-made")], "worker-1", {"snap"}, set(), ()),
    ],
)
def test_selecting_the_specs_for_a_node(specs: list[DeviceSpec], node: str | None,
                                         here: set[str], rejected: set[str],
                                         elsewhere: tuple[str, ...]) -> None:
    """select_for_node: the specs for the node, the snapshots rejected for a parent that is
    not, and the names that are for other nodes."""
    found, refused, other = select_for_node({s.name: s for s in specs}, node, Path("/s"))
    assert set(found) == here
    assert {r.name for r in refused} == rejected
    assert all("not for this node" in r.error and r.path == f"/s/{r.name}.toml"
               for r in refused)
    assert other == elsewhere


def test_nodes_are_read_from_a_spec() -> None:
    """`nodes` reaches the spec as a tuple of globs; without it the spec is for every node."""
    assert parse_spec("a", 'nodes = ["worker-*", "gpu-3"]\n', DEFAULTS).nodes == (
        "worker-*", "gpu-3")
    assert parse_spec("a", "", DEFAULTS).nodes is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[]", "non-empty list"),
        ('"worker-*"', "non-empty list"),
        ('[""]', "not a non-empty string"),
        ("[1]", "not a non-empty string"),
        ('["a", ["b"]]', "not a non-empty string"),
        ("[" + ", ".join(['"n"'] * 65) + "]", "more than the 64"),
        ('["' + "n" * 254 + '"]', "longer than the 253"),
        ('["worker-\\u0000"]', "control character"),
    ],
)
def test_bad_nodes_are_a_rejected_spec(value: str, message: str) -> None:
    """`nodes` must be a non-empty list of non-empty, printable, bounded strings."""
    with pytest.raises(SpecError, match=message):
        parse_spec("a", f"nodes = {value}\n", DEFAULTS)


def test_node_name_defaults_to_node_name_env_then_the_host_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """node_name: the config key, else $NODE_NAME (a DaemonSet's spec.nodeName), else the
    host name; an empty $NODE_NAME counts as unset."""
    assert default_node_name({NODE_NAME_ENV: "worker-7"}, lambda: "host") == "worker-7"
    assert default_node_name({NODE_NAME_ENV: ""}, lambda: "host") == "host"
    assert default_node_name({}, lambda: "host") == "host"
    monkeypatch.setenv(NODE_NAME_ENV, "worker-9")
    assert Settings().node_name == "worker-9"
    assert settings_from_mapping({"node_name": "gpu-3"}).node_name == "gpu-3"
    monkeypatch.delenv(NODE_NAME_ENV)
    monkeypatch.setattr("socket.gethostname", lambda: "the-host")
    assert Settings().node_name == "the-host"


@pytest.fixture
def on_worker(fake_world: World) -> World:
    """The fake world on a node named worker-1."""
    fake_world.settings = settings_from_mapping({
        **{k: str(v) for k, v in (("root_path", fake_world.settings.root_path),
                                  ("pool_name", fake_world.pool))},
        "loopback_data_size": "256MiB", "loopback_metadata_size": "8MiB",
        "base_image_size": "64MiB", "dm_driver": fake_world.settings.dm_driver,
        "node_name": "worker-1",
    })
    return fake_world


def _devices(world: World) -> dict[str, str]:
    assert world.store is not None
    return {d.name: d.state for d in world.store.devices()}


def test_a_spec_for_other_nodes_makes_nothing_and_is_not_rejected(on_worker: World) -> None:
    """On worker-1 a spec for gpu-* makes no device and is no rejected spec."""
    on_worker.spec("mine", NONE + 'nodes = ["worker-*"]\n')
    on_worker.spec("theirs", NONE + 'nodes = ["gpu-*"]\n')
    result = on_worker.run_pass()
    assert result.ok and result.rejected == []
    assert _devices(on_worker) == {"mine": "Activated"}
    assert on_worker.kernel_names() == {f"{on_worker.pool}-mine"}


def test_a_spec_that_stops_being_for_this_node_removes_its_device(on_worker: World) -> None:
    """Editing a spec's `nodes` to leave this node out is its file's deletion here: on the
    file event's pass its device is removed (one of three: under the guard's limit)."""
    for name in ("a", "b", "c"):
        on_worker.spec(name, NONE)
    assert on_worker.run_pass().ok
    on_worker.spec("b", NONE + 'nodes = ["gpu-*"]\n')
    result = on_worker.reconciler().run_pass(only={"b"})
    assert result.removed == ["b"] and result.rejected == []
    assert _devices(on_worker) == {"a": "Activated", "c": "Activated"}
    assert on_worker.kernel_names() == {f"{on_worker.pool}-{n}" for n in "ac"}


def test_every_spec_leaving_this_node_is_held_by_the_removal_guard(on_worker: World) -> None:
    """Every spec-file device leaving the node at once (a wrong node_name or glob looks like
    that) is held like `rm *`, until an operator confirms."""
    for name in ("a", "b"):
        on_worker.spec(name, NONE)
    assert on_worker.run_pass().ok
    for name in ("a", "b"):
        on_worker.spec(name, NONE + 'nodes = ["gpu-*"]\n')
    result = on_worker.run_pass()
    assert result.removed == [] and result.held == ["a", "b"]
    assert _devices(on_worker) == {"a": "Activated", "b": "Activated"}
    assert on_worker.store is not None
    held = on_worker.store.condition(ConditionKind.REMOVALS_HELD)
    assert held is not None and set(held.names) == {"a", "b"}
    on_worker.store.add_request(RequestKind.CONFIRM_REMOVALS, json.dumps(["a", "b"]))
    assert on_worker.run_pass().removed == ["a", "b"]
    assert on_worker.kernel_names() == set()


def test_more_than_max_removals_leaving_this_node_are_held(on_worker: World) -> None:
    """max_removals counts specs leaving the node as it counts deleted files."""
    for i in range(10):
        on_worker.spec(f"d{i}", NONE)
    assert on_worker.run_pass().ok
    for i in range(9):
        on_worker.spec(f"d{i}", NONE + 'nodes = ["gpu-*"]\n')
    result = on_worker.run_pass()
    assert result.removed == [] and len(result.held) == 9
    assert len(_devices(on_worker)) == 10


def test_a_snapshot_here_of_a_parent_for_other_nodes_is_rejected(on_worker: World) -> None:
    """A snapshot for this node whose parent's spec is for other nodes is a rejected spec
    that says why; nothing is made."""
    on_worker.spec("base", NONE + 'nodes = ["gpu-*"]\n')
    on_worker.spec("snap", 'parent = "base"\n')
    result = on_worker.run_pass()
    assert [r.name for r in result.rejected] == ["snap"]
    assert "parent 'base' is not for this node ('worker-1'" in result.rejected[0].error
    assert _devices(on_worker) == {}


def test_plan_names_the_specs_for_other_nodes(on_worker: World) -> None:
    """plan says a spec for other nodes does nothing here, and why."""
    on_worker.spec("theirs", NONE + 'nodes = ["gpu-*"]\n')
    plan = dict(on_worker.reconciler().plan())
    assert plan == {"(pool)": (PlanAction.CREATE_POOL, "create pool rtpool")}
    assert on_worker.run_pass().ok
    plan = dict(on_worker.reconciler().plan())
    assert plan == {"theirs": (PlanAction.NONE,
                               "nothing: its spec is for other nodes than worker-1")}
    on_worker.spec("mine", NONE)
    assert on_worker.run_pass().ok
    on_worker.spec("mine", NONE + 'nodes = ["gpu-*"]\n')
    assert dict(on_worker.reconciler().plan())["mine"] == (
        PlanAction.REMOVE, "remove: deactivate, then delete its thin id")
