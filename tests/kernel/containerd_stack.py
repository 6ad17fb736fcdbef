"""A real containerd (Debian's 1.6.20 on PATH, or 2.3.4 unpacked from the shared tarball) with
our daemon as its proxy snapshotter "reconciler", each in a process of its own on a real
kernel: what tests/kernel/test_kernel_containerd.py (ctr) and tests/kernel/test_kernel_cri.py
(Kubernetes' CRI) both stand on.

containerd learns of our daemon only from the drop-in `reconciler containerd-config` prints
for it, imported by the stack's main config (root, state, socket, disabled plugins), so every
containerd test loads the command's output into that containerd."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from reconciler.config.render import toml_string
from reconciler.dm.host import SystemHost
from reconciler.status import build_report
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import KERNEL_AVAILABLE, World, make_settings
from reconciler.testing.world import wait_for as shared_wait_for

TIMEOUT = 180.0
SNAPSHOTTER = "reconciler"
REQUIRE_KERNEL = os.environ.get("RECONCILER_REQUIRE_KERNEL") == "1"
# containerd 2.3.4's static binaries (see the README beside it), looked for in a `shared/`
# beside the checkout or beside one of its parents (a worktree's).
TARBALL = Path("shared/containerd-2.3.4/containerd-2.3.4-linux-amd64.tar.xz")
# The layouts of `reconciler containerd-config --containerd-version` the tier runs.
VERSIONS = ("1.6", "2.x")


def wait_for(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """conftest's wait_for with the patience a containerd under emulation needs."""
    shared_wait_for(what, check, timeout)


