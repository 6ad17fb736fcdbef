"""`reconciler containerd-config`: the containerd drop-in for the version on PATH (or the one
named), as TOML that version reads, with the proxy plugin at the config's grpc_socket."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from reconciler.arguments import CGROUP_DRIVERS, CONTAINERD_LAYOUTS
from reconciler.cli import main
from reconciler.containerd_config import CgroupDriver, Layout, layout_of
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel

CRI_1 = 'io.containerd.grpc.v1.cri'


@pytest.mark.parametrize(("printed", "layout"), [
    ("containerd github.com/containerd/containerd v1.6.20 2806fc1057397dbaeefbea0e4e17bddfbd388f38",
     Layout.V1_6),
    ("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3", Layout.V1_6),
    ("containerd github.com/containerd/containerd v1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da",
     Layout.V1_7),
    ("containerd containerd.io 1.7.25 bcc810d6b9066471b0b6fa75f557a15a1cbf31bb", Layout.V1_7),
    ("containerd github.com/containerd/containerd/v2 v2.3.4 ", Layout.V2),
    ("containerd github.com/containerd/containerd/v2 v2.0.0-rc.3 abcdef", Layout.V2),
    ("containerd github.com/containerd/containerd/v2 2.1.4~ds1 2.1.4~ds1-1\n", Layout.V2),
    ("containerd github.com/containerd/containerd v1.5.9 1407cab", None),
    ("containerd github.com/containerd/containerd v3.0.0 abc", None),
    ("containerd github.com/containerd/containerd/v2 dev", None),
    ("", None),
    ("Segmentation fault", None),
])
def test_the_version_containerd_prints_gives_its_layout(printed: str,
                                                        layout: Layout | None) -> None:
    """`containerd --version`'s line (upstream, Debian's, Docker's containerd.io) gives 1.6,
    1.7 or 2.x; an older, newer or unreadable version gives none."""
    assert layout_of(printed) is layout


def test_the_parser_offers_each_layout_and_cgroup_driver() -> None:
    """The parser's copies of the layouts and drivers (it imports nothing of ours) are the
    module's."""
    assert tuple(layout.value for layout in Layout) == CONTAINERD_LAYOUTS
    assert tuple(driver.value for driver in CgroupDriver) == CGROUP_DRIVERS


def _config(tmp_path: Path, socket: str | None = "run/rec.sock") -> Path:
    keys: dict[str, object] = {"root_path": tmp_path / "state"}
    if socket is not None:
        keys["grpc_socket"] = socket
    return write_config(tmp_path / "config.toml", **keys)


def _printed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(argv, host=FakeKernel()) == 0
    out = capsys.readouterr().out
    return tomllib.loads(out)


@pytest.mark.parametrize("version", ["1.6", "1.7"])
def test_the_1x_drop_in_is_config_version_2_with_the_cri_1x_keys(
        tmp_path: Path, version: str, capsys: pytest.CaptureFixture[str]) -> None:
    """1.6 and 1.7: version 2, the proxy plugin at grpc_socket (relative to the config, as the
    daemon resolves it), CRI's default snapshotter ours, runc kept as the default runtime and
    a handler `reconciler` (runc v2) whose snapshotter is ours from 1.7 on."""
    document = _printed(["containerd-config", "-c", str(_config(tmp_path)),
                         "--containerd-version", version], capsys)
    assert document["version"] == 2
    assert document["proxy_plugins"] == {"reconciler": {
        "type": "snapshot", "address": str(tmp_path / "run" / "rec.sock")}}
    containerd = document["plugins"][CRI_1]["containerd"]
    assert containerd["snapshotter"] == "reconciler"
    assert containerd["default_runtime_name"] == "runc"
    assert containerd["runtimes"]["runc"] == {"runtime_type": "io.containerd.runc.v2"}
    handler = containerd["runtimes"]["reconciler"]
    assert handler["runtime_type"] == "io.containerd.runc.v2"
    # 1.6's CRI has no per-handler snapshotter (1.6.20 drops the key): said in a comment.
    assert handler.get("snapshotter") == (None if version == "1.6" else "reconciler")
    assert set(document) == {"version", "proxy_plugins", "plugins"}


