"""Spec files: parsing, defaults, inheritance from parents, and named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.reconcile.desired import apply_spec
from reconciler.specs import (
    Defaults,
    SpecError,
    SpecFileCache,
    load_spec_dir,
    load_spec_files,
    parse_spec,
)
from reconciler.store import DeviceRecord
from reconciler.units import Bytes
from reconciler.vocabulary import NO_LABELS, Filesystem

DEFAULTS = Defaults(size=Bytes(1 << 30), filesystem=Filesystem.EXT4)


def write(directory: Path, name: str, text: str) -> None:
    (directory / f"{name}.toml").write_text(text)


def test_a_spec_with_no_keys_takes_the_defaults() -> None:
    """An empty file asks for an active, writable device of base_image_size with fs_type."""
    spec = parse_spec("web-base", "", DEFAULTS)
    assert (spec.size, spec.filesystem, spec.active, spec.readonly) == (1 << 30, "ext4", True,
                                                                       False)
    assert spec.parent is None


def test_a_spec_without_labels_shares_no_labels_and_so_does_its_record() -> None:
    """No labels: the one shared NO_LABELS, in the spec and in the record it is applied to
    (an empty dict each was 6 MB at 50,000 devices); labels: a dict of the record's own."""
    bare = parse_spec("a", "", DEFAULTS)
    labelled = parse_spec("b", '[labels]\nteam = "web"\n', DEFAULTS)
    assert bare.labels is NO_LABELS and labelled.labels == {"team": "web"}
    record = DeviceRecord(name="b")
    apply_spec(record, labelled)
    assert record.labels == {"team": "web"} and record.labels is not labelled.labels
    apply_spec(record, bare)
    assert record.labels is NO_LABELS


def test_every_key_is_read() -> None:
    """size, parent, filesystem, active, readonly and labels all reach the spec."""
    spec = parse_spec(
        "web-1",
        'size = "2GiB"\nparent = "web-base"\nfilesystem = "ext4"\nactive = false\n'
        'readonly = true\n[labels]\nteam = "web"\n',
        DEFAULTS,
    )
    assert spec.size == 2 << 30
    assert spec.parent == "web-base"
    assert (spec.active, spec.readonly) == (False, True)
    assert spec.labels == {"team": "web"}


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("ok", "colour = 1", "unknown key 'colour'"),
        ("ok", 'size = "big"', "key 'size'"),
        ("ok", "size = 1000", "multiple of 512"),
        ("ok", 'filesystem = "ntfs"', "key 'filesystem'"),
        ("ok", 'active = "yes"', "key 'active'"),
        ("ok", "[labels]\nx = 1", "key 'labels'"),
        ("ok", 'parent = "ok"', "own parent"),
        ("ok", 'parent = "bad/name"', "key 'parent'"),
        ("ok", "size = ", "not valid TOML"),
        ("-bad", "", "bad name"),
    ],
)
def test_broken_specs_say_which_key_is_wrong(name: str, text: str, words: str) -> None:
    """Each problem raises SpecError naming the key (or the file's name)."""
    with pytest.raises(SpecError, match=words):
        parse_spec(name, text, DEFAULTS)


def test_a_snapshot_inherits_size_and_filesystem_from_its_parent(tmp_path: Path) -> None:
    """A snapshot without size or filesystem takes its parent's."""
    write(tmp_path, "base", 'size = "2GiB"\nfilesystem = "xfs"\n')
    write(tmp_path, "snap", 'parent = "base"\n')
    specs = load_spec_dir(tmp_path, DEFAULTS)
    assert specs.specs["snap"].size == 2 << 30
    assert specs.specs["snap"].filesystem == "xfs"
    assert not specs.rejected


def test_broken_specs_are_rejected_alone(tmp_path: Path) -> None:
    """A broken spec is listed with its error; the other specs are still usable."""
    write(tmp_path, "good", "")
    write(tmp_path, "broken", "size = 'huge'")
    specs = load_spec_dir(tmp_path, DEFAULTS)
    assert set(specs.specs) == {"good"}
    assert [r.name for r in specs.rejected] == ["broken"]
    assert "key 'size'" in specs.rejected[0].error
    assert specs.names == {"good", "broken"}


