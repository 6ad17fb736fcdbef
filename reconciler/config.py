"""Typed settings read from the TOML config file.

Every setting has a default and a one-line doc here, mirrored line for line by
config.example.toml (a test keeps the two in step). Key names follow containerd's devmapper
snapshotter where it has one, so its users recognise them. Validation names the key.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from reconciler.units import Bytes, SizeError, parse_duration, parse_size

DEFAULT_CONFIG_PATH = Path("/etc/reconciler/config.toml")
CONFIG_ENV = "RECONCILER_CONFIG"

# dm names may hold almost anything, but ours also become file names and log keys.
POOL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FS_TYPES = ("ext4", "xfs")
DM_DRIVERS = ("libdevmapper", "dmsetup")

_MIN_BLOCK = 64 << 10
_MAX_BLOCK = 1 << 30


class ConfigError(ValueError):
    """The config is unusable; the message names the key and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key {key!r}: {problem}")
        self.key = key
        self.problem = problem


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    """Everything the daemon can be told; see config.example.toml for the same with comments."""

    root_path: Path = field(
        default=Path("/var/lib/reconciler"),
        metadata=_doc("State directory: the SQLite database and loopback files live here."),
    )
    pool_name: str = field(
        default="reconciler",
        metadata=_doc("Device-mapper name of the thin-pool; devices are named <pool_name>-<name>."),
    )
    base_image_size: Bytes = field(
        default=Bytes(1 << 30),
        metadata=_doc("Size of a device whose spec gives no size and has no parent."),
    )
    spec_dir: Path | None = field(
        default=None,
        metadata=_doc("Directory of spec files, one <name>.toml per device (<root_path>/specs)."),
    )
    data_device: Path | None = field(
        default=None,
        metadata=_doc("Block device for the pool's data; give it with metadata_device or neither."),
    )
    metadata_device: Path | None = field(
        default=None,
        metadata=_doc("Block device for the pool's metadata; give it with data_device or neither."),
    )
    loopback_data_size: Bytes = field(
        default=Bytes(10 << 30),
        metadata=_doc("Size of the sparse data file when no devices are given (loopback pool)."),
    )
    loopback_metadata_size: Bytes = field(
        default=Bytes(128 << 20),
        metadata=_doc("Size of the sparse metadata file of a loopback pool."),
    )
    data_block_size: Bytes = field(
        default=Bytes(64 << 10),
        metadata=_doc("Pool allocation unit: a multiple of 64KiB between 64KiB and 1GiB."),
    )
    fs_type: str = field(
        default="ext4",
        metadata=_doc("Filesystem made on new devices without parent: \"ext4\" or \"xfs\"."),
    )
    fs_options: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Extra arguments for mkfs, as a string or a list of strings."),
    )
    resync_interval: float = field(
        default=30.0,
        metadata=_doc("Full resync period of `run`: catches what file events missed."),
    )
    retry_initial: float = field(
        default=0.5,
        metadata=_doc("First wait after a temporary kernel error; doubles each attempt."),
    )
    retry_max: float = field(
        default=30.0,
        metadata=_doc("Longest wait between attempts (and the retry period of a busy remove)."),
    )
    max_attempts: int = field(
        default=5,
        metadata=_doc("Attempts of a failing step before the device is marked Faulty."),
    )

    dm_driver: str = field(
        default="libdevmapper",
        metadata=_doc("Kernel calls: \"libdevmapper\" in-process (falls back to \"dmsetup\")."),
    )
    grpc_socket: Path | None = field(
        default=None,
        metadata=_doc("Unix socket of containerd's snapshots gRPC service (unset: not served)."),
    )
    async_remove: bool = field(
        default=False,
        metadata=_doc("Snapshotter Remove only marks a snapshot; containerd's Cleanup deletes it."),
    )
    discard_blocks: bool = field(
        default=False,
        metadata=_doc("Discard an active device's blocks before deleting it (loop files shrink)."),
    )

    @property
    def specs_path(self) -> Path:
        """Where spec files are read from."""
        return self.spec_dir if self.spec_dir is not None else self.root_path / "specs"

    @property
    def database_path(self) -> Path:
        """The SQLite database file."""
        return self.root_path / "reconciler.db"

    @property
    def loopback(self) -> bool:
        """True when the pool is made over sparse files under root_path."""
        return self.data_device is None


