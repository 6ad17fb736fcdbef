"""The control socket: operator commands reach the running daemon and are answered with their
result; hostile input is answered, never fatal; the socket's path is ours alone."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.cli import main
from reconciler.daemon.control import (
    MAX_CALLERS,
    MAX_NESTING,
    MAX_REQUEST,
    BadRequest,
    Command,
    ControlAnswer,
    ControlRequest,
    ControlServer,
    ControlUnreachable,
    DeviceAnswer,
    answer,
    ask,
    parse_request,
)
from reconciler.daemon.lock import RootLock
from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.reconcile.retry import RetryPolicy
from reconciler.sockets import SocketUnavailable
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import World, wait_for

REPO = Path(__file__).resolve().parents[3]
NONE = 'filesystem = "none"\n'


# -- the protocol, pure ------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "request_"), [
    (b'{"command": "retry", "name": "db"}', ControlRequest(Command.RETRY, "db")),
    (b'{"command": "gc-orphans"}', ControlRequest(Command.GC_ORPHANS)),
    (b'{"command": "gc-faulty", "name": "ignored"}', ControlRequest(Command.GC_FAULTY)),
    (b'{"command": "adopt", "name": "x", "thin_id": 7}', ControlRequest(Command.ADOPT, "x", 7)),
    (b'{"command": "confirm-removals", "names": ["a", "b"]}',
     ControlRequest(Command.CONFIRM_REMOVALS, names=("a", "b"))),
    (b'{"command": "resync"}', ControlRequest(Command.RESYNC)),
])
def test_each_command_parses_to_its_request(line: bytes, request_: ControlRequest) -> None:
    """Every command of the protocol, and what the daemon is asked."""
    assert parse_request(line) == request_
    assert parse_request(request_.to_line().rstrip(b"\n")) == request_


@pytest.mark.parametrize(("line", "problem"), [
    (b"", "not a line of JSON"),
    (b"\xff\xfe", "not a line of JSON"),
    (b"[1, 2]", "a JSON object"),
    (b'{"command": "format-everything"}', "'command' must be one of"),
    (b'{"command": null}', "'command' must be one of"),
    (b'{"command": "retry"}', "'name' must be a device name"),
    (b'{"command": "retry", "name": 5}', "'name' must be a device name"),
    (b'{"command": "retry", "name": "' + b"a" * 256 + b'"}', "'name' must be a device name"),
    (b'{"command": "adopt", "name": "x"}', "'thin_id' must be a thin id"),
    (b'{"command": "adopt", "name": "x", "thin_id": true}', "'thin_id' must be a thin id"),
    (b'{"command": "adopt", "name": "x", "thin_id": 16777216}', "'thin_id' must be a thin id"),
    (b'{"command": "confirm-removals", "names": "a"}', "'names' must be the list"),
    (b'{"command": "confirm-removals", "names": [1]}', "must be a device name"),
])
def test_a_malformed_request_is_refused_naming_what_is_wrong(line: bytes, problem: str) -> None:
    """Each way a line can be wrong gets a BadRequest that says which."""
    with pytest.raises(BadRequest, match=problem):
        parse_request(line)


def test_an_answer_round_trips() -> None:
    """What the daemon sends is what the CLI reads."""
    sent = ControlAnswer(ok=False, done="x", error="boom", devices=(
        DeviceAnswer("db", "Faulty", "create: EINVAL", converged=False),
        DeviceAnswer("web", "Activated", None, converged=True)))
    assert ControlAnswer.from_line(sent.to_line()) == sent


def _refusing(request: ControlRequest) -> ControlAnswer:
    """A handler that answers every request it is given (only valid ones reach it)."""
    return ControlAnswer(ok=True, done=f"handled {request.command}")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=512),
    st.text(max_size=200).map(str.encode),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.sampled_from(["command", "name", "thin_id", "names"])
                                   | st.text(max_size=8), inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
))
def test_hostile_bytes_are_answered_and_never_raise(data: bytes) -> None:
    """Any line at all gets an answer: handled when it is a valid request, an error naming
    the problem otherwise; nothing escapes to the serving thread."""
    reply = answer(_refusing, data)
    try:
        parse_request(data)
    except BadRequest:
        assert not reply.ok and reply.error is not None and reply.error.startswith("bad request")
    else:
        assert reply.ok and reply.done.startswith("handled ")


def test_a_handler_that_fails_is_answered_with_its_error() -> None:
    """A bug in serving one request is that request's answer, not the server's end."""
    def broken(request: ControlRequest) -> ControlAnswer:
        raise RuntimeError(f"cannot {request.command}")

    reply = answer(broken, b'{"command": "resync"}')
    assert not reply.ok and reply.error == "RuntimeError: cannot resync"


# -- the server and its socket path ------------------------------------------------------------

@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory of its own (sun_path holds 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def serving(path: Path) -> Iterator[ControlServer]:
    """A control server at `path` answering with `_refusing`."""
    server = ControlServer(path, _refusing)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _raw(path: Path, data: bytes, shut: bool = True) -> bytes:
    """Send raw bytes, return everything the server sends back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(str(path))
        conn.sendall(data)
        if shut:
            conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_socket_is_the_owners_alone(short_dir: Path) -> None:
    """Mode 0600 (root's, as the daemon runs), in a directory made 0700."""
    path = short_dir / "sub" / "control.sock"
    with serving(path):
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert not path.exists(), "our own socket is removed on stop"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048), newline=st.booleans())
def test_hostile_bytes_on_the_socket_are_answered_and_the_server_serves_on(
        short_dir: Path, data: bytes, newline: bool) -> None:
    """Whatever a caller sends (a newline or not), it gets one answer line, and the next
    caller is served."""
    path = short_dir / f"h{os.urandom(4).hex()}.sock"
    with serving(path):
        reply = _raw(path, data + (b"\n" if newline else b""))
        assert reply.endswith(b"\n") and reply.count(b"\n") == 1
        ControlAnswer.from_line(reply)
        assert ask(path, ControlRequest(Command.RESYNC)).done == "handled resync"


