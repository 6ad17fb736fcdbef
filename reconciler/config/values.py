"""Each key's value checked where it enters (type, range, finiteness), then the rules between
keys: `settings_from_mapping` turns parsed TOML into Settings or one ConfigError naming the
key. The paths' checks on this machine are `config.paths`'.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from reconciler.config.paths import check_paths
from reconciler.config.settings import (
    DEFAULT_LOG_LEVEL,
    DM_DRIVERS,
    DURATION_BOUNDS,
    FS_TYPES,
    HOST_NAME_RE,
    LOG_LEVEL_ENV,
    LOG_LEVELS,
    MAX_ATTEMPTS,
    MAX_BLOCK,
    MAX_NODE_NAME,
    MAX_REMOVALS,
    MIN_BLOCK,
    NODE_NAME_ENV,
    POOL_NAME_RE,
    UNLIMITED,
    ConfigError,
    ListenAddress,
    Reserve,
    Settings,
)
from reconciler.units import (
    XFS_MIN_SIZE,
    Bytes,
    SizeError,
    brief_repr,
    format_size,
    parse_duration,
    parse_size,
)


def _size(key: str, value: object) -> Bytes:
    try:
        return parse_size(value)
    except SizeError as exc:
        raise ConfigError(key, str(exc)) from None


def _seconds_text(seconds: float) -> str:
    """A bound as an operator would write it: 10ms, 1s, 1h, 24h."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _duration(key: str, value: object) -> float:
    try:
        seconds = parse_duration(value)  # refuses nan, infinities and negative numbers
    except SizeError as exc:
        raise ConfigError(key, str(exc)) from None
    floor, ceiling = DURATION_BOUNDS[key]
    # A number is shown in seconds, text as written (its unit is part of what was meant).
    written = brief_repr(value) if isinstance(value, str) else f"{seconds:g}s"
    if seconds < floor:
        raise ConfigError(key, f"{written} is below the floor of {_seconds_text(floor)}")
    if seconds > ceiling:
        raise ConfigError(key, f"{written} is above the ceiling of {_seconds_text(ceiling)}")
    return seconds


def _count(key: str, value: object, maximum: int, also: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConfigError(
            key, f"expected a whole number from 1 to {maximum}{also}, got {brief_repr(value)}")
    return value


def _max_removals(key: str, value: object) -> int | None:
    if value == UNLIMITED:
        return None
    return _count(key, value, MAX_REMOVALS, also=f' or "{UNLIMITED}"')


def _reserve(key: str, value: object) -> Reserve:
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1].strip()
        try:
            percent = float(number)
        except ValueError:
            percent = float("nan")
        if not 0 <= percent < 100:  # also refuses nan
            raise ConfigError(
                key, f"a share must be from 0% to below 100%, got {brief_repr(value)}")
        return Reserve(percent=percent)
    return Reserve(size=_size(key, value))


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {brief_repr(value)}")
    return value


