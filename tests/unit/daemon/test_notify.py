"""sd_notify from the daemon, heard on a real AF_UNIX datagram socket the test listens on:
READY after the first pass, STATUS after each pass, WATCHDOG when asked for, RELOADING and
READY around a reload, and a socket that cannot be reached never raising into the loop."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from reconciler.config import load_settings
from reconciler.daemon.notify import Notifier, monotonic_usec, watchdog_interval
from reconciler.daemon.service import Daemon, Outcome, summary, tally
from reconciler.daemon.wakeups import Wakeups
from reconciler.reconcile.pass_context import PassResult
from reconciler.specs import RejectedSpec
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import World

REPO = Path(__file__).resolve().parents[3]


class Listener:
    """The service manager's end: a datagram socket bound at a path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(10)

    def messages(self) -> list[str]:
        """Every datagram received so far (without waiting for more)."""
        found = []
        self.sock.setblocking(False)
        try:
            while True:
                found.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(10)
        return found

    def next(self) -> str:
        """The next datagram, waiting for it."""
        return self.sock.recv(4096).decode()

    def until(self, last: str) -> list[str]:
        """Datagrams up to and including `last`, watchdog pings left out."""
        heard: list[str] = []
        while not heard or heard[-1] != last:
            message = self.next()
            if message != "WATCHDOG=1":
                heard.append(message)
        return heard


class FakeMonotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    """A notify socket to listen on."""
    made = Listener(tmp_path / "notify")
    yield made
    made.sock.close()


def make_daemon(world: World, notifier: Notifier, monotonic: FakeMonotonic | None = None,
                config: Path | None = None) -> Daemon:
    """A daemon over the fake world telling `notifier` (the world's store handed over)."""
    assert world.store is not None
    world.store.close()
    settings = load_settings(config) if config is not None else world.settings
    return Daemon(settings, world.host, config_path=config, clock=world.clock,
                  wakeups=Wakeups(settle=0.01), notifier=notifier,
                  monotonic=monotonic or FakeMonotonic())


def test_ready_comes_after_the_first_pass_and_stopping_at_the_end(
        fake_world: World, listener: Listener) -> None:
    """serve(): the first pass's STATUS, then READY=1; STOPPING=1 when it stops."""
    fake_world.spec("a", 'filesystem = "none"\n')
    daemon = make_daemon(fake_world, Notifier({"NOTIFY_SOCKET": str(listener.path)}))
    thread = threading.Thread(target=daemon.serve)
    thread.start()
    try:
        first = [listener.next(), listener.next()]
    finally:
        daemon.request_stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert first == ["STATUS=1 converged, 0 pending, 0 faulty, 0 rejected", "READY=1"]
    assert listener.messages()[-1] == "STOPPING=1"


def test_status_after_each_pass_counts_every_device(fake_world: World,
                                                    listener: Listener) -> None:
    """A full pass counts all; a file event's pass over one name keeps the others counted;
    a removed device leaves the count."""
    fake_world.spec("a", 'filesystem = "none"\n')
    fake_world.spec("bad", "colour = 'red'\n")
    daemon = make_daemon(fake_world, Notifier({"NOTIFY_SOCKET": str(listener.path)}))
    try:
        daemon.start()
        assert listener.messages() == ["STATUS=1 converged, 0 pending, 0 faulty, 1 rejected"]
        fake_world.spec("b", 'filesystem = "none"\n')
        daemon.wakeups.add("b")
        assert daemon.step(timeout=0)
        assert listener.messages() == ["STATUS=2 converged, 0 pending, 0 faulty, 1 rejected"]
        fake_world.unspec("b")
        daemon.wakeups.add("b")
        assert daemon.step(timeout=0)
        assert listener.messages() == ["STATUS=1 converged, 0 pending, 0 faulty, 1 rejected"]
        fake_world.unspec("a")
        fake_world.unspec("bad")
        daemon.wakeups.resync()
        assert daemon.step(timeout=0)
        assert listener.messages() == ["STATUS=0 converged, 0 pending, 0 faulty, 0 rejected"]
    finally:
        daemon.close()


