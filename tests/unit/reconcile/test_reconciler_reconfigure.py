"""Reconciler.reconfigure: a reloaded config taken in place, the pool and the seam kept."""

from __future__ import annotations

from dataclasses import replace

from reconciler.reconcile.devices import Ready
from reconciler.testing.world import World


def test_reconfigure_keeps_the_pool_and_devices_and_reads_the_new_spec_dir(
        fake_world: World) -> None:
    """After a reload to another spec directory the same engine (its pool, its devices seam)
    makes the devices of the new directory and takes away those only the old one wanted."""
    fake_world.spec("old", 'size = "32MiB"\n')
    engine = fake_world.reconciler()
    assert engine.run_pass().ok
    pool, devices = engine.pool, engine.devices
    other = fake_world.settings.root_path / "other-specs"
    other.mkdir()
    (other / "new.toml").write_text('size = "32MiB"\n')
    fresh = replace(fake_world.settings, spec_dir=other, retry_initial=7.0)
    engine.reconfigure(fresh)
    assert engine.settings is fresh and engine.policy.initial == 7.0
    assert engine.pool is pool and engine.devices is devices
    assert devices.settle(["new"]) == Ready()
    engine.allow_removals = True
    assert engine.run_pass().ok
    assert fake_world.kernel_names() == {f"{fake_world.pool}-new"}
    assert fake_world.store is not None
    assert {r.name for r in fake_world.store.devices()} == {"new"}
