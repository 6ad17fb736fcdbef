"""The devices seam: what the layers above reconcile (the snapshotter) may ask of devices.

The snapshotter keeps snapshots (keys, kinds, labels) as stored specs and needs devices only
as answers: has this device settled, and can it be used; how many have it open; what it uses;
where its node is. It asks those questions here and reads nothing else of the engine: not its
pool, its client, its host or its passes. Reconcile owns the seam (the `Devices` protocol and
its outcomes, in this module, which imports no other reconcile module) and provides it
(`reconcile.engine_devices.EngineDevices`, the Reconciler's `devices`); an import contract
keeps the snapshotter from importing any other reconcile module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reconciler.states import LIVE, RESTING_PROVISIONED, DeviceState, is_ready
from reconciler.vocabulary import Filesystem


@dataclass(frozen=True)
class Ready:
    """Every device asked for settled and can be used as its spec asks: mounted (an
    active one) or snapshotted (an inactive one)."""


@dataclass(frozen=True)
class Failed:
    """A device settled short of usable; `error` is its own error (None: it has none, e.g.
    it was never made), for the caller to word its answer."""

    error: str | None


@dataclass(frozen=True)
class RetryAt:
    """A device waits for a retry due at `at`; `current` is how it stands meanwhile, for a
    caller that will not wait that long."""

    at: float
    current: Ready | Failed


Verdict = Ready | Failed
"""How settled devices stand."""
Settle = Ready | Failed | RetryAt
"""What `Devices.settle` answers."""


def usable(state: DeviceState, active: bool, provisioned: bool, formatted: bool,
           filesystem: Filesystem, mapped: bool, suspended: bool) -> bool:
    """Whether a device can be used as its spec asks: an active one by `states.is_ready`, an
    inactive one (a base, a committed snapshot) as an origin: its thin id made, its
    filesystem made, and no step of its own in flight."""
    if active:
        return is_ready(state, formatted, filesystem, mapped=mapped, suspended=suspended)
    return (provisioned and (formatted or filesystem == Filesystem.NONE)
            and state in RESTING_PROVISIONED)


def needs_kernel_look(state: DeviceState, active: bool) -> bool:
    """Whether `usable` needs the kernel's word (mapped, suspended) for this device: only a
    live active device's can still change the answer."""
    return active and state in LIVE


class Devices(Protocol):
    """The questions the snapshotter asks of devices, by device name."""

    def settle(self, names: Sequence[str]) -> Settle:
        """Drive these devices now (a partial pass): RetryAt the earliest retry one of them
        waits for, else Ready if each is usable, else Failed with the first one's error."""
        ...

    def open_count(self, name: str) -> int:
        """How many openers the device's dm device has now (0: not mapped); raises DmError
        when the kernel cannot say (unknown is not zero)."""
        ...

    def exclusive_bytes(self, names: Sequence[str]) -> dict[str, int]:
        """Bytes only each of these devices maps in the pool now (what it wrote beyond its
        origin), by name, all from one read of the pool's metadata (one thin_ls, whatever
        the number of names); a device with no thin id made is left out."""
        ...

    def inodes(self, name: str) -> int | None:
        """Inodes the device's filesystem uses, read from its superblock in-process (no
        program runs); None when the device is not mapped or holds no filesystem we read."""
        ...

    def mount_source(self, name: str) -> str:
        """The device's node (its /dev/mapper path)."""
        ...
