"""A hold holds: removals the guard held wait for an operator's confirm (or their spec's
return) whatever happens next: new spec files, restored files, passes, reloads, restarts; a
slow accident is held as a fast one is; a config change removes nothing by itself (issue 23,
findings 1-3)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.config import Settings, load_settings
from reconciler.reconcile.holds import Selection
from reconciler.reconcile.maintenance import confirm_request
from reconciler.store import HoldCause, RequestKind, Store, UnknownKind
from reconciler.testing.config_file import write_config
from reconciler.testing.world import World
from reconciler.vocabulary import PlanAction

NONE = 'filesystem = "none"\nsize = "4MiB"\n'


def _devices(world: World, names: list[str], extra: str = "") -> None:
    for name in names:
        world.spec(name, NONE + extra)
    assert world.run_pass().ok


def _live(world: World) -> set[str]:
    assert world.store is not None
    return {r.name for r in world.store.devices()}


def _held(world: World) -> dict[str, HoldCause | UnknownKind]:
    assert world.store is not None
    return {n: h.cause for n, h in world.store.held_removals().items()
            if h.confirmed_at is None}


def _names(count: int, prefix: str = "d") -> list[str]:
    return [f"{prefix}{i:02}" for i in range(count)]


def _confirm(world: World, names: list[str], settings: Settings | None = None) -> None:
    assert world.store is not None
    selection = Selection.of(settings or world.settings)
    world.store.add_request(RequestKind.CONFIRM_REMOVALS, confirm_request(names, selection))


def test_a_new_spec_file_releases_no_held_removal(fake_world: World) -> None:
    """Finding 1: every spec file deleted (5) is held; a new spec file written afterwards
    is made, and the 5 held devices stay, pass after pass."""
    _devices(fake_world, _names(5))
    for name in _names(5):
        fake_world.unspec(name)
    assert fake_world.run_pass().held == _names(5)
    fake_world.spec("fresh", NONE)
    result = fake_world.run_pass()
    assert result.held == _names(5) and result.removed == []
    assert _live(fake_world) == {*_names(5), "fresh"}
    assert fake_world.run_pass().removed == []
    assert _held(fake_world) == dict.fromkeys(_names(5), HoldCause.EVERYTHING)


def test_restoring_some_files_releases_those_and_holds_the_rest(fake_world: World) -> None:
    """Finding 1: 12 devices, 10 spec files deleted (held), 2 restored: those 2 are no
    longer held, the other 8 stay held and are not removed."""
    _devices(fake_world, _names(12))
    for name in _names(10):
        fake_world.unspec(name)
    assert fake_world.run_pass().held == _names(10)
    for name in _names(2):
        fake_world.spec(name, NONE)
    result = fake_world.run_pass()
    assert result.removed == [] and result.held == _names(10)[2:]
    assert _live(fake_world) == set(_names(12))
    assert set(_held(fake_world)) == set(_names(10)[2:])


def test_only_the_confirmed_names_go_and_the_hold_outlives_restarts(fake_world: World) -> None:
    """A confirm naming 3 of 9 held removals removes those 3; the other 6 stay held through
    a new Reconciler (a restart) and a reload of the same config."""
    _devices(fake_world, _names(12))
    for name in _names(9):
        fake_world.unspec(name)
    assert fake_world.run_pass().held == _names(9)
    _confirm(fake_world, _names(3))
    assert fake_world.run_pass().removed == _names(3)
    engine = fake_world.reconciler()
    engine.reconfigure(replace(fake_world.settings))
    result = engine.run_pass()
    assert result.removed == [] and result.held == _names(9)[3:]
    assert _live(fake_world) == set(_names(12)[3:])


def test_the_window_holds_a_slow_accident(fake_world: World) -> None:
    """Finding 3: files deleted one a second, a pass after each: the first max_removals (8)
    go, every later one within removal_window is held."""
    _devices(fake_world, _names(20))
    removed: list[str] = []
    for name in _names(10):
        fake_world.unspec(name)
        fake_world.clock.sleep(1.0)
        removed += fake_world.run_pass().removed
    assert removed == _names(8)
    assert set(_held(fake_world)) == set(_names(10)[8:])


def test_batches_within_the_window_are_counted_together(fake_world: World) -> None:
    """Finding 3: 8 + 8 + 4 deletions a minute apart: the first 8 go, the 12 after are held;
    past the window a batch of 8 goes again."""
    _devices(fake_world, _names(30))
    batches = [_names(8), _names(16)[8:], _names(20)[16:]]
    removed: list[str] = []
    for batch in batches:
        for name in batch:
            fake_world.unspec(name)
        fake_world.clock.sleep(60.0)
        removed += fake_world.run_pass().removed
    assert removed == _names(8)
    assert set(_held(fake_world)) == set(_names(20)[8:])
    fake_world.clock.sleep(fake_world.settings.removal_window)
    for name in _names(28)[20:]:
        fake_world.unspec(name)
    assert fake_world.run_pass().removed == _names(28)[20:]


def _on_node(world: World, node: str, spec_dir: Path | None = None) -> Settings:
    return replace(world.settings, node_name=node,
                   spec_dir=spec_dir if spec_dir is not None else world.settings.spec_dir)


def test_a_mistyped_node_name_on_reload_removes_nothing(fake_world: World) -> None:
    """Finding 2: 3 of 5 specs pinned to `worker-1`; a reload with node_name mistyped holds
    the 3 (cause config) whatever max_removals says; the right name back releases them."""
    fake_world.settings = _on_node(fake_world, "worker-1")
    _devices(fake_world, _names(3, "p"), 'nodes = ["worker-1"]\n')
    _devices(fake_world, _names(2, "q"))
    engine = fake_world.reconciler()
    engine.reconfigure(_on_node(fake_world, "wroker-1"))
    result = engine.run_pass()
    assert result.removed == [] and result.held == _names(3, "p")
    assert _held(fake_world) == dict.fromkeys(_names(3, "p"), HoldCause.CONFIG)
    assert engine.run_pass().removed == [], "and the next pass holds them still"
    engine.reconfigure(_on_node(fake_world, "worker-1"))
    result = engine.run_pass()
    assert result.removed == [] and result.held == [] and result.ok
    assert _live(fake_world) == {*_names(3, "p"), *_names(2, "q")}


def test_another_spec_dir_on_restart_holds_every_removal_it_would_cause(
        fake_world: World, tmp_path: Path) -> None:
    """Finding 2: a restart with spec_dir pointing at a directory holding 1 of the 5 names
    and 2 unrelated specs: the 2 are made, the 4 others held, on the first pass and every
    later one."""
    _devices(fake_world, _names(5))
    other = tmp_path / "other-specs"
    other.mkdir()
    for name in ("d00", "x", "y"):
        (other / f"{name}.toml").write_text(NONE)
    fake_world.settings = replace(fake_world.settings, spec_dir=other)
    for _ in range(2):
        result = fake_world.run_pass()
        assert result.removed == [] and result.held == _names(5)[1:]
    assert _live(fake_world) == {*_names(5), "x", "y"}
    assert set(_held(fake_world).values()) == {HoldCause.CONFIG}


def test_confirming_under_the_config_that_asks_removes(fake_world: World) -> None:
    """A config-change hold is confirmed only with that config: a confirm sent with the old
    node_name is refused, one sent with the new removes the devices."""
    old = _on_node(fake_world, "worker-1")
    fake_world.settings = old
    _devices(fake_world, _names(3, "p"), 'nodes = ["worker-1"]\n')
    fake_world.settings = _on_node(fake_world, "worker-2")
    assert fake_world.run_pass().held == _names(3, "p")
    _confirm(fake_world, _names(3, "p"), old)
    assert fake_world.run_pass().removed == []
    _confirm(fake_world, _names(3, "p"))
    assert fake_world.run_pass().removed == _names(3, "p")
    assert _held(fake_world) == {}


def _config_file(world: World, path: Path, **extra: object) -> Path:
    settings = world.settings
    return write_config(path, root_path=settings.root_path, pool_name=settings.pool_name,
                        dm_driver=settings.dm_driver, loopback_data_size="256MiB",
                        loopback_metadata_size="8MiB", base_image_size="64MiB", **extra)


def test_run_once_and_confirm_removals_with_another_node_name(
        fake_world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 2: `run --once` with a mistyped node_name holds the pinned devices (exit 1);
    `confirm-removals` of them with the right config is refused, names nothing held; bare
    `confirm-removals` lists the holds and exits 2; `--all` with the config that asks
    removes them."""
    right = _config_file(fake_world, tmp_path / "right.toml", node_name="worker-1")
    wrong = _config_file(fake_world, tmp_path / "wrong.toml", node_name="wroker-1")
    fake_world.settings = load_settings(right)
    _devices(fake_world, _names(3, "p"), 'nodes = ["worker-1"]\n')
    assert fake_world.store is not None
    fake_world.store.close()
    assert main(["-c", str(wrong), "run", "--once"], host=fake_world.host) == 1
    assert "3 removals held" in capsys.readouterr().err
    assert main(["-c", str(right), "confirm-removals", "p00"], host=fake_world.host) == 1
    assert "held under another config" in capsys.readouterr().err
    assert main(["-c", str(wrong), "confirm-removals"], host=fake_world.host) == 2
    listed = capsys.readouterr()
    assert "p00  held: the config changed" in listed.out and "--all" in listed.err
    fake_world.store = Store(fake_world.settings.database_path, fake_world.clock)
    assert _live(fake_world) == set(_names(3, "p"))
    fake_world.store.close()
    assert main(["-c", str(wrong), "confirm-removals", "--all"], host=fake_world.host) == 0
    fake_world.store = Store(fake_world.settings.database_path, fake_world.clock)
    assert _live(fake_world) == set()


def test_plan_names_a_held_removal_as_held(fake_world: World) -> None:
    """`plan` says a held device's removal waits for a confirm, not that it will be removed."""
    _devices(fake_world, _names(2))
    for name in _names(2):
        fake_world.unspec(name)
    assert fake_world.run_pass().held == _names(2)
    actions = dict(fake_world.reconciler().plan())
    assert actions["d00"].action == PlanAction.HELD
    assert actions["d00"].summary.startswith(
        "nothing: removal held (every device with a spec file")


def test_one_name_made_and_removed_again_and_again_is_one_removal(fake_world: World) -> None:
    """The window counts distinct names: a scratch device made and removed 20 times in a
    minute is never held, and 8 other deletions after it still go."""
    _devices(fake_world, _names(12))
    for _ in range(20):
        fake_world.spec("scratch", NONE)
        assert fake_world.run_pass().ok
        fake_world.unspec("scratch")
        assert fake_world.run_pass().removed == ["scratch"]
        fake_world.clock.sleep(3.0)
    for name in _names(7):
        fake_world.unspec(name)
    assert fake_world.run_pass().removed == _names(7)