@pytest.mark.parametrize(("result", "only", "line"), [
    (PassResult(converged=["a", "b"], pending={"c": "x"}, faulty={"d": "y"},
                rejected=[RejectedSpec("e", "/s/e.toml", "bad")]), None,
     "2 converged, 1 pending, 1 faulty, 1 rejected"),
    (PassResult(converged=["a"], held=["x", "y"]), None,
     "1 converged, 0 pending, 0 faulty, 0 rejected; 2 removals held"),
    (PassResult(source_error="spec_dir is missing"), None,
     "0 converged, 0 pending, 0 faulty, 0 rejected; spec source error"),
    (PassResult(faulty={"old": "x"}), {"old"}, "1 converged, 0 pending, 1 faulty, 0 rejected"),
    (PassResult(removed=["old"]), {"old"}, "1 converged, 0 pending, 0 faulty, 0 rejected"),
], ids=["counts", "held", "source error", "one name changed", "one name removed"])
def test_the_status_line_of_a_pass(result: PassResult, only: set[str] | None,
                                   line: str) -> None:
    """The STATUS= text after a pass, starting from "kept" converged and "old" pending (a
    full pass forgets both, a pass over "old" keeps "kept")."""
    outcomes = {"kept": Outcome.CONVERGED, "old": Outcome.PENDING}
    tally(outcomes, result, only)
    assert summary(outcomes, result) == line


def test_the_watchdog_is_pinged_every_half_interval_even_when_idle(
        fake_world: World, listener: Listener) -> None:
    """WATCHDOG_USEC=2s: the loop's wait is never longer than 1s though the next resync is
    30s away; a step at 1s pings, one 0.5s later does not; last_turn is the step's end."""
    clock = FakeMonotonic()
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000",
                         "WATCHDOG_PID": str(os.getpid())}, monotonic=clock)
    daemon = make_daemon(fake_world, notifier, clock)
    try:
        daemon.start()
        assert [m for m in listener.messages() if m.startswith("WATCHDOG")] == ["WATCHDOG=1"]
        assert daemon._timeout() == 1.0
        clock.now += 1.0
        assert daemon.step(timeout=0)
        assert listener.messages() == ["WATCHDOG=1"]
        assert daemon.last_turn == clock.now
        clock.now += 0.5
        assert daemon._timeout() == 0.5
        assert daemon.step(timeout=0)
        assert listener.messages() == []
    finally:
        daemon.close()


def test_last_turn_is_stamped_as_each_step_starts_and_ends(fake_world: World) -> None:
    """Work run inside a step sees last_turn from the step's start; after the step it is
    the step's end (monotonic time, for liveness checks in the process)."""
    clock = FakeMonotonic()
    daemon = make_daemon(fake_world, Notifier({}), clock)
    seen: list[float] = []

    def work(stopping: bool) -> None:
        del stopping
        seen.append(daemon.last_turn)
        clock.now += 5.0  # the work takes five seconds

    try:
        daemon.start()
        clock.now = 2000.0
        daemon.wakeups.call(work)
        assert daemon.step(timeout=0)
        assert (seen, daemon.last_turn) == ([2000.0], 2005.0)
    finally:
        daemon.close()


def test_a_long_pass_pings_the_watchdog_between_device_steps(
        fake_world: World, listener: Listener) -> None:
    """Every look at the clock takes a second (a slow pass): the watchdog is pinged between
    the steps of one pass, not only at its ends."""

    class Slow(FakeMonotonic):
        def __call__(self) -> float:
            self.now += 1.0
            return self.now

    clock = Slow()
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000"},
                        monotonic=clock)
    daemon = make_daemon(fake_world, notifier, clock)
    try:
        daemon.start()
        listener.messages()
        for name in ("a", "b", "c"):
            fake_world.spec(name, 'filesystem = "none"\n')
        daemon.wakeups.resync()
        assert daemon.step(timeout=0)
        pings = [m for m in listener.messages() if m == "WATCHDOG=1"]
        # Three devices of several steps each, plus the step's own start and end.
        assert len(pings) > 3 + 2
    finally:
        daemon.close()


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "abc"}, None),
    ({"WATCHDOG_USEC": "3000000"}, 3.0),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}, 3.0),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "43"}, None),
], ids=["unset", "zero", "garbage", "set", "for us", "for another process"])
def test_the_watchdog_is_ours_only_when_the_manager_says_so(
        environ: dict[str, str], expected: float | None) -> None:
    """WATCHDOG_USEC must be positive, and WATCHDOG_PID (when set) our pid."""
    assert watchdog_interval(environ, 42) == expected


def _write_config(world: World, path: Path, pool: str) -> None:
    write_config(path, root_path=world.settings.root_path, pool_name=pool,
                 loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                 base_image_size="64MiB", dm_driver=world.settings.dm_driver)


