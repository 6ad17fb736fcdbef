"""How a fake program fails: its exit code, stderr and (rarely) stdout.

Shared by the fake dmsetup and the fake tools, which raise `Failed` wherever the real program
would exit non-zero; `FakeKernel.run` turns it into the `Completed` production reads.
"""

from __future__ import annotations


class Failed(Exception):
    """A command fails: this exit code, stderr and (rarely) stdout."""

    def __init__(self, stderr: str, rc: int = 1, stdout: str = "") -> None:
        super().__init__(stderr)
        self.stderr = stderr
        self.rc = rc
        self.stdout = stdout
