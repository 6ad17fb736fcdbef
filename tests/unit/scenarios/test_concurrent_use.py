"""Concurrent operators: the daemon and any number of CLI processes share one database.

A CLI call that finds the database busy waits and tries again (through the store); one that
finds it busy for good exits 1 with one line. The storm runs the daemon (over the fake
kernel, in a process of its own: a `DaemonProcess`) while spec files churn and five CLI
processes loop over every command, then checks that nothing failed, the daemon stayed up,
converged and stops cleanly, and the database is intact.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.daemon.lock import holder_pid
from reconciler.dm.host import Completed, SystemHost
from reconciler.states import LIVE, RESTING_PROVISIONED
from reconciler.store import Store
from reconciler.store import database as store_module
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import wait_for

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config over a small loopback pool, its spec_dir holding one device."""
    path = write_config(tmp_path / "config.toml", root_path=tmp_path / "state",
                        spec_dir=tmp_path / "specs", pool_name="stormpool",
                        loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                        base_image_size="32MiB", resync_interval="2s", retry_initial="100ms",
                        retry_max="1s", dm_driver="dmsetup",
                        # The churn deletes dozens of files in minutes: the removal window
                        # would hold them (test_durable_hold.py); here the store is the test.
                        max_removals="unlimited")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "anchor.toml").write_text('filesystem = "none"\n')
    return path


@pytest.fixture
def held_database(config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[sqlite3.Connection]:
    """A store made by a pass, then another process's connection that takes its write lock
    (the test decides how much of it), with the store's waits cut to milliseconds."""
    assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 0
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.01)
    monkeypatch.setattr(store_module, "BUSY_RETRY_DELAYS", (0.01, 0.02))
    other = sqlite3.connect(config.parent / "state" / "reconciler.db", isolation_level=None,
                            timeout=0)
    yield other
    other.close()


CLI_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["plan"],
    ["retry", "anchor"],
    ["gc", "--orphans"],
    ["adopt", "x", "--id", "999999"],
    ["confirm-removals"],
]


