"""The config's paths checked on this machine: root_path (and grpc_socket's directory) can be
created, on no filesystem the kernel makes up (whatever is written there is lost); spec_dir,
when there, is a directory, and never under /proc or /sys; grpc_socket fits a socket address
and is a socket or nothing; data_device and metadata_device are block devices.

root_path is ours alone (issue 23): the daemon, root, opens the database, the lock and the
loopback files there by name, so whoever may write to root_path, or rename it away through
a parent, could have those names point wherever they like. root_path and every parent (as
written and as resolved) is owned by root or by us, and writable by no one else: a parent
may be writable by all if it is sticky (/tmp), root_path itself not at all.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from reconciler.config.settings import (
    SUN_PATH_MAX,
    VIRTUAL_FILESYSTEMS,
    ConfigError,
    Settings,
)


def file_kind(mode: int) -> str:
    """What a file is, from its mode, in words ("regular file", "FIFO"...)."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    return "special file"


def _nearest_existing(key: str, path: Path) -> tuple[Path, int] | None:
    """The path itself or its nearest ancestor that exists, with its mode; None when we may
    not look (the daemon, usually root, may: opening it then says what is wrong)."""
    for candidate in (path, *path.parents):
        try:
            return candidate, os.stat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            if os.path.lexists(candidate):
                raise ConfigError(key, f"{candidate} is a symbolic link to nothing") from None
        except PermissionError:
            return None
        except OSError as exc:
            raise ConfigError(key, f"cannot look at {candidate}: {exc.strerror}") from None
    return None


def _mount_types(path: str) -> list[str]:
    """The filesystem types of the mounts the path lies on: /, and every mount below it."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return []
    types = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields_left, fields_right = left.split(), right.split()
        if len(fields_left) < 5 or not fields_right:
            continue
        # Mount points escape space, tab, newline and backslash as octal (\040).
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields_left[4])
        if path == point or path.startswith(point.rstrip("/") + "/"):
            types.append(fields_right[0])
    return types


def _virtual_filesystem(path: Path) -> str | None:
    """The virtual filesystem (proc, sysfs...) an existing path lies on, if it does."""
    real = os.path.realpath(path)
    for fstype in _mount_types(real):
        if fstype in VIRTUAL_FILESYSTEMS:
            return fstype
    # Without a mount table to read (or with /proc unmounted), their usual places.
    for prefix, fstype in (("/proc", "proc"), ("/sys", "sysfs")):
        if real == prefix or real.startswith(prefix + "/"):
            return fstype
    return None


def _check_creatable_directory(key: str, path: Path) -> None:
    """An existing directory, or one that mkdir -p can make, on a real filesystem."""
    found = _nearest_existing(key, path)
    if found is None:
        return
    existing, mode = found
    if not stat.S_ISDIR(mode):
        if existing == path:
            raise ConfigError(key, f"{path} is a {file_kind(mode)}, not a directory")
        raise ConfigError(key, f"{path} cannot be made: {existing} is a {file_kind(mode)}")
    virtual = _virtual_filesystem(existing)
    if virtual is not None:
        raise ConfigError(key, f"{path} is on {virtual}, a virtual filesystem that keeps nothing")


def check_ours_alone(root: Path) -> None:
    """root_path and its parents owned by root or us, writable by no one else (a parent: or
    sticky). What we may not look at is not judged: a user without the right to see it
    cannot reach the files either (and the daemon, root, sees all)."""
    me = os.geteuid()
    real = Path(os.path.realpath(root))
    for directory in dict.fromkeys((root, *root.parents, real, *real.parents)):
        try:
            st = os.stat(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue  # not made yet (or not a directory: _check_creatable_directory says so)
        except OSError:
            continue  # not ours to look at (a parent we may not search)
        mode = stat.S_IMODE(st.st_mode)
        what = str(directory) if directory in (root, real) else f"{directory} (above {root})"
        if st.st_uid not in (0, me):
            raise ConfigError("root_path", f"{what} is owned by uid {st.st_uid}, neither root "
                              f"nor us (uid {me}): that user could replace what reconciler "
                              "keeps there; give it to root (chown root)")
        open_to_others = mode & (stat.S_IWGRP | stat.S_IWOTH)
        if open_to_others and (directory in (root, real) or not mode & stat.S_ISVTX):
            raise ConfigError("root_path", f"{what} is writable by others (mode {mode:04o}): "
                              "they could replace the database, the lock or the loopback "
                              f"files; make it writable by its owner only (chmod go-w)")


# Where the kernel shows its own state as files: never a directory of spec files.
KERNEL_TREES = ("/proc", "/sys")


def _check_spec_dir(spec_dir: Path) -> None:
    real = os.path.realpath(spec_dir)
    for tree in KERNEL_TREES:
        if real == tree or real.startswith(tree + "/"):
            raise ConfigError("spec_dir", f"{spec_dir} is under {tree} (as resolved: {real}), "
                              "the kernel's own files, not a directory of spec files")
    # A missing spec_dir is no config error: the daemon waits for it and removes nothing.
    try:
        mode = os.stat(spec_dir).st_mode
    except OSError:
        return
    if not stat.S_ISDIR(mode):
        raise ConfigError("spec_dir", f"{spec_dir} is a {file_kind(mode)}, not a directory")
    virtual = _virtual_filesystem(spec_dir)
    if virtual in ("proc", "sysfs"):
        raise ConfigError("spec_dir", f"{spec_dir} is on {virtual}, the kernel's own files, "
                          "not a directory of spec files")


def _check_block_device(key: str, path: Path) -> None:
    """A block device (through links: /dev/disk/by-id/... are links)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(key, f"{path} does not exist: expected a block device") from None
    except OSError:
        return  # not ours to look at: the daemon (root) is, and says so at start
    if not stat.S_ISBLK(mode):
        raise ConfigError(key, f"{path} is a {file_kind(mode)}, not a block device")


def check_paths(settings: Settings) -> None:
    """Every path of the config checked on this machine; a ConfigError names the first bad
    one's key."""
    _check_creatable_directory("root_path", settings.root_path)
    check_ours_alone(settings.root_path)
    for key in ("data_device", "metadata_device"):
        device: Path | None = getattr(settings, key)
        if device is not None:
            _check_block_device(key, device)
    if settings.spec_dir is not None:
        _check_spec_dir(settings.spec_dir)
    if settings.grpc_socket is not None:
        socket_path = settings.grpc_socket
        length = len(os.fsencode(socket_path))
        if length >= SUN_PATH_MAX:
            raise ConfigError("grpc_socket", f"is {length} bytes long; a unix socket path "
                              f"holds at most {SUN_PATH_MAX - 1}")
        try:
            mode = os.lstat(socket_path).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISSOCK(mode):
            # The server replaces a stale socket; anything else there is not ours to replace.
            raise ConfigError("grpc_socket", f"{socket_path} exists and is a {file_kind(mode)}, "
                              "not a socket")
        _check_creatable_directory("grpc_socket", socket_path.parent)
