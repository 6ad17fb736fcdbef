"""Which config file, and reading it: a regular file, bounded, UTF-8, TOML, every way it can
be unusable one ConfigError, then checked whole by `config.values`.

The file is opened without blocking and judged by fstat before a byte is read: a FIFO at the
config's path would otherwise hang `config check`, and a SIGHUP reload would freeze the
daemon's loop (issue 23). Links are followed: a ConfigMap's key is a link into ..data.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

from reconciler.config.paths import file_kind
from reconciler.config.settings import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    MAX_CONFIG_BYTES,
    ConfigError,
    Settings,
)
from reconciler.config.values import settings_from_mapping


def load_settings(path: Path) -> Settings:
    """Read and validate a config file; every way it can be unusable is a ConfigError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = _read_regular(path, fd)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("<file>", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"{path} is not UTF-8 text (byte {exc.start})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError("<file>", f"{path} nests arrays or tables too deeply") from None
    except Exception as exc:  # tomllib's other failures, such as int()'s limit on digits
        raise ConfigError("<file>", f"{path} cannot be read as TOML: {exc}") from exc
    return settings_from_mapping(raw, path.resolve().parent)


def _read_regular(path: Path, fd: int) -> bytes:
    """Up to MAX_CONFIG_BYTES + 1 bytes of the open file, which must be a regular file."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("<file>", f"{path} is a {file_kind(st.st_mode)}, not a regular "
                              "file: give the path of the config file itself")
        chunks: list[bytes] = []
        left = MAX_CONFIG_BYTES + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from None
    return b"".join(chunks)


def config_path(explicit: Path | None) -> Path:
    """The config file to use: -c PATH, else $RECONCILER_CONFIG, else the system default."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH
