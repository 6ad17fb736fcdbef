"""Spec files: what the user wants, parsed and validated where it enters.

One TOML file per device, `<spec_dir>/<name>.toml`. A broken spec becomes a RejectedSpec with a
message that names the file and the problem; it never stops the other specs, and it never asks
for anything to be removed (a device whose spec is broken is left as it is).
Parents are resolved here among the specs themselves: sizes and filesystems are inherited and
cycles are refused. Whether a parent that has no spec still exists is for reconcile to decide.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from stat import S_ISREG
from typing import Literal, cast

from reconciler.units import Bytes, SizeError, parse_size

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SPEC_SUFFIX = ".toml"
Filesystem = Literal["ext4", "xfs", "none"]
FILESYSTEMS: tuple[Filesystem, ...] = ("ext4", "xfs", "none")
# Devices of the snapshotter API are named from a sequence number; spec files may not take
# those names, or a file and a snapshot would drive the same device.
SNAPSHOT_NAME_RE = re.compile(r"^snap-[0-9]+$")
_KEYS = ("size", "parent", "filesystem", "active", "readonly", "labels")


class SpecError(ValueError):
    """One spec is invalid; the message says which key and why."""


@dataclass(frozen=True)
class DeviceSpec:
    """A device as its spec file asks for it, with defaults and inheritance applied."""

    name: str
    size: Bytes
    filesystem: Filesystem
    parent: str | None = None
    active: bool = True
    readonly: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    # A snapshot whose parent has no spec cannot inherit from it; reconcile fills these in
    # from the stored parent, or reports the parent missing.
    size_given: bool = True
    filesystem_given: bool = True
    digest: str = ""


@dataclass(frozen=True)
class RejectedSpec:
    """A spec file that could not be used, and why."""

    name: str
    path: str
    error: str


@dataclass(frozen=True)
class SpecSet:
    """All spec files of a directory: the usable ones by name, and the rejected ones."""

    specs: Mapping[str, DeviceSpec]
    rejected: tuple[RejectedSpec, ...]

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """Every name that has a spec file, usable or not: none of these is to be removed."""
        return frozenset(self.specs) | {r.name for r in self.rejected}


@dataclass(frozen=True)
class Defaults:
    """What a spec gets for the keys it leaves out (from the config)."""

    size: Bytes
    filesystem: Filesystem


def is_spec_file(path: Path) -> bool:
    """Spec files end in .toml; hidden files and editor leftovers are not specs."""
    return path.suffix == SPEC_SUFFIX and not path.name.startswith((".", "#"))


def parse_spec(name: str, text: str, defaults: Defaults) -> DeviceSpec:
    """Parse one spec's text; raises SpecError naming the key at fault."""
    if not NAME_RE.match(name):
        raise SpecError(f"bad name {name!r}: must match {NAME_RE.pattern}")
    if SNAPSHOT_NAME_RE.match(name):
        raise SpecError(f"bad name {name!r}: names snap-<number> belong to the snapshotter API")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise SpecError(f"unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")

    parent = raw.get("parent")
    if parent is not None:
        if not isinstance(parent, str) or not NAME_RE.match(parent):
            raise SpecError(f"key 'parent': {parent!r} is not a device name")
        if parent == name:
            raise SpecError("key 'parent': a device cannot be its own parent")

    size = defaults.size
    if "size" in raw:
        try:
            size = parse_size(raw["size"])
        except SizeError as exc:
            raise SpecError(f"key 'size': {exc}") from None
        if size <= 0 or size % 512:
            raise SpecError(f"key 'size': must be a positive multiple of 512 bytes, got {size}")

    filesystem = raw.get("filesystem", defaults.filesystem)
    if filesystem not in FILESYSTEMS:
        raise SpecError(f"key 'filesystem': {filesystem!r} is not one of {', '.join(FILESYSTEMS)}")

    flags = {}
    for key, default in (("active", True), ("readonly", False)):
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise SpecError(f"key {key!r}: expected true or false, got {value!r}")
        flags[key] = value

    labels = raw.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise SpecError("key 'labels': expected a table of string keys to string values")

    return DeviceSpec(
        name=name,
        size=size,
        filesystem=cast(Filesystem, filesystem),
        parent=parent,
        active=flags["active"],
        readonly=flags["readonly"],
        labels=dict(labels),
        size_given="size" in raw,
        filesystem_given="filesystem" in raw,
        digest=hashlib.sha256(text.encode()).hexdigest(),
    )


