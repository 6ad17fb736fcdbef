"""The drop-in of `reconciler containerd-config --cgroup-driver systemd` as containerd reads
it, for Debian's 1.6.20 and for 2.3.4: `containerd config dump` of a config importing it
shows SystemdCgroup on every runc handler the drop-in declares, and leaves the node's runc
alone where it does not declare it (2.x merges an import into the node's config)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from reconciler.config.render import toml_string
from reconciler.testing.config_file import write_config
from tests.kernel.containerd_stack import (
    TIMEOUT,
    VERSIONS,
    containerd_config_output,
    containerd_for,
)

pytestmark = pytest.mark.kernel
CRI_RUNTIME = {"1.6": "io.containerd.grpc.v1.cri", "2.x": "io.containerd.cri.v1.runtime"}


def _dumped(containerd: Path, config: Path) -> dict[str, Any]:
    """`containerd --config CONFIG config dump`: the config containerd loaded, imports merged."""
    done = subprocess.run([str(containerd), "--config", str(config), "config", "dump"],
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    return tomllib.loads(done.stdout)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_systemd_cgroup_driver_reaches_containerds_runc_handlers(
        version: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Our handler runs runc with systemd's cgroup driver; so does runc on 1.6, whose CRI
    section the drop-in replaces; 2.3.4's runc keeps the node's setting (its default: off)."""
    ctd = containerd_for(version, tmp_path_factory)
    config = write_config(tmp_path / "reconciler.toml", root_path=tmp_path / "state",
                          grpc_socket=tmp_path / "snapshotter.sock")
    drop_in = tmp_path / "reconciler-drop-in.toml"
    drop_in.write_text(containerd_config_output(ctd, config,
                                                extra=("--cgroup-driver", "systemd")))
    main = tmp_path / "containerd.toml"
    main.write_text(f"version = {ctd.config_version}\n"
                    f"root = {toml_string(str(tmp_path / 'root'))}\n"
                    f"state = {toml_string(str(tmp_path / 'run'))}\n"
                    f"imports = [{toml_string(str(drop_in))}]\n")
    plugins = _dumped(ctd.containerd, main)["plugins"]
    runtimes = plugins[CRI_RUNTIME[version]]["containerd"]["runtimes"]
    assert runtimes["reconciler"]["options"]["SystemdCgroup"] is True
    assert runtimes["runc"]["options"]["SystemdCgroup"] is (version == "1.6")