def test_an_oversized_request_is_refused(short_dir: Path) -> None:
    """A line past MAX_REQUEST is answered with the limit, not read to its end."""
    path = short_dir / "control.sock"
    with serving(path):
        reply = ControlAnswer.from_line(_raw(path, b"x" * (MAX_REQUEST + 10), shut=False))
    assert not reply.ok and reply.error == f"bad request: longer than {MAX_REQUEST} bytes"


def test_a_silent_caller_is_answered_after_the_timeout(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that connects and says nothing holds a thread only until REQUEST_TIMEOUT."""
    monkeypatch.setattr("reconciler.daemon.control.REQUEST_TIMEOUT", 0.2)
    path = short_dir / "control.sock"
    with serving(path):
        reply = ControlAnswer.from_line(_raw(path, b"", shut=False))
        assert not reply.ok and reply.error is not None and "no full line" in reply.error
        assert ask(path, ControlRequest(Command.RESYNC)).ok


def test_a_stale_socket_is_replaced(short_dir: Path) -> None:
    """A socket nobody listens on (a daemon that died) is taken over."""
    path = short_dir / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with serving(path):
        assert ask(path, ControlRequest(Command.RESYNC)).ok


def test_a_live_socket_of_another_process_is_not_taken(short_dir: Path) -> None:
    """Another process's live socket at the path: refused, and left serving."""
    path = short_dir / "control.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(1)
    inode = os.lstat(path).st_ino
    try:
        with pytest.raises(SocketUnavailable, match="served by another process"):
            ControlServer(path, _refusing).start()
        assert os.lstat(path).st_ino == inode
        assert sorted(p.name for p in short_dir.iterdir()) == ["control.sock"]
    finally:
        other.close()


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_what_is_not_a_socket_is_refused_untouched(short_dir: Path, kind: str) -> None:
    """A file, a link (even to a stale socket) or a directory at the path is not ours."""
    path = short_dir / "control.sock"
    if kind == "file":
        path.write_text("someone's\n")
    elif kind == "symlink":
        target = short_dir / "elsewhere.sock"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(target))
        stale.close()
        path.symlink_to(target)
    else:
        path.mkdir()
    before = os.lstat(path)
    with pytest.raises(SocketUnavailable, match="not a socket"):
        ControlServer(path, _refusing).start()
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    if kind == "file":
        assert path.read_text() == "someone's\n"


def test_stop_leaves_a_socket_another_process_put_at_the_path(short_dir: Path) -> None:
    """On stop the path is unlinked only while it is still the socket we bound."""
    path = short_dir / "control.sock"
    with serving(path):
        path.unlink()
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(path))
    try:
        assert path.is_socket(), "another process's socket stays"
    finally:
        other.close()


