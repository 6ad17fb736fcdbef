"""The daemon and udev in any namespace (issue 25): a pass waits for udev only where udev was
shown to confirm the daemon's cookies; elsewhere it makes the nodes itself, at no cost, and
says so once (the udev_unreachable condition, naming hostIPC), through both drivers.

The fake kernel's udev is placed as a DaemonSet's pod would find the host's: in the host's
namespaces; in a pod with hostIPC but its own PID namespace (udevd unseen: a probe cookie
proves it); in its own IPC namespace with udevd seen (`unshare --ipc`); in its own IPC and PID
namespaces (a pod's defaults: unseen, and the probe cookie is never confirmed). The real
kernel's: tests/kernel/test_kernel_udev_namespaces.py.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from reconciler.daemon.once import run_until_settled
from reconciler.dm.libdm_udev import PROBE_PREFIX
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.libdm import FakeLibdm
from reconciler.testing.world import World, make_settings

NAMES = ["a", "b", "c"]
DRIVERS = ("dmsetup", "libdevmapper")
# Where udevd is, seen from the daemon: (alive, same IPC namespace, visible in /proc), and
# whether the daemon then waits for it.
PLACES: dict[str, tuple[bool, bool, bool, bool]] = {
    "no udev": (False, True, True, False),
    "host namespaces": (True, True, True, True),
    "hostIPC, own PID namespace": (True, True, False, True),
    "unshare --ipc": (True, False, True, False),
    "own IPC and PID namespaces": (True, False, False, False),
}


def _world(tmp_path: Path, driver: str, place: str) -> tuple[World, FakeKernel]:
    kernel = FakeKernel()
    alive, same_ipc, visible, _ = PLACES[place]
    kernel.udev.alive, kernel.udev.same_ipc, kernel.udev.visible = alive, same_ipc, visible
    # A short bound: a wait for a cookie nobody confirms would show as udev_timeout.
    settings = make_settings(tmp_path, "rtpool", dm_driver=driver, udev_timeout="100ms")
    return World(host=kernel, settings=settings, real=False), kernel


def _host_ipc_warnings(events: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in events if e["log_level"] == "warning" and "hostIPC" in str(e)]


def _conditions(world: World) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in world.report()["conditions"]}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("place", list(PLACES))
def test_a_pass_waits_only_for_a_udev_that_confirms_and_says_so_once_otherwise(
        tmp_path: Path, driver: str, place: str) -> None:
    """Three filesystems in one pass: converged wherever udev is; no udev_timeout, no dmsetup
    killed for waiting; cookies (libdevmapper) or a dmsetup that synchronises only where udev
    confirms; where it runs but cannot, one warning naming hostIPC and the condition in
    `status`; no probe device left."""
    world, kernel = _world(tmp_path, driver, place)
    waits = PLACES[place][3]
    unreachable = PLACES[place][0] and not waits
    for name in NAMES:
        world.spec(name, 'size = "32MiB"\n')
    with capture_logs() as events:
        result = world.run_pass()
    assert result.ok and sorted(result.converged) == NAMES, result
    assert not [e for e in events if e["event"] == "libdm.udev_timeout"]
    assert {f"rtpool-{n}" for n in NAMES} <= set(kernel.devices)
    assert not [n for n in kernel.devices if n.startswith(PROBE_PREFIX)]
    warnings, conditions = _host_ipc_warnings(events), _conditions(world)
    if unreachable:
        assert [e["event"] for e in warnings] == ["condition.udev_unreachable"]
        assert "hostIPC: true" in conditions["udev_unreachable"]["message"]
    else:
        assert warnings == [] and "udev_unreachable" not in conditions
    synced = [c for c in kernel.calls
              if c[:2] in {("dmsetup", "create"), ("dmsetup", "remove")}]
    library = kernel.dm_library()
    assert isinstance(library, FakeLibdm)
    if driver == "dmsetup":
        assert synced and all(("--noudevsync" in c) is not waits for c in synced), synced
    else:
        assert synced == []
        made = [c for c in library.cookies if c not in library.unconfirmed]
        # Only a probe cookie goes unconfirmed (own IPC and PID namespaces), and only one.
        assert len(library.unconfirmed) == (1 if place == "own IPC and PID namespaces" else 0)
        assert bool(made) is waits


@pytest.mark.parametrize("driver", DRIVERS)
def test_udev_is_proved_again_when_it_appears_or_goes(tmp_path: Path, driver: str) -> None:
    """One daemon's passes: no udev (no condition), then a udevd in another IPC namespace
    appears (the condition, warned once over two passes), then it goes (cleared)."""
    world, kernel = _world(tmp_path, driver, "no udev")
    reconciler = world.reconciler()

    def run(name: str) -> None:
        world.spec(name, 'size = "32MiB"\n')
        assert run_until_settled(reconciler, world.clock, world.clock.sleep).ok

    run("a")
    assert "udev_unreachable" not in _conditions(world)
    kernel.udev.alive, kernel.udev.same_ipc = True, False
    with capture_logs() as events:
        run("b")
        run("c")
    assert [e["event"] for e in _host_ipc_warnings(events)] == ["condition.udev_unreachable"]
    assert "udev_unreachable" in _conditions(world)
    kernel.udev.alive = False
    run("d")
    assert "udev_unreachable" not in _conditions(world)
