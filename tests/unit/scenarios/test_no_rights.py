"""Every command run by a user without rights to root_path (issue 23, finding 9): one line
naming the file and "run as root or with access to ...", exit 1, never a traceback.

The unit tier runs as root (here and in CI), so the commands run in a child process that
util-linux's setpriv starts as uid and gid 65534 (nobody), with no other groups and no
capabilities: the state, made by root as the daemon makes it (root_path 0700, the database
0600), is then really out of its reach."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.arguments import build_parser
from reconciler.cli import main
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel

NOBODY = 65534

# Each command of the parser, with its arguments; the ones that need no state say so.
NEEDS_STATE = [
    ["run"], ["run", "--once"], ["status"], ["status", "web"], ["status", "--json"],
    ["status", "--check"], ["status", "--watch", "1"], ["plan"], ["plan", "--json"],
    ["retry", "web"], ["gc", "--orphans"], ["gc", "--faulty"], ["confirm-removals"],
    ["adopt", "old", "--thin-id", "5"], ["resync"],
]
# containerd-config's config (given after the command, so it wins) is one with grpc_socket,
# which the shared one leaves unset.
NEEDS_NO_STATE = [["config", "check"], ["config", "default"], ["completion", "bash"],
                  ["containerd-config", "--containerd-version", "2.x", "-c", "socket.toml"]]


def _commands() -> set[str]:
    """The parser's command names."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_every_command_is_run_without_rights_here() -> None:
    """The lists below cover every command the parser has (a new one must join them)."""
    assert {argv[0] for argv in NEEDS_STATE + NEEDS_NO_STATE} == _commands()


@pytest.fixture(scope="module", params=[0o700, 0o755], ids=["root_path 0700", "0755"])
def shared(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A config anyone may read, for a root_path made by root that nobody may enter (0700)
    or whose files nobody may open (0755: the files are 0600). Not under pytest's tmp dir,
    which is root's alone (0700)."""
    if os.geteuid() != 0:
        pytest.fail("the unit tier runs as root: this test drops to uid 65534 itself")
    top = Path(tempfile.mkdtemp(prefix="reconciler-no-rights-", dir="/tmp"))
    top.chmod(0o755)
    config = write_config(top / "config.toml", root_path=top / "state", dm_driver="dmsetup")
    config.chmod(0o644)
    write_config(top / "socket.toml", root_path=top / "state", dm_driver="dmsetup",
                 grpc_socket=top / "state" / "snapshotter.sock").chmod(0o644)
    (top / "state" / "specs").mkdir(parents=True, mode=0o700)
    (top / "state" / "specs" / "web.toml").write_text('filesystem = "none"\n')
    assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 0
    (top / "state").chmod(request.param)
    try:
        yield top
    finally:
        shutil.rmtree(top)


def _as_nobody(shared: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_CONFIG"}
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    # The timeout only keeps a regression (a daemon that did start) from hanging the run.
    return subprocess.run(
        [*drop, sys.executable, "-m", "reconciler.cli", "-c", str(shared / "config.toml"),
         *argv],
        env=env, cwd=shared, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("argv", NEEDS_STATE, ids=" ".join)
def test_a_command_without_rights_says_so_in_one_line(shared: Path, argv: list[str]) -> None:
    """Run as nobody: exit 1, one line (besides JSON logs) naming a file under root_path
    and saying to run as root or with access to it; no traceback."""
    done = _as_nobody(shared, argv)
    said = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr
    assert len(said) == 1, done.stderr
    assert said[0].startswith("reconciler: ") and str(shared / "state") in said[0]
    assert "run as root or with access to" in said[0]


@pytest.mark.parametrize("argv", NEEDS_NO_STATE, ids=" ".join)
def test_a_command_that_needs_no_state_works_without_rights(shared: Path,
                                                            argv: list[str]) -> None:
    """config check, config default, containerd-config and completion read no state: they
    work as nobody."""
    done = _as_nobody(shared, argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout and "Traceback" not in done.stderr