def test_a_path_longer_than_sun_path_is_served_through_its_directory(tmp_path: Path) -> None:
    """A deep root_path (past sun_path's 108 bytes) still gets its control socket."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = deep / "control.sock"
    assert len(os.fsencode(path)) > 108
    with serving(path):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert ask(path, ControlRequest(Command.RESYNC)).ok
    assert not path.exists()


def test_ask_says_why_nothing_answers(short_dir: Path) -> None:
    """No socket, or a stale one: ControlUnreachable saying which."""
    path = short_dir / "control.sock"
    with pytest.raises(ControlUnreachable, match="no control socket"):
        ask(path, ControlRequest(Command.RESYNC))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(ControlUnreachable, match="a stale socket"):
        ask(path, ControlRequest(Command.RESYNC))


# -- the daemon over the fake kernel, in this process ------------------------------------------

@contextmanager
def running(world: World) -> Iterator[Daemon]:
    """A started daemon over the world's kernel, its loop on a thread, holding the root
    lock as `reconciler run` does (so that the CLI finds it)."""
    assert world.store is not None
    world.store.close()
    lock = RootLock(world.settings.root_path)
    lock.acquire()
    daemon = Daemon(world.settings, world.host, clock=world.clock,
                    wakeups=Wakeups(settle=0.02))
    daemon.start()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            daemon.step(timeout=0.05)

    thread = threading.Thread(target=loop, name="reconcile")
    thread.start()
    try:
        yield daemon
    finally:
        stop.set()
        thread.join()
        daemon.close()
        lock.release()
        world.store = Store(world.settings.database_path, world.clock)


def _config(world: World, tmp_path: Path) -> str:
    path = write_config(tmp_path / "config.toml", root_path=world.settings.root_path,
                        pool_name=world.pool, dm_driver=world.settings.dm_driver)
    return str(path)


def _faulty(world: World, name: str) -> None:
    """Make `name` Faulty: its activation refused once with EINVAL (a permanent error)."""
    assert isinstance(world.host, FakeKernel)
    world.host.faults.fail(Op.CREATE, f"{world.pool}-{name}", errno=errno.EINVAL)
    world.spec(name, NONE)
    result = world.run_pass(RetryPolicy(max_attempts=1))
    assert name in result.faulty


def test_retry_over_the_socket_answers_with_the_device_converged(
        fake_world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`reconciler retry` reaches the daemon, which takes the device out of Faulty, passes,
    and answers with its state after that pass."""
    _faulty(fake_world, "db")
    config = _config(fake_world, tmp_path)
    with running(fake_world) as daemon:
        capsys.readouterr()
        assert main(["-c", config, "retry", "db"], host=fake_world.host) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "retry db: db taken out of Faulty (it had failed at activate)"
        assert out[1].split() == ["db", "Activated"]
        assert daemon.reconciler.records["db"].state == "Activated"
        # Not Faulty any more: the CLI says so before asking.
        assert main(["-c", config, "retry", "db"], host=fake_world.host) == 1
    assert f"{fake_world.pool}-db" in fake_world.kernel_names()


