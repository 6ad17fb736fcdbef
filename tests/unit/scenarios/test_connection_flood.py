"""No client exhausts the daemon: 2,000 idle connections held open to the metrics listener and
more to the control socket, and the daemon (a process over the fake kernel, its descriptors
capped at 1024 as a default unit's are) still converges a new spec, /healthz still answers,
and its log stays small."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.daemon.control import Command, ControlRequest, ControlUnreachable, ask
from reconciler.states import LIVE
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import wait_for

REPO = Path(__file__).resolve().parents[3]
# Connections held open: twice the daemon's descriptor limit to the metrics listener, and
# more than its callers and busy callers to the control socket.
METRICS_FLOOD = 2000
CONTROL_FLOOD = 300
DAEMON_NOFILE = 1024
# How long one connect of the flood may wait for its handshake.
CONNECT_WAIT = 5.0
FLOOD_WITHIN = 20.0
# This process holds the flood's client ends, and pytest's own descriptors besides.
OWN_NOFILE = METRICS_FLOOD + CONTROL_FLOOD + 1024
# What a daemon that starts, serves through the flood and stops has to say, and then some
# (a spinning accept loop writes hundreds of thousands of lines).
LOG_LINES_MAX = 300


@pytest.fixture
def descriptors() -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE raised for the flood's client ends; restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < OWN_NOFILE:
        pytest.skip(f"the hard limit on descriptors ({hard}) is below {OWN_NOFILE}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (OWN_NOFILE, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _flood(family: socket.AddressFamily, address: tuple[str, int] | str,
           count: int) -> list[socket.socket]:
    """`count` connections made one after the other, each sending the first byte of a
    request and nothing more: the sockets that connected (whether or not the listener
    closed them since). A listener that lags behind
    slows the flood down (a full TCP backlog makes a connect wait for the handshake again; a
    full unix one refuses it with EAGAIN, and it is tried again) but does not stop it: the
    byte is sent again until the listener has taken the connection. After FLOOD_WITHIN a
    connect no longer waits (a listener that stopped accepting)."""
    held = []
    deadline = time.monotonic() + FLOOD_WITHIN
    for _ in range(count):
        conn = socket.socket(family, socket.SOCK_STREAM)
        while True:
            conn.settimeout(max(0.01, min(CONNECT_WAIT, deadline - time.monotonic())))
            try:
                conn.connect(address)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                conn.close()
            except OSError:  # a listener that stopped accepting lets the connect time out
                conn.close()
            else:
                with contextlib.suppress(OSError):  # answered and closed already
                    conn.sendall(b"G")
                held.append(conn)
            break
    return held


def _healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as got:
            return bool(got.status == 200 and got.read().startswith(b"alive: "))
    except (OSError, urllib.error.URLError):
        return False


def _resync(path: Path) -> bool:
    try:
        return ask(path, ControlRequest(Command.RESYNC), timeout=30).ok
    except ControlUnreachable:
        return False


def _activated(database: Path, name: str) -> bool:
    store = Store(database, time.time)
    try:
        return any(d.name == name and d.state in LIVE for d in store.devices())
    finally:
        store.close()


def test_two_thousand_idle_connections_do_not_wedge_the_daemon(
        descriptors: None, tmp_path: Path) -> None:
    """2,000 idle connections to the metrics listener and 300 to the control socket, held
    open: a spec written afterwards is made, /healthz answers 200, an operator's resync is
    served, and the log stays under LOG_LINES_MAX lines."""
    root = Path(tempfile.mkdtemp(prefix="fl", dir="/tmp"))
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "anchor.toml").write_text('filesystem = "none"\n')
    port = _free_port()
    config = write_config(tmp_path / "config.toml", root_path=root, spec_dir=specs,
                          pool_name="floodpool", loopback_data_size="256MiB",
                          loopback_metadata_size="8MiB", dm_driver="dmsetup",
                          metrics_address=f"127.0.0.1:{port}")
    log = tmp_path / "daemon.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Soft and hard limit 1024, which the daemon cannot raise (so the flood meets the limit a
    # default unit has); set by prlimit, not a preexec_fn: that makes Popen fork, running the
    # at-fork handlers of the libraries this process loaded (gRPC's) in the child.
    capped = [shutil.which("prlimit") or "prlimit",
              f"--nofile={DAEMON_NOFILE}:{DAEMON_NOFILE}", "--"]
    daemon = DaemonProcess(config, fake_kernel=True, log=log, cwd=REPO, env=env,
                           wrapper=capped).start()
    metrics_held: list[socket.socket] = []
    control_held: list[socket.socket] = []
    try:
        wait_for("the first pass", lambda: _healthz(port)
                 and _activated(root / "reconciler.db", "anchor"), timeout=60)
        limits = Path(f"/proc/{daemon.pid}/limits").read_text()
        assert re.search(rf"Max open files +{DAEMON_NOFILE} +{DAEMON_NOFILE} ", limits), limits
        metrics_held += _flood(socket.AF_INET, ("127.0.0.1", port), METRICS_FLOOD)
        control_held += _flood(socket.AF_UNIX, str(root / "control.sock"), CONTROL_FLOOD)
        (specs / "fresh.toml").write_text('filesystem = "none"\n')
        wait_for("the new spec made during the flood",
                 lambda: _activated(root / "reconciler.db", "fresh"), timeout=60)
        wait_for("/healthz during the flood", lambda: _healthz(port), timeout=60)
        wait_for("a resync over the control socket during the flood",
                 lambda: _resync(root / "control.sock"), timeout=60)
        assert daemon.poll() is None, "the daemon serves on"
        assert daemon.stop(timeout=60) == 0
    finally:
        for conn in metrics_held + control_held:
            conn.close()
        daemon.kill()
        shutil.rmtree(root, ignore_errors=True)
    assert len(metrics_held) == METRICS_FLOOD, "every connection of the flood was taken"
    assert len(control_held) == CONTROL_FLOOD
    lines = daemon.log_text().count("\n")
    assert lines < LOG_LINES_MAX, daemon.log_text()[-3000:]
