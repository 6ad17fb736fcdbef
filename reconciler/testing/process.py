"""`DaemonProcess`: `reconciler run` started and stopped as a process of its own.

Test support (never imported by the product). The tests that need a daemon in another process
(CLI processes beside it, signals, sd_notify, a real kernel in the VM) all start it the same
way and stop it the same way, SIGTERM and a wait; this is that one way. Over the fake kernel
(`fake_kernel=True`) the process is `reconciler.testing.fake_daemon`, which is `reconciler run`
with a FakeKernel for its host; otherwise it is the real CLI, `python -m reconciler.cli`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

# Sets SIGINT's and SIGQUIT's dispositions and the core file limit, then becomes the command
# (exec keeps a disposition that is SIG_DFL or SIG_IGN, and the limit).
_EXEC_AS_FOREGROUND = """
import os, resource, signal, sys
ignored = {int(n) for n in sys.argv[1].split(",") if n}
for signum in (signal.SIGINT, signal.SIGQUIT):
    signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
os.execv(sys.argv[2], sys.argv[2:])
"""


def foreground(argv: Sequence[str], ignored: Collection[int] = ()) -> list[str]:
    """`argv` (its first word an absolute path) to run as a terminal's foreground job:
    SIGINT and SIGQUIT at their defaults (but those `ignored`), and no core file.

    A shell runs a background job (`pytest ... &`) with both ignored, which its children
    inherit and Python keeps: a test that sends them (Ctrl-C, Ctrl-\\) would wait in vain.
    Done by a small program that execs `argv`, not by Popen's `preexec_fn`, which makes it
    fork instead of vfork: the child would run the at-fork handlers of every library this
    process has loaded (gRPC's write to the child's stderr, and may do worse)."""
    numbers = ",".join(str(int(signum)) for signum in ignored)
    return [sys.executable, "-S", "-c", _EXEC_AS_FOREGROUND, numbers, *argv]


class DaemonProcess:
    """One `reconciler -c CONFIG run`; a context manager that starts it and stops it."""

    def __init__(self, config: Path, *, fake_kernel: bool, log: Path | None = None,
                 wrapper: Sequence[str] = (), cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, pythonpath: Path | None = None,
                 **popen: Any) -> None:
        """`log`: stdout and stderr appended to this file; `wrapper`: argv run in front of
        Python (`unshare ...`); `pythonpath`: put first on the child's PYTHONPATH (a source
        tree); further keywords go to `subprocess.Popen` as they are."""
        self.config = config
        self.fake_kernel = fake_kernel
        self.log = log
        self.wrapper = tuple(wrapper)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        if pythonpath is not None:
            self.env = {**(self.env if self.env is not None else os.environ),
                        "PYTHONPATH": str(pythonpath)}
        self.popen = popen
        self._process: subprocess.Popen[Any] | None = None

    @property
    def argv(self) -> list[str]:
        module = "reconciler.testing.fake_daemon" if self.fake_kernel else "reconciler.cli"
        tail = [str(self.config)] if self.fake_kernel else ["-c", str(self.config), "run"]
        return [*self.wrapper, sys.executable, "-m", module, *tail]

    @property
    def process(self) -> subprocess.Popen[Any]:
        """The running (or exited) process; starting it first is the caller's part."""
        if self._process is None:
            raise RuntimeError("the daemon process was never started")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> DaemonProcess:
        """Start the process (its output appended to `log` when given) and return self."""
        popen = dict(self.popen)
        if self.log is None:
            self._process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, **popen)
            return self
        # The child writes through its own descriptor; this process needs none.
        with self.log.open("ab") as log:
            popen.setdefault("stdout", log)
            popen.setdefault("stderr", subprocess.STDOUT)
            self._process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, **popen)
        return self

    def poll(self) -> int | None:
        return self.process.poll()

    def signal(self, signum: int) -> None:
        """Send `signum` to the process (nothing once it has exited)."""
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit: its exit code."""
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (unless it has already exited) and wait: the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL and reap it, for a test that failed before it could stop it cleanly."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def log_text(self) -> str:
        """What the process wrote to its log so far ("" without a log)."""
        return self.log.read_text(errors="replace") if self.log is not None else ""

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._process is not None and self._process.poll() is None:
            self.stop()
