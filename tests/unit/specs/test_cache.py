"""specs.cache.SpecFileCache.resolved: a resolution is reused while its inputs are the same,
and the known devices count only where the resolution asked for them."""

from __future__ import annotations

from pathlib import Path

from reconciler.specs import Defaults, KnownDevice, SpecFileCache, SpecFiles, parse_file
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