def _node_name(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a non-empty string, got {brief_repr(value)}")
    if len(value) > MAX_NODE_NAME or not value.isprintable() or value != value.strip():
        raise ConfigError(key, f"{brief_repr(value)} is not a node name (printable, no "
                          f"surrounding spaces, at most {MAX_NODE_NAME} characters)")
    return value


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(key, f"{brief_repr(value)} is not one of {', '.join(choices)}")
    return value


def _pool_name(key: str, value: object) -> str:
    # fullmatch: with match and "$", "x\n" passed ("$" matches before a final newline).
    if not isinstance(value, str) or not POOL_NAME_RE.fullmatch(value):
        raise ConfigError(key, f"{brief_repr(value)} is not a name matching {POOL_NAME_RE.pattern}")
    return value


def _path(key: str, value: object, base: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a path string, got {brief_repr(value)}")
    if "\0" in value:
        # The OS cannot take it: every later open or stat would raise ValueError.
        raise ConfigError(key, f"{brief_repr(value)} contains a NUL character")
    path = Path(value)
    # A relative path is read relative to the config file, not to wherever we were started.
    return base / path if base is not None and not path.is_absolute() else path


def _fs_options(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            options = tuple(shlex.split(value))
        except ValueError as exc:  # an unclosed quote or a final backslash
            raise ConfigError(
                key, f"cannot split {brief_repr(value)} into arguments: {exc}") from None
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        options = tuple(value)
    else:
        raise ConfigError(key, f"expected a string or a list of strings, got {brief_repr(value)}")
    if any("\0" in option for option in options):
        raise ConfigError(key, "an argument contains a NUL character, which no program can take")
    return options


def _listen_address(key: str, value: object) -> ListenAddress:
    """host:port, [v6]:port; the host an IP address or a host name, the port 1-65535."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected \"host:port\" as a string, got {brief_repr(value)}")
    host, colon, port = value.rpartition(":")
    if not colon or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(key, f"{brief_repr(value)} is not host:port with a port from 1 to "
                          "65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            return ListenAddress(str(ipaddress.IPv6Address(host[1:-1])), int(port))
        except ValueError:
            raise ConfigError(key, f"{brief_repr(host)} is not an IPv6 address") from None
    if ":" in host:
        raise ConfigError(key, f"{brief_repr(value)}: an IPv6 address is written in brackets, "
                          "as in [::1]:9560")
    if not HOST_NAME_RE.fullmatch(host):
        # An empty host would mean every interface: that must be said, as 0.0.0.0 or [::].
        raise ConfigError(key, f"{brief_repr(host)} is not an IP address or a host name")
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(key, f"{brief_repr(host)} is not an IPv4 address") from None
    return ListenAddress(host, int(port))


_PATH_KEYS = ("root_path", "spec_dir", "data_device", "metadata_device", "grpc_socket")
SIZE_KEYS = ("base_image_size", "loopback_data_size", "loopback_metadata_size",
              "data_block_size")
DURATION_KEYS = tuple(DURATION_BOUNDS)
_READERS: dict[str, Callable[[str, object], object]] = {
    **dict.fromkeys(SIZE_KEYS, _size),
    **dict.fromkeys(DURATION_KEYS, _duration),
    "max_attempts": lambda key, value: _count(key, value, MAX_ATTEMPTS),
    "max_removals": _max_removals,
    "pool_reserve": _reserve,
    "pool_metadata_reserve": _reserve,
    "async_remove": _flag,
    "discard_blocks": _flag,
    "allow_foreign_specs": _flag,
    "node_name": _node_name,
    "fs_options": _fs_options,
    "pool_name": _pool_name,
    "dm_driver": lambda key, value: _choice(key, value, DM_DRIVERS),
    "fs_type": lambda key, value: _choice(key, value, FS_TYPES),
    "log_level": lambda key, value: _choice(key, value, LOG_LEVELS),
    "metrics_address": _listen_address,
}


def settings_from_mapping(raw: dict[str, Any], base: Path | None = None) -> Settings:
    """Build settings from parsed TOML, checking every key, the rules between keys and the
    paths on the filesystem: a config that passes can be run.

    Relative paths are taken relative to `base` (the config file's directory).
    """
    known = {f.name for f in fields(Settings)}
    for key in raw:
        if key not in known:
            raise ConfigError(key, f"unknown key (known keys: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            raise ConfigError(key, "is a table ([section] or {...}); it takes a single value")
        if key in _PATH_KEYS:
            values[key] = _path(key, value, base)
        else:
            values[key] = _READERS[key](key, value)
    if "node_name" not in raw and os.environ.get(NODE_NAME_ENV):
        # node_name's default: held to the key's own rules, and said to come from there.
        try:
            _node_name("node_name", os.environ[NODE_NAME_ENV])
        except ConfigError as exc:
            raise ConfigError("node_name", f"from ${NODE_NAME_ENV} (the default when the "
                              f"config sets none): {exc.problem}") from None
    settings = Settings(**values)
    _check_rules(settings, raw)
    check_paths(settings)
    return settings


def effective_log_level(flag: str | None, settings: Settings | None,
                        environ: Mapping[str, str] | None = None) -> str:
    """The log level to run with: --log-level's (`flag`), else $RECONCILER_LOG_LEVEL's, else
    the config's `log_level` (info before the config is read: `settings` None). A variable
    set to anything but a level is a ConfigError naming log_level and the variable; set
    empty, it is unset."""
    if flag is not None:
        return flag
    given = (os.environ if environ is None else environ).get(LOG_LEVEL_ENV, "")
    if given:
        try:
            return _choice("log_level", given, LOG_LEVELS)
        except ConfigError as exc:
            raise ConfigError("log_level", f"from ${LOG_LEVEL_ENV}: {exc.problem}") from None
    return DEFAULT_LOG_LEVEL if settings is None else settings.log_level


def _check_rules(settings: Settings, raw: dict[str, Any]) -> None:
    if (settings.data_device is None) != (settings.metadata_device is None):
        given = "data_device" if settings.data_device is not None else "metadata_device"
        missing = "metadata_device" if given == "data_device" else "data_device"
        raise ConfigError(missing, f"must be set together with {given} (both or neither)")
    if not settings.root_path.is_absolute():
        raise ConfigError("root_path", f"must be an absolute path, got {settings.root_path}")
    block = settings.data_block_size
    if block % MIN_BLOCK or not MIN_BLOCK <= block <= MAX_BLOCK:
        raise ConfigError("data_block_size", "must be a multiple of 64KiB from 64KiB to 1GiB")
    for key in ("base_image_size", "loopback_data_size", "loopback_metadata_size"):
        value: int = getattr(settings, key)
        if value <= 0 or value % 512:
            raise ConfigError(key, f"must be a positive multiple of 512 bytes, got {value}")
    if settings.loopback_data_size < block:
        raise ConfigError("loopback_data_size", "must hold at least one data block")
    if settings.retry_max < settings.retry_initial:
        # Name the key the operator wrote: the other one is a default they may not know of.
        if "retry_initial" in raw:
            raise ConfigError("retry_initial",
                              f"must not be longer than retry_max ({settings.retry_max:g}s)")
        raise ConfigError("retry_max",
                          f"must not be shorter than retry_initial ({settings.retry_initial:g}s)")
    if settings.fs_type == "xfs" and settings.base_image_size < XFS_MIN_SIZE:
        # Otherwise every root Prepare would fail at mkfs, long after start-up.
        raise ConfigError("base_image_size", f"{format_size(settings.base_image_size)} is too "
                          f"small for fs_type = \"xfs\": mkfs.xfs makes no filesystem under "
                          f"{format_size(XFS_MIN_SIZE)}; raise base_image_size or use "
                          "fs_type = \"ext4\"")
    # dm-thin needs at least 2 MiB of metadata and uses at most 16 GiB of it.
    if not (2 << 20) <= settings.loopback_metadata_size <= (16 << 30):
        raise ConfigError("loopback_metadata_size", "must be between 2MiB and 16GiB")
