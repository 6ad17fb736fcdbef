"""The config's paths checked on this machine: root_path (and grpc_socket's directory) can be
created, on no filesystem the kernel makes up (whatever is written there is lost); spec_dir,
when there, is a directory; grpc_socket fits a socket address and is a socket or nothing.
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


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISLNK(mode):
        return "symbolic link"
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
            raise ConfigError(key, f"{path} is a {_kind(mode)}, not a directory")
        raise ConfigError(key, f"{path} cannot be made: {existing} is a {_kind(mode)}")
    virtual = _virtual_filesystem(existing)
    if virtual is not None:
        raise ConfigError(key, f"{path} is on {virtual}, a virtual filesystem that keeps nothing")


def check_paths(settings: Settings) -> None:
    """Every path of the config checked on this machine; a ConfigError names the first bad
    one's key."""
    _check_creatable_directory("root_path", settings.root_path)
    if settings.spec_dir is not None:
        # A missing spec_dir is no config error: the daemon waits for it and removes nothing.
        try:
            mode = os.stat(settings.spec_dir).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISDIR(mode):
            raise ConfigError("spec_dir", f"{settings.spec_dir} is a {_kind(mode)}, "
                              "not a directory")
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
            raise ConfigError("grpc_socket", f"{socket_path} exists and is a {_kind(mode)}, "
                              "not a socket")
        _check_creatable_directory("grpc_socket", socket_path.parent)
