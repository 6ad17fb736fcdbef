"""The snapshotter's values and errors, in containerd's terms.

Errors are named after containerd's errdefs kinds, so the gRPC layer maps each to its status
code one to one and containerd's client reads them back as the same kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.vocabulary import Kind as Kind  # re-exported: the API speaks of it


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


class Unimplemented(SnapshotError):
    """A request containerd may send that a thin-pool snapshotter cannot carry out (a Commit
    onto another parent: its "rebase")."""


class Unavailable(SnapshotError):
    """The kernel could not do it now (a full pool, a busy device); the device's error and
    history are in `reconciler status`."""
