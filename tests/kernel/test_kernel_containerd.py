"""A real containerd using our daemon as its proxy snapshotter through the drop-in of
`reconciler containerd-config`, on a real kernel, one body for Debian's 1.6.20 and for 2.3.4:
the plugin loaded, `ctr snapshots` verbs, data through mounts, kill -9 of our daemon,
containerd restarted with snapshots kept, and a container run by runc on our devices."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.containerd_stack import (
    SNAPSHOTTER,
    VERSIONS,
    Stack,
    containerd_config_output,
    containerd_for,
    containerd_stack,
    mount_command,
    wait_for,
)
from tests.kernel.oci_image import build_image

pytestmark = pytest.mark.kernel


# The CRI plugins, which these tests leave out (1.x has one, 2.x three).
CRI_PLUGINS = {"1.6": ["io.containerd.grpc.v1.cri"],
               "2.x": ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images",
                       "io.containerd.cri.v1.runtime"]}


@pytest.fixture(scope="module", params=VERSIONS, ids=lambda v: f"containerd-{v}")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    """containerd of each version with our proxy plugin (and without its CRI plugin), and
    `reconciler run` serving its socket."""
    containerd = containerd_for(request.param, tmp_path_factory)
    with containerd_stack(tmp_path_factory.mktemp(f"ctd-{request.param}"),
                          containerd=containerd,
                          disabled_plugins=CRI_PLUGINS[request.param]) as stack:
        yield stack


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    target = tmp_path / "mnt"
    target.mkdir()
    return target


def test_the_drop_in_loads_our_proxy_snapshotter(stack: Stack) -> None:
    """containerd imports what `reconciler containerd-config` printed for it, and `ctr
    plugins ls` shows our proxy snapshotter `reconciler` ok."""
    assert stack.drop_in.read_text().startswith(
        containerd_config_output(stack.ctd, stack.config))
    assert str(stack.drop_in) in stack.containerd_config.read_text()
    rows = [line.split() for line in stack.ctr("plugins", "ls").stdout.splitlines()]
    ours = [row for row in rows if row[:2] == ["io.containerd.snapshotter.v1", SNAPSHOTTER]]
    assert len(ours) == 1 and ours[0][-1] == "ok", ours


def test_ctr_snapshot_verbs_and_data(stack: Stack, mnt: Path) -> None:
    """prepare / mounts / commit / view / ls / info / label / usage / rm through containerd:
    a file written in an active snapshot and committed is in a child and a view; the
    child's writes do not reach the parent; a parent with children cannot be removed."""
    stack.snapshots("prepare", "base")
    argv = mount_command(stack, "base", mnt)
    assert argv[2] == "ext4" and argv[3].startswith(f"/dev/mapper/{stack.world.pool}-snap-")
    subprocess.run(argv, check=True)
    (mnt / "hello.txt").write_text("from the parent\n")
    subprocess.run(["umount", str(mnt)], check=True)
    stack.snapshots("commit", "layer", "base")

    stack.snapshots("prepare", "child", "layer")
    subprocess.run(mount_command(stack, "child", mnt), check=True)
    try:
        assert (mnt / "hello.txt").read_text() == "from the parent\n"
        (mnt / "hello.txt").write_text("changed in the child\n")
        (mnt / "new.txt").write_text("only in the child\n")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)

    stack.snapshots("view", "look", "layer")
    view_argv = mount_command(stack, "look", mnt)
    assert view_argv[-1] == "ro", view_argv
    subprocess.run(view_argv, check=True)
    try:
        assert (mnt / "hello.txt").read_text() == "from the parent\n"
        assert not (mnt / "new.txt").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)

    listing = stack.snapshots("ls").stdout.split("\n")
    rows = {line.split()[0]: line.split()[1:] for line in listing[1:] if line.strip()}
    assert rows["layer"] == ["Committed"]
    assert rows["child"] == ["layer", "Active"]
    assert rows["look"] == ["layer", "View"]
    info = json.loads(stack.snapshots("info", "layer").stdout)
    assert info["Kind"] == "Committed" and info["Name"] == "layer"
    labelled = stack.snapshots("label", "layer", "tier=gold").stdout
    assert "tier=gold" in labelled
    assert json.loads(stack.snapshots("info", "layer").stdout)["Labels"]["tier"] == "gold"
    usage = stack.snapshots("usage", "child").stdout.split("\n")[1].split()
    assert usage[0] == "child" and usage[-1] != "0", f"the child's new inode counts: {usage}"

    refused = stack.snapshots("rm", "layer", check=False)
    assert refused.returncode != 0 and "failed precondition" in refused.stderr
    report = stack.report()
    kinds = {d["snapshot"]["kind"] for d in report["devices"]  # type: ignore[attr-defined]
             if d["snapshot"] and d["state"] != "Removed"}
    # The base every root snapshot is taken from is ours too, never containerd's to list.
    assert kinds == {"committed", "active", "view", "base"}
    stack.snapshots("rm", "look", "child", "layer")
    assert stack.snapshots("ls").stdout.split("\n")[1:] == [""]
    stack.collect_until("our devices removed", lambda: [
        d["name"] for d in stack.report()["devices"]  # type: ignore[attr-defined]
        if d["snapshot"] and d["snapshot"]["kind"] != "base"
        and d["snapshot"]["removal"] is None])