@pytest.mark.parametrize("outcome", ["reloaded", "refused", "failed"])
def test_a_reload_says_reloading_then_ready(fake_world: World, listener: Listener,
                                            tmp_path: Path, outcome: str) -> None:
    """SIGHUP's reload: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, taken when it
    starts) in one message, then READY=1, whether the new config was taken, refused (a new
    pool_name) or unreadable; then the pass's STATUS."""
    config = tmp_path / "config.toml"
    _write_config(fake_world, config, fake_world.pool)
    daemon = make_daemon(fake_world, Notifier({"NOTIFY_SOCKET": str(listener.path)}),
                         config=config)
    try:
        daemon.start()
        listener.messages()
        if outcome == "refused":
            _write_config(fake_world, config, "otherpool")
        elif outcome == "failed":
            write_config(config, resync_interval=math.nan)
        daemon.wakeups.reload()
        before = monotonic_usec()
        with capture_logs() as events:
            assert daemon.step(timeout=0)
        after = monotonic_usec()
        reloading, ready, status = listener.messages()
        fields = dict(line.split("=", 1) for line in reloading.splitlines())
        assert fields.keys() == {"RELOADING", "MONOTONIC_USEC"}
        assert before <= int(fields["MONOTONIC_USEC"]) <= after
        assert (ready, status.split("=")[0]) == ("READY=1", "STATUS")
        logged = {"reloaded": "config.reloaded", "refused": "config.reload_refused",
                  "failed": "config.reload_failed"}[outcome]
        assert logged in [e["event"] for e in events]
    finally:
        daemon.close()


def test_a_notify_socket_nobody_can_reach_never_raises(fake_world: World,
                                                       tmp_path: Path) -> None:
    """A missing socket: the daemon starts, passes, reloads and stops all the same, and the
    failure is logged once."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1000"})
    fake_world.spec("a", 'filesystem = "none"\n')
    daemon = make_daemon(fake_world, notifier)
    with capture_logs() as events:
        try:
            daemon.start()
            daemon.wakeups.reload()
            assert daemon.step(timeout=0)
            daemon.request_stop()
            assert not daemon.step(timeout=0)
        finally:
            daemon.close()
    failures = [e for e in events if e["event"] == "notify.failed"]
    assert len(failures) == 1
    assert "No such file or directory" in failures[0]["error"]


@pytest.mark.parametrize("address", [
    "relative/notify", "/tmp/" + "x" * 200, "@", "/tmp/a\0b", "vsock:2:1234",
], ids=["relative missing", "too long", "empty abstract", "nul byte", "vsock"])
def test_a_bad_notify_address_is_false_not_an_exception(address: str) -> None:
    """Addresses that cannot be connected to give False, logged once."""
    notifier = Notifier({"NOTIFY_SOCKET": address})
    with capture_logs() as events:
        assert not notifier.send("READY=1")
        assert not notifier.send("READY=1")
    assert [e["event"] for e in events] == ["notify.failed"]


def test_a_manager_that_stops_reading_costs_dropped_messages_not_a_blocked_loop(
        listener: Listener) -> None:
    """The receiver's queue full (EAGAIN): send returns False at once instead of blocking,
    logged once; once read again, messages go through."""
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path)})
    with capture_logs() as events:
        sent = [notifier.send("STATUS=" + "x" * 1000) for _ in range(5000)]
    assert True in sent and False in sent
    assert [e["event"] for e in events] == ["notify.failed"]
    listener.messages()
    assert notifier.send("READY=1")


def test_a_daemon_process_tells_its_manager_and_the_journal(tmp_path: Path,
                                                            listener: Listener) -> None:
    """`reconciler run` as systemd starts it (over the fake kernel, a DaemonProcess):
    STATUS then READY after the first pass, WATCHDOG pings while idle, RELOADING/READY on
    SIGHUP, STOPPING on SIGTERM; its stderr, named by JOURNAL_STREAM, carries priorities."""
    config = write_config(tmp_path / "config.toml", root_path=tmp_path / "state",
                          spec_dir=tmp_path / "specs", pool_name="notifypool",
                          loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                          dm_driver="dmsetup")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.toml").write_text('filesystem = "none"\n')
    log_path = tmp_path / "journal"
    with log_path.open("wb") as journal:
        st = os.fstat(journal.fileno())
        env = {**os.environ, "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000",
               "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        process = DaemonProcess(config, fake_kernel=True, cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=journal).start()
        try:
            assert listener.until("READY=1") == [
                "STATUS=1 converged, 0 pending, 0 faulty, 0 rejected", "READY=1"]
            # Idle now (the next resync is 30 s away): pings keep coming all the same.
            assert [listener.next() for _ in range(3)] == ["WATCHDOG=1"] * 3
            process.signal(signal.SIGHUP)
            heard = listener.until("READY=1")
            assert len(heard) == 2 and heard[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
        finally:
            assert process.stop() == 0
    rest = [m for m in listener.messages() if m != "WATCHDOG=1"]
    assert rest[-1] == "STOPPING=1"
    lines = log_path.read_text().splitlines()
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>") for line in lines)
    assert any(line.startswith("<6>") and '"event": "daemon.ready"' in line for line in lines)
