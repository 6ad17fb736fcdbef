"""A burst of spec files on the real kernel through libdevmapper: the pass leaves its udev
waits to one shared cookie (LibdmClient.deferred_udev), and still every /dev/mapper node is
there when the pass ends, a filesystem is made on each that wants one (mkfs settles udev
first), and removal of them all leaves no node behind."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.dm.host import SystemHost
from reconciler.testing.world import KERNEL_AVAILABLE, World, make_settings

pytestmark = pytest.mark.kernel
BURST = 12


@pytest.fixture
def lworld(tmp_path: Path) -> Iterator[World]:
    if not KERNEL_AVAILABLE:
        pytest.skip("needs device-mapper and root")
    settings = make_settings(tmp_path, f"rb{secrets.token_hex(3)}", dm_driver="libdevmapper",
                             max_removals="unlimited")
    created = World(host=SystemHost(), settings=settings, real=True)
    try:
        yield created
    finally:
        created.teardown()


def test_a_burst_is_made_with_every_node_in_place(lworld: World) -> None:
    # Kept throughout: deleting every spec file at once is held as a likely accident.
    lworld.spec("keep", 'filesystem = "none"\n')
    for i in range(BURST):
        lworld.spec(f"d{i}", 'filesystem = "none"\n' if i % 2 else 'filesystem = "ext4"\n')
    assert lworld.run_pass().ok
    devices = {d["name"]: d for d in lworld.report()["devices"]}
    assert len(devices) == BURST + 1
    for name, device in devices.items():
        assert device["ready"], device
        assert os.path.exists(f"/dev/mapper/{lworld.pool}-{name}"), name
    for i in range(BURST):
        lworld.unspec(f"d{i}")
    assert lworld.run_pass().ok
    assert lworld.kernel_names() == {f"{lworld.pool}-keep"}
    leftover = [n for n in os.listdir("/dev/mapper") if n.startswith(f"{lworld.pool}-d")]
    assert leftover == []
