"""A daemon over the fake kernel in a process of its own, for tests that run real CLI
processes beside it (`python -m reconciler.testing.fake_daemon CONFIG`; `DaemonProcess`
starts it).

There is no device-mapper on the unit tier's hosts, so the kernel is a FakeKernel living in
this process; everything else is what `reconciler run` does: the CLI's own entry point takes
the root lock (so that CLI calls know a daemon runs and send their requests to its control
socket, `<root_path>/control.sock`, which answers each after the pass that served it),
installs the signal handlers and serves until SIGTERM, exiting 0 (its socket removed).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from reconciler.cli import main as cli_main
from reconciler.testing.fakekernel import FakeKernel


def main(argv: Sequence[str]) -> int:
    """Run the daemon of the config at argv[0] over a fresh fake kernel until stopped."""
    if len(argv) != 1:
        print("usage: python -m reconciler.testing.fake_daemon CONFIG", file=sys.stderr)
        return 2
    return cli_main(["-c", argv[0], "run"], host=FakeKernel())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
