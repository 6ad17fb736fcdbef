"""What the daemon knows of udev (dm.udev): whether it runs (a connect to its control socket),
where udevd's IPC namespace is against ours (/proc), and the gate that keeps the decision
until udev appears or goes."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from reconciler.dm.host import SystemHost
from reconciler.dm.udev import (
    SystemUdev,
    UdevGate,
    ipc_namespaces,
    udev_facts_of,
    udev_running,
)
from reconciler.dm.udev_sync import CookieProbe, UdevNamespaces, UdevSync
from reconciler.testing.fakekernel import FakeKernel


@pytest.fixture
def control() -> Iterator[Path]:
    """A path for udev's control socket, short enough for sun_path."""
    short = Path(tempfile.mkdtemp(prefix="ud", dir="/tmp"))
    try:
        yield short / "control"
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _bound(path: Path, kind: socket.SocketKind, listening: bool) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, kind)
    sock.bind(str(path))
    if listening:
        sock.listen(1)
    return sock


def test_udev_runs_when_its_seqpacket_control_socket_accepts(control: Path) -> None:
    """A listening SOCK_SEQPACKET socket at the path (what udevd binds) is a running udev."""
    with _bound(control, socket.SOCK_SEQPACKET, listening=True):
        assert udev_running(str(control))


def test_udev_runs_when_its_backlog_is_full(control: Path) -> None:
    """A udevd alive but not accepting (stopped, busy) whose backlog is full still runs:
    the connect's EAGAIN says so at once (the probe never blocks a kernel call)."""
    held: list[socket.socket] = []
    with _bound(control, socket.SOCK_SEQPACKET, listening=True) as listener:
        listener.listen(0)
        try:
            while len(held) < 64:
                client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                client.setblocking(False)
                held.append(client)
                client.connect(str(control))
        except BlockingIOError:
            pass
        assert len(held) < 64, "the backlog filled"
        assert udev_running(str(control))
        for client in held:
            client.close()


def test_udev_does_not_run_behind_a_stale_control_socket(control: Path) -> None:
    """udevd gone: its socket file stays and refuses connections; libudev would wait on it
    until the timeout, we make the nodes ourselves."""
    _bound(control, socket.SOCK_SEQPACKET, listening=False).close()
    assert control.is_socket()
    assert not udev_running(str(control))


def test_udev_does_not_run_behind_a_plain_file(control: Path) -> None:
    """A plain file at the control socket's path is not udevd."""
    control.touch()
    assert not udev_running(str(control))


def test_udev_does_not_run_behind_a_stream_socket(control: Path) -> None:
    """A listener of another socket type (EPROTOTYPE on connect) is not udevd."""
    with _bound(control, socket.SOCK_STREAM, listening=True):
        assert not udev_running(str(control))


def test_udev_does_not_run_without_its_control_socket(control: Path) -> None:
    """Nothing at the path: no udev."""
    assert not udev_running(str(control))


# -- /proc ----------------------------------------------------------------------------------

OURS, HOSTS = "ipc:[4026532301]", "ipc:[4026531839]"


def _proc(root: Path, ours: str, processes: dict[int, tuple[str, str | None]]) -> str:
    """A /proc of `processes` (pid: command name, IPC namespace link or None: unreadable),
    with `self` in `ours`."""
    (root / "self" / "ns").mkdir(parents=True)
    (root / "self" / "ns" / "ipc").symlink_to(ours)
    for pid, (comm, ipc) in processes.items():
        (root / str(pid) / "ns").mkdir(parents=True)
        (root / str(pid) / "comm").write_text(comm + "\n")
        if ipc is not None:
            (root / str(pid) / "ns" / "ipc").symlink_to(ipc)
    (root / "meminfo").write_text("")  # not a process
    return str(root)