def test_each_command_is_answered_with_its_result(
        fake_world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gc --faulty, gc --orphans, adopt (refused), resync: each answer says what was done
    (a released device whose spec is there is made again by the pass that answers)."""
    _faulty(fake_world, "db")
    fake_world.spec("web", NONE)
    config = _config(fake_world, tmp_path)
    with running(fake_world):
        capsys.readouterr()
        assert main(["-c", config, "gc", "--faulty"], host=fake_world.host) == 0
        out = capsys.readouterr().out.splitlines()
        assert out == ["gc-faulty: 1 Faulty devices released", "  db  Activated"]
        assert main(["-c", config, "gc", "--orphans"], host=fake_world.host) == 0
        assert capsys.readouterr().out == "gc-orphans: orphan thin ids deleted: none\n"
        assert main(["-c", config, "adopt", "x", "--id", "99"], host=fake_world.host) == 1
        err = capsys.readouterr().err.splitlines()
        assert any(line.startswith("reconciler: adopt x: write a valid x.toml") for line in err)
        assert main(["-c", config, "resync"], host=fake_world.host) == 0
        assert capsys.readouterr().out.startswith("resync: full pass: ")


def test_confirm_removals_over_the_socket_removes_what_was_held(
        fake_world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Removals the guard holds are confirmed by name and done by the pass that answers."""
    for name in ("a", "b"):
        fake_world.spec(name, NONE)
    fake_world.run_pass()
    fake_world.unspec("a")
    fake_world.unspec("b")
    assert fake_world.run_pass().held == ["a", "b"]  # every spec-file device: held
    config = _config(fake_world, tmp_path)
    with running(fake_world):
        capsys.readouterr()
        assert main(["-c", config, "confirm-removals", "--all"], host=fake_world.host) == 0
        out = capsys.readouterr().out.splitlines()
    assert out[1] == "confirm-removals: 2 removals confirmed"
    assert [line.split() for line in out[2:]] == [["a", "Removed"], ["b", "Removed"]]
    assert fake_world.kernel_names() == set()


def test_a_request_whose_pass_fails_is_answered_and_served_by_the_next(
        fake_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass that should serve a request fails: the answer says so and that the request
    stays queued; the next pass serves it, and the daemon is up throughout."""
    _faulty(fake_world, "db")
    with running(fake_world) as daemon:
        real_pass = daemon.reconciler.run_pass

        def broken(only: object = None) -> object:
            raise RuntimeError("the pool vanished")

        monkeypatch.setattr(daemon.reconciler, "run_pass", broken)
        reply = daemon.control_request(ControlRequest(Command.RETRY, "db"))
        assert not reply.ok and reply.error == (
            "the pass failed: RuntimeError: the pool vanished; the request stays queued for "
            "the next pass")
        monkeypatch.setattr(daemon.reconciler, "run_pass", real_pass)
        reply = daemon.control_request(ControlRequest(Command.RESYNC))
        assert reply.ok
        assert daemon.reconciler.records["db"].state == "Activated"


def test_a_request_while_the_daemon_stops_is_answered_unavailable(
        fake_world: World) -> None:
    """A request handed over while the daemon stops is answered, never left hanging."""
    with running(fake_world) as daemon:
        daemon._stopping = True
        reply = daemon.control_request(ControlRequest(Command.RESYNC))
        daemon._stopping = False
    assert not reply.ok and reply.error == "the reconciler daemon is stopping"


def test_a_daemon_that_holds_the_lock_but_does_not_answer_is_reported_not_signalled(
        fake_world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The lock is held but nothing answers at the control socket (a stale one here): exit
    1 saying so, and no signal is sent to the pid in the lock file (this process)."""
    config = _config(fake_world, tmp_path)
    socket_path = fake_world.settings.control_socket
    if len(os.fsencode(socket_path)) < 108:  # a stale socket where the daemon's would be
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(socket_path))
        dead.close()
    signals: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        del frame
        signals.append(signum)

    previous = signal.signal(signal.SIGUSR1, record)
    lock = RootLock(fake_world.settings.root_path)
    lock.acquire()
    try:
        for command in (["gc", "--orphans"], ["resync"], ["adopt", "x", "--id", "3"]):
            assert main(["-c", config, *command], host=fake_world.host) == 1
            err = capsys.readouterr().err
            assert "holds the lock" in err and "does not answer" in err
    finally:
        lock.release()
        signal.signal(signal.SIGUSR1, previous)
    assert signals == []


def test_without_a_daemon_resync_passes_here(
        fake_world: World, tmp_path: Path) -> None:
    """No daemon (the lock free): `resync` runs the passes itself, as `run --once`."""
    fake_world.spec("web", NONE)
    config = _config(fake_world, tmp_path)
    assert main(["-c", config, "resync"], host=fake_world.host) == 0
    assert f"{fake_world.pool}-web" in fake_world.kernel_names()


# -- the daemon in a process of its own --------------------------------------------------------

def test_commands_from_other_processes_are_answered_by_a_daemon_process(
        tmp_path: Path) -> None:
    """The daemon over the fake kernel in its own process (a DaemonProcess), CLI
    processes beside it: each command round-trips over the socket."""
    root = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))
    config = write_config(tmp_path / "config.toml", root_path=root,
                          spec_dir=tmp_path / "specs", pool_name="ctlpool",
                          loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                          dm_driver="dmsetup")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "anchor.toml").write_text(NONE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemon = DaemonProcess(config, fake_kernel=True, cwd=REPO, env=env,
                           stderr=subprocess.PIPE, text=True).start()
    try:
        wait_for("the control socket", (root / "control.sock").is_socket, timeout=60)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "reconciler.cli", "-c", str(config),
                                   *args], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=120, check=False)

        resync = cli("resync")
        assert (resync.returncode, resync.stdout) == (
            0, "resync: full pass: 1 converged, 0 waiting, 0 Faulty\n")
        orphans = cli("gc", "--orphans")
        assert (orphans.returncode, orphans.stdout) == (
            0, "gc-orphans: orphan thin ids deleted: none\n")
        adopt = cli("adopt", "x", "--id", "999999")
        assert adopt.returncode == 1 and "write a valid x.toml" in adopt.stderr
        assert daemon.poll() is None, "the daemon serves on"
    finally:
        daemon.signal(signal.SIGTERM)
        _, err = daemon.process.communicate(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    assert daemon.process.returncode == 0, err
    assert not (root / "control.sock").exists()


# -- bounds: a whole-request deadline, a nesting limit, a busy answer ---------------------------

def _trickle(path: Path, every: float, most: int, sent: list[int], replies: list[bytes]) -> None:
    """A caller that sends one byte every `every` seconds (never a newline) until it is
    answered or has sent `most`; how many it sent and what it was told are appended."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(path))
        conn.settimeout(every)
        count, reply = 0, b""
        while count < most:
            try:
                conn.sendall(b" ")
            except OSError:  # answered and closed: the send finds the door shut
                break
            count += 1
            try:
                reply = conn.recv(65536)
            except TimeoutError:
                continue
            break
        conn.settimeout(30)
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                reply += chunk
        sent.append(count)
        replies.append(reply)


def test_a_caller_trickling_bytes_is_cut_off_at_the_whole_request_deadline(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """REQUEST_TIMEOUT bounds the whole request, not each recv: 20 callers that each send a
    byte more often than the timeout are answered and dropped while still sending, and the
    slots they held serve the next caller."""
    monkeypatch.setattr("reconciler.daemon.control.REQUEST_TIMEOUT", 0.5)
    path = short_dir / "control.sock"
    most = 60  # 6 s of bytes, twelve times the deadline
    sent: list[int] = []
    replies: list[bytes] = []
    with serving(path):
        callers = [threading.Thread(target=_trickle, args=(path, 0.1, most, sent, replies))
                   for _ in range(20)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=60)
        assert ask(path, ControlRequest(Command.RESYNC)).done == "handled resync"
    assert len(replies) == 20 and max(sent) < most, sent
    errors = {ControlAnswer.from_line(reply).error for reply in replies}
    assert errors <= {"bad request: no full line within 0.5s",
                      f"the daemon is serving {MAX_CALLERS} callers: ask again"}, errors
    assert "bad request: no full line within 0.5s" in errors


def test_deep_nesting_is_refused_before_it_is_parsed() -> None:
    """100,000 nested brackets are a BadRequest naming the limit, not a RecursionError;
    brackets inside strings do not count."""
    for line in (b"[" * 100_000, b'{"a": ' * 100_000, b"[" * (MAX_NESTING + 1)
                 + b"]" * (MAX_NESTING + 1)):
        with pytest.raises(BadRequest, match=f"nested deeper than {MAX_NESTING}"):
            parse_request(line)
    name = '[{"\\\\\\"' * 30
    line = json.dumps({"command": "retry", "name": name}).encode()
    assert parse_request(line) == ControlRequest(Command.RETRY, name)
    assert parse_request(b'{"command": "resync", "x": ' + b"[" * (MAX_NESTING - 1)
                         + b"]" * (MAX_NESTING - 1) + b"}") == ControlRequest(Command.RESYNC)


def test_deep_nesting_on_the_socket_is_answered(short_dir: Path) -> None:
    """A line of 100,000 `[` gets an answer naming the limit, and the server serves on."""
    path = short_dir / "control.sock"
    with serving(path):
        reply = ControlAnswer.from_line(_raw(path, b"[" * 100_000 + b"\n"))
        assert ask(path, ControlRequest(Command.RESYNC)).ok
    assert reply.error == f"bad request: not a line of JSON: nested deeper than {MAX_NESTING}"


def test_two_hundred_concurrent_callers_are_each_answered_or_told_busy(
        short_dir: Path) -> None:
    """Under 200 callers at once (the handler slow), each gets its answer or the busy
    answer: none is reset or left unanswered."""
    path = short_dir / "control.sock"
    release = threading.Event()

    def slow(request: ControlRequest) -> ControlAnswer:
        release.wait(timeout=30)
        return ControlAnswer(ok=True, done=f"handled {request.command}")

    outcomes: list[str] = []
    gate = threading.Barrier(200)

    def caller() -> None:
        gate.wait(timeout=30)
        try:
            reply = ask(path, ControlRequest(Command.RESYNC), timeout=60)
        except ControlUnreachable as exc:
            outcomes.append(f"unreachable: {exc}")
        else:
            outcomes.append(reply.done or str(reply.error))

    server = ControlServer(path, slow)
    server.start()
    try:
        callers = [threading.Thread(target=caller) for _ in range(200)]
        for each in callers:
            each.start()
        wait_for("every caller beyond the busy slots told so",
                 lambda: len(outcomes) >= 200 - MAX_CALLERS, timeout=60)
        release.set()
        for each in callers:
            each.join(timeout=60)
    finally:
        release.set()
        server.stop()
    busy = f"the daemon is serving {MAX_CALLERS} callers: ask again"
    assert len(outcomes) == 200
    assert set(outcomes) <= {"handled resync", busy}, sorted(set(outcomes))
    assert outcomes.count("handled resync") >= MAX_CALLERS
