"""The settings themselves: one typed dataclass, each setting with its default and a
one-line doc, mirrored line for line by config.example.toml (a test keeps the two in step),
and the bounds and names the checks hold them to. Key names follow containerd's devmapper
snapshotter where it has one, so its users recognise them.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.units import (
    Bytes,
    format_size,
)

DEFAULT_CONFIG_PATH = Path("/etc/reconciler/config.toml")
CONFIG_ENV = "RECONCILER_CONFIG"
# Sets the log level over the config's log_level (--log-level sets it over both).
LOG_LEVEL_ENV = "RECONCILER_LOG_LEVEL"
NODE_NAME_ENV = "NODE_NAME"
# A Kubernetes node name is a DNS subdomain: at most 253 characters.
MAX_NODE_NAME = 253

# dm names may hold almost anything, but ours also become file names and log keys.
POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FS_TYPES = ("ext4", "xfs")
DM_DRIVERS = ("libdevmapper", "dmsetup")
# reconciler.logs.LEVELS (a copy: config imports nothing above the base layer; a test keeps
# the two equal).
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL = "info"

# The data block sizes dm-thin accepts (a multiple of the smallest).
MIN_BLOCK = 64 << 10
MAX_BLOCK = 1 << 30

# Each duration key's floor and ceiling in seconds, both inclusive (issue 23). A floor keeps a
# near-zero value (1e-300, "0.000000001ms") from turning a wait into a busy loop; a ceiling
# catches a unit left out, and keeps every deadline computed from one a finite float.
DURATION_BOUNDS: dict[str, tuple[float, float]] = {
    # A full pass reads every spec file and the kernel's whole table: more often than once a
    # second is a busy loop (thousands of passes in 10 s); file events already bring changes
    # in at once, so a resync rarer than daily is a typo, not an intention.
    "resync_interval": (1.0, 86400.0),
    # /healthz calls the loop stalled past it. Under 30 s an ordinary step (a resync of
    # thousands of devices, a mkfs) would get the daemon restarted; a step of a day is stuck.
    # The first pass is not held to it: the startup probe bounds that (docs/kubernetes.md).
    "stall_after": (30.0, 86400.0),
    # A temporary kernel error (a busy device, udev still holding it) needs time to clear:
    # under 10 ms the attempts of a step would all be spent before it can. Never above
    # retry_max, whose ceiling it shares.
    "retry_initial": (0.01, 3600.0),
    # At least retry_initial (checked between keys), hence at least its floor. An hour caps
    # the wait of a failing step and the retry period of a busy remove: longer and a device
    # would sit unattended for most of a working day (max_attempts of 1000 already span weeks).
    "retry_max": (0.01, 3600.0),
    # The removal guard's memory. Under a second it would forget between two passes; a week
    # is longer than any accident takes to run, and the events it keeps stay few.
    "removal_window": (1.0, 7 * 86400.0),
    # udev handles a dm device's event in milliseconds, seconds under load: below 100 ms a
    # working udev would be given up on. Five minutes is half of /healthz's stall bound and of
    # a program's time limit: a longer wait would have the daemon taken for hung.
    "udev_timeout": (0.1, 300.0),
}
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
    stall_after: float = field(
        default=600.0,
        metadata=_doc("/healthz answers 503 once one step of the loop (after the first pass) "
                      "runs longer than this."),
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
        metadata=_doc("More removals of devices whose spec files are gone within removal_window"
                      " are held for an operator (or \"unlimited\")."),
    )
    removal_window: float = field(
        default=600.0,
        metadata=_doc("The sliding window max_removals counts over: a slow accident is held as "
                      "a fast one is."),
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
    udev_timeout: float = field(
        default=60.0,
        metadata=_doc("Longest wait for udev after a create, resume or remove; then the daemon "
                      "makes the node."),
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
    log_level: str = field(
        default=DEFAULT_LOG_LEVEL,
        metadata=_doc("Least level of the log lines on stderr, libraries' too: \"debug\", "
                      "\"info\", \"warning\" or \"error\" ($RECONCILER_LOG_LEVEL and "
                      "--log-level come first)."),
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
    def grow_mounts_path(self) -> Path:
        """Where an xfs being grown is mounted for a moment (xfs grows only while mounted)."""
        return self.root_path / "grow"

    @property
    def loopback(self) -> bool:
        """True when the pool is made over sparse files under root_path."""
        return self.data_device is None
