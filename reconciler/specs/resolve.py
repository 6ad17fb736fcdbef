"""Parents among the spec files: sizes and filesystems inherited, cycles and impossible
children refused. Whether a parent that has no spec still exists as a device is for
reconcile to decide (`reconcile.desired`), against the store.

Sits above parsing and node selection: `assemble` turns a scan's parsed files into the
directory's SpecSet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from reconciler.specs.model import (
    SPEC_SUFFIX,
    DeviceSpec,
    Filesystem,
    RejectedSpec,
    SpecError,
    SpecSet,
)
from reconciler.specs.nodes import select_for_node
from reconciler.units import Bytes


def assemble(parsed: Iterable[DeviceSpec | RejectedSpec], directory: Path,
              device: int | None, node: str | None = None) -> SpecSet:
    """The SpecSet of a scan's parsed files: those for `node` (None: all), parents resolved
    among them, the rejected ones sorted by name, the directory's filesystem `device`."""
    specs: dict[str, DeviceSpec] = {}
    rejected: list[RejectedSpec] = []
    for item in parsed:
        if isinstance(item, DeviceSpec):
            specs[item.name] = item
        else:
            rejected.append(item)
    # Selected before parents are resolved: a spec for other nodes is not there at all.
    here, not_here, elsewhere = select_for_node(specs, node, directory)
    rejected.extend(not_here)
    rejected.sort(key=lambda r: r.name)
    resolved = resolve(here, rejected, directory)
    return replace(resolved, directory_device=device, elsewhere=elsewhere)


def resolve(
    specs: Mapping[str, DeviceSpec], rejected: Iterable[RejectedSpec], directory: Path
) -> SpecSet:
    """Apply inheritance from parents that have specs; reject cycles and bad inheritance.

    A child of a rejected spec is rejected too: what it would inherit is unknown. Iterative:
    a chain of any length is walked without recursion.
    """
    bad = {r.name: r for r in rejected}
    good: dict[str, DeviceSpec] = {}

    def path_of(name: str) -> str:
        return str(directory / f"{name}{SPEC_SUFFIX}")

    for start in sorted(specs):
        # Walk up to the first name already decided, a spec-less parent, or a cycle.
        chain: list[str] = []
        on_chain: set[str] = set()
        name: str | None = start
        while name is not None and name in specs and name not in good and name not in bad:
            if name in on_chain:
                break
            chain.append(name)
            on_chain.add(name)
            name = specs[name].parent
        if name is not None and name in on_chain:
            # A cycle: every name from `name` round to itself, and those hanging below it.
            loop = chain[chain.index(name):]
            cycle = " -> ".join((*loop, name))
            for member in loop:
                bad[member] = RejectedSpec(member, path_of(member), f"key 'parent': cycle {cycle}")
            chain = chain[:chain.index(name)]
        # Settle the chain from the top down: each name's parent is decided before it.
        for member in reversed(chain):
            spec = specs[member]
            parent_name = spec.parent
            if parent_name is None or (parent_name not in specs and parent_name not in bad):
                good[member] = spec
            elif parent_name in bad:
                reason = bad[parent_name].error
                bad[member] = RejectedSpec(
                    member, path_of(member),
                    f"key 'parent': parent {parent_name!r} is invalid ({reason})")
            else:
                parent = good[parent_name]
                try:
                    good[member] = inherit(spec, parent.size, parent.filesystem)
                except SpecError as exc:
                    bad[member] = RejectedSpec(member, path_of(member), str(exc))
    ordered = tuple(sorted(bad.values(), key=lambda r: r.name))
    return SpecSet(specs=good, rejected=ordered)


def inherit(spec: DeviceSpec, parent_size: int, parent_filesystem: Filesystem) -> DeviceSpec:
    """Fill a snapshot's size and filesystem from its parent, refusing what cannot work."""
    size = spec.size if spec.size_given else Bytes(parent_size)
    if spec.filesystem_given and spec.filesystem != parent_filesystem:
        raise SpecError(
            f"key 'filesystem': a snapshot keeps its parent's filesystem "
            f"({parent_filesystem!r}), got {spec.filesystem!r}"
        )
    if size < parent_size:
        raise SpecError(
            f"key 'size': a snapshot cannot be smaller than its parent ({parent_size} bytes), "
            f"got {size}"
        )
    return replace(
        spec, size=size, filesystem=parent_filesystem, size_given=True, filesystem_given=True
    )
