"""specs.resolve with the devices the store holds as made (`known_parents`): parents
resolved once, no half-resolved spec out."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.specs import (
    Defaults,
    DeviceSpec,
    KnownDevice,
    ParsedSpec,
    parse_file,
    resolve,
)
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem

MIB = 1 << 20
DEFAULTS = Defaults(size=Bytes(8 * MIB), filesystem=Filesystem.EXT4)
SPECS = Path("/specs")


def _file(name: str, text: str) -> ParsedSpec:
    return parse_file(name, text, DEFAULTS)


def _known(size_mib: int, filesystem: str = "xfs") -> KnownDevice:
    return KnownDevice(Bytes(size_mib * MIB), Filesystem(filesystem))


@pytest.mark.parametrize(("text", "known", "size_mib", "filesystem"), [
    ('parent = "base"\n', {"base": _known(64)}, 64, "xfs"),  # all from the stored parent
    ('parent = "base"\nsize = "128MiB"\n', {"base": _known(64)}, 128, "xfs"),  # its own size
    # Made already: it keeps what it is, whatever became of its parent.
    ('parent = "base"\n', {"snap": _known(32), "base": _known(64)}, 32, "xfs"),
    ('parent = "base"\n', {"snap": _known(32)}, 32, "xfs"),
])
def test_a_snapshot_of_a_parent_without_spec_inherits_from_the_known_device(
        text: str, known: dict[str, KnownDevice], size_mib: int, filesystem: str) -> None:
    """Without a spec for its parent, a snapshot takes size and filesystem from its own
    made device, else from its parent's, and leaves resolved."""
    result = resolve({"snap": _file("snap", text)}, [], SPECS, known)
    assert result.rejected == ()
    spec = result.specs["snap"]
    assert (spec.size, spec.filesystem) == (size_mib * MIB, filesystem)


@pytest.mark.parametrize(("text", "known", "error"), [
    ('parent = "gone"\n', {}, "key 'parent': parent 'gone' does not exist (no spec file and "
     "no device)"),
    ('parent = "base"\nsize = "16MiB"\n', {"base": _known(64)},
     "key 'size': a snapshot cannot be smaller than its parent"),
    ('parent = "base"\nfilesystem = "ext4"\n', {"base": _known(64)},
     "key 'filesystem': a snapshot keeps its parent's filesystem ('xfs'), got 'ext4'"),
])
def test_a_snapshot_that_cannot_be_made_from_what_is_known_is_rejected(
        text: str, known: dict[str, KnownDevice], error: str) -> None:
    """A parent nowhere (no spec, no device), or one it cannot be a snapshot of, rejects the
    snapshot with the reason, naming its file."""
    result = resolve({"snap": _file("snap", text)}, [], SPECS, known)
    assert result.specs == {}
    [rejected] = result.rejected
    assert (rejected.name, rejected.path) == ("snap", "/specs/snap.toml")
    assert rejected.error.startswith(error)


def test_a_spec_file_with_a_parent_spec_inherits_from_it_not_from_the_store() -> None:
    """A parent that has a spec is what its snapshot inherits, the store notwithstanding."""
    specs = {"base": _file("base", 'size = "512MiB"\nfilesystem = "xfs"\n'),
             "snap": _file("snap", 'parent = "base"\n')}
    result = resolve(specs, [], SPECS, {"base": _known(64, "ext4")})
    assert (result.specs["snap"].size, result.specs["snap"].filesystem) == (512 * MIB, "xfs")


def test_the_stores_specs_are_not_judged_again_against_a_parent_spec() -> None:
    """A complete spec (the snapshotter's row) is taken as it is when its parent has one."""
    base = DeviceSpec(name="snap-base-1", size=Bytes(64 * MIB), filesystem=Filesystem.EXT4)
    child = DeviceSpec(name="snap-2", size=Bytes(32 * MIB), filesystem=Filesystem.EXT4,
                       parent="snap-base-1")
    result = resolve({"snap-base-1": base, "snap-2": child}, [], SPECS, {})
    assert result.specs == {"snap-base-1": base, "snap-2": child}


def test_a_spec_file_snapshot_of_a_stored_spec_inherits_from_that_spec() -> None:
    """A file whose parent is the snapshotter's device takes that device's size and
    filesystem (before issue 22 it took the config's defaults, and so described a filesystem
    its device did not hold)."""
    stored = DeviceSpec(name="snap-7", size=Bytes(64 * MIB), filesystem=Filesystem.XFS)
    files = {"copy": _file("copy", 'parent = "snap-7"\n')}
    result = resolve({**files, "snap-7": stored}, [], SPECS, {})
    assert result.rejected == ()
    copy = result.specs["copy"]
    assert (copy.size, copy.filesystem, copy.parent) == (64 * MIB, Filesystem.XFS, "snap-7")


def test_a_stored_spec_that_cannot_be_a_snapshot_of_its_parents_device_is_rejected() -> None:
    """A stored spec (complete) whose parent has no spec and whose made device it cannot be
    a snapshot of is a rejected spec with the reason, not an error out of the pass."""
    child = DeviceSpec(name="snap-9", size=Bytes(16 * MIB), filesystem=Filesystem.EXT4,
                       parent="snap-base-3")
    result = resolve({"snap-9": child}, [], SPECS, {"snap-base-3": _known(64, "ext4")})
    assert result.specs == {}
    [rejected] = result.rejected
    assert rejected.name == "snap-9"
    assert rejected.error.startswith("key 'size': a snapshot cannot be smaller than its parent")
