"""Which specs are for this node: a fleet shares one spec directory, each spec's `nodes`
globs say where it applies. Pure: table-tested (tests/test_nodes.py).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path

from reconciler.specs.model import SPEC_SUFFIX, DeviceSpec, RejectedSpec


def is_for_node(patterns: tuple[str, ...] | None, node: str) -> bool:
    """Whether a spec with these `nodes` globs is for the node named `node` (no globs: every
    node). Case-sensitive, as node names are compared everywhere else."""
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(node, pattern) for pattern in patterns)


def select_for_node(specs: Mapping[str, DeviceSpec], node: str | None, directory: Path
                    ) -> tuple[dict[str, DeviceSpec], list[RejectedSpec], tuple[str, ...]]:
    """The specs for `node` (None: no selection, every spec), the snapshots for it whose
    parent's spec is not (rejected: what they would be taken from is not to exist here),
    and the names of the specs for other nodes, sorted. Pure: table-tested."""
    if node is None:
        return dict(specs), [], ()
    elsewhere = {n for n, spec in specs.items() if not is_for_node(spec.nodes, node)}
    if not elsewhere:
        return dict(specs), [], ()
    here: dict[str, DeviceSpec] = {}
    rejected: list[RejectedSpec] = []
    for name, spec in specs.items():
        if name in elsewhere:
            continue
        if spec.parent is not None and spec.parent in elsewhere:
            parent_nodes = ", ".join(specs[spec.parent].nodes or ())
            rejected.append(RejectedSpec(name, str(directory / f"{name}{SPEC_SUFFIX}"), (
                f"key 'parent': parent {spec.parent!r} is not for this node ({node!r}; "
                f"its nodes: {parent_nodes}): a snapshot needs its parent on its node")))
            continue
        here[name] = spec
    return here, rejected, tuple(sorted(elsewhere))
