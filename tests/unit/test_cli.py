"""The command line: exit codes, the status table and the JSON document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.status import Report, collect, render_table
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.world import World


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path / "config.toml", root_path=tmp_path / "state",
                        pool_name="clipool", loopback_data_size="256MiB",
                        loopback_metadata_size="8MiB", base_image_size="64MiB",
                        spec_dir="specs")
    (tmp_path / "specs").mkdir()
    return path



def _typed(world: World) -> Report:
    """The world's status report, typed (what the table renders)."""
    assert world.store is not None
    return collect(world.settings, world.store, world.host)

def test_run_once_exits_zero_when_converged(config: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    """Two good specs: exit 0, and status shows both with their columns."""
    specs = config.parent / "specs"
    (specs / "web-base.toml").write_text('size = "64MiB"\n')
    (specs / "web-1.toml").write_text('parent = "web-base"\n')
    host = FakeKernel()
    assert main(["-c", str(config), "run", "--once"], host=host) == 0
    capsys.readouterr()
    assert main(["-c", str(config), "status"], host=host) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pool clipool: rw, transaction 2")
    assert out[1].split() == ["NAME", "KIND", "STATE", "SINCE", "THIN_ID", "SIZE", "USED",
                              "PARENT", "KEY", "ERROR"]
    cells = out[2].split()
    assert cells[:3] == ["web-1", "spec", "Activated"]
    assert cells[4:6] == ["1", "64MiB"]
    assert cells[7:9] == ["web-base", "-"]
    # Columns line up: every row has STATE where the header has it.
    assert {line.index(line.split()[2]) for line in out[1:4]} == {out[1].index("STATE")}


def test_status_json_has_the_documented_keys(config: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    """--json prints its schema version (1, first), pool, devices and rejected_specs with at
    least the documented fields."""
    (config.parent / "specs" / "a.toml").write_text("")
    host = FakeKernel()
    assert main(["-c", str(config), "run", "--once"], host=host) == 0
    capsys.readouterr()
    assert main(["-c", str(config), "status", "--json"], host=host) == 0
    report = json.loads(capsys.readouterr().out)
    assert next(iter(report.items())) == ("schema_version", 1)
    assert set(report) >= {"pool", "devices", "rejected_specs", "conditions", "orphans"}
    assert set(report["pool"]) >= {"name", "transaction_id", "data_used_bytes",
                                   "data_total_bytes", "metadata_used_bytes",
                                   "metadata_total_bytes"}
    assert set(report["devices"][0]) >= {"name", "state", "device_id", "size_bytes",
                                         "used_bytes", "parent", "path", "active", "readonly",
                                         "error", "attempts", "labels"}
    assert report["pool"]["data_total_bytes"] == 256 << 20


def test_invalid_spec_exits_one_and_is_shown(config: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    """A rejected spec makes run exit 1 and appears in status with its error."""
    (config.parent / "specs" / "bad.toml").write_text("colour = 'red'\n")
    host = FakeKernel()
    assert main(["-c", str(config), "run", "--once"], host=host) == 1
    capsys.readouterr()
    assert main(["-c", str(config), "status"], host=host) == 0
    out = capsys.readouterr().out
    assert "rejected specs:" in out
    assert "bad: unknown key 'colour'" in out


def test_status_of_one_device_shows_its_history(config: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """status NAME lists the device's transitions."""
    (config.parent / "specs" / "a.toml").write_text('filesystem = "none"\n')
    host = FakeKernel()
    assert main(["-c", str(config), "run", "--once"], host=host) == 0
    capsys.readouterr()
    assert main(["-c", str(config), "status", "a"], host=host) == 0
    out = capsys.readouterr().out
    assert "Unknown -> Creating (create)" in out
    assert "Activating -> Activated (activated)" in out
    assert main(["-c", str(config), "status", "nope"], host=host) == 1


def test_config_errors_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad config exits 2 with the key named; so does a usage error."""
    bad = write_config(tmp_path / "bad.toml", fs_type="ntfs")
    assert main(["-c", str(bad), "run", "--once"], host=FakeKernel()) == 2
    assert "config key 'fs_type'" in capsys.readouterr().err
    assert main(["frobnicate"], host=FakeKernel()) == 2



def only_device(report: dict[str, Any]) -> dict[str, Any]:
    devices: list[dict[str, Any]] = report["devices"]
    assert len(devices) == 1
    return devices[0]


def test_an_activated_device_is_ready_only_once_its_filesystem_is_made(
    fake_world: World
) -> None:
    """Activated precedes mkfs: until mkfs succeeds, status says "not ready" (JSON: ready
    false), so nobody mounts a device mkfs still holds or that has no filesystem yet."""
    assert isinstance(fake_world.host, FakeKernel)
    fake_world.spec("a")
    fake_world.host.fail_next(("mkfs.ext4",), 1, "mkfs.ext4: Device or resource busy while "
                              "setting up superblock\n")
    fake_world.reconciler().run_pass()
    report = fake_world.report()
    device = only_device(report)
    assert (device["state"], device["formatted"], device["ready"]) == ("Activated", False, False)
    assert "Device or resource busy" in device["error"]
    table = render_table(_typed(fake_world))
    assert table.splitlines()[2].split()[2:5] == ["Activated", "(not", "ready)"]

    assert fake_world.run_pass().ok
    report = fake_world.report()
    device = only_device(report)
    assert (device["state"], device["formatted"], device["ready"]) == ("Activated", True, True)
    assert render_table(_typed(fake_world)).splitlines()[2].split()[2] == "Activated"