def _size(key: str, value: object) -> Bytes:
    try:
        return parse_size(value)
    except SizeError as exc:
        raise ConfigError(key, str(exc)) from None


def _path(key: str, value: object, base: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a path string, got {value!r}")
    path = Path(value)
    # A relative path is read relative to the config file, not to wherever we were started.
    return base / path if base is not None and not path.is_absolute() else path


def _fs_options(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ConfigError(key, f"expected a string or a list of strings, got {value!r}")


def settings_from_mapping(raw: dict[str, Any], base: Path | None = None) -> Settings:
    """Build settings from parsed TOML, checking every key and the rules between keys.

    Relative paths are taken relative to `base` (the config file's directory).
    """
    known = {f.name for f in fields(Settings)}
    for key in raw:
        if key not in known:
            raise ConfigError(key, f"unknown key (known keys: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("root_path", "spec_dir", "data_device", "metadata_device", "grpc_socket"):
            values[key] = _path(key, value, base)
        elif key in ("base_image_size", "loopback_data_size", "loopback_metadata_size",
                     "data_block_size"):
            values[key] = _size(key, value)
        elif key in ("resync_interval", "retry_initial", "retry_max"):
            try:
                values[key] = parse_duration(value)
            except SizeError as exc:
                raise ConfigError(key, str(exc)) from None
        elif key == "max_attempts":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(key, f"expected a whole number of at least 1, got {value!r}")
            values[key] = value
        elif key in ("async_remove", "discard_blocks"):
            if not isinstance(value, bool):
                raise ConfigError(key, f"expected true or false, got {value!r}")
            values[key] = value
        elif key == "fs_options":
            values[key] = _fs_options(key, value)
        elif key == "pool_name":
            if not isinstance(value, str) or not POOL_NAME_RE.match(value):
                raise ConfigError(key, f"{value!r} is not a name matching {POOL_NAME_RE.pattern}")
            values[key] = value
        elif key == "dm_driver":
            if value not in DM_DRIVERS:
                raise ConfigError(key, f"{value!r} is not one of {', '.join(DM_DRIVERS)}")
            values[key] = value
        elif key == "fs_type":
            if value not in FS_TYPES:
                raise ConfigError(key, f"{value!r} is not one of {', '.join(FS_TYPES)}")
            values[key] = value
    settings = Settings(**values)
    _check_rules(settings)
    return settings


def _check_rules(settings: Settings) -> None:
    if (settings.data_device is None) != (settings.metadata_device is None):
        given = "data_device" if settings.data_device is not None else "metadata_device"
        missing = "metadata_device" if given == "data_device" else "data_device"
        raise ConfigError(missing, f"must be set together with {given} (both or neither)")
    if not settings.root_path.is_absolute():
        raise ConfigError("root_path", f"must be an absolute path, got {settings.root_path}")
    block = settings.data_block_size
    if block % _MIN_BLOCK or not _MIN_BLOCK <= block <= _MAX_BLOCK:
        raise ConfigError("data_block_size", "must be a multiple of 64KiB from 64KiB to 1GiB")
    for key in ("base_image_size", "loopback_data_size", "loopback_metadata_size"):
        value: int = getattr(settings, key)
        if value <= 0 or value % 512:
            raise ConfigError(key, f"must be a positive multiple of 512 bytes, got {value}")
    if settings.loopback_data_size < block:
        raise ConfigError("loopback_data_size", "must hold at least one data block")
    if settings.resync_interval <= 0:
        raise ConfigError("resync_interval", "must be longer than 0s")
    if settings.retry_max < settings.retry_initial:
        raise ConfigError("retry_max", "must not be shorter than retry_initial")
    # dm-thin needs at least 2 MiB of metadata and uses at most 16 GiB of it.
    if not (2 << 20) <= settings.loopback_metadata_size <= (16 << 30):
        raise ConfigError("loopback_metadata_size", "must be between 2MiB and 16GiB")


def load_settings(path: Path) -> Settings:
    """Read and validate a config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"{path} is not valid TOML: {exc}") from None
    return settings_from_mapping(raw, path.resolve().parent)


def config_path(explicit: Path | None) -> Path:
    """The config file to use: -c PATH, else $RECONCILER_CONFIG, else the system default."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH
