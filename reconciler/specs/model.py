"""The shapes of desired devices: a spec, a rejected spec, a directory's set of them.

The leaf of `reconciler.specs`: plain frozen data and the names' rules, no file access, so
the pure decision (`reconcile.decide`) may import it without reaching any I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem

# Matched whole (fullmatch): "$" alone would let a name end in a newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SPEC_SUFFIX = ".toml"
FILESYSTEMS: tuple[str, ...] = tuple(member.value for member in Filesystem)
# Devices of the snapshotter API are named from a sequence number (its base devices, the
# formatted filesystems root snapshots are taken from, from a count of their own); spec files
# may not take those names, or a file and a snapshot would drive the same device.
SNAPSHOT_NAME_RE = re.compile(r"snap-(?:base-)?[0-9]+")
# The symlink kubelet's AtomicWriter swaps to update a ConfigMap volume all at once.
CONFIGMAP_DATA = "..data"


class SpecError(ValueError):
    """One spec is invalid; the message says which key and why."""


# Slotted, the per-file classes here (not SpecSet: its cached_property needs a __dict__):
# a daemon keeps one spec and one ParsedSpec per file (50,000), and a __dict__ each was
# about 100 bytes more.
@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device as its spec file (or the store) asks for it, defaults and inheritance applied."""

    name: str
    size: Bytes
    filesystem: Filesystem
    parent: str | None = None
    active: bool = True
    readonly: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    digest: str = ""
    # The node-name globs this spec is for; None (no `nodes` key): every node.
    nodes: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ParsedSpec:
    """A spec file's own words, its parent not yet resolved: the spec with the config's
    defaults filled in, and whether the file gave its size and its filesystem itself (a
    snapshot takes those it leaves out from its parent). Lives between parsing and
    `specs.resolve`, which alone makes DeviceSpecs of them."""

    spec: DeviceSpec
    own_size: bool = True
    own_filesystem: bool = True


@dataclass(frozen=True, slots=True)
class KnownDevice:
    """A device the store holds as made: what a snapshot of it inherits, and what a made
    snapshot keeps whatever became of its parent."""

    size: Bytes
    filesystem: Filesystem


@dataclass(frozen=True, slots=True)
class RejectedSpec:
    """A spec file that could not be used, and why."""

    name: str
    path: str
    error: str


@dataclass(frozen=True)
class SpecSet:
    """All spec files of a directory: the usable ones by name, and the rejected ones."""

    specs: Mapping[str, DeviceSpec]
    rejected: tuple[RejectedSpec, ...]
    # Set when the directory could not be read completely (missing, not a directory,
    # unreadable): then absent files prove nothing and no device may be removed for them.
    source_error: str | None = None
    # The directory's filesystem (st_dev) as read; None when it could not be read.
    directory_device: int | None = None
    # Good specs whose `nodes` leave this node out: neither wanted nor rejected here.
    elsewhere: tuple[str, ...] = ()

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """Every name that has a spec file, usable or not: none of these is to be removed."""
        return frozenset(self.specs) | {r.name for r in self.rejected}


@dataclass(frozen=True)
class SpecFiles:
    """A spec directory as read, before parents are resolved: the parsed files for this
    node by name, the rejected ones, and the same source facts as a SpecSet's."""

    parsed: Mapping[str, ParsedSpec]
    rejected: tuple[RejectedSpec, ...]
    source_error: str | None = None
    directory_device: int | None = None
    elsewhere: tuple[str, ...] = ()


@dataclass(frozen=True)
class Defaults:
    """What a spec gets for the keys it leaves out (from the config)."""

    size: Bytes
    filesystem: Filesystem


def is_snapshot_device(name: str) -> bool:
    """Whether a device belongs to the snapshotter API (whose removals are explicit calls)."""
    return SNAPSHOT_NAME_RE.fullmatch(name) is not None


def is_base_device(name: str) -> bool:
    """Whether a device is one of the snapshotter's bases (`snapshot_name` of a negative seq):
    a filesystem made once and snapshotted for every root, never mounted itself."""
    return name.startswith("snap-base-") and is_snapshot_device(name)


def is_spec_file(path: Path) -> bool:
    """Spec files end in .toml; hidden files and editor leftovers are not specs."""
    return path.suffix == SPEC_SUFFIX and not path.name.startswith((".", "#"))


def snapshot_name(seq: int) -> str:
    """The device name of the snapshotter API's snapshot number `seq` (a base's is negative:
    bases count down, so containerd's snapshots keep their own numbers)."""
    return f"snap-base-{-seq}" if seq < 0 else f"snap-{seq}"
