"""Growing an xfs mounts it for a moment (xfs grows only while mounted): done by a daemon in
a pod's namespaces (its own IPC, PID and mount namespaces, as a DaemonSet's container has), the
filesystem is grown where the host sees it, and no mount of ours is left in either namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import World, wait_for
from tests.kernel.mounts import umount

pytestmark = pytest.mark.kernel
TIMEOUT = 240.0
MIB = 1 << 20


def _fs_size(world: World, name: str) -> int:
    """The filesystem size the store records for a device (0: none yet)."""
    store = Store(world.settings.database_path, time.time)
    try:
        record = store.device(name)
    finally:
        store.close()
    return record.fs_size_bytes if record is not None else 0


def test_an_xfs_is_grown_by_a_daemon_in_a_pods_namespaces(real_world: World,
                                                          tmp_path: Path) -> None:
    """A spec file's xfs, 320MiB then 640MiB: the daemon under `unshare --ipc --pid --mount`
    grows it on its temporary mount; mounted from the host afterwards it is 640MiB, and
    nothing is left under <root_path>/grow or in the host's mount table."""
    world = real_world
    config = write_config(
        tmp_path / "config.toml", root_path=world.settings.root_path, pool_name=world.pool,
        spec_dir=world.settings.specs_path, fs_type="xfs", loopback_data_size="1GiB",
        loopback_metadata_size="16MiB", resync_interval="2s", retry_initial="100ms",
        retry_max="1s")
    assert world.store is not None
    world.store.close()
    world.spec("grown", 'size = "320MiB"\nfilesystem = "xfs"\n')
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess(config, fake_kernel=False, log=log, wrapper=[
        "unshare", "--ipc", "--pid", "--mount", "--fork", "--mount-proc"]).start()
    try:
        wait_for("the xfs made", lambda: _fs_size(world, "grown") == 320 * MIB, TIMEOUT)
        world.spec("grown", 'size = "640MiB"\nfilesystem = "xfs"\n')
        wait_for("the xfs grown", lambda: _fs_size(world, "grown") == 640 * MIB, TIMEOUT)
    finally:
        # unshare's child is the daemon (pid 1 inside): signalled by its pid out here.
        children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        code = daemon.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    grow_dir = world.settings.grow_mounts_path
    assert not grow_dir.exists() or list(grow_dir.iterdir()) == []
    assert str(grow_dir) not in Path("/proc/self/mounts").read_text()
    target = tmp_path / "mnt"
    target.mkdir()
    subprocess.run(["mount", "-t", "xfs", "-o", "nouuid",
                    f"/dev/mapper/{world.pool}-grown", str(target)], check=True)
    try:
        st = os.statvfs(target)
        # xfs keeps its log and metadata out of f_blocks: a few percent at this size; one
        # not grown would be half.
        assert 0.9 * 640 * MIB <= st.f_blocks * st.f_frsize <= 640 * MIB
    finally:
        umount(target)
