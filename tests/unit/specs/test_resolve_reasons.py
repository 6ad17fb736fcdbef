"""Rejection reasons stay bounded: a child names its parent, not its parent's reason."""

from __future__ import annotations

from pathlib import Path

from reconciler.specs import Defaults, load_spec_dir
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem

DEFAULTS = Defaults(size=Bytes(64 << 20), filesystem=Filesystem.EXT4)
BOUND = 300


def test_a_broken_1000_deep_chain_gives_every_link_a_short_reason(tmp_path: Path) -> None:
    """A chain 1,000 deep under a broken root: each reason is under 300 bytes."""
    (tmp_path / "c0000.toml").write_text("size = 'huge'\n")
    for i in range(1, 1000):
        (tmp_path / f"c{i:04}.toml").write_text(f'parent = "c{i - 1:04}"\n')
    specs = load_spec_dir(tmp_path, DEFAULTS)
    errors = {r.name: r.error for r in specs.rejected}
    assert len(errors) == 1000 and not specs.specs
    assert max(len(e.encode()) for e in errors.values()) < BOUND
    assert "'c0998'" in errors["c0999"] and "'c0997'" not in errors["c0999"]
    assert "key 'size'" in errors["c0000"] and "key 'size'" not in errors["c0001"]


def test_a_1000_long_cycle_gives_every_member_a_short_reason(tmp_path: Path) -> None:
    """A cycle of 1,000 specs: each member's reason is under 300 bytes and names its parent."""
    for i in range(1000):
        (tmp_path / f"c{i:04}.toml").write_text(f'parent = "c{(i + 1) % 1000:04}"\n')
    errors = {r.name: r.error for r in load_spec_dir(tmp_path, DEFAULTS).rejected}
    assert len(errors) == 1000
    assert max(len(e.encode()) for e in errors.values()) < BOUND
    assert "cycle" in errors["c0500"] and "'c0501'" in errors["c0500"]


def test_a_short_cycle_is_shown_whole(tmp_path: Path) -> None:
    """A cycle of two is still shown as it is: a -> b -> a."""
    (tmp_path / "a.toml").write_text('parent = "b"\n')
    (tmp_path / "b.toml").write_text('parent = "a"\n')
    errors = {r.name: r.error for r in load_spec_dir(tmp_path, DEFAULTS).rejected}
    assert errors["a"] == "key 'parent': cycle a -> b -> a"