def missing(reason: str) -> NoReturn:
    """Skip the test for want of a containerd; under RECONCILER_REQUIRE_KERNEL=1 (CI's kernel
    tier, which must run every containerd test) fail it instead."""
    if REQUIRE_KERNEL:
        pytest.fail(f"RECONCILER_REQUIRE_KERNEL=1 but {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Containerd:
    """One containerd to run: its config layout (the `--containerd-version` of
    containerd-config), its release, the binaries by absolute path, and the PATH containerd
    runs with (where it finds its shim, containerd-shim-runc-v2, and runc)."""

    version: str
    release: str
    containerd: Path
    ctr: Path
    path_env: str

    @property
    def config_version(self) -> int:
        """The config version this containerd reads natively (2.3 migrates 3 itself)."""
        return 3 if self.version == "2.x" else 2


def _tarball() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    for directory in root.parents:
        if (directory / TARBALL).is_file():
            return directory / TARBALL
    return None


_UNPACKED: dict[str, Containerd] = {}


def containerd_for(version: str, tmp_path_factory: pytest.TempPathFactory | None = None
                   ) -> Containerd:
    """The containerd of `version` ("1.6": Debian's on PATH; "2.x": 2.3.4 unpacked once per
    session into the session's tmp dir); skips (fails under RECONCILER_REQUIRE_KERNEL=1) when
    it is not there."""
    if version in _UNPACKED:
        return _UNPACKED[version]
    if version == "1.6":
        found = [shutil.which(name) for name in ("containerd", "ctr")]
        if None in found:
            missing("needs Debian's containerd 1.6 and ctr on PATH")
        binary, ctr = (Path(str(path)) for path in found)
        release = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 check=True).stdout.split()[2]
        made = Containerd("1.6", release, binary, ctr, os.environ.get("PATH", ""))
    else:
        tarball = _tarball()
        if tarball is None:
            missing(f"needs containerd 2.3.4: no {TARBALL} beside the checkout or a parent")
        assert tmp_path_factory is not None, "2.x is unpacked into the session's tmp dir"
        directory = tmp_path_factory.mktemp("containerd-2.3.4")
        subprocess.run(["tar", "-xJf", str(tarball), "-C", str(directory)], check=True)
        # containerd 2.x looks for its shim on PATH: the unpacked one first.
        made = Containerd("2.x", "2.3.4", directory / "containerd", directory / "ctr",
                          f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")
    _UNPACKED[version] = made
    return made


@dataclass
class Stack:
    """containerd and our daemon, each a process, and the paths they use."""

    work: Path
    world: World
    config: Path
    containerd_socket: Path
    reconciler_socket: Path
    ctd: Containerd
    namespace: str = "default"
    daemon: DaemonProcess | None = None
    containerd: subprocess.Popen[bytes] | None = None
    # containerd's main config and the drop-in it imports (containerd-config's output).
    containerd_config: Path = field(init=False)
    drop_in: Path = field(init=False)

    def __post_init__(self) -> None:
        self.containerd_config = self.work / "containerd.toml"
        self.drop_in = self.work / "reconciler-drop-in.toml"

    def start_daemon(self) -> None:
        self.daemon = DaemonProcess(self.config, fake_kernel=False,
                                    log=self.work / "reconciler.log").start()
        # The socket is bound after the first pass (pool, base, mkfs), which a VM shared
        # with other runs makes slow: more patience than a containerd call gets.
        wait_for("our gRPC socket", self.reconciler_socket.is_socket, timeout=3 * TIMEOUT)

    def start_containerd(self) -> None:
        """containerd by absolute path, with its shim's directory first on its PATH."""
        log = (self.work / "containerd.log").open("ab")
        self.containerd = subprocess.Popen(
            [str(self.ctd.containerd), "--config", str(self.containerd_config)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PATH": self.ctd.path_env})
        log.close()
        wait_for("containerd's socket", self.containerd_socket.is_socket)
        # The socket is bound before the plugins are loaded: wait until it answers.
        wait_for("containerd answers", lambda: self.ctr("version", check=False).returncode == 0)

    def stop_containerd(self) -> None:
        """containerd stopped with SIGTERM, as systemd stops it (the tasks keep running)."""
        if self.containerd is not None and self.containerd.poll() is None:
            self.containerd.send_signal(signal.SIGTERM)
            self.containerd.wait(timeout=60)
        self.containerd_socket.unlink(missing_ok=True)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr` (of the same containerd) against our containerd, in the stack's namespace;
        checked unless told otherwise."""
        done = subprocess.run([str(self.ctd.ctr), "-a", str(self.containerd_socket), "-n",
                               self.namespace, *args], capture_output=True, text=True,
                              timeout=TIMEOUT)
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: rc {done.returncode}\n{done.stderr}"
                                 f"\n{self.logs()}")
        return done

    def snapshots(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr snapshots --snapshotter reconciler ...`."""
        return self.ctr("snapshots", "--snapshotter", SNAPSHOTTER, *args, check=check)

    def listed(self) -> dict[str, list[str]]:
        """`ctr snapshots ls` as key -> the other columns (parent if any, kind)."""
        lines = self.snapshots("ls").stdout.splitlines()[1:]
        return {line.split()[0]: line.split()[1:] for line in lines if line.strip()}

    def collect_until(self, what: str, left: Callable[[], list[str]]) -> None:
        """Run containerd's garbage collector until `left()` is empty.

        `ctr snapshots rm` only forgets a snapshot in containerd's own database; our Remove
        is called later by its collector. containerd 1.6 drops the wake-ups of removals
        made while a collection is still waiting on a snapshotter's cleanup, so those wait
        for the next deletion anyone makes. Deleting a lease with --sync starts a
        collection that sees them, without waiting for that (on 1.6 and 2.3.4 alike)."""
        deadline = time.monotonic() + TIMEOUT
        while (remaining := left()) and time.monotonic() < deadline:
            lease = self.ctr("leases", "create").stdout.split()[0]
            self.ctr("leases", "rm", "--sync", lease)
            time.sleep(0.5)
        if remaining:
            raise AssertionError(f"timed out after {TIMEOUT}s waiting for {what}: "
                                 f"{remaining} left\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for name in ("reconciler.log", "containerd.log"):
            path = self.work / name
            if path.exists():
                parts.append(f"--- {name} (tail)\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def report(self) -> dict[str, object]:
        store = Store(self.world.settings.database_path, time.time)
        try:
            return build_report(self.world.settings, store, SystemHost())
        finally:
            store.close()


def containerd_config_output(ctd: Containerd, config: Path, handler_only: bool = False,
                             extra: Sequence[str] = ()) -> str:
    """What `reconciler containerd-config --containerd-version V -c CONFIG` prints (with
    `--handler-only` if asked, and the `extra` arguments)."""
    done = subprocess.run([sys.executable, "-m", "reconciler.cli", "containerd-config",
                           "--containerd-version", ctd.version, "-c", str(config),
                           *(["--handler-only"] if handler_only else []), *extra],
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def write_containerd_config(stack: Stack, disabled_plugins: Sequence[str],
                            plugins_toml: str, handler_only: bool = False) -> None:
    """containerd's main config (its native version) importing the command's drop-in.

    `plugins_toml` goes where an operator puts it: containerd 1.x replaces a whole plugin
    section with an imported file's, so there it is appended to the drop-in's file (the
    README's advice; it must not repeat a table the drop-in has); 2.x merges an import's
    sections into the main config's, so there it is in the main config."""
    ctd = stack.ctd
    output = containerd_config_output(ctd, stack.config, handler_only)
    in_drop_in = plugins_toml if ctd.config_version == 2 else ""
    stack.drop_in.write_text(output + in_drop_in)
    disabled = ", ".join(toml_string(name) for name in disabled_plugins)
    stack.containerd_config.write_text(
        f"version = {ctd.config_version}\n"
        f"root = {toml_string(str(stack.work / 'ctd-root'))}\n"
        f"state = {toml_string(str(stack.work / 'ctd-state'))}\n"
        f"disabled_plugins = [{disabled}]\n"
        f"imports = [{toml_string(str(stack.drop_in))}]\n"
        f"[grpc]\n  address = {toml_string(str(stack.containerd_socket))}\n"
        + (plugins_toml if ctd.config_version != 2 else ""))


@contextmanager
def containerd_stack(work: Path, *, containerd: Containerd | None = None,
                     disabled_plugins: Sequence[str] = (), plugins_toml: str = "",
                     namespace: str = "default", handler_only: bool = False) -> Iterator[Stack]:
    """Our daemon serving a socket, and `containerd` (default: Debian's 1.6 on PATH) with it
    as the proxy snapshotter through containerd-config's drop-in; `plugins_toml` is extra
    containerd config (write_containerd_config says where it goes); `handler_only`: the
    drop-in of `--handler-only`. Skips the test where there is no device-mapper or root;
    stops both and tears the pool down."""
    if not KERNEL_AVAILABLE:
        pytest.skip("needs device-mapper and root")
    ctd = containerd if containerd is not None else containerd_for("1.6")
    pool = f"rc{secrets.token_hex(3)}"
    rec_socket = work / "rec.sock"
    settings = make_settings(work, pool, base_image_size="128MiB",
                             loopback_data_size="1GiB", grpc_socket=str(rec_socket))
    world = World(host=SystemHost(), settings=settings, real=True)
    assert world.store is not None
    world.store.close()
    config = write_config(work / "reconciler.toml", root_path=settings.root_path,
                          pool_name=pool, loopback_data_size="1GiB",
                          loopback_metadata_size="16MiB", base_image_size="128MiB",
                          grpc_socket=rec_socket, resync_interval="5s",
                          retry_initial="200ms", retry_max="2s")
    stack = Stack(work, world, config, work / "containerd.sock", rec_socket, ctd, namespace)
    try:
        write_containerd_config(stack, disabled_plugins, plugins_toml, handler_only)
        stack.start_daemon()
        stack.start_containerd()
        yield stack
    finally:
        for process in (stack.containerd, stack.daemon.process if stack.daemon else None):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
        subprocess.run(["umount", "-R", str(work / "ctd-state")], capture_output=True)
        world.teardown()


def mount_command(stack: Stack, key: str, target: Path) -> list[str]:
    """The mount(8) argv `ctr snapshots mounts` prints for a snapshot."""
    line = stack.snapshots("mounts", str(target), key).stdout.strip()
    words = line.split()
    assert words[:2] == ["mount", "-t"], line
    if words[-1] == "-o":  # no options
        words = words[:-1]
    return words
