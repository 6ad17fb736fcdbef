"""Spec files: what the user wants, parsed and validated where it enters.

One TOML file per device, `<spec_dir>/<name>.toml`. A broken spec becomes a RejectedSpec with a
message that names the file and the problem; it never stops the other specs, and it never asks
for anything to be removed (a device whose spec is broken is left as it is).
Parents are resolved here among the specs themselves: sizes and filesystems are inherited and
cycles are refused. Whether a parent that has no spec still exists is for reconcile to decide.

A spec file is an order given to root: create, grow and, by its absence, remove. So only root
and the daemon's own user may give it. A spec file owned by another user is a rejected spec
(its device kept as it is), and a spec_dir that another user owns, or that its group or
everyone may write to, is a source error (nothing is removed): whoever can write there can
add specs and delete them. `allow_foreign_specs` accepts both, on purpose. A spec_dir on a
read-only mount (a Kubernetes ConfigMap volume: kubelet mounts it read-only and its directory
may be 0777) can be written through it by nobody, whatever its mode bits, so its mode is no
source error; its owner still is.

One directory may serve a fleet: a spec's `nodes` (shell globs) says which nodes it is for,
and on any other node it is as if its file were not there (its device, if any, is removed
under the same guard as a deleted file's), but for a snapshot on this node of a parent that
is not: that is a rejected spec. The `..`-prefixed entries kubelet's AtomicWriter keeps in a
ConfigMap volume (`..data`, `..data_tmp`, its timestamped directories) are never specs.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import hashlib
import operator
import os
import re
import stat
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler.units import XFS_MIN_SIZE, Bytes, SizeError, format_size, parse_size
from reconciler.vocabulary import Filesystem

# Matched whole (fullmatch): "$" alone would let a name end in a newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SPEC_SUFFIX = ".toml"
FILESYSTEMS: tuple[str, ...] = tuple(member.value for member in Filesystem)
# Devices of the snapshotter API are named from a sequence number (its base devices, the
# formatted filesystems root snapshots are taken from, from a count of their own); spec files
# may not take those names, or a file and a snapshot would drive the same device.
SNAPSHOT_NAME_RE = re.compile(r"snap-(?:base-)?[0-9]+")
_KEYS = ("size", "parent", "filesystem", "active", "readonly", "labels", "nodes")
# Bounds of a spec's `nodes`: more patterns than any fleet needs, each as long as a Kubernetes
# node name may be (a DNS subdomain, 253 characters).
MAX_NODE_PATTERNS = 64
MAX_NODE_PATTERN_CHARS = 253
# The symlink kubelet's AtomicWriter swaps to update a ConfigMap volume all at once.
CONFIGMAP_DATA = "..data"


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
    # The node-name globs this spec is for; None (no `nodes` key): every node.
    nodes: tuple[str, ...] | None = None


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
    # Set when the directory could not be read completely (missing, not a directory,
    # unreadable): then absent files prove nothing and no device may be removed for them.
    source_error: str | None = None
    # The directory's filesystem (st_dev) as read; None when it could not be read.
    directory_device: int | None = None
    # Good specs whose `nodes` leave this node out: neither wanted nor rejected here.
    elsewhere: tuple[str, ...] = ()

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """Every name that has a spec file, usable or not: none of these is to be removed."""
        return frozenset(self.specs) | {r.name for r in self.rejected}


@dataclass(frozen=True)
class Defaults:
    """What a spec gets for the keys it leaves out (from the config)."""

    size: Bytes
    filesystem: Filesystem


def is_snapshot_device(name: str) -> bool:
    """Whether a device belongs to the snapshotter API (whose removals are explicit calls)."""
    return SNAPSHOT_NAME_RE.fullmatch(name) is not None


def is_spec_file(path: Path) -> bool:
    """Spec files end in .toml; hidden files and editor leftovers are not specs."""
    return path.suffix == SPEC_SUFFIX and not path.name.startswith((".", "#"))


def is_for_node(patterns: tuple[str, ...] | None, node: str) -> bool:
    """Whether a spec with these `nodes` globs is for the node named `node` (no globs: every
    node). Case-sensitive, as node names are compared everywhere else."""
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(node, pattern) for pattern in patterns)


def _nodes(value: object) -> tuple[str, ...]:
    """A spec's `nodes` key, validated."""
    if not isinstance(value, list) or not value:
        raise SpecError(f"key 'nodes': expected a non-empty list of node-name globs, "
                        f"got {value!r}")
    if len(value) > MAX_NODE_PATTERNS:
        raise SpecError(f"key 'nodes': {len(value)} patterns, more than the "
                        f"{MAX_NODE_PATTERNS} a spec may give")
    for pattern in value:
        if not isinstance(pattern, str) or not pattern:
            raise SpecError(f"key 'nodes': {pattern!r} is not a non-empty string")
        if len(pattern) > MAX_NODE_PATTERN_CHARS:
            raise SpecError(f"key 'nodes': a pattern of {len(pattern)} characters, longer "
                            f"than the {MAX_NODE_PATTERN_CHARS} of a node name")
        if not pattern.isprintable():
            raise SpecError(f"key 'nodes': {pattern!r} holds a control character")
    return tuple(value)


