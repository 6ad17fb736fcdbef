"""Parents, resolved once: sizes and filesystems inherited, cycles and impossible children
refused, among the specs (the files' and the store's) and, for a parent without a spec, from
the devices the store holds as made (`known_parents`, passed in by reconcile).

Only here do parsed spec files (`ParsedSpec`, the file's own words) become DeviceSpecs: no
half-resolved spec leaves this module. `assemble` selects a scan's parsed files for this
node; `resolve_files` resolves them with the store's specs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from reconciler.specs.model import (
    SPEC_SUFFIX,
    DeviceSpec,
    KnownDevice,
    ParsedSpec,
    RejectedSpec,
    SpecError,
    SpecFiles,
    SpecSet,
)
from reconciler.specs.nodes import select_for_node
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem


def assemble(parsed: Iterable[ParsedSpec | RejectedSpec], directory: Path,
             device: int | None, node: str | None = None) -> SpecFiles:
    """A scan's parsed files for `node` (None: all), the rejected ones sorted by name, the
    directory's filesystem `device`. Parents are not resolved yet (`resolve_files`)."""
    files: dict[str, ParsedSpec] = {}
    rejected: list[RejectedSpec] = []
    for item in parsed:
        if isinstance(item, ParsedSpec):
            files[item.spec.name] = item
        else:
            rejected.append(item)
    # Selected before parents are resolved: a spec for other nodes is not there at all.
    here, not_here, elsewhere = select_for_node(
        {name: words.spec for name, words in files.items()}, node, directory)
    rejected.extend(not_here)
    rejected.sort(key=lambda r: r.name)
    return SpecFiles(parsed={name: files[name] for name in here}, rejected=tuple(rejected),
                     directory_device=device, elsewhere=elsewhere)


def resolve_files(files: SpecFiles, directory: Path,
                  stored: Mapping[str, DeviceSpec] | None = None,
                  known_parents: Mapping[str, KnownDevice] | None = None) -> SpecSet:
    """Every desired device: the directory's files and the store's specs (`stored`, which
    win a name both have), parents resolved once (see `resolve`), with the directory's
    source facts."""
    merged: dict[str, DeviceSpec | ParsedSpec] = {**files.parsed, **(stored or {})}
    resolved = resolve(merged, files.rejected, directory, known_parents)
    return replace(resolved, source_error=files.source_error,
                   directory_device=files.directory_device, elsewhere=files.elsewhere)


def _words(item: DeviceSpec | ParsedSpec) -> ParsedSpec:
    return item if isinstance(item, ParsedSpec) else ParsedSpec(item)


def _spec(item: DeviceSpec | ParsedSpec) -> DeviceSpec:
    # No ParsedSpec made to read a field: resolve runs over every spec of a pass.
    return item.spec if isinstance(item, ParsedSpec) else item


def resolve(specs: Mapping[str, DeviceSpec | ParsedSpec], rejected: Iterable[RejectedSpec],
            directory: Path, known_parents: Mapping[str, KnownDevice] | None = None) -> SpecSet:
    """Apply inheritance; reject cycles, bad inheritance and parents that exist nowhere.

    A parsed file inherits from its parent's spec; a child of a rejected spec is rejected
    too (what it would inherit is unknown). A parent without a spec is looked up in
    `known_parents` (the devices the store holds as made; a made child keeps its own): not
    there, the child is rejected. Without `known_parents` (no store to ask) such a child is
    kept as parsed. A DeviceSpec (the store's, complete) is not judged again against a
    parent that has a spec. Iterative: a chain of any length is walked without recursion.
    """
    bad = {r.name: r for r in rejected}
    good: dict[str, DeviceSpec] = {}

    def path_of(name: str) -> str:
        return str(directory / f"{name}{SPEC_SUFFIX}")

    for start in sorted(specs):
        if _spec(specs[start]).parent is None and start not in bad:
            # Most specs: nothing to inherit, nothing to walk.
            good[start] = _spec(specs[start])
            continue
        # Walk up to the first name already decided, a spec-less parent, or a cycle.
        chain: list[str] = []
        on_chain: set[str] = set()
        name: str | None = start
        while name is not None and name in specs and name not in good and name not in bad:
            if name in on_chain:
                break
            chain.append(name)
            on_chain.add(name)
            name = _spec(specs[name]).parent
        if name is not None and name in on_chain:
            # A cycle: every name from `name` round to itself, and those hanging below it.
            loop = chain[chain.index(name):]
            cycle = " -> ".join((*loop, name))
            for member in loop:
                bad[member] = RejectedSpec(member, path_of(member), _cycle_reason(
                    cycle, len(loop), _spec(specs[member]).parent))
            chain = chain[:chain.index(name)]
        # Settle the chain from the top down: each name's parent is decided before it.
        for member in reversed(chain):
            settled = _settle(specs[member], good, bad, known_parents)
            if isinstance(settled, DeviceSpec):
                good[member] = settled
            else:
                bad[member] = RejectedSpec(member, path_of(member), settled)
    ordered = tuple(sorted(bad.values(), key=lambda r: r.name))
    return SpecSet(specs=good, rejected=ordered)


# A cycle longer than this is named by its length and the member's parent, not shown whole:
# every member's reason would otherwise grow with the cycle.
_CYCLE_SHOWN = 200


def _cycle_reason(cycle: str, length: int, parent: str | None) -> str:
    """Why a member of a cycle is rejected: the cycle itself when short, else its length."""
    if len(cycle) <= _CYCLE_SHOWN:
        return f"key 'parent': cycle {cycle}"
    return f"key 'parent': parent {parent!r} is on a cycle of {length} specs"


def _settle(item: DeviceSpec | ParsedSpec, good: Mapping[str, DeviceSpec],
            bad: Mapping[str, RejectedSpec],
            known: Mapping[str, KnownDevice] | None) -> DeviceSpec | str:
    """One spec, its parent already settled: the resolved spec, or why it is rejected."""
    spec = _spec(item)
    parent = spec.parent
    complete = isinstance(item, DeviceSpec)
    if parent is None or (complete and parent in good):
        return spec
    words = _words(item)
    try:
        if parent in good:
            return inherit(words, good[parent].size, good[parent].filesystem)
        if parent in bad and not complete:
            # Its parent's name only: a chain's reasons would otherwise grow with its depth.
            return f"key 'parent': parent {parent!r} is invalid (see its own reason)"
        if known is None:
            return spec
        base = known.get(spec.name) or known.get(parent)
        if base is None:
            return (f"key 'parent': parent {parent!r} does not exist (no spec file and no "
                    "device)")
        return inherit(words, base.size, base.filesystem)
    except SpecError as exc:
        return str(exc)


def inherit(words: ParsedSpec, parent_size: int, parent_filesystem: Filesystem) -> DeviceSpec:
    """Fill a snapshot's size and filesystem from its parent, refusing what cannot work."""
    spec = words.spec
    size = spec.size if words.own_size else Bytes(parent_size)
    if words.own_filesystem and spec.filesystem != parent_filesystem:
        raise SpecError(
            f"key 'filesystem': a snapshot keeps its parent's filesystem "
            f"({parent_filesystem.value!r}), got {spec.filesystem.value!r}"
        )
    if size < parent_size:
        raise SpecError(
            f"key 'size': a snapshot cannot be smaller than its parent ({parent_size} bytes), "
            f"got {size}"
        )
    return replace(spec, size=size, filesystem=parent_filesystem)
