"""Orphans (pool ids and dm devices the store does not manage) are reported, never deleted
silently, never handed out again; gc and adopt act on them when the operator asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.dm.client import DmClient
from reconciler.dm.pool import ThinPool
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.world import World
from reconciler.tools.thin_ls import list_thin_ids
from reconciler.vocabulary import ThinId


@pytest.fixture
def config(fake_world: World, tmp_path: Path) -> Path:
    settings = fake_world.settings
    return write_config(tmp_path / "cli.toml", root_path=settings.root_path,
                        pool_name=settings.pool_name, spec_dir=settings.specs_path)


def make_orphan(world: World, thin_id: int) -> None:
    """Someone (or a crash of another tool) creates a thin id behind our back."""
    pool = ThinPool(world.host, world.pool)
    pool.create_thin(ThinId(thin_id), pool.status().transaction_id)


def test_orphan_ids_are_reported_and_never_reused(fake_world: World,
                                                  capsys: pytest.CaptureFixture[str],
                                                  config: Path) -> None:
    """An id in the pool unknown to the store shows in status and is skipped by allocation."""
    fake_world.spec("a", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    make_orphan(fake_world, 1)
    fake_world.spec("b", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    report = fake_world.report()
    assert report["orphans"] == {"thin_ids": [1], "devices": []}
    assert fake_world.store is not None
    b = fake_world.store.device("b")
    assert b is not None and b.device_id == 2
    assert main(["-c", str(config), "status"], host=fake_world.host) == 0
    assert "thin ids: 1" in capsys.readouterr().out


def test_gc_orphans_deletes_only_orphans(fake_world: World, config: Path) -> None:
    """gc --orphans deletes the unknown id and keeps every managed one."""
    fake_world.spec("a", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    make_orphan(fake_world, 7)
    assert fake_world.run_pass().ok
    assert fake_world.store is not None
    pool = fake_world.store.pool(fake_world.pool)
    assert pool is not None
    assert list_thin_ids(fake_world.host, fake_world.pool, pool.metadata_device) == {0, 7}
    assert main(["-c", str(config), "gc", "--orphans"], host=fake_world.host) == 0
    assert list_thin_ids(fake_world.host, fake_world.pool, pool.metadata_device) == {0}


def test_adopt_makes_an_orphan_a_managed_device(fake_world: World, config: Path) -> None:
    """adopt NAME --thin-id N with a spec for NAME: the id becomes NAME, activated, never mkfs'd."""
    fake_world.spec("a", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    make_orphan(fake_world, 5)
    fake_world.spec("found", 'size = "64MiB"\nfilesystem = "ext4"\n')
    assert fake_world.store is not None
    fake_world.store.close()
    assert main(["-c", str(config), "adopt", "found", "--thin-id", "5"], host=fake_world.host) == 0
    fake_world.store = Store(fake_world.settings.database_path, fake_world.clock)
    assert fake_world.run_pass().ok
    record = fake_world.store.device("found")
    assert record is not None
    assert (record.device_id, record.state) == (5, "Activated")
    mkfs = [c for c in fake_world.host.calls if c[0].startswith("mkfs")]  # type: ignore[attr-defined]
    assert all(not c[-1].endswith("-found") for c in mkfs)
    assert fake_world.report()["orphans"] == {"thin_ids": [], "devices": []}


def test_unknown_dm_devices_of_our_pool_are_reported(fake_world: World) -> None:
    """A dm device named like ours but not managed is an orphan device, left alone."""
    fake_world.spec("a", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    DmClient(fake_world.host).create(f"{fake_world.pool}-stray", "0 8 zero", "stray")
    assert fake_world.run_pass().ok
    assert fake_world.report()["orphans"]["devices"] == [
        {"name": f"{fake_world.pool}-stray", "thin_id": None}]
    assert f"{fake_world.pool}-stray" in fake_world.kernel_names()
