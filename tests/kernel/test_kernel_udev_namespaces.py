"""The daemon and the guest's udev across namespaces (issue 25), on the real kernel.

libdevmapper's udev cookies are SysV semaphores of the caller's IPC namespace, and udev's rules
confirm them in udevd's. `run --once` of three filesystems, with udevd running, in the host's
namespaces (udev is used: no warning), under `unshare --ipc` (udevd seen in another IPC
namespace) and under `unshare --ipc --pid --fork --mount --mount-proc` (a pod without hostIPC
and hostPID: udevd unseen, a probe cookie it never confirms): converged, the nodes there, no
`libdm.udev_timeout`, and where udev cannot confirm, one warning naming hostIPC and the
udev_unreachable condition in `status`. Each run's wall time is printed (the issue's figures:
42 s in the host's namespaces, 168 s under `unshare --ipc` before). dmsetup too under
`unshare --ipc`: it is told `--noudevsync` rather than left waiting for the Host's timeout.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.dm.client import DmClient
from reconciler.dm.host import SystemHost
from reconciler.dm.libdm_udev import PROBE_PREFIX
from reconciler.testing.config_file import write_config
from reconciler.testing.world import World
from tests.kernel.udevd import udevd_running

pytestmark = pytest.mark.kernel
NAMES = ("u1", "u2", "u3")
# Where `run --once` runs: the argv in front of it, and whether udev can confirm its cookies.
PLACES: dict[str, tuple[list[str], bool]] = {
    "host": ([], True),
    "unshare --ipc": (["unshare", "--ipc"], False),
    "pod": (["unshare", "--ipc", "--pid", "--fork", "--mount", "--mount-proc"], False),
}
CASES = [("host", "libdevmapper"), ("unshare --ipc", "libdevmapper"),
         ("pod", "libdevmapper"), ("unshare --ipc", "dmsetup")]
# A run that waits for every cookie in vain takes minutes (60 s a wait, and dmsetup's until
# the Host kills it at 600 s); a working one, well under this under emulation.
RUN_TIMEOUT = 900.0


@pytest.fixture(scope="module")
def udevd() -> Iterator[int]:
    """The guest's udevd, running for these tests (started and stopped again if need be)."""
    with udevd_running() as pid:
        yield pid


def _events(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a run (stderr is no terminal: one JSON object per line)."""
    events = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _status(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """`status --json` in this process (the host's namespaces)."""
    capsys.readouterr()
    assert main(["-c", str(config), "status", "--json"]) == 0
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


@pytest.mark.parametrize(("place", "driver"), CASES, ids=[f"{p}-{d}" for p, d in CASES])
def test_run_once_never_waits_for_a_udev_that_cannot_confirm(
        udevd: int, real_world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        place: str, driver: str) -> None:
    """Three ext4 devices by `run --once` in `place`: exit 0, each /dev/mapper node there,
    no udev wait that ran out; where udev cannot confirm, one warning naming hostIPC and the
    condition in `status`; in the host's namespaces udev is used and nothing is said."""
    del udevd
    world = real_world
    assert world.store is not None
    world.store.close()
    config = write_config(tmp_path / "config.toml", root_path=world.settings.root_path,
                          pool_name=world.pool, spec_dir=world.settings.specs_path,
                          loopback_data_size="512MiB", loopback_metadata_size="16MiB",
                          dm_driver=driver)
    for name in NAMES:
        world.spec(name, 'size = "64MiB"\n')
    wrapper, confirms = PLACES[place]
    started = time.monotonic()
    done = subprocess.run([*wrapper, sys.executable, "-m", "reconciler.cli", "-c", str(config),
                           "run", "--once"], capture_output=True, text=True, check=False,
                          timeout=RUN_TIMEOUT)
    seconds = time.monotonic() - started
    with capsys.disabled():
        print(f"\nrun --once of {len(NAMES)} devices, {place}, {driver}: {seconds:.1f} s")
    assert done.returncode == 0, done.stderr[-4000:]
    events = _events(done.stderr)
    assert [e for e in events if e["event"] == "libdm.udev_timeout"] == []
    decided = [e for e in events if e["event"] == "udev.sync_decided"]
    assert decided and decided[0]["waits"] is confirms, decided
    warned = [e for e in events if e.get("level") == "warning" and "hostIPC" in json.dumps(e)]
    conditions = {c["kind"]: c for c in _status(config, capsys)["conditions"]}
    if confirms:
        assert warned == [] and "udev_unreachable" not in conditions
    else:
        assert [e["event"] for e in warned] == ["condition.udev_unreachable"], warned
        assert "hostIPC: true" in conditions["udev_unreachable"]["message"]
    devices = {d.name: d for d in DmClient(SystemHost()).list_devices()}
    for name in NAMES:
        node = Path(f"/dev/mapper/{world.pool}-{name}")
        listed = devices[node.name]
        st = os.stat(node)  # udev's symlink or libdevmapper's node: a block device either way
        assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(listed.major, listed.minor)
    assert not [n for n in devices if n.startswith(PROBE_PREFIX)], "a probe device left"
