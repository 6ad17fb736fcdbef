"""Reading a spec directory: every file (a full scan) or the files events named, through
the cache, each checked by `specs.trust` and parsed by `specs.parse`, then assembled into
SpecFiles for `specs.resolve` (`scan_*`); `load_*` resolve the directory alone, without the
store (what `reconciler.desired` passes in).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from reconciler.specs.cache import RACY_SECONDS, SpecFileCache, signature
from reconciler.specs.model import (
    SPEC_SUFFIX,
    Defaults,
    DeviceSpec,
    ParsedSpec,
    RejectedSpec,
    SpecError,
    SpecFiles,
    SpecSet,
    is_spec_file,
)
from reconciler.specs.parse import TextMemo, parse_file
from reconciler.specs.resolve import assemble, resolve_files
from reconciler.specs.trust import (
    MAX_SPEC_BYTES,
    SpecSourceError,
    directory_device,
    entry_status,
    read_bounded,
    spec_stem,
)


def read_spec(path: Path, defaults: Defaults, *,
              allow_foreign: bool = False) -> DeviceSpec | RejectedSpec:
    """One spec file as `read_file` reads it, its parent not resolved."""
    read = read_file(path, defaults, allow_foreign=allow_foreign)
    return read.spec if isinstance(read, ParsedSpec) else read


def read_file(path: str | Path, defaults: Defaults, *, allow_foreign: bool = False,
              memo: TextMemo | None = None) -> ParsedSpec | RejectedSpec:
    """One spec file, read and parsed (`memo`: see parse_file); whatever is wrong with it
    (its type, owner, size, bytes, TOML, keys, values, or an error nobody foresaw) makes it
    a RejectedSpec, never an exception: one bad file is that file's problem. A str path
    (a scan's spec file, named `.toml`) spares a start-up's scan a Path per file (a tenth
    of its time at 50,000 files)."""
    name = spec_stem(path) if isinstance(path, str) else path.stem
    try:
        return parse_file(name, read_bounded(path, allow_foreign).decode("utf-8"), defaults,
                          memo)
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


def load_spec_files(directory: Path, names: Iterable[str], defaults: Defaults,
                    cache: SpecFileCache, *, allow_foreign: bool = False,
                    node: str | None = None) -> SpecSet:
    """`scan_spec_files`, its parents resolved among the files alone."""
    return resolve_files(scan_spec_files(directory, names, defaults, cache,
                                         allow_foreign=allow_foreign, node=node), directory)


def load_spec_dir(directory: Path, defaults: Defaults, cache: SpecFileCache | None = None,
                  *, allow_foreign: bool = False, node: str | None = None) -> SpecSet:
    """`scan_spec_dir`, its parents resolved among the files alone."""
    return resolve_files(scan_spec_dir(directory, defaults, cache,
                                       allow_foreign=allow_foreign, node=node), directory)


def scan_spec_files(directory: Path, names: Iterable[str], defaults: Defaults,
                    cache: SpecFileCache, *, allow_foreign: bool = False,
                    node: str | None = None) -> SpecFiles:
    """Like scan_spec_dir, reading only the files of `names` (what file events named) and
    taking every other file from `cache`, which a full scan of `directory` filled: the
    cost of a change does not grow with the number of files. The next full scan catches
    anything an event missed. A directory that is no longer the one scanned (gone,
    replaced, another filesystem mounted or unmounted) makes it a full scan."""
    try:
        device = directory_device(directory, allow_foreign)
    except SpecSourceError as exc:
        return SpecFiles(parsed={}, rejected=(), source_error=str(exc))
    if cache.scanned != directory or cache.device != device:
        return scan_spec_dir(directory, defaults, cache, allow_foreign=allow_foreign,
                             node=node)
    now_ns = time.time_ns()
    for name in names:
        path = directory / f"{name}{SPEC_SUFFIX}"
        if not is_spec_file(path) or path.parent != directory:
            continue
        status = entry_status(str(path), allow_foreign)
        if status is None:
            cache.forget(str(path))
        elif isinstance(status, RejectedSpec):
            # Kept among the parsed: a broken entry's name keeps its device.
            cache.put(str(path), (0, 0, 0), status)
        elif cache.get(str(path), signature(status), now_ns) is None:
            cache.put(str(path), signature(status),
                      read_file(path, defaults, allow_foreign=allow_foreign))
    return assemble(cache.parsed(), directory, device, node)


def scan_spec_dir(directory: Path, defaults: Defaults, cache: SpecFileCache | None = None,
                  *, allow_foreign: bool = False, node: str | None = None) -> SpecFiles:
    """Read every spec file of a directory (parents are resolved by `specs.resolve`).

    A directory that cannot be read completely, or that users other than root and ours
    could change, gives SpecFiles with `source_error` set and no specs: its absent files
    prove nothing, so nothing may be removed for them. Spec files of other users are
    rejected. `allow_foreign` (the config's allow_foreign_specs) accepts both. With `node`,
    only the specs for that node are wanted (`select_for_node`); None selects every spec.
    """
    try:
        device = directory_device(directory, allow_foreign)
        # Listed and stat'ed through one descriptor: each stat looks up a name in this
        # directory, not the whole path again (a fifth less time per file), and every file
        # is of the directory that was listed.
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except SpecSourceError as exc:
        return SpecFiles(parsed={}, rejected=(), source_error=str(exc))
    except OSError as exc:
        return SpecFiles(parsed={}, rejected=(),
                         source_error=f"spec_dir {directory}: {exc.strerror or exc}")
    try:
        return _scan(directory, dir_fd, device, defaults, cache, allow_foreign, node)
    except OSError as exc:
        return SpecFiles(parsed={}, rejected=(),
                         source_error=f"spec_dir {directory}: {exc.strerror or exc}")
    finally:
        os.close(dir_fd)


def _scan(directory: Path, dir_fd: int, device: int, defaults: Defaults,
          cache: SpecFileCache | None, allow_foreign: bool, node: str | None) -> SpecFiles:
    """scan_spec_dir's loop over the directory open as `dir_fd`."""
    # In the directory's order: nothing after depends on it (parents are resolved by name),
    # and sorting 10,000 entries was a fifth of a resync's scan.
    names = os.listdir(dir_fd)
    now_ns = time.time_ns()
    found: list[ParsedSpec | RejectedSpec] = []
    paths: list[str] = []
    # The loop a resync runs 10,000 times: an unchanged, plainly good file costs one stat and
    # one lookup (SpecFileCache.get, inlined); all else (non-ASCII names too): entry_status.
    trusted = None if allow_foreign else (0, os.geteuid())
    known = cache.entries if cache is not None else {}
    racy_ns = RACY_SECONDS * 1e9
    prefix = os.path.join(directory, "")
    stat_at = os.stat
    memo: TextMemo = {}
    for name in names:
        if not name.endswith(SPEC_SUFFIX) or name.startswith((".", "#")):
            continue  # as is_spec_file, without a Path per entry
        path = prefix + name
        try:
            st: os.stat_result | None = stat_at(name, dir_fd=dir_fd) if name.isascii() \
                else None
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SPEC_BYTES \
                or (trusted is not None and st.st_uid not in trusted):
            status = entry_status(path, allow_foreign)
            if status is None:
                continue  # deleted while we listed
            if isinstance(status, RejectedSpec):
                found.append(status)
                continue
            st = status
        entry_seen = known.get(path)
        # cache.get, inlined: field by field, no signature tuple made for an unchanged file.
        if entry_seen is not None and entry_seen[0] == st.st_ino \
                and entry_seen[1] == st.st_size and entry_seen[2] == st.st_mtime_ns \
                and abs(now_ns - entry_seen[2]) >= racy_ns:
            parsed = entry_seen[3]
        else:
            parsed = read_file(path, defaults, allow_foreign=allow_foreign, memo=memo)
            if cache is not None:
                cache.put(path, (st.st_ino, st.st_size, st.st_mtime_ns), parsed)
        paths.append(path)
        found.append(parsed)
    if cache is None:
        return assemble(found, directory, device, node)
    return cache.full_scan(found, paths, directory, device, node)