def select_for_node(specs: Mapping[str, DeviceSpec], node: str | None, directory: Path
                    ) -> tuple[dict[str, DeviceSpec], list[RejectedSpec], tuple[str, ...]]:
    """The specs for `node` (None: no selection, every spec), the snapshots for it whose
    parent's spec is not (rejected: what they would be taken from is not to exist here),
    and the names of the specs for other nodes, sorted. Pure: table-tested."""
    if node is None:
        return dict(specs), [], ()
    elsewhere = {n for n, spec in specs.items() if not is_for_node(spec.nodes, node)}
    if not elsewhere:
        return dict(specs), [], ()
    here: dict[str, DeviceSpec] = {}
    rejected: list[RejectedSpec] = []
    for name, spec in specs.items():
        if name in elsewhere:
            continue
        if spec.parent is not None and spec.parent in elsewhere:
            parent_nodes = ", ".join(specs[spec.parent].nodes or ())
            rejected.append(RejectedSpec(name, str(directory / f"{name}{SPEC_SUFFIX}"), (
                f"key 'parent': parent {spec.parent!r} is not for this node ({node!r}; "
                f"its nodes: {parent_nodes}): a snapshot needs its parent on its node")))
            continue
        here[name] = spec
    return here, rejected, tuple(sorted(elsewhere))


def parse_spec(name: str, text: str, defaults: Defaults) -> DeviceSpec:
    """Parse one spec's text; raises SpecError naming the key at fault."""
    if not NAME_RE.fullmatch(name):
        raise SpecError(f"bad name {name!r}: must match {NAME_RE.pattern}")
    if SNAPSHOT_NAME_RE.fullmatch(name):
        raise SpecError(f"bad name {name!r}: names snap-<number> and snap-base-<number> "
                        "belong to the snapshotter API")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise SpecError(f"unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")

    parent = raw.get("parent")
    if parent is not None:
        if not isinstance(parent, str) or not NAME_RE.fullmatch(parent):
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
    if parent is None and filesystem == "xfs" and size < XFS_MIN_SIZE:
        raise SpecError(f"key 'size': {format_size(size)} is too small for filesystem "
                        f"\"xfs\": mkfs.xfs makes no filesystem under {format_size(XFS_MIN_SIZE)}")

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

    nodes = _nodes(raw["nodes"]) if "nodes" in raw else None

    return DeviceSpec(
        name=name,
        size=size,
        filesystem=Filesystem(filesystem),
        parent=parent,
        active=flags["active"],
        readonly=flags["readonly"],
        labels=dict(labels),
        size_given="size" in raw,
        filesystem_given="filesystem" in raw,
        digest=hashlib.sha256(text.encode()).hexdigest(),
        nodes=nodes,
    )


def snapshot_name(seq: int) -> str:
    """The device name of the snapshotter API's snapshot number `seq` (a base's is negative:
    bases count down, so containerd's snapshots keep their own numbers)."""
    return f"snap-base-{-seq}" if seq < 0 else f"snap-{seq}"


def stored_spec(
    name: str, size: int, filesystem: str, parent: str | None, active: bool, readonly: bool,
    labels: Mapping[str, str],
) -> DeviceSpec:
    """A spec kept in the store rather than in a file (the snapshotter API's devices)."""
    if filesystem not in FILESYSTEMS:
        raise SpecError(f"filesystem {filesystem!r} is not one of {', '.join(FILESYSTEMS)}")
    fs = Filesystem(filesystem)
    # The value, not the member: the digest stays what earlier versions stored.
    text = repr((size, fs.value, parent, active, readonly, sorted(labels.items())))
    return DeviceSpec(
        name=name, size=Bytes(size), filesystem=fs, parent=parent,
        active=active, readonly=readonly, labels=dict(labels),
        digest=hashlib.sha256(text.encode()).hexdigest(),
    )


# A file modified this recently is read again even if its size and mtime look unchanged:
# two writes within the filesystem's timestamp granularity would look the same (git's
# "racily clean" rule).
RACY_SECONDS = 2.0
# No spec is anywhere near this long; a larger file (or a link to one) is refused unread.
MAX_SPEC_BYTES = 1 << 20
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


class SpecSourceError(Exception):
    """The spec directory could not be read completely: absence proves nothing."""


# Users who may give the daemon orders through spec files: root and the daemon's own user
# (who could do whatever a spec asks anyway).
def _trusted(uid: int) -> bool:
    return uid in (0, os.geteuid())


_ALLOW_KEY = "allow_foreign_specs = true"


def _foreign_owner(st: os.stat_result) -> str | None:
    """Why a spec file's owner may not give orders, or None when it may."""
    if _trusted(st.st_uid):
        return None
    return (f"owned by uid {st.st_uid}, neither root nor the daemon's user "
            f"({os.geteuid()}): refused, the device is kept as it is ({_ALLOW_KEY} accepts it)")


def _open_directory(directory: Path, st: os.stat_result) -> str | None:
    """Why users other than root and ours could change the spec directory, or None."""
    if not _trusted(st.st_uid):
        return (f"spec_dir {directory} is owned by uid {st.st_uid}, neither root nor the "
                f"daemon's user ({os.geteuid()}): its owner could add or delete specs; "
                f"chown it, or set {_ALLOW_KEY}")
    writers = [who for bit, who in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "everyone"))
               if st.st_mode & bit]
    if not writers or read_only_mount(directory):
        return None
    return (f"spec_dir {directory} is writable by {' and '.join(writers)} (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): they could add or delete specs; chmod go-w "
            f"it, or set {_ALLOW_KEY}")


