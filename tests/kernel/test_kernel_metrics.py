"""Metrics on the real kernel, scraped by a real Prometheus server (the VM tier).

`reconciler run` serves metrics on a loopback port; Debian's Prometheus scrapes it every
second, with its TSDB under the test's tmp dir (the guest's own /tmp). After data is written
to a device, the pool's used data space that Prometheus answers through its HTTP API equals
what `status --json` shows, Prometheus scraped OpenMetrics (what it asks for first), and
/healthz, /readyz and /startupz answer 200. Over the wire as `curl` sees it: HEAD 200, gzip
when asked, both content types, and Debian's `promtool check metrics` clean on the text
format (promtool 2.42 reads no OpenMetrics: that is read back by prometheus_client's strict
OpenMetrics parser).
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from reconciler.dm.host import SystemHost
from reconciler.status import build_report
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import World
from reconciler.testing.world import wait_for as shared_wait_for
from tests.kernel.web import free_port, get, request

pytestmark = pytest.mark.kernel
TIMEOUT = 120.0
PROMETHEUS = "/usr/bin/prometheus"


def wait_for(what: str, check: Any, timeout: float = TIMEOUT) -> None:
    """conftest's wait_for with this module's patience."""
    shared_wait_for(what, check, timeout)


def report(world: World) -> dict[str, Any]:
    """`status --json`, read the way status reads (a second store, the kernel now)."""
    store = Store(world.settings.database_path, time.time)
    try:
        return build_report(world.settings, store, SystemHost())
    finally:
        store.close()


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus' HTTP API: its result vector."""
    code, body = get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if code != 200:
        return []
    answer = json.loads(body)
    assert answer["status"] == "success", body
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def scalar(prometheus: str, expr: str) -> float | None:
    """The one sample an instant query returns, or None when it returns none."""
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.fixture
def daemon(real_world: World, tmp_path: Path) -> Iterator[tuple[World, str]]:
    """`reconciler run` with metrics on a loopback port; SIGTERM at the end must exit 0."""
    world = real_world
    address = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "config.toml", root_path=world.settings.root_path,
                          pool_name=world.pool, loopback_data_size="256MiB",
                          loopback_metadata_size="8MiB", base_image_size="32MiB",
                          resync_interval="1s", metrics_address=address)
    assert world.store is not None
    world.store.close()
    log_path = tmp_path / "daemon.log"
    process = DaemonProcess(config, fake_kernel=False, log=log_path).start()
    try:
        wait_for("the daemon's first pass", lambda: b"daemon.ready" in log_path.read_bytes())
        yield world, f"http://{address}"
    finally:
        code = process.stop()
        text = log_path.read_text()
        assert code == 0, text[-3000:]
        assert "daemon.stopped" in text


