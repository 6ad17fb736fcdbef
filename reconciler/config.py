"""Typed settings read from the TOML config file.

Every setting has a default and a one-line doc here, mirrored line for line by
config.example.toml (a test keeps the two in step). Key names follow containerd's devmapper
snapshotter where it has one, so its users recognise them.

The whole config is checked when it is read, before anything runs: each key's type, range and
finiteness, the rules between keys, and the paths on the filesystem. A config that fails is
never half-applied: `run` and every command exit 2, and a SIGHUP reload keeps the old
config. Every failure, whatever its cause (a file that is not UTF-8, TOML nested too deeply
for the parser), is one ConfigError whose one-line message names the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from reconciler.units import (
    XFS_MIN_SIZE,
    Bytes,
    SizeError,
    brief_repr,
    format_size,
    parse_duration,
    parse_size,
)

DEFAULT_CONFIG_PATH = Path("/etc/reconciler/config.toml")
CONFIG_ENV = "RECONCILER_CONFIG"
NODE_NAME_ENV = "NODE_NAME"
# A Kubernetes node name is a DNS subdomain: at most 253 characters.
MAX_NODE_NAME = 253

# dm names may hold almost anything, but ours also become file names and log keys.
POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FS_TYPES = ("ext4", "xfs")
DM_DRIVERS = ("libdevmapper", "dmsetup")

_MIN_BLOCK = 64 << 10
_MAX_BLOCK = 1 << 30

# Durations longer than a day are typos (a unit left out), not intentions; and every deadline
# computed from one stays a finite float.
MAX_DURATION = 86400.0
# No retry budget needs more: 1000 attempts at the default retry_max take over 8 hours.
MAX_ATTEMPTS = 1000
# Thin ids are 24-bit: no pool holds more devices than this, so no larger number means more.
MAX_REMOVALS = 1 << 24
UNLIMITED = "unlimited"
# sockaddr_un.sun_path on Linux: 108 bytes, the final NUL included.
SUN_PATH_MAX = 108
# A config file is a few hundred bytes; reading one past this is a wrong path (/dev/zero).
MAX_CONFIG_BYTES = 1 << 20
# Filesystems the kernel makes up from its own state: nothing written there is kept.
VIRTUAL_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
    "securityfs", "configfs", "pstore", "bpf", "efivarfs", "fusectl", "binfmt_misc", "mqueue",
    "hugetlbfs", "nsfs", "rpc_pipefs",
})


# A host name in a listen address: dot-separated labels of letters, digits and hyphens.
HOST_NAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


class ConfigError(ValueError):
    """The config is unusable; the message names the key and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        # One line whatever the problem quotes: it is printed as one line and logged as one.
        problem = " ".join(problem.splitlines())
        super().__init__(f"config key {key!r}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Reserve:
    """Free pool space kept back from new devices: a share of the total, or a size."""

    percent: float = 0.0
    size: int = 0

    def of(self, total: int) -> int:
        """The bytes (or blocks) kept back out of `total`."""
        return int(total * self.percent / 100) if self.percent else min(self.size, total)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else format_size(self.size)


def default_node_name(environ: Mapping[str, str] | None = None,
                      hostname: Callable[[], str] | None = None) -> str:
    """node_name's default: $NODE_NAME (what a Kubernetes DaemonSet sets from
    spec.nodeName), else the host name."""
    given = (os.environ if environ is None else environ).get(NODE_NAME_ENV, "")
    return given or (hostname or socket.gethostname)()


@dataclass(frozen=True)
class ListenAddress:
    """A TCP address to listen on: an IPv4 address, a bracketed IPv6 one or a host name, and a
    port. `host` is kept without brackets (what bind() takes)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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
        metadata=_doc("Filesystem made, empty, on new devices without parent: \"ext4\" or "
                     "\"xfs\" (xfs: base_image_size of 300MiB or more)."),
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
    max_removals: int | None = field(
        default=8,
        metadata=_doc("A pass removing more devices whose spec files are gone holds them all "
                      "for an operator (or \"unlimited\")."),
    )

    pool_reserve: Reserve = field(
        default=Reserve(percent=10.0),
        metadata=_doc("Free data space kept back: below it new devices wait (a share or a size)."),
    )
    pool_metadata_reserve: Reserve = field(
        default=Reserve(percent=10.0),
        metadata=_doc("Free metadata space kept back: below it new devices wait, likewise."),
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
    allow_foreign_specs: bool = field(
        default=False,
        metadata=_doc("Accept spec files owned by other users and a group- or world-writable "
                      "spec_dir."),
    )
    node_name: str = field(
        default_factory=default_node_name,
        metadata=_doc("This node's name, which specs' `nodes` globs select by (default: "
                      "$NODE_NAME, else the host name)."),
    )
    metrics_address: ListenAddress | None = field(
        default=None,
        metadata=_doc("HTTP address of /metrics, /healthz and /readyz, as host:port or "
                      "[v6]:port (unset: not served)."),
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
    def control_socket(self) -> Path:
        """The daemon's control socket (operator commands: retry, gc, adopt, resync...)."""
        return self.root_path / "control.sock"

    @property
    def loopback(self) -> bool:
        """True when the pool is made over sparse files under root_path."""
        return self.data_device is None


def _size(key: str, value: object) -> Bytes:
    try:
        return parse_size(value)
    except SizeError as exc:
        raise ConfigError(key, str(exc)) from None


def _duration(key: str, value: object) -> float:
    try:
        seconds = parse_duration(value)
    except SizeError as exc:
        raise ConfigError(key, str(exc)) from None
    if not 0 < seconds <= MAX_DURATION:
        raise ConfigError(key, f"must be longer than 0s and at most a day, got {brief_repr(value)}")
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
_SIZE_KEYS = ("base_image_size", "loopback_data_size", "loopback_metadata_size",
              "data_block_size")
_DURATION_KEYS = ("resync_interval", "retry_initial", "retry_max")
_READERS: dict[str, Callable[[str, object], object]] = {
    **dict.fromkeys(_SIZE_KEYS, _size),
    **dict.fromkeys(_DURATION_KEYS, _duration),
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
    settings = Settings(**values)
    _check_rules(settings, raw)
    _check_paths(settings)
    return settings


def _check_rules(settings: Settings, raw: dict[str, Any]) -> None:
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


def _check_paths(settings: Settings) -> None:
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


def load_settings(path: Path) -> Settings:
    """Read and validate a config file; every way it can be unusable is a ConfigError."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from None
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


def config_path(explicit: Path | None) -> Path:
    """The config file to use: -c PATH, else $RECONCILER_CONFIG, else the system default."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped (json.dumps
    would write a character beyond the BMP as a surrogate pair, which TOML refuses)."""
    escaped = "".join(
        "\\" + char if char in '"\\'
        else f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F
        else char
        for char in text)
    return f'"{escaped}"'


def _toml_size(size: int) -> str:
    # "1GiB" when exact; a size it would round ("1.5GiB" of 1610612737 bytes) as its bytes.
    text = format_size(size)
    return str(size) if "." in text else _toml_string(text)


def _toml_duration(seconds: float) -> str:
    # The largest unit that says it exactly (read back to the same float), else the number.
    for unit, multiplier in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)):
        count = seconds / multiplier
        if count == int(count) and parse_duration(f"{int(count)}{unit}") == seconds:
            return _toml_string(f"{int(count)}{unit}")
    return repr(seconds)


def _toml_reserve(reserve: Reserve) -> str:
    if not reserve.percent:
        return _toml_size(reserve.size)
    short = f"{reserve.percent:g}"
    return _toml_string((short if float(short) == reserve.percent else repr(reserve.percent))
                        + "%")


def _toml_value(value: object) -> str:
    """One setting's value as TOML, written as the key's reader takes it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Reserve):
        return _toml_reserve(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_string(item) for item in value) + "]"
    if isinstance(value, int):
        return str(value)
    return _toml_string(str(value))  # paths, names, choices, listen addresses


def settings_toml(settings: Settings, computed_as_comments: bool = False) -> str:
    """Every key of `settings` as TOML, each after its doc line, in config.example.toml's
    order; read back by settings_from_mapping it gives the same settings. An unset key (None)
    is a comment, `# key = <unset>`; so is a computed default (node_name's, the host name)
    when `computed_as_comments`: a file made from the defaults would otherwise pin the name of
    the host it was made on."""
    chunks = []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is None and f.name == "max_removals":
            line = f"{f.name} = {_toml_string(UNLIMITED)}"
        elif value is None:
            line = f"# {f.name} = <unset>"
        elif f.name in _SIZE_KEYS:
            line = f"{f.name} = {_toml_size(value)}"
        elif f.name in _DURATION_KEYS:
            line = f"{f.name} = {_toml_duration(value)}"
        else:
            line = f"{f.name} = {_toml_value(value)}"
        if computed_as_comments and f.default_factory is not MISSING:
            line = f"# {line}"
        chunks.append(f"# {f.metadata['doc']}\n{line}\n")
    return "\n".join(chunks)
