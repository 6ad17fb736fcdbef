"""A scan's memo of spec texts: the same bytes under many names are read by tomllib and
checked once; what depends on the name is checked for every file. Counted, not timed."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from reconciler.specs import Defaults, SpecError, SpecFileCache, load_spec_dir
from reconciler.specs import parse as parse_module
from reconciler.specs.parse import TextMemo, parse_file
from reconciler.units import Bytes
from reconciler.vocabulary import NO_LABELS, Filesystem

DEFAULTS = Defaults(size=Bytes(1 << 30), filesystem=Filesystem.EXT4)
TEXT = 'size = "2MiB"\nparent = "base"\nlabels = { tier = "web" }\nnodes = ["n*"]\n'


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often tomllib read a text and the keys were checked."""
    counts = {"toml": 0, "checks": 0}
    loads, checks = tomllib.loads, parse_module._parsed

    def counting_loads(text: str) -> dict[str, Any]:
        counts["toml"] += 1
        return loads(text)

    def counting_checks(*args: object) -> object:
        counts["checks"] += 1
        return checks(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(tomllib, "loads", counting_loads)
    monkeypatch.setattr(parse_module, "_parsed", counting_checks)
    return counts


def test_the_same_text_under_many_names_is_read_and_checked_once(
        counted: dict[str, int]) -> None:
    memo: TextMemo = {}
    parsed = [parse_file(f"d{i}", TEXT, DEFAULTS, memo) for i in range(50)]
    assert counted == {"toml": 1, "checks": 1}
    # Each file its own spec, equal to what parsing it alone makes.
    for i, each in enumerate(parsed):
        assert each == parse_file(f"d{i}", TEXT, DEFAULTS)
        assert each.spec.name == f"d{i}"
    # Labels are each spec's own dict (a spec's are never shared with another's).
    assert parsed[0].spec.labels is not parsed[1].spec.labels
    assert parse_file("e", "", DEFAULTS, memo).spec.labels is NO_LABELS


def test_what_depends_on_the_name_is_checked_for_every_file(counted: dict[str, int]) -> None:
    memo: TextMemo = {}
    parse_file("a", TEXT, DEFAULTS, memo)
    with pytest.raises(SpecError, match="cannot be its own parent"):
        parse_file("base", TEXT, DEFAULTS, memo)
    with pytest.raises(SpecError, match="bad name"):
        parse_file("no/slash", TEXT, DEFAULTS, memo)
    with pytest.raises(SpecError, match="snapshotter API"):
        parse_file("snap-12", TEXT, DEFAULTS, memo)
    assert counted == {"toml": 1, "checks": 1}


def test_a_bad_text_is_checked_again_and_other_defaults_are_not_reused(
        counted: dict[str, int]) -> None:
    memo: TextMemo = {}
    for name in ("a", "b"):
        with pytest.raises(SpecError, match="unknown key"):
            parse_file(name, "colour = 1\n", DEFAULTS, memo)
    assert counted == {"toml": 1, "checks": 2}
    other = Defaults(size=Bytes(1 << 20), filesystem=Filesystem.NONE)
    first = parse_file("c", "", DEFAULTS, memo)
    second = parse_file("d", "", other, memo)
    assert (first.spec.size, first.spec.filesystem) == (1 << 30, "ext4")
    assert (second.spec.size, second.spec.filesystem) == (1 << 20, "none")


def test_a_scan_of_many_files_of_one_text(tmp_path: Path, counted: dict[str, int]) -> None:
    """A directory of 200 files of one text and one of another: two texts read."""
    for i in range(200):
        (tmp_path / f"d{i}.toml").write_text(TEXT)
    (tmp_path / "base.toml").write_text('size = "1MiB"\n')
    specs = load_spec_dir(tmp_path, DEFAULTS, SpecFileCache())
    assert counted == {"toml": 2, "checks": 2}
    assert len(specs.specs) == 201 and not specs.rejected
    assert specs.specs["d7"].parent == "base" and specs.specs["d7"].labels == {"tier": "web"}