NAMESPACE_CASES = [
    # systemd's udevd and its workers in our IPC namespace (hostIPC, or the host itself).
    ({1: ("init", HOSTS), 300: ("systemd-udevd", OURS), 301: ("(udev-worker)", OURS)},
     UdevNamespaces.SAME),
    # eudev's name counts too.
    ({300: ("udevd", OURS)}, UdevNamespaces.SAME),
    # udevd in the host's namespace, we in our own (unshare --ipc; a pod without hostIPC).
    ({1: ("init", HOSTS), 300: ("systemd-udevd", HOSTS)}, UdevNamespaces.OTHER),
    # No udevd in sight (our own PID namespace: a pod without hostPID).
    ({1: ("reconciler", OURS)}, UdevNamespaces.UNKNOWN),
    # Its namespace not ours to read.
    ({300: ("systemd-udevd", None)}, UdevNamespaces.UNKNOWN),
    # Two udevds, one in each: /proc cannot say which serves the control socket.
    ({300: ("systemd-udevd", OURS), 400: ("systemd-udevd", HOSTS)}, UdevNamespaces.UNKNOWN),
]


@pytest.mark.parametrize(("processes", "expected"), NAMESPACE_CASES, ids=repr)
def test_udevds_namespace_is_compared_with_ours_through_proc(
        tmp_path: Path, processes: dict[int, tuple[str, str | None]],
        expected: UdevNamespaces) -> None:
    """Every udevd /proc shows is compared with our IPC namespace; what cannot be read or
    seen is UNKNOWN, for a probe cookie to decide."""
    assert ipc_namespaces(_proc(tmp_path, OURS, processes)) is expected


def test_a_proc_without_our_namespace_is_unknown(tmp_path: Path) -> None:
    """No /proc (or no self/ns/ipc in it): nothing to compare."""
    assert ipc_namespaces(str(tmp_path / "absent")) is UdevNamespaces.UNKNOWN


def test_this_machines_proc_is_read_without_error() -> None:
    """On the real /proc the answer is one of the three, whatever runs here."""
    assert ipc_namespaces() in set(UdevNamespaces)


# -- whose udev ------------------------------------------------------------------------------

def test_the_real_machine_and_the_fake_kernel_each_say_whose_udev_it_is() -> None:
    """SystemHost's udev is the machine's (a frozen value: equal for every host); the fake
    kernel's is its own model; a host that does not say gets the machine's."""
    kernel = FakeKernel()
    assert udev_facts_of(SystemHost()) == SystemUdev() == udev_facts_of(object())
    assert udev_facts_of(kernel) is kernel.udev


# -- the gate ----------------------------------------------------------------------------------

@dataclass
class _Udev:
    """Facts a test moves by hand, counting what the gate asks."""

    alive: bool
    where: UdevNamespaces
    asked: list[str] = field(default_factory=list)

    def __hash__(self) -> int:
        return id(self)

    def running(self) -> bool:
        self.asked.append("running")
        return self.alive

    def namespaces(self) -> UdevNamespaces:
        self.asked.append("namespaces")
        return self.where


def test_the_gate_decides_once_and_again_only_when_udev_appears_or_goes() -> None:
    """Asked before every call, the gate reads /proc and probes only when udev's presence
    changed; meanwhile its answer costs one look at the control socket."""
    udev = _Udev(alive=False, where=UdevNamespaces.UNKNOWN)
    probes: list[str] = []

    def probe() -> CookieProbe:
        probes.append("probe")
        return CookieProbe.UNCONFIRMED

    gate = UdevGate(udev, probe)
    assert gate.sync() is UdevSync.NOT_RUNNING
    assert gate.sync() is UdevSync.NOT_RUNNING
    assert udev.asked == ["running", "running"] and probes == []
    udev.alive = True  # udev appears, where /proc cannot see it
    with capture_logs() as events:
        assert gate.sync() is UdevSync.UNCONFIRMED
        assert gate.sync() is UdevSync.UNCONFIRMED
    assert probes == ["probe"]
    assert [e["event"] for e in events] == ["udev.sync_decided"]
    assert events[0]["log_level"] == "info" and events[0]["probe"] == "unconfirmed"
    udev.alive = False  # and goes
    assert gate.sync() is UdevSync.NOT_RUNNING
    udev.alive, udev.where = True, UdevNamespaces.SAME  # back, seen in our namespace
    assert gate.sync() is UdevSync.USED
    assert probes == ["probe"], "no probe where /proc tells"


def test_without_a_probe_an_unseen_udev_is_unproven() -> None:
    """A gate without the library (a host that offers none) cannot probe: not waited for."""
    assert UdevGate(_Udev(True, UdevNamespaces.UNKNOWN)).sync() is UdevSync.UNPROVEN
