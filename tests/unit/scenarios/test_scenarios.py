"""End-to-end passes of the reconciler, run on the fake kernel and (kernel tier) on the real one.

Assertions are on resulting state: the store, `status --json` and what the kernel shows.
"""

from __future__ import annotations

from typing import Any

from reconciler.dm.client import DmClient
from reconciler.dm.parse import parse_thin_table
from reconciler.testing.world import World
from reconciler.tools.thin_ls import list_thin_ids


def devices(world: World) -> dict[str, dict[str, Any]]:
    report = world.report()
    return {d["name"]: d for d in report["devices"]}


def pool_ids(world: World) -> set[int]:
    assert world.store is not None
    record = world.store.pool(world.pool)
    assert record is not None
    return list_thin_ids(world.host, world.pool, record.metadata_device)


def test_two_specs_become_two_active_thin_devices(world: World) -> None:
    """A thin device with ext4 and a snapshot of it end up Activated, in the kernel and store."""
    world.spec("web-base", 'size = "64MiB"\nfilesystem = "ext4"\n[labels]\nteam = "web"\n')
    world.spec("web-1", 'parent = "web-base"\n')
    result = world.run_pass()
    assert result.ok, result
    assert world.kernel_names() == {f"{world.pool}-web-base", f"{world.pool}-web-1"}
    shown = devices(world)
    # The origin was suspended and resumed around the snapshot: Resumed is its live state.
    assert shown["web-base"]["state"] == "Resumed"
    assert shown["web-1"]["state"] == "Activated"
    assert shown["web-1"]["parent"] == "web-base"
    assert shown["web-1"]["size_bytes"] == 64 << 20
    assert shown["web-base"]["labels"] == {"team": "web"}
    assert shown["web-base"]["used_bytes"] > 0  # mkfs wrote its metadata
    # dmsetup and status agree on which thin id backs which device.
    client = DmClient(world.host)
    for name, device in shown.items():
        (line,) = client.table(f"{world.pool}-{name}")
        assert parse_thin_table(line).device_id == device["device_id"]
        assert device["path"] == f"/dev/mapper/{world.pool}-{name}"
    assert pool_ids(world) == {shown["web-base"]["device_id"], shown["web-1"]["device_id"]}
    report = world.report()
    assert report["pool"]["transaction_id"] == 2


def test_a_converged_pass_changes_nothing(world: World) -> None:
    """Running again over converged devices makes no state change and no kernel change."""
    world.spec("a")
    assert world.run_pass().ok
    assert world.store is not None
    before = [(r.name, r.state, r.device_id) for r in world.store.devices()]
    history = len(world.store.history("a"))
    assert world.run_pass().ok
    assert [(r.name, r.state, r.device_id) for r in world.store.devices()] == before
    assert len(world.store.history("a")) == history


def test_removing_a_spec_removes_the_device_and_frees_its_id(world: World) -> None:
    """Spec gone: device deactivated, deleted from the pool, id free for the next device."""
    world.spec("keep")
    world.spec("gone", 'filesystem = "none"\n')
    assert world.run_pass().ok
    gone_id = devices(world)["gone"]["device_id"]
    world.unspec("gone")
    result = world.run_pass()
    assert result.ok
    assert result.removed == ["gone"]
    assert world.kernel_names() == {f"{world.pool}-keep"}
    assert gone_id not in pool_ids(world)
    assert world.store is not None
    removed = world.store.device("gone")
    assert removed is not None and removed.state == "Removed"
    world.spec("next", 'filesystem = "none"\n')
    assert world.run_pass().ok
    assert devices(world)["next"]["device_id"] == gone_id


def test_inactive_devices_exist_in_the_pool_only(world: World) -> None:
    """active = false: the device is made (and formatted) but has no dm device afterwards."""
    world.spec("cold", "active = false\n")
    assert world.run_pass().ok
    assert world.kernel_names() == set()
    shown = devices(world)["cold"]
    assert shown["state"] == "Deactivated"
    assert shown["device_id"] in pool_ids(world)
    world.spec("cold", "active = true\n")
    assert world.run_pass().ok
    assert devices(world)["cold"]["state"] == "Activated"
    assert world.kernel_names() == {f"{world.pool}-cold"}


def test_readonly_devices_are_formatted_then_made_read_only(world: World) -> None:
    """readonly = true: mkfs runs on the writable device, then its table is reloaded read-only."""
    world.spec("ro", "readonly = true\n")
    assert world.run_pass().ok
    client = DmClient(world.host)
    info = client.info(f"{world.pool}-ro")
    assert info is not None and info.readonly
    assert devices(world)["ro"]["state"] == "Resumed"


def test_growing_a_device_reloads_its_table(world: World) -> None:
    """A larger size in the spec reloads the live table with the new length."""
    world.spec("grow", 'size = "64MiB"\nfilesystem = "none"\n')
    assert world.run_pass().ok
    world.spec("grow", 'size = "128MiB"\nfilesystem = "none"\n')
    assert world.run_pass().ok
    (line,) = DmClient(world.host).table(f"{world.pool}-grow")
    assert line.length == (128 << 20) // 512
    assert devices(world)["grow"]["size_bytes"] == 128 << 20


def test_a_broken_spec_never_touches_its_device(world: World) -> None:
    """Breaking an existing device's spec reports the error and leaves the device alone."""
    world.spec("web")
    assert world.run_pass().ok
    world.spec("web", "size = 'enormous'\n")
    result = world.run_pass()
    assert not result.ok
    assert [r.name for r in result.rejected] == ["web"]
    assert world.kernel_names() == {f"{world.pool}-web"}
    report = world.report()
    assert report["rejected_specs"][0]["name"] == "web"
    assert "key 'size'" in report["rejected_specs"][0]["error"]
    assert devices(world)["web"]["state"] == "Activated"


def test_a_missing_parent_is_a_named_error(world: World) -> None:
    """A snapshot of a device that neither has a spec nor exists is rejected, others go on."""
    world.spec("orphan", 'parent = "nowhere"\n')
    world.spec("fine", 'filesystem = "none"\n')
    result = world.run_pass()
    assert [r.name for r in result.rejected] == ["orphan"]
    assert "parent 'nowhere' does not exist" in result.rejected[0].error
    assert devices(world)["fine"]["state"] == "Activated"