def test_parent_cycles_are_rejected_with_the_cycle_named(tmp_path: Path) -> None:
    """a -> b -> a is refused for both, and the error shows the cycle."""
    write(tmp_path, "a", 'parent = "b"')
    write(tmp_path, "b", 'parent = "a"')
    write(tmp_path, "c", 'parent = "a"')
    specs = load_spec_dir(tmp_path, DEFAULTS)
    errors = {r.name: r.error for r in specs.rejected}
    assert set(errors) == {"a", "b", "c"}
    assert "cycle" in errors["a"] or "cycle" in errors["b"]
    assert "parent 'a' is invalid" in errors["c"]


def test_children_of_rejected_specs_are_rejected(tmp_path: Path) -> None:
    """A snapshot of a broken spec cannot know what it inherits, so it waits rejected."""
    write(tmp_path, "base", "size = 'x'")
    write(tmp_path, "snap", 'parent = "base"')
    specs = load_spec_dir(tmp_path, DEFAULTS)
    assert {r.name for r in specs.rejected} == {"base", "snap"}


def test_snapshots_cannot_shrink_or_change_filesystem(tmp_path: Path) -> None:
    """A snapshot smaller than its parent, or with another filesystem, is refused."""
    write(tmp_path, "base", 'size = "2GiB"')
    write(tmp_path, "small", 'parent = "base"\nsize = "1GiB"')
    write(tmp_path, "other", 'parent = "base"\nfilesystem = "xfs"')
    errors = {r.name: r.error for r in load_spec_dir(tmp_path, DEFAULTS).rejected}
    assert "smaller than its parent" in errors["small"]
    assert "keeps its parent's filesystem" in errors["other"]


def test_hidden_and_editor_files_are_not_specs(tmp_path: Path) -> None:
    """.swp, ~ backups, hidden files and non-.toml files are ignored."""
    write(tmp_path, ".hidden", "")
    (tmp_path / "web.toml~").write_text("")
    (tmp_path / "web.toml.swp").write_text("")
    (tmp_path / "notes.txt").write_text("")
    specs = load_spec_dir(tmp_path, DEFAULTS)
    assert not specs.specs
    assert not specs.rejected


def test_a_missing_parent_is_left_for_reconcile_to_judge(tmp_path: Path) -> None:
    """A parent with no spec may still exist as a device: the directory alone (no known
    devices) keeps the child as parsed, with the defaults, and rejects nothing."""
    write(tmp_path, "snap", 'parent = "gone"')
    specs = load_spec_dir(tmp_path, DEFAULTS)
    assert specs.specs["snap"].parent == "gone"
    assert specs.specs["snap"].size == DEFAULTS.size
    assert not specs.rejected


def test_a_changed_name_rereads_only_its_file(tmp_path: Path) -> None:
    """After a full scan, load_spec_files reads just the named files: a new one appears, a
    deleted one goes, a broken one is rejected, and the inheritance is resolved over all of
    them; a file changed without being named waits for the next full scan."""
    cache = SpecFileCache()
    write(tmp_path, "base", 'size = "2GiB"\n')
    write(tmp_path, "gone", "")
    write(tmp_path, "quiet", 'size = "1GiB"\n')
    assert set(load_spec_dir(tmp_path, DEFAULTS, cache).specs) == {"base", "gone", "quiet"}

    write(tmp_path, "child", 'parent = "base"\n')
    write(tmp_path, "broken", "size = \n")
    (tmp_path / "gone.toml").unlink()
    write(tmp_path, "quiet", 'size = "3GiB"\n')
    partial = load_spec_files(tmp_path, ["child", "broken", "gone", "nosuch", "../x"],
                              DEFAULTS, cache)
    assert set(partial.specs) == {"base", "quiet", "child"}
    assert partial.specs["child"].size == 2 << 30, "inherited from base"
    assert [r.name for r in partial.rejected] == ["broken"]
    assert partial.specs["quiet"].size == 1 << 30, "not named: as the last scan saw it"
    assert load_spec_dir(tmp_path, DEFAULTS, cache).specs["quiet"].size == 3 << 30


def test_without_a_full_scan_the_named_files_are_not_enough(tmp_path: Path) -> None:
    """An empty cache knows nothing of the other files: the first call scans them all."""
    write(tmp_path, "a", "")
    write(tmp_path, "b", "")
    cache = SpecFileCache()
    assert set(load_spec_files(tmp_path, ["a"], DEFAULTS, cache).specs) == {"a", "b"}
    assert cache.scanned == tmp_path