def snapshot_name(seq: int) -> str:
    """The device name of the snapshotter API's snapshot number `seq`."""
    return f"snap-{seq}"


def stored_spec(
    name: str, size: int, filesystem: str, parent: str | None, active: bool, readonly: bool,
    labels: Mapping[str, str],
) -> DeviceSpec:
    """A spec kept in the store rather than in a file (the snapshotter API's devices)."""
    if filesystem not in FILESYSTEMS:
        raise SpecError(f"filesystem {filesystem!r} is not one of {', '.join(FILESYSTEMS)}")
    fs: Filesystem = filesystem
    text = repr((size, filesystem, parent, active, readonly, sorted(labels.items())))
    return DeviceSpec(
        name=name, size=Bytes(size), filesystem=fs, parent=parent,
        active=active, readonly=readonly, labels=dict(labels),
        digest=hashlib.sha256(text.encode()).hexdigest(),
    )


# A file modified this recently is read again even if its size and mtime look unchanged:
# two writes within the filesystem's timestamp granularity would look the same (git's
# "racily clean" rule).
RACY_SECONDS = 2.0


class SpecFileCache:
    """Parsed spec files by path, reused while a file's inode, size and mtime stay the same:
    a resync over 10,000 unchanged files stats them instead of reading and parsing them."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[int, int, int], DeviceSpec | RejectedSpec]] = {}
        # The directory the entries are all of, once a full scan filled them; None before.
        self.scanned: Path | None = None

    def get(self, path: str, signature: tuple[int, int, int],
            now_ns: int) -> DeviceSpec | RejectedSpec | None:
        """The parsed spec of an unchanged file, or None (read it)."""
        entry = self._entries.get(path)
        if entry is None or entry[0] != signature:
            return None
        if now_ns - signature[2] < RACY_SECONDS * 1e9:
            return None
        return entry[1]

    def put(self, path: str, signature: tuple[int, int, int],
            parsed: DeviceSpec | RejectedSpec) -> None:
        """Remember a file's parsed spec."""
        self._entries[path] = (signature, parsed)

    def keep_only(self, paths: set[str]) -> None:
        """Forget files that are gone."""
        for path in set(self._entries) - paths:
            del self._entries[path]

    def forget(self, path: str) -> None:
        """A file that is gone."""
        self._entries.pop(path, None)

    def parsed(self) -> list[DeviceSpec | RejectedSpec]:
        """Every remembered file's parsed spec."""
        return [parsed for _, parsed in self._entries.values()]