def read_only_mount(directory: Path) -> bool:
    """Whether `directory` is on a read-only mount: then nobody can add or delete a spec
    through it, whatever its mode bits say (kubelet mounts a ConfigMap volume read-only, its
    directory often 0777). What writes it behind the mount (kubelet, through its own
    directory, which only root may reach) is root's. A mount whose flags cannot be read is
    not taken as read-only."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class SpecFileCache:
    """Parsed spec files by path, reused while a file's inode, size and mtime stay the same:
    a resync over 10,000 unchanged files stats them instead of reading and parsing them."""

    def __init__(self) -> None:
        # By path: the signature a file had when parsed, and what it parsed to.
        self.entries: dict[str, tuple[tuple[int, int, int], DeviceSpec | RejectedSpec]] = {}
        # The directory the entries are all of, once a full scan filled them; None before.
        self.scanned: Path | None = None
        # The spec directory's filesystem (st_dev) when it was last read completely.
        self.device: int | None = None
        # The last full scan's parsed files, in order, the node they were selected for, and
        # the SpecSet made of them.
        self._last: tuple[list[DeviceSpec | RejectedSpec], str | None, SpecSet] | None = None

    def get(self, path: str, signature: tuple[int, int, int],
            now_ns: int) -> DeviceSpec | RejectedSpec | None:
        """The parsed spec of an unchanged file, or None (read it)."""
        entry = self.entries.get(path)
        if entry is None or entry[0] != signature:
            return None
        if abs(now_ns - signature[2]) < RACY_SECONDS * 1e9:
            return None
        return entry[1]

    def put(self, path: str, signature: tuple[int, int, int],
            parsed: DeviceSpec | RejectedSpec) -> None:
        """Remember a file's parsed spec."""
        self.entries[path] = (signature, parsed)

    def spec_set(self, found: list[DeviceSpec | RejectedSpec], directory: Path,
                 device: int | None, node: str | None = None) -> SpecSet:
        """The SpecSet of a full scan: the last one when the scan found the very same parsed
        files (the same objects, which `get` hands back for unchanged files) in the same
        directory, so a resync over unchanged files resolves no parents again."""
        last = self._last
        if last is not None and len(last[0]) == len(found) \
                and all(map(operator.is_, last[0], found)) and last[1] == node \
                and last[2].directory_device == device and self.scanned == directory:
            return last[2]
        made = _spec_set(found, directory, device, node)
        self._last = (found, node, made)
        return made

    def keep_only(self, paths: set[str]) -> None:
        """Forget files that are gone."""
        for path in set(self.entries) - paths:
            del self.entries[path]

    def forget(self, path: str) -> None:
        """A file that is gone."""
        self.entries.pop(path, None)

    def parsed(self) -> list[DeviceSpec | RejectedSpec]:
        """Every remembered file's parsed spec."""
        return [parsed for _, parsed in self.entries.values()]


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    """What SpecFileCache compares to tell an unchanged file."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _entry_status(path: str, allow_foreign: bool) -> os.stat_result | RejectedSpec | None:
    """The stat of what a spec entry points to; a RejectedSpec when the entry is there but
    cannot be a spec file (dangling or looping symlink, not a regular file, too large,
    unreadable, owned by another user unless `allow_foreign`); None when the entry itself is
    gone (deleted: that is a removal request). A path string, not a Path: a resync stats
    10,000 of them, and building a Path for each cost more than the stat."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            return RejectedSpec(_stem(path), path, "a symlink to nothing (dangling): the "
                                "device is kept as it is")
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return RejectedSpec(_stem(path), path, "a symlink loop: the device is kept as "
                                "it is")
        return RejectedSpec(_stem(path), path, f"cannot stat: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return RejectedSpec(_stem(path), path, f"{_kind(st.st_mode)}, not a regular file: "
                            "the device is kept as it is")
    if st.st_size > MAX_SPEC_BYTES:
        return RejectedSpec(_stem(path), path, f"{st.st_size} bytes: larger than the "
                            f"{MAX_SPEC_BYTES} a spec may be")
    foreign = None if allow_foreign else _foreign_owner(st)
    if foreign is not None:
        return RejectedSpec(_stem(path), path, foreign)
    return st


def _stem(path: str) -> str:
    """The device name of a spec file's path (its file name without SPEC_SUFFIX)."""
    return os.path.basename(path).removesuffix(SPEC_SUFFIX)


def _read_bounded(path: Path, allow_foreign: bool) -> bytes:
    """A spec file's bytes, read without blocking (a FIFO renamed over a file between our
    stat and our open cannot hang us), from a regular file of a trusted owner (checked again
    on what we opened), at most MAX_SPEC_BYTES."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(f"{_kind(st.st_mode)}, not a regular file")
        foreign = None if allow_foreign else _foreign_owner(st)
        if foreign is not None:
            raise SpecError(foreign)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SPEC_BYTES:
            chunk = os.read(fd, MAX_SPEC_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"larger than the {MAX_SPEC_BYTES} bytes a spec may be")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_spec(path: Path, defaults: Defaults, *,
              allow_foreign: bool = False) -> DeviceSpec | RejectedSpec:
    """One spec file, read and parsed; whatever is wrong with it (its type, owner, size,
    bytes, TOML, keys, values, or an error nobody foresaw) makes it a RejectedSpec, never an
    exception: one bad file is that file's problem."""
    name = path.stem
    try:
        return parse_spec(name, _read_bounded(path, allow_foreign).decode("utf-8"), defaults)
    except SpecError as exc:
        return RejectedSpec(name, str(path), str(exc))
    except UnicodeDecodeError as exc:
        return RejectedSpec(name, str(path), f"not UTF-8 text: {exc.reason} at byte "
                            f"{exc.start}")
    except OSError as exc:
        return RejectedSpec(name, str(path), f"cannot read: {exc.strerror or exc}")
    except RecursionError:
        return RejectedSpec(name, str(path), "nested too deeply to parse")
    except Exception as exc:  # noqa: BLE001 - contained to this file, named in status
        return RejectedSpec(name, str(path), f"cannot parse: {type(exc).__name__}: {exc}")