@pytest.fixture
def prometheus(daemon: tuple[World, str], tmp_path: Path) -> Iterator[str]:
    """A Prometheus server scraping the daemon every second; its TSDB under tmp_path."""
    assert shutil.which(PROMETHEUS) or Path(PROMETHEUS).exists(), \
        "Prometheus is missing: scripts/setup installs Debian's prometheus"
    _, metrics = daemon
    target = metrics.removeprefix("http://")
    listen = f"127.0.0.1:{free_port()}"
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: reconciler\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log_path = tmp_path / "prometheus.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={listen}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    server = f"http://{listen}"
    try:
        wait_for("Prometheus ready", lambda: get(f"{server}/-/ready")[0] == 200)
        wait_for("the reconciler target up",
                 lambda: scalar(server, 'up{job="reconciler"}') == 1.0)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_prometheus_scrapes_the_pool_usage_status_shows(
    daemon: tuple[World, str], prometheus: str
) -> None:
    """Data written to a device: the pool's used data bytes that Prometheus scraped equal
    `status --json`'s once a pass has seen them (the daemon idle); /healthz and /readyz 200."""
    world, metrics = daemon
    world.spec("data", 'filesystem = "none"\nsize = "32MiB"\n')
    wait_for("data Activated", lambda: any(
        d["name"] == "data" and d["state"] == "Activated" and d["path"]
        for d in report(world)["devices"]))
    before = report(world)["pool"]["data_used_bytes"]
    subprocess.run(["dd", "if=/dev/urandom", f"of=/dev/mapper/{world.pool}-data", "bs=1M",
                    "count=8", "oflag=direct", "status=none"], check=True)
    shown = report(world)["pool"]["data_used_bytes"]
    assert shown >= before + (8 << 20), (before, shown)
    # A resync (every second here) reads the pool again; Prometheus scrapes every second.
    wait_for("Prometheus to see the written data", lambda: scalar(
        prometheus, "reconciler_pool_data_used_bytes") == shown)
    assert report(world)["pool"]["data_used_bytes"] == shown, "the daemon is idle"
    assert scalar(prometheus, "reconciler_pool_data_total_bytes") == \
        report(world)["pool"]["data_total_bytes"]
    assert scalar(prometheus, 'reconciler_devices{state="Activated"}') == 1
    assert scalar(prometheus, 'reconciler_pool_mode{mode="rw"}') == 1
    assert get(f"{metrics}/healthz")[0] == 200
    code, reason = get(f"{metrics}/readyz")
    assert code == 200, reason
    assert get(f"{metrics}/startupz") == (200, reason)
    # Prometheus recorded the family as OpenMetrics names it (an `info`), not as the text
    # format does (a gauge `reconciler_build_info`): it scraped OpenMetrics.
    code, body = get(f"{prometheus}/api/v1/metadata?metric=reconciler_build")
    assert code == 200, body
    assert [m["type"] for m in json.loads(body)["data"]["reconciler_build"]] == ["info"], body
    # The sample scrape the closing note quotes (shown with -s).
    text = get(f"{metrics}/metrics")[1]
    print("\n".join(line for line in text.splitlines() if line.startswith("reconciler_")
                    and "_bucket{" not in line))


# What Prometheus 2.x asks for (scrape.go's scrapeAcceptHeader).
OPENMETRICS_FIRST = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def test_the_exposition_is_served_as_a_scraper_asks(daemon: tuple[World, str]) -> None:
    """`curl -I /metrics` is 200 with a length and no body; Accept-Encoding gzip gets it
    gzipped; no Accept gets the text format 0.0.4, which `promtool check metrics` finds
    clean; Prometheus' Accept gets OpenMetrics, ending in `# EOF` and read back whole by the
    strict OpenMetrics parser."""
    _, metrics = daemon
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: scripts/setup installs prometheus"
    code, headers, body = request(f"{metrics}/metrics", "HEAD")
    assert (code, body) == (200, b"") and int(headers["content-length"]) > 1000, headers
    for path in ("/healthz", "/readyz", "/startupz"):
        assert request(f"{metrics}{path}", "HEAD")[0] == 200, path
    code, headers, body = request(f"{metrics}/metrics")
    assert code == 200 and "content-encoding" not in headers
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                             check=False)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b""), checked
    code, headers, zipped = request(f"{metrics}/metrics",
                                    headers={"Accept-Encoding": "gzip"})
    assert code == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped).startswith(b"# HELP ")
    code, headers, opened = request(f"{metrics}/metrics",
                                    headers={"Accept": OPENMETRICS_FIRST})
    assert code == 200 and headers["content-type"].startswith(
        "application/openmetrics-text; version="), headers
    assert opened.endswith(b"# EOF\n")
    parsed = openmetrics_families(opened.decode())  # type: ignore[no-untyped-call]
    families = {f.name: f.type for f in parsed}
    assert families["reconciler_build"] == "info"
    assert families["reconciler_pool_mode"] == "gauge"
    print("content types:", headers["content-type"], "|", "text/plain; version=0.0.4")
