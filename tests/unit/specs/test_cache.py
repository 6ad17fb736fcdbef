"""specs.cache.SpecFileCache.resolved: a resolution is reused while its inputs are the same,
and the known devices count only where the resolution asked for them; a scan parses each
distinct text once."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from reconciler.specs import (
    RACY_SECONDS,
    Defaults,
    KnownDevice,
    SpecFileCache,
    SpecFiles,
    parse_file,
    scan_spec_dir,
)
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem

MIB = 1 << 20
DEFAULTS = Defaults(size=Bytes(8 * MIB), filesystem=Filesystem.EXT4)
SPECS = Path("/specs")


def _files() -> SpecFiles:
    """`web` of its own, and `copy`, a snapshot of `base`, which has no spec file."""
    return SpecFiles(parsed={"web": parse_file("web", "", DEFAULTS),
                             "copy": parse_file("copy", 'parent = "base"\n', DEFAULTS)},
                     rejected=())


def _known(base_mib: int, others: int) -> dict[str, KnownDevice]:
    known = {f"d{i}": KnownDevice(Bytes(4 * MIB), Filesystem.NONE) for i in range(others)}
    known["base"] = KnownDevice(Bytes(base_mib * MIB), Filesystem.XFS)
    return known


def test_a_resolution_is_reused_while_the_devices_it_asked_for_are_the_same() -> None:
    """Known devices it never asked for (no spec names them as a parent) may come and go:
    the same SpecSet is handed back, so a resync resolves no parents again."""
    cache, files = SpecFileCache(), _files()
    first = cache.resolved(files, SPECS, {}, _known(64, others=3))
    assert first.specs["copy"].size == 64 * MIB
    assert cache.resolved(files, SPECS, {}, _known(64, others=1000)) is first


def test_a_resolution_is_made_again_when_an_asked_for_device_changes() -> None:
    """The parent without a spec grew (or was made, or went): the snapshot's spec follows."""
    cache, files = SpecFileCache(), _files()
    first = cache.resolved(files, SPECS, {}, _known(64, others=3))
    grown = cache.resolved(files, SPECS, {}, _known(128, others=3))
    assert grown is not first and grown.specs["copy"].size == 128 * MIB
    gone = cache.resolved(files, SPECS, {}, {})
    assert "copy" not in gone.specs and [r.name for r in gone.rejected] == ["copy"]
    assert cache.resolved(files, SPECS, {}, None).specs["copy"].size == 8 * MIB


def test_a_scan_parses_each_distinct_text_once(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of the same bytes under different names are parsed once per scan, each still
    its own spec (its name, the text's digest); a bad name or a changed text is not hidden
    by the text parsed before."""
    parsed: list[str] = []
    real = tomllib.loads

    def counting(text: str) -> dict[str, Any]:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(tomllib, "loads", counting)
    same = 'filesystem = "none"\nsize = "4MiB"\n'
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.toml").write_text(same)
    (tmp_path / "d.toml").write_text('filesystem = "xfs"\nsize = "512MiB"\n')
    (tmp_path / "snap-1.toml").write_text(same)
    files = scan_spec_dir(tmp_path, DEFAULTS, allow_foreign=True)
    assert sorted(parsed) == sorted([same, 'filesystem = "xfs"\nsize = "512MiB"\n'])
    specs = {name: p.spec for name, p in files.parsed.items()}
    assert sorted(specs) == ["a", "b", "c", "d"]
    assert [specs[n].name for n in "abc"] == ["a", "b", "c"]
    assert {(s.size, s.filesystem, s.digest) for n, s in specs.items() if n != "d"} == {
        (4 * MIB, Filesystem.NONE, parse_file("x", same, DEFAULTS).spec.digest)}
    assert specs["d"].filesystem == Filesystem.XFS
    assert [r.name for r in files.rejected] == ["snap-1"]


def test_an_entry_is_one_flat_tuple_and_get_answers_only_an_unchanged_settled_file() -> None:
    """A file's entry is its inode, size, mtime and parsed spec in one tuple (no signature
    tuple inside another: 3 MB at 50,000 files); `get` hands the parsed spec back for the
    same signature once the mtime is past the racy window, None otherwise."""
    cache = SpecFileCache()
    parsed = parse_file("web", "", DEFAULTS)
    mtime = 10**18
    cache.put("/specs/web.toml", (7, 0, mtime), parsed)
    assert cache.entries["/specs/web.toml"] == (7, 0, mtime, parsed)
    settled = mtime + int(RACY_SECONDS * 1e9)
    assert cache.get("/specs/web.toml", (7, 0, mtime), settled) is parsed
    assert cache.get("/specs/web.toml", (7, 1, mtime), settled) is None
    assert cache.get("/specs/web.toml", (8, 0, mtime), settled) is None
    assert cache.get("/specs/web.toml", (7, 0, mtime), mtime + 1) is None
    assert cache.get("/specs/gone.toml", (7, 0, mtime), settled) is None
    assert cache.parsed() == [parsed]