def _spec_set(parsed: Iterable[DeviceSpec | RejectedSpec], directory: Path,
              device: int | None, node: str | None = None) -> SpecSet:
    specs: dict[str, DeviceSpec] = {}
    rejected: list[RejectedSpec] = []
    for item in parsed:
        if isinstance(item, DeviceSpec):
            specs[item.name] = item
        else:
            rejected.append(item)
    # Selected before parents are resolved: a spec for other nodes is not there at all.
    here, not_here, elsewhere = select_for_node(specs, node, directory)
    rejected.extend(not_here)
    rejected.sort(key=lambda r: r.name)
    resolved = resolve(here, rejected, directory)
    return replace(resolved, directory_device=device, elsewhere=elsewhere)


def _directory_device(directory: Path, allow_foreign: bool) -> int:
    """The spec directory's filesystem; SpecSourceError unless it is a readable directory
    that only root and our user can change (or `allow_foreign`)."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        if os.path.lexists(directory):
            raise SpecSourceError(f"spec_dir {directory} is a symlink to nothing") from None
        raise SpecSourceError(f"spec_dir {directory} does not exist") from None
    except OSError as exc:
        raise SpecSourceError(f"spec_dir {directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SpecSourceError(f"spec_dir {directory} is {_kind(st.st_mode)}, not a directory")
    problem = None if allow_foreign else _open_directory(directory, st)
    if problem is not None:
        raise SpecSourceError(problem)
    return st.st_dev


def load_spec_files(directory: Path, names: Iterable[str], defaults: Defaults,
                    cache: SpecFileCache, *, allow_foreign: bool = False,
                    node: str | None = None) -> SpecSet:
    """Like load_spec_dir, reading only the files of `names` (what file events named) and
    taking every other file from `cache`, which a full scan of `directory` filled: the
    cost of a change does not grow with the number of files. The next full scan catches
    anything an event missed. A directory that is no longer the one scanned (gone,
    replaced, another filesystem mounted or unmounted) makes it a full scan."""
    try:
        device = _directory_device(directory, allow_foreign)
    except SpecSourceError as exc:
        return SpecSet(specs={}, rejected=(), source_error=str(exc))
    if cache.scanned != directory or cache.device != device:
        return load_spec_dir(directory, defaults, cache, allow_foreign=allow_foreign,
                             node=node)
    now_ns = time.time_ns()
    for name in names:
        path = directory / f"{name}{SPEC_SUFFIX}"
        if not is_spec_file(path) or path.parent != directory:
            continue
        status = _entry_status(str(path), allow_foreign)
        if status is None:
            cache.forget(str(path))
        elif isinstance(status, RejectedSpec):
            # Kept among the parsed: a broken entry's name keeps its device.
            cache.put(str(path), (0, 0, 0), status)
        elif cache.get(str(path), _signature(status), now_ns) is None:
            cache.put(str(path), _signature(status),
                      read_spec(path, defaults, allow_foreign=allow_foreign))
    return _spec_set(cache.parsed(), directory, device, node)


def load_spec_dir(directory: Path, defaults: Defaults, cache: SpecFileCache | None = None,
                  *, allow_foreign: bool = False, node: str | None = None) -> SpecSet:
    """Read every spec file of a directory and resolve parents among them.

    A directory that cannot be read completely, or that users other than root and ours
    could change, gives a SpecSet with `source_error` set and no specs: its absent files
    prove nothing, so nothing may be removed for them. Spec files of other users are
    rejected. `allow_foreign` (the config's allow_foreign_specs) accepts both. With `node`,
    only the specs for that node are wanted (`select_for_node`); None selects every spec.
    """
    try:
        device = _directory_device(directory, allow_foreign)
        with os.scandir(directory) as listing:
            # In the directory's order: nothing after depends on it (parents are resolved
            # by name), and sorting 10,000 entries was a fifth of a resync's scan.
            entries = list(listing)
    except SpecSourceError as exc:
        return SpecSet(specs={}, rejected=(), source_error=str(exc))
    except OSError as exc:
        return SpecSet(specs={}, rejected=(),
                       source_error=f"spec_dir {directory}: {exc.strerror or exc}")
    now_ns = time.time_ns()
    found: list[DeviceSpec | RejectedSpec] = []
    paths: list[str] = []
    # The loop a resync runs 10,000 times: an unchanged, plainly good file costs one stat
    # and one lookup (SpecFileCache.get, inlined); anything else takes _entry_status's full
    # checks.
    trusted = None if allow_foreign else (0, os.geteuid())
    known = cache.entries if cache is not None else {}
    racy_ns = RACY_SECONDS * 1e9
    for entry in entries:
        name = entry.name
        if not name.endswith(SPEC_SUFFIX) or name.startswith((".", "#")):
            continue  # as is_spec_file, without a Path per entry
        path = entry.path
        try:
            st: os.stat_result | None = os.stat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SPEC_BYTES \
                or (trusted is not None and st.st_uid not in trusted):
            status = _entry_status(path, allow_foreign)
            if status is None:
                continue  # deleted while we listed
            if isinstance(status, RejectedSpec):
                found.append(status)
                continue
            st = status
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)  # _signature
        entry_seen = known.get(path)
        if entry_seen is not None and entry_seen[0] == signature \
                and abs(now_ns - signature[2]) >= racy_ns:
            parsed = entry_seen[1]
        else:
            parsed = read_spec(Path(path), defaults, allow_foreign=allow_foreign)
            if cache is not None:
                cache.put(path, signature, parsed)
        paths.append(path)
        found.append(parsed)
    if cache is None:
        return _spec_set(found, directory, device, node)
    seen = set(paths)
    cache.keep_only(seen)
    cache.scanned = directory
    cache.device = device
    for item in found:
        if isinstance(item, RejectedSpec) and item.path not in seen:
            cache.put(item.path, (0, 0, 0), item)
    return cache.spec_set(found, directory, device, node)


def resolve(
    specs: Mapping[str, DeviceSpec], rejected: Iterable[RejectedSpec], directory: Path
) -> SpecSet:
    """Apply inheritance from parents that have specs; reject cycles and bad inheritance.

    A child of a rejected spec is rejected too: what it would inherit is unknown. Iterative:
    a chain of any length is walked without recursion.
    """
    bad = {r.name: r for r in rejected}
    good: dict[str, DeviceSpec] = {}

    def path_of(name: str) -> str:
        return str(directory / f"{name}{SPEC_SUFFIX}")

    for start in sorted(specs):
        # Walk up to the first name already decided, a spec-less parent, or a cycle.
        chain: list[str] = []
        on_chain: set[str] = set()
        name: str | None = start
        while name is not None and name in specs and name not in good and name not in bad:
            if name in on_chain:
                break
            chain.append(name)
            on_chain.add(name)
            name = specs[name].parent
        if name is not None and name in on_chain:
            # A cycle: every name from `name` round to itself, and those hanging below it.
            loop = chain[chain.index(name):]
            cycle = " -> ".join((*loop, name))
            for member in loop:
                bad[member] = RejectedSpec(member, path_of(member), f"key 'parent': cycle {cycle}")
            chain = chain[:chain.index(name)]
        # Settle the chain from the top down: each name's parent is decided before it.
        for member in reversed(chain):
            spec = specs[member]
            parent_name = spec.parent
            if parent_name is None or (parent_name not in specs and parent_name not in bad):
                good[member] = spec
            elif parent_name in bad:
                reason = bad[parent_name].error
                bad[member] = RejectedSpec(
                    member, path_of(member),
                    f"key 'parent': parent {parent_name!r} is invalid ({reason})")
            else:
                parent = good[parent_name]
                try:
                    good[member] = inherit(spec, parent.size, parent.filesystem)
                except SpecError as exc:
                    bad[member] = RejectedSpec(member, path_of(member), str(exc))
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