def test_containerd_calls_succeed_after_kill_9_of_the_daemon(stack: Stack) -> None:
    """Killed with SIGKILL and started again, our daemon answers containerd's next calls,
    and what was prepared before is still there."""
    stack.snapshots("prepare", "survivor")
    assert stack.daemon is not None
    os.kill(stack.daemon.pid, signal.SIGKILL)
    stack.daemon.wait(timeout=30)
    refused = stack.snapshots("ls", check=False)
    assert refused.returncode != 0, "nobody serves the socket while we are down"
    stack.start_daemon()
    wait_for("containerd reaches us again",
             lambda: stack.snapshots("ls", check=False).returncode == 0)
    assert "survivor" in stack.snapshots("ls").stdout
    stack.snapshots("commit", "survivor-c", "survivor")
    stack.snapshots("prepare", "after", "survivor-c")
    stack.snapshots("rm", "after", "survivor-c")
    assert stack.snapshots("ls").stdout.split("\n")[1:] == [""]


def test_a_container_runs_on_our_snapshots(stack: Stack) -> None:
    """An OCI image (static busybox) imported with our snapshotter (on 2.x through the
    transfer service, which the drop-in allows to unpack into it), run by runc on one of our
    thin devices."""
    if shutil.which("runc") is None:
        pytest.skip("needs Debian's runc")
    image = build_image(stack.work / "image.tar")
    stack.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(stack.work / "image.tar"))
    committed = stack.snapshots("ls").stdout
    assert "Committed" in committed, committed
    ran = stack.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, image, "t1", "/bin/echo",
                    "ok")
    assert ran.stdout.strip() == "ok"
    ran = stack.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, image, "t2", "/bin/sh", "-c",
                    "echo data > /tmp/f && cat /tmp/f && ls /bin && cat /proc/self/mounts")
    assert ran.stdout.split()[0] == "data" and "busybox" in ran.stdout.split()
    # The container's "/" is our thin device, mounted as we gave it (2.x's mount manager
    # passes a plain ext4 mount of a device through to the runtime untouched).
    root = next(line.split() for line in ran.stdout.splitlines() if line.split()[1:2] == ["/"])
    assert root[0].startswith(f"/dev/mapper/{stack.world.pool}-snap-") and root[2] == "ext4", root


def test_snapshots_are_kept_across_a_containerd_restart(stack: Stack, mnt: Path) -> None:
    """containerd stopped and started again (our daemon running throughout): `ctr snapshots
    ls` lists the committed and the active snapshot as before, and the active one mounts
    with the data its committed parent was given."""
    stack.snapshots("prepare", "kept-w")
    subprocess.run(mount_command(stack, "kept-w", mnt), check=True)
    (mnt / "kept.txt").write_text("across the restart\n")
    subprocess.run(["umount", str(mnt)], check=True)
    stack.snapshots("commit", "kept", "kept-w")
    stack.snapshots("prepare", "kept-a", "kept")
    before = stack.listed()

    stack.stop_containerd()
    stack.start_containerd()
    assert stack.listed() == before
    assert before["kept"] == ["Committed"] and before["kept-a"] == ["kept", "Active"]
    subprocess.run(mount_command(stack, "kept-a", mnt), check=True)
    try:
        assert (mnt / "kept.txt").read_text() == "across the restart\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    stack.snapshots("rm", "kept-a", "kept")
    assert stack.listed() == {k: v for k, v in before.items() if not k.startswith("kept")}
