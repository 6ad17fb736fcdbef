"""Whether to believe the spec source: a spec file is an order given to root.

Only root and the daemon's own user may give it: a spec file owned by another user is a
rejected spec, a spec_dir others could change is a source error (nothing is removed), unless
`allow_foreign_specs`. Also what a directory entry must be to be read at all (a regular file,
bounded, read without blocking). The loading (`specs.load`) asks these questions.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from reconciler.specs.model import SPEC_SUFFIX, RejectedSpec, SpecError

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


def entry_status(path: str, allow_foreign: bool) -> os.stat_result | RejectedSpec | None:
    """The stat of what a spec entry points to; a RejectedSpec when the entry is there but
    cannot be a spec file (dangling or looping symlink, not a regular file, too large,
    unreadable, owned by another user unless `allow_foreign`); None when the entry itself is
    gone (deleted: that is a removal request). A path string, not a Path: a resync stats
    10,000 of them, and building a Path for each cost more than the stat. A name that is not
    valid UTF-8 is rejected first (`name_status`), escaped."""
    unnamed = name_status(path)
    if unnamed is not None:
        return unnamed if os.path.lexists(path) else None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            return RejectedSpec(spec_stem(path), path, "a symlink to nothing (dangling): the "
                                "device is kept as it is")
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return RejectedSpec(spec_stem(path), path, "a symlink loop: the device is kept as "
                                "it is")
        return RejectedSpec(spec_stem(path), path, f"cannot stat: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return RejectedSpec(spec_stem(path), path, f"{_kind(st.st_mode)}, not a regular file: "
                            "the device is kept as it is")
    if st.st_size > MAX_SPEC_BYTES:
        return RejectedSpec(spec_stem(path), path, f"{st.st_size} bytes: larger than the "
                            f"{MAX_SPEC_BYTES} a spec may be")
    foreign = None if allow_foreign else _foreign_owner(st)
    if foreign is not None:
        return RejectedSpec(spec_stem(path), path, foreign)
    return st


def escaped(text: str) -> str:
    """`text` as status, the store and the log may carry it: a directory entry's name that is
    not valid UTF-8 (Python gives it with surrogate escapes) has `\\xNN` for each such byte."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


def name_status(path: str) -> RejectedSpec | None:
    """A RejectedSpec, its name and path escaped, when a spec entry's file name is not valid
    UTF-8: no such name reaches the store or the log. None for any other name."""
    if path.isascii():
        return None
    if escaped(path) == path:
        return None
    return RejectedSpec(escaped(spec_stem(path)), escaped(path), "the file name is not valid "
                        "UTF-8: rename the file (the device, if any, is kept as it is)")


def spec_stem(path: str) -> str:
    """The device name of a spec file's path (its file name without SPEC_SUFFIX)."""
    return os.path.basename(path).removesuffix(SPEC_SUFFIX)


def read_bounded(path: str | Path, allow_foreign: bool) -> bytes:
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
        # The first read asks for what fstat says the file holds, plus one byte to see its
        # end: asking for MAX_SPEC_BYTES allocated (and shrank) a 1 MiB buffer per file,
        # 1.7 s of a 50,000-file start-up. A file grown since reads on, as before.
        first = min(st.st_size, MAX_SPEC_BYTES) + 1
        while size <= MAX_SPEC_BYTES:
            wanted = MAX_SPEC_BYTES + 1 - size if chunks else first
            chunk = os.read(fd, wanted)
            chunks.append(chunk)
            size += len(chunk)
            if len(chunk) < wanted:
                # A regular file's short read is its end: no second read to be told so
                # (a start-up reads 50,000 files).
                break
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"larger than the {MAX_SPEC_BYTES} bytes a spec may be")
        return b"".join(chunks)
    finally:
        os.close(fd)


def directory_device(directory: Path, allow_foreign: bool) -> int:
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
