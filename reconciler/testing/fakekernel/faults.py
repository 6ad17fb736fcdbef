"""Fault injection for the fake kernel: make an operation fail on demand.

Two levels, because failures come from two places on a real machine:

- `fail(op, ...)`: the kernel refuses an ioctl with an errno. It is applied in the kernel
  model (`model.Kernel`), under both drivers: the fake dmsetup renders the errno in dmsetup's
  words for that ioctl and the fake libdevmapper returns it from `dm_task_get_errno`, so
  `DmClient` and `LibdmClient` each meet the failure on their own path.
- `fail_command(argv_prefix, rc, stderr)`: a program answers with this exit code and text.
  It is applied to `FakeKernel.run` only, before the command reaches the model, for what has
  no errno to speak of (a tool's own failure: mkfs, thin_check) and for replaying a capture's
  stderr word for word. A libdevmapper client never runs dmsetup, so it never sees these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from errno import EBUSY

from reconciler.dm.host import Completed


class Op(enum.Enum):
    """The ioctls a fault can target; the value is libdevmapper's name for it, the one dmsetup
    prints ("device-mapper: reload ioctl on ...")."""

    LIST = "names"
    CREATE = "create"
    LOAD = "reload"
    SUSPEND = "suspend"
    RESUME = "resume"
    REMOVE = "remove"
    MESSAGE = "message"
    INFO = "info"
    STATUS = "status"
    TABLE = "table"


@dataclass
class _Fault:
    """An errno for the next `times` calls of `op` (on `name`, with message `verb`, if given)."""

    op: Op
    name: str | None
    verb: str | None
    number: int
    times: int

    def matches(self, op: Op, name: str | None, words: tuple[str, ...]) -> bool:
        return (op is self.op and self.name in (None, name)
                and self.verb in (None, *words[:1]))


@dataclass
class _CommandFault:
    """This exit code and stderr for the next `times` commands starting with `prefix`."""

    prefix: tuple[str, ...]
    rc: int
    stderr: str
    times: int


class Faults:
    """The faults waiting to happen, each used up after its `times` calls."""

    def __init__(self) -> None:
        self._faults: list[_Fault] = []
        self._commands: list[_CommandFault] = []

    def fail(self, op: Op, name: str | None = None, errno: int = EBUSY, times: int = 1,
             verb: str | None = None) -> None:
        """Make the next `times` `op` ioctls (on device `name`; for MESSAGE, with the message
        `verb`, e.g. "create_thin") fail with `errno`, whichever driver sends them."""
        assert times >= 1, "a fault happens at least once"
        assert verb is None or op is Op.MESSAGE, "only messages have a verb"
        self._faults.append(_Fault(op, name, verb, errno, times))

    @property
    def pending(self) -> bool:
        """Whether a fault is still waiting to happen (the simulation tells an injected
        failure from a bug by it)."""
        return bool(self._faults or self._commands)

    def clear(self) -> None:
        """Forget every fault still waiting: the cause is gone."""
        self._faults.clear()
        self._commands.clear()

    def fail_command(self, argv_prefix: tuple[str, ...], rc: int, stderr: str,
                     times: int = 1) -> None:
        """Make the next `times` commands starting with `argv_prefix` exit `rc` with `stderr`."""
        self._commands.append(_CommandFault(argv_prefix, rc, stderr, times))

    def errno_for(self, op: Op, name: str | None, words: tuple[str, ...] = ()) -> int | None:
        """The errno this ioctl fails with, using one of its fault's times; None: no fault."""
        if not self._faults:  # the common case, once per device in a listing of thousands
            return None
        for index, fault in enumerate(self._faults):
            if fault.matches(op, name, words):
                self._use(self._faults, index, fault)
                return fault.number
        return None

    def command_failure(self, argv: tuple[str, ...]) -> Completed | None:
        """What this command answers instead of running, if a command fault matches it."""
        for index, fault in enumerate(self._commands):
            if argv[: len(fault.prefix)] == fault.prefix:
                self._use(self._commands, index, fault)
                return Completed(argv, fault.rc, "", fault.stderr)
        return None

    @staticmethod
    def _use(faults: list[_Fault] | list[_CommandFault], index: int,
             fault: _Fault | _CommandFault) -> None:
        fault.times -= 1
        if fault.times == 0:
            del faults[index]
