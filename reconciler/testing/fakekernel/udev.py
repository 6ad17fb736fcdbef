"""The fake kernel's udev: whether udevd runs, whether it shares the daemon's IPC namespace,
and whether the daemon sees it in /proc (a shared PID namespace).

It answers what `dm.udev.UdevFacts` asks (the inputs of the daemon's decision to wait for
udev), and it decides what a real udev would do with the daemon's cookies: one in the same IPC
namespace confirms each at once; one elsewhere never finds them (libdevmapper's cookies are
SysV semaphores of the caller's IPC namespace), so the fake libdevmapper's cookie stays
unconfirmed until the daemon releases it, and a dmsetup left to synchronise with it waits
until the Host kills it. Off by default: the unit tier's kernel has no udev, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.dm.udev_sync import UdevNamespaces

# The dmsetup commands that synchronise with udev (a resume's or remove's uevent).
SYNCED_COMMANDS = frozenset({"create", "resume", "remove"})


@dataclass(eq=False)  # hashed by identity: one libdevmapper client per kernel (make_client)
class FakeUdev:
    """A udevd for the fake kernel, placed as a test says."""

    alive: bool = False  # udevd runs: its control socket accepts
    same_ipc: bool = True  # in the daemon's IPC namespace: it confirms the daemon's cookies
    visible: bool = True  # in the daemon's /proc: its namespace can be compared

    def running(self) -> bool:
        """Whether udevd runs."""
        return self.alive

    def namespaces(self) -> UdevNamespaces:
        """udevd's IPC namespace against the daemon's, as /proc would show it."""
        if not self.alive or not self.visible:
            return UdevNamespaces.UNKNOWN
        return UdevNamespaces.SAME if self.same_ipc else UdevNamespaces.OTHER

    def confirms(self) -> bool:
        """Whether udev confirms the daemon's cookies (at once, here)."""
        return self.alive and self.same_ipc

    def dmsetup_hangs(self, args: Sequence[str]) -> bool:
        """Whether `dmsetup ARGS` would wait for a cookie nobody confirms: a command that
        synchronises, not told `--noudevsync`, with a udevd that runs elsewhere (dmsetup
        waits for any udev whose control socket it finds)."""
        return (bool(args) and args[0] in SYNCED_COMMANDS and "--noudevsync" not in args
                and self.alive and not self.same_ipc)