def test_the_2x_drop_in_is_config_version_3_with_the_cri_2x_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """2.x: version 3; the images' default snapshotter ours and the handler's pulls unpacked
    into it (runtime_platforms); the handler's containers on it; the transfer service allowed
    to unpack into it (overlayfs, its default, kept); no capabilities or exports claimed."""
    document = _printed(["containerd-config", "-c", str(_config(tmp_path)),
                         "--containerd-version", "2.x"], capsys)
    assert document["version"] == 3
    assert document["proxy_plugins"] == {"reconciler": {
        "type": "snapshot", "address": str(tmp_path / "run" / "rec.sock")}}
    plugins = document["plugins"]
    images = plugins["io.containerd.cri.v1.images"]
    assert images["snapshotter"] == "reconciler"
    platform = images["runtime_platforms"]["reconciler"]["platform"]
    assert images["runtime_platforms"]["reconciler"]["snapshotter"] == "reconciler"
    assert platform.startswith("linux/")
    handler = plugins["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["reconciler"]
    assert handler == {"runtime_type": "io.containerd.runc.v2", "snapshotter": "reconciler"}
    unpack = plugins["io.containerd.transfer.v1.local"]["unpack_config"]
    assert [(u["snapshotter"], u["platform"]) for u in unpack] == [
        ("overlayfs", platform), ("reconciler", platform)]
    assert CRI_1 not in plugins


@pytest.mark.parametrize("version", ["1.7", "2.x"])
def test_handler_only_leaves_cris_default_snapshotter(tmp_path: Path, version: str,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """--handler-only (a daemon run as a pod): the handler uses our snapshotter, and CRI's
    default snapshotter is not set."""
    document = _printed(["containerd-config", "-c", str(_config(tmp_path)),
                         "--containerd-version", version, "--handler-only"], capsys)
    plugins = document["plugins"]
    if version == "1.7":
        containerd = plugins[CRI_1]["containerd"]
        assert "snapshotter" not in containerd
        assert containerd["runtimes"]["reconciler"]["snapshotter"] == "reconciler"
    else:
        images = plugins["io.containerd.cri.v1.images"]
        assert "snapshotter" not in images
        assert images["runtime_platforms"]["reconciler"]["snapshotter"] == "reconciler"


def test_handler_only_on_1_6_is_a_usage_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """1.6 has no per-handler snapshotter: --handler-only exits 2 saying 1.7 is needed."""
    assert main(["containerd-config", "-c", str(_config(tmp_path)), "--containerd-version",
                 "1.6", "--handler-only"], host=FakeKernel()) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "1.7" in captured.err


def test_without_grpc_socket_it_says_to_set_it(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A config without grpc_socket: exit 2, one line naming the key, nothing on stdout."""
    assert main(["containerd-config", "-c", str(_config(tmp_path, socket=None)),
                 "--containerd-version", "2.x"], host=FakeKernel()) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "grpc_socket" in captured.err


def _fake_containerd(directory: Path, printed: str | None) -> None:
    """A `containerd` on PATH that prints `printed` for --version (None: no containerd)."""
    directory.mkdir()
    if printed is not None:
        script = directory / "containerd"
        script.write_text(f"#!/bin/sh\necho '{printed}'\n")
        script.chmod(0o755)


@pytest.mark.parametrize(("printed", "version"), [
    ("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3", 2),
    ("containerd github.com/containerd/containerd/v2 v2.3.4 ", 3),
])
def test_the_containerd_on_path_chooses_the_layout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, printed: str, version: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Without --containerd-version, the containerd on PATH is asked its version."""
    _fake_containerd(tmp_path / "bin", printed)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    assert main(["containerd-config", "-c", str(_config(tmp_path))]) == 0
    assert tomllib.loads(capsys.readouterr().out)["version"] == version


@pytest.mark.parametrize("printed", [None, "containerd github.com/containerd/containerd v1.4.0 x"])
def test_no_containerd_or_an_unknown_one_is_a_usage_error_naming_the_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, printed: str | None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No containerd on PATH, or one whose version is not 1.6, 1.7 or 2.x: exit 2, one line
    naming --containerd-version."""
    _fake_containerd(tmp_path / "bin", printed)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert main(["containerd-config", "-c", str(_config(tmp_path))]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "--containerd-version" in captured.err


CRI_2_RUNTIME = "io.containerd.cri.v1.runtime"


def _runtimes(document: dict[str, Any]) -> dict[str, Any]:
    plugins = document["plugins"]
    cri = plugins[CRI_1] if CRI_1 in plugins else plugins[CRI_2_RUNTIME]
    runtimes: dict[str, Any] = cri["containerd"]["runtimes"]
    return runtimes


@pytest.mark.parametrize(("version", "driver", "systemd_handlers"), [
    # 1.x's drop-in replaces the node's CRI section: runc is declared again, with the driver.
    ("1.6", None, {"runc": None, "reconciler": None}),
    ("1.6", "cgroupfs", {"runc": None, "reconciler": None}),
    ("1.6", "systemd", {"runc": True, "reconciler": True}),
    ("1.7", "cgroupfs", {"runc": None, "reconciler": None}),
    ("1.7", "systemd", {"runc": True, "reconciler": True}),
    # 2.x merges it into the node's config: only our handler is declared, the node's runc
    # keeps its own options.
    ("2.x", None, {"reconciler": None}),
    ("2.x", "cgroupfs", {"reconciler": None}),
    ("2.x", "systemd", {"reconciler": True}),
])
def test_every_runc_handler_declared_gets_kubelets_cgroup_driver(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str, driver: str | None,
        systemd_handlers: dict[str, bool | None]) -> None:
    """--cgroup-driver systemd sets `options.SystemdCgroup = true` on each runc handler the
    drop-in declares (a handler is a runtime of its own: it inherits no runc options);
    cgroupfs, the default, leaves runc's default (no options)."""
    argv = ["containerd-config", "-c", str(_config(tmp_path)), "--containerd-version", version]
    document = _printed([*argv, *(["--cgroup-driver", driver] if driver else [])], capsys)
    runtimes = _runtimes(document)
    assert {name: runtime.get("options", {}).get("SystemdCgroup")
            for name, runtime in runtimes.items()} == systemd_handlers
    assert all(set(runtime.get("options", {})) <= {"SystemdCgroup"}
               for runtime in runtimes.values())


def test_an_unknown_cgroup_driver_is_a_usage_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Only cgroupfs and systemd: anything else exits 2 naming the choices, printing no TOML."""
    assert main(["containerd-config", "-c", str(_config(tmp_path)), "--containerd-version",
                 "2.x", "--cgroup-driver", "systemd.slice"], host=FakeKernel()) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cgroupfs" in captured.err and "systemd" in captured.err
