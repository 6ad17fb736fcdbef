"""The kernel boundary: the one small interface through which every kernel-facing call goes.

`Host.run` executes an external tool (dmsetup, losetup, mkfs, thin_check, thin_ls) from an argv
list, never a shell string; `read`/`write` touch block devices directly. `SystemHost` is the real
machine. The test support's `reconciler.testing.fakekernel.FakeKernel` implements the same
interface in memory and answers with the tools' exact texts and exit codes, so every parser
runs in every unit test.

A host may also offer the libdevmapper its dmsetup stands for (`LibraryHost.dm_library`):
SystemHost the machine's, the fake kernel its own. `reconciler.dm.driver.make_client` uses it
to drive the kernel in-process instead of through dmsetup's argv.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from reconciler.dm.udev import SystemUdev, UdevFacts

if TYPE_CHECKING:
    from reconciler.dm.libdm_bindings import DmLibrary


# What a killed-for-time command exits with, as coreutils' timeout(1) says it.
TIMED_OUT_RC = 124
# After the kill, how long to wait for the process to go; a process in uninterruptible
# sleep (I/O queued on a pool that is out of space) cannot die sooner, and is left behind.
KILL_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Completed:
    """What an external command did: its argv, exit code and both outputs as text."""

    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    # Killed for running past the host's time limit (rc is then TIMED_OUT_RC).
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.rc == 0


class Host(Protocol):
    """Everything reconciler asks of the machine it manages."""

    def run(self, argv: Sequence[str]) -> Completed:
        """Run a command and wait for it."""
        ...

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Read bytes from a block device or file."""
        ...

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Write bytes to a block device or file and flush them to stable storage."""
        ...


class LibraryHost(Host, Protocol):
    """A Host that also offers the libdevmapper answering for the same kernel as its dmsetup."""

    def dm_library(self) -> DmLibrary:
        """The library; raises LibdmUnavailable (an OSError) when it cannot be loaded."""
        ...


class SystemHost:
    """The real machine: subprocesses and direct block I/O."""

    def __init__(self, timeout: float = 600.0) -> None:
        self.timeout = timeout

    def run(self, argv: Sequence[str]) -> Completed:
        """Run argv with a C locale, so error texts are the ones our parsers know."""
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        try:
            proc = subprocess.Popen(
                list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL, text=True, env=env,
            )
        except FileNotFoundError:
            return Completed(tuple(argv), 127, "", f"{argv[0]}: command not found\n")
        try:
            stdout, stderr = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            # Not subprocess.run: it waits for the killed child without a bound.
            proc.kill()
            try:
                stdout, stderr = proc.communicate(timeout=KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                stdout, stderr = "", ""
            message = f"{argv[0]}: timed out after {self.timeout:g}s and was killed\n"
            return Completed(tuple(argv), TIMED_OUT_RC, stdout, stderr + message,
                             timed_out=True)
        return Completed(tuple(argv), proc.returncode, stdout, stderr)

    def read(self, path: str, offset: int, length: int) -> bytes:
        """pread from path."""
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def write(self, path: str, offset: int, data: bytes) -> None:
        """pwrite to path and fsync it."""
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def udev_facts(self) -> UdevFacts:
        """The machine's udev (its control socket, its processes in /proc)."""
        return SystemUdev()

    def dm_library(self) -> DmLibrary:
        """The machine's libdevmapper, loaded once per process; raises LibdmUnavailable (an
        OSError) when it cannot be loaded."""
        # Imported here: libdm imports the errors, which import this module.
        from reconciler.dm import libdm

        return libdm.load_libdm()