@pytest.mark.parametrize("command", CLI_COMMANDS, ids=" ".join)
def test_a_cli_command_on_a_database_locked_for_good_exits_one_with_one_line(
        config: Path, held_database: sqlite3.Connection, command: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    """A database another process keeps locked (even for reading) past the store's tries:
    exit 1 and a single line saying the database stayed busy, never a traceback."""
    held_database.execute("PRAGMA locking_mode = EXCLUSIVE")
    held_database.execute("BEGIN IMMEDIATE")
    held_database.execute("DELETE FROM facts WHERE key = 'none'")
    held_database.execute("COMMIT")  # in exclusive mode the lock outlives the transaction
    capsys.readouterr()
    assert main(["-c", str(config), *command], host=FakeKernel()) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("reconciler: the database ")
    assert "stayed busy through 3 tries" in lines[0]


@pytest.mark.parametrize("command", [c for c in CLI_COMMANDS if c[0] in ("gc", "adopt")],
                         ids=" ".join)
def test_a_request_the_database_stays_too_busy_to_take_exits_one_with_one_line(
        config: Path, held_database: sqlite3.Connection, command: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Readers go on beside a writer (WAL); a request that must be written while another
    process holds the write lock past the store's tries exits 1 with one line, and the
    request is not half queued."""
    held_database.execute("BEGIN IMMEDIATE")
    capsys.readouterr()
    assert main(["-c", str(config), *command], host=FakeKernel()) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "stayed busy" in lines[0]
    held_database.execute("ROLLBACK")
    assert held_database.execute("SELECT COUNT(*) FROM requests").fetchone() == (0,)


class _NoDeviceMapper(SystemHost):
    """This machine as a host without device-mapper tools: every program is missing."""

    def run(self, argv: Sequence[str]) -> Completed:
        return Completed(tuple(argv), 127, "", f"{argv[0]}: command not found\n")


def test_plan_without_a_readable_kernel_exits_one_with_one_line(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`plan` compares with the kernel; when it cannot be read, it says so in one line."""
    assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 0
    capsys.readouterr()
    assert main(["-c", str(config), "plan"], host=_NoDeviceMapper()) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "reconciler: cannot plan: device-mapper cannot be read here "
        "(info stormpool: dmsetup: command not found)"]


# -- the storm ---------------------------------------------------------------------------------

CLI_PROCESSES = 5
STORM_SECONDS = 25.0
MAX_CALLS_PER_PROCESS = 150
CHURN_NAMES = ("c0", "c1", "c2", "c3", "c4")
# What each command exits with here: CLI processes see no device-mapper, so `plan` cannot
# compare and says so; `retry` of a device that is not Faulty is refused; gc and adopt are
# answered by the daemon over its control socket (adopt's bad id refused by it).
STORM_COMMANDS: dict[tuple[str, ...], int] = {
    ("gc", "--orphans"): 0,
    ("retry", "c1"): 1,
    ("status", "--json"): 0,
    ("plan",): 1,
    ("adopt", "x", "--id", "999999"): 1,
}
FAILURE_MARKS = ("Traceback", "database is locked", "database is busy", "stayed busy")


@dataclass
class CliCall:
    """One CLI process's outcome."""

    command: tuple[str, ...]
    code: int | None  # None: it did not end within its time limit
    stderr: str

    @property
    def failed(self) -> bool:
        """A traceback, a busy database, a hang or an exit code this command never gives."""
        return (self.code != STORM_COMMANDS[self.command]
                or any(mark in self.stderr for mark in FAILURE_MARKS))


@dataclass
class SpecChurn:
    """Spec files created, edited and deleted at random; sizes only grow, so that every
    version of a file is one the device can become."""

    specs: Path
    rng: random.Random
    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHURN_NAMES, 32))
    changes: int = 0

    def step(self) -> None:
        name = self.rng.choice(CHURN_NAMES)
        path = self.specs / f"{name}.toml"
        if path.exists() and self.rng.random() < 0.3:
            path.unlink()
        else:
            self.sizes[name] += self.rng.choice((0, 0, 8))
            active = "true" if self.rng.random() < 0.7 else "false"
            path.write_text(f'filesystem = "none"\nsize = "{self.sizes[name]}MiB"\n'
                            f"active = {active}\n[labels]\nrev = \"{self.changes}\"\n")
        self.changes += 1


def _expected(specs: Path) -> dict[str, tuple[bool, int, dict[str, str]]]:
    """name -> (active, size in bytes, labels) for every spec file left."""
    expected: dict[str, tuple[bool, int, dict[str, str]]] = {}
    for path in specs.glob("*.toml"):
        lines = path.read_text().splitlines()
        size = next((int(line.split('"')[1].removesuffix("MiB")) for line in lines
                     if line.startswith("size")), 32)
        active = "active = false" not in lines
        labels = {line.split(" = ")[0]: line.split('"')[1] for line in lines
                  if line.startswith("rev")}
        expected[path.stem] = (active, size << 20, labels)
    return expected


def _difference(database: Path, specs: Path) -> str | None:
    """How the store's devices differ from the spec files left (each as its file says), or
    None when they are the same and nothing else is pending or shown."""
    store = Store(database, time.time)
    try:
        actual = {d.name: d for d in store.devices()}
        pending = (store.rejected_specs(), store.has_requests(), store.conditions())
    finally:
        store.close()
    if any(pending):
        return f"rejected specs, requests or conditions: {pending}"
    expected = _expected(specs)
    if set(actual) != set(expected):
        return f"devices {sorted(actual)}, spec files {sorted(expected)}"
    for name, (active, size, labels) in expected.items():
        record = actual[name]
        states = LIVE if active else RESTING_PROVISIONED - LIVE
        if (record.state not in states or record.size_bytes != size
                or record.labels != labels):
            return f"{name}: {record}, its file says {expected[name]}"
    return None


def _settle(database: Path, specs: Path, timeout: float) -> str | None:
    """Wait until the store matches the spec files; what still differs after `timeout`."""
    deadline = time.monotonic() + timeout
    while (difference := _difference(database, specs)) is not None:
        if time.monotonic() > deadline:
            return difference
        time.sleep(0.3)
    return None


