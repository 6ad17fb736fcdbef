"""A ConfigMap spec_dir on a real kernel: a tmpfs laid out by kubelet's AtomicWriter, mode
0777, seen by the daemon through a read-only bind mount (as a pod sees its ConfigMap volume),
updated behind it the way kubelet does; and `nodes` selecting by the daemon's node_name."""

from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.dm.host import SystemHost
from reconciler.status import build_report
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.configmap import atomic_write
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import World, wait_for

pytestmark = pytest.mark.kernel
MIB = 1 << 20


def _spec(size_mib: int, nodes: str = "") -> str:
    return f'filesystem = "none"\nsize = "{size_mib}MiB"\n{nodes}'


def _report(world: World) -> dict[str, Any]:
    store = Store(world.settings.database_path, time.time)
    try:
        return build_report(world.settings, store, SystemHost())
    finally:
        store.close()


def _devices(world: World) -> dict[str, tuple[bool, int]]:
    """Each live device's readiness and size, as `status` shows them."""
    if not world.settings.database_path.exists():
        return {}
    return {d["name"]: (d["ready"], d["size_bytes"]) for d in _report(world)["devices"]
            if d["state"] != "Removed"}


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True)


@pytest.fixture
def configmap(real_world: World, tmp_path: Path) -> Iterator[tuple[World, Path]]:
    """kubelet's side (a 0777 tmpfs it writes) and the pod's (the world's spec_dir, a
    read-only bind mount of it); both unmounted at the end."""
    kubelet = tmp_path / "kubelet-volume"
    kubelet.mkdir()
    specs = real_world.settings.specs_path
    _mount("-t", "tmpfs", "-o", "mode=0777", "tmpfs", str(kubelet))
    try:
        _mount("--bind", str(kubelet), str(specs))
        _mount("-o", "remount,bind,ro", str(specs))
        yield real_world, kubelet
    finally:
        subprocess.run(["umount", str(specs)], check=False)
        subprocess.run(["umount", str(kubelet)], check=False)


def test_a_configmap_update_reaches_the_daemon_through_a_read_only_mount(
        configmap: tuple[World, Path], tmp_path: Path) -> None:
    """The daemon trusts the read-only 0777 spec_dir, makes this node's keys' devices (not
    the one for gpu-* nodes), and applies kubelet's update (a key grown, one removed, one
    added) from the `..data` swap, with no resync to lean on."""
    world, kubelet = configmap
    specs = world.settings.specs_path
    atomic_write(kubelet, {"a.toml": _spec(4), "b.toml": _spec(4),
                           "gpu.toml": _spec(4, 'nodes = ["gpu-*"]\n')})
    with pytest.raises(OSError, match="Read-only file system") as refused:
        (specs / "x.toml").write_text("")
    assert refused.value.errno == errno.EROFS
    assert oct((specs.stat().st_mode) & 0o777) == "0o777"
    config = write_config(tmp_path / "config.toml", root_path=world.settings.root_path,
                          pool_name=world.pool, loopback_data_size="256MiB",
                          loopback_metadata_size="8MiB", resync_interval="1h",
                          node_name="worker-1")
    assert world.store is not None
    world.store.close()
    world.store = None
    process = DaemonProcess(config, fake_kernel=False, log=tmp_path / "daemon.log").start()
    try:
        wait_for("a and b ready", lambda: _devices(world) == {
            "a": (True, 4 * MIB), "b": (True, 4 * MIB)}, timeout=60)
        report = _report(world)
        assert report["pool"]["spec_source_error"] is None
        assert report["rejected_specs"] == []

        atomic_write(kubelet, {"a.toml": _spec(8), "d.toml": _spec(4),
                               "gpu.toml": _spec(4, 'nodes = ["gpu-*"]\n')},
                     "2026_12_01_02_05_00")
        wait_for("the update applied", lambda: _devices(world) == {
            "a": (True, 8 * MIB), "d": (True, 4 * MIB)}, timeout=60)
        table = subprocess.run(["dmsetup", "table", f"{world.pool}-a"], check=True,
                               capture_output=True, text=True).stdout.split()
        assert int(table[1]) * 512 == 8 * MIB
        assert not Path(f"/dev/mapper/{world.pool}-b").exists()
        assert not Path(f"/dev/mapper/{world.pool}-gpu").exists()
        assert _report(world)["rejected_specs"] == []
    finally:
        code = process.stop()
        assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]
