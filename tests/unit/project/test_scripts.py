"""The test scripts' own plumbing: a failing kernel tier must fail the run. scripts/test runs
the VM through scripts/logged (its output to a log file through a pipe); before it, the
pipeline's status was `cat`'s and a VM whose tests failed ended the run 0."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.unit.project.manifests import ROOT

LOGGED = ROOT / "scripts" / "logged"


@pytest.mark.parametrize("code", [0, 1, 3])
def test_logged_exits_with_the_commands_code_and_keeps_both_streams(
    tmp_path: Path, code: int
) -> None:
    log = tmp_path / "log"
    done = subprocess.run(
        [str(LOGGED), str(log), "sh", "-c", f"echo out; echo err >&2; exit {code}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == code
    assert log.read_text().split() == ["out", "err"]
    assert done.stdout == ""


def test_the_kernel_tier_in_the_vm_runs_through_logged() -> None:
    # The one place scripts/test starts the VM: through scripts/logged, whose exit code is
    # the VM's (tested above), never through a bare pipeline.
    text = (ROOT / "scripts" / "test").read_text()
    vm_lines = [
        line for line in text.splitlines() if "scripts/vm" in line and not line.startswith("#")
    ]
    assert vm_lines == ['setsid scripts/logged "$log" scripts/vm -- "${kernel_tier[@]}" &']
