"""The snapshotter's values and errors, in containerd's terms.

Errors are named after containerd's errdefs kinds, so the gRPC layer maps each to its status
code one to one and containerd's client reads them back as the same kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.store import BASE_KIND


class Kind(StrEnum):
    """What a snapshot is for: written to, read, or a fixed parent for others."""

    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"
    # Ours, never containerd's: a formatted, empty filesystem of the config's fs_type and
    # base_image_size, made once; each snapshot without a parent is a snapshot of it, so
    # Prepare runs no mkfs. The store leaves bases out of what containerd's calls read.
    BASE = BASE_KIND


@dataclass(frozen=True)
class Info:
    """What Stat and Walk report of one snapshot."""

    name: str
    kind: Kind
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Usage:
    """Space and inodes a snapshot uses beyond its parent."""

    size: int
    inodes: int


@dataclass(frozen=True)
class Mount:
    """One mount(2) call: a block device, its filesystem type and options."""

    type: str
    source: str
    options: tuple[str, ...] = ()


class SnapshotError(Exception):
    """A request the snapshotter refuses; the subclass says which kind of error."""


class NotFound(SnapshotError):
    """No snapshot (or parent) with that key."""


class AlreadyExists(SnapshotError):
    """A snapshot with that key or name exists."""


class FailedPrecondition(SnapshotError):
    """The snapshot is not in a state that allows the request (e.g. it has children)."""


class InvalidArgument(SnapshotError):
    """The request itself is malformed (empty key, a parent that is not committed, ...)."""


class Unavailable(SnapshotError):
    """The kernel could not do it now (a full pool, a busy device); the device's error and
    history are in `reconciler status`."""