def _read_spec(path: Path, defaults: Defaults) -> DeviceSpec | RejectedSpec:
    name = path.stem
    try:
        text = path.read_text(encoding="utf-8")
        return parse_spec(name, text, defaults)
    except (OSError, UnicodeDecodeError) as exc:
        return RejectedSpec(name, str(path), f"cannot read: {exc}")
    except SpecError as exc:
        return RejectedSpec(name, str(path), str(exc))


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    """What SpecFileCache compares to tell an unchanged file."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _spec_set(parsed: Iterable[DeviceSpec | RejectedSpec], directory: Path) -> SpecSet:
    specs: dict[str, DeviceSpec] = {}
    rejected: list[RejectedSpec] = []
    for item in parsed:
        if isinstance(item, DeviceSpec):
            specs[item.name] = item
        else:
            rejected.append(item)
    rejected.sort(key=lambda r: r.name)
    return resolve(specs, rejected, directory)


def load_spec_files(directory: Path, names: Iterable[str], defaults: Defaults,
                    cache: SpecFileCache) -> SpecSet:
    """Like load_spec_dir, reading only the files of `names` (what file events named) and
    taking every other file from `cache`, which a full scan of `directory` filled: the
    cost of a change does not grow with the number of files. The next full scan catches
    anything an event missed."""
    if cache.scanned != directory:
        return load_spec_dir(directory, defaults, cache)
    now_ns = time.time_ns()
    for name in names:
        path = directory / f"{name}{SPEC_SUFFIX}"
        if not is_spec_file(path) or path.parent != directory:
            continue
        try:
            stat = os.stat(path)
        except OSError:
            stat = None
        if stat is None or not S_ISREG(stat.st_mode):
            cache.forget(str(path))
            continue
        if cache.get(str(path), _signature(stat), now_ns) is None:
            cache.put(str(path), _signature(stat), _read_spec(path, defaults))
    return _spec_set(cache.parsed(), directory)


def load_spec_dir(directory: Path, defaults: Defaults,
                  cache: SpecFileCache | None = None) -> SpecSet:
    """Read every spec file of a directory and resolve parents among them."""
    found: list[DeviceSpec | RejectedSpec] = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    now_ns = time.time_ns()
    seen: set[str] = set()
    for entry in entries:
        if not entry.name.endswith(SPEC_SUFFIX) or entry.name.startswith((".", "#")) \
                or not entry.is_file():
            continue  # as is_spec_file, without a Path per entry
        parsed: DeviceSpec | RejectedSpec | None = None
        if cache is not None:
            try:
                stat = entry.stat()
            except OSError:
                continue  # deleted while we listed
            signature = _signature(stat)
            seen.add(entry.path)
            parsed = cache.get(entry.path, signature, now_ns)
            if parsed is None:
                parsed = _read_spec(Path(entry.path), defaults)
                cache.put(entry.path, signature, parsed)
        else:
            parsed = _read_spec(Path(entry.path), defaults)
        found.append(parsed)
    if cache is not None:
        cache.keep_only(seen)
        cache.scanned = directory
    return _spec_set(found, directory)


def resolve(
    specs: Mapping[str, DeviceSpec], rejected: Iterable[RejectedSpec], directory: Path
) -> SpecSet:
    """Apply inheritance from parents that have specs; reject cycles and bad inheritance.

    A child of a rejected spec is rejected too: what it would inherit is unknown.
    """
    bad = {r.name: r for r in rejected}
    good: dict[str, DeviceSpec] = {}

    def path_of(name: str) -> str:
        return str(directory / f"{name}{SPEC_SUFFIX}")

    def visit(name: str, trail: tuple[str, ...]) -> DeviceSpec | None:
        if name in good:
            return good[name]
        if name in bad:
            return None
        spec = specs[name]
        if spec.parent is None or (spec.parent not in specs and spec.parent not in bad):
            good[name] = spec
            return spec
        if spec.parent in trail:
            cycle = " -> ".join((*trail[trail.index(spec.parent):], name, spec.parent))
            bad[name] = RejectedSpec(name, path_of(name), f"key 'parent': cycle {cycle}")
            return None
        parent = visit(spec.parent, (*trail, name))
        if parent is None:
            if name not in bad:
                reason = bad[spec.parent].error if spec.parent in bad else "rejected"
                bad[name] = RejectedSpec(
                    name, path_of(name), f"key 'parent': parent {spec.parent!r} is invalid "
                    f"({reason})"
                )
            return None
        try:
            child = inherit(spec, parent.size, parent.filesystem)
        except SpecError as exc:
            bad[name] = RejectedSpec(name, path_of(name), str(exc))
            return None
        good[name] = child
        return child

    for name in sorted(specs):
        visit(name, ())
    ordered = tuple(sorted(bad.values(), key=lambda r: r.name))
    return SpecSet(specs=good, rejected=ordered)


def inherit(spec: DeviceSpec, parent_size: int, parent_filesystem: Filesystem) -> DeviceSpec:
    """Fill a snapshot's size and filesystem from its parent, refusing what cannot work."""
    size = spec.size if spec.size_given else Bytes(parent_size)
    if spec.filesystem_given and spec.filesystem != parent_filesystem:
        raise SpecError(
            f"key 'filesystem': a snapshot keeps its parent's filesystem "
            f"({parent_filesystem!r}), got {spec.filesystem!r}"
        )
    if size < parent_size:
        raise SpecError(
            f"key 'size': a snapshot cannot be smaller than its parent ({parent_size} bytes), "
            f"got {size}"
        )
    return replace(
        spec, size=size, filesystem=parent_filesystem, size_given=True, filesystem_given=True
    )