def _cli_loop(argv_head: list[str], env: dict[str, str], first: int, deadline: float,
              calls: list[CliCall]) -> None:
    """One operator: the commands in turn (starting at `first`), until the deadline or the
    count is reached."""
    commands = list(STORM_COMMANDS)
    for i in range(first, first + MAX_CALLS_PER_PROCESS):
        if time.monotonic() >= deadline:
            return
        command = commands[i % len(commands)]
        try:
            done = subprocess.run([*argv_head, *command], env=env, cwd=REPO,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=60, check=False)
            calls.append(CliCall(command, done.returncode, done.stderr))
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            calls.append(CliCall(command, None, stderr))


def test_the_daemon_and_five_cli_processes_share_the_database_through_a_storm(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Spec files churn while five CLI processes loop over gc, retry, status, plan and adopt
    beside the running daemon: no call fails with a traceback or a busy database, the daemon
    stays up, converges to the specs left, exits 0 on SIGTERM, and the database is intact."""
    specs, root = tmp_path / "specs", tmp_path / "state"
    database = root / "reconciler.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # CLI processes find no device-mapper programs: whatever happens, they never touch this
    # machine's loop devices or device-mapper (the daemon's kernel is its fake).
    nothing = tmp_path / "no-programs"
    nothing.mkdir()
    cli_env = {**env, "PATH": str(nothing)}
    daemon = DaemonProcess(config, fake_kernel=True, log=tmp_path / "daemon.log", cwd=REPO,
                           env=env, stdin=subprocess.DEVNULL).start()
    try:
        wait_for("the daemon's lock and first pass",
                 lambda: holder_pid(root) == daemon.pid and database.exists(), timeout=60)
        assert _settle(database, specs, timeout=60) is None

        seed = random.randrange(1 << 32)
        churn = SpecChurn(specs, random.Random(seed))
        calls: list[CliCall] = []
        started = time.monotonic()
        deadline = started + STORM_SECONDS
        argv_head = [sys.executable, "-m", "reconciler.cli", "-c", str(config)]
        operators = [threading.Thread(target=_cli_loop,
                                      args=(argv_head, cli_env, i, deadline, calls))
                     for i in range(CLI_PROCESSES)]
        for thread in operators:
            thread.start()
        while time.monotonic() < deadline and any(t.is_alive() for t in operators):
            churn.step()
            time.sleep(0.15)
        for thread in operators:
            thread.join(timeout=120)
        duration = time.monotonic() - started

        assert daemon.poll() is None, "the daemon died during the storm"
        os.kill(daemon.pid, signal.SIGUSR1)  # a full pass now, over the files as they are
        difference = _settle(database, specs, timeout=90)
        assert difference is None, (
            f"not converged: {difference}; the daemon's log ends: "
            + "".join((tmp_path / "daemon.log").read_text().splitlines(keepends=True)[-15:]))
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()

    with sqlite3.connect(database) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchall()
    events = Counter(json.loads(line).get("event") for line in
                     (tmp_path / "daemon.log").read_text().splitlines() if line.startswith("{"))
    failures = [call for call in calls if call.failed]
    per_command = Counter(" ".join(call.command) for call in calls)
    with capsys.disabled():
        print(f"\nstorm: 1 daemon + {CLI_PROCESSES} CLI processes, {len(calls)} CLI calls "
              f"({dict(per_command)}) and {churn.changes} spec changes in {duration:.1f}s "
              f"(seed {seed}); daemon passes {events['pass.finished']}, failed passes "
              f"{events['pass.failed']}, exit {code}; CLI failures {len(failures)}")
    assert failures == [], [(f.command, f.code, f.stderr[-2000:]) for f in failures[:3]]
    assert code == 0
    assert integrity == [("ok",)]
    assert events["pass.failed"] == 0
    assert events["daemon.stopped"] == 1
    assert len(calls) >= 2 * CLI_PROCESSES  # the storm did run
