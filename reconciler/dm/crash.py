"""Crash points for tests: die right before or after the Nth kernel call of a kind.

`RECONCILER_CRASH_AT="after:dmsetup message:2"` (read once at start-up) makes the process
SIGKILL itself right after its second `dmsetup message`; "before:..." dies before sending it.
A kind is the program and, for dmsetup, its subcommand ("dmsetup create", "mkfs.ext4").
Nothing is flushed or cleaned up: exactly what a power cut or `kill -9` leaves behind.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reconciler.dm.host import Completed, Host
from reconciler.dm.udev import UdevFacts, udev_facts_of

CRASH_ENV = "RECONCILER_CRASH_AT"


@dataclass(frozen=True)
class CrashPoint:
    """Where to die: `when` ("before"/"after") the `count`th call of `kind`."""

    when: str
    kind: str
    count: int

    @classmethod
    def parse(cls, text: str) -> CrashPoint:
        """Read "before|after:KIND:N"; raises ValueError naming what is wrong."""
        parts = text.split(":")
        if len(parts) != 3 or parts[0] not in ("before", "after") or not parts[2].isdigit() \
                or int(parts[2]) < 1:
            raise ValueError(f"{CRASH_ENV}={text!r}: expected before|after:KIND:N, N >= 1")
        return cls(parts[0], parts[1], int(parts[2]))


def call_kind(argv: Sequence[str]) -> str:
    """The kind of a call: "dmsetup message", "losetup", "mkfs.ext4"..."""
    if argv and argv[0] == "dmsetup" and len(argv) > 1:
        return f"dmsetup {argv[1]}"
    return argv[0] if argv else ""


def sigkill_self() -> None:
    """Die now, as `kill -9` would."""
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingHost:
    """A Host that dies at its crash point and otherwise passes every call through."""

    def __init__(self, inner: Host, point: CrashPoint,
                 crash: Callable[[], None] = sigkill_self) -> None:
        self.inner = inner
        self.point = point
        self.crash = crash
        self.seen = 0
        self.dead = False

    def _die(self) -> None:
        # A crash that returns (a test's simulated one) leaves a dead process: nothing after
        # it, not even a `finally` block's cleanup, reaches the kernel.
        self.dead = True
        self.crash()

    def run(self, argv: Sequence[str]) -> Completed:
        """Run argv, dying before or after it when it is the chosen call."""
        if self.dead:
            self._die()
            raise RuntimeError("a crashed process made a kernel call")
        hit = False
        if call_kind(argv) == self.point.kind:
            self.seen += 1
            hit = self.seen == self.point.count
        if hit and self.point.when == "before":
            self._die()
        completed = self.inner.run(argv)
        if hit and self.point.when == "after":
            self._die()
        return completed

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Reads are not crash points."""
        return self.inner.read(path, offset, length)

    def udev_facts(self) -> UdevFacts:
        """The inner host's udev (asking about it is no kernel call)."""
        return udev_facts_of(self.inner)

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Writes are not crash points, but a dead process writes nothing."""
        if self.dead:
            self._die()
            raise RuntimeError("a crashed process wrote to a device")
        self.inner.write(path, offset, data)


def from_environment(host: Host) -> Host:
    """Wrap `host` when $RECONCILER_CRASH_AT is set."""
    text = os.environ.get(CRASH_ENV)
    if not text:
        return host
    return CrashingHost(host, CrashPoint.parse(text))
