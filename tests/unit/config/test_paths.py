"""The config's paths on this machine (issue 23): the device keys take block devices only,
spec_dir is never under /proc or /sys, root_path and its parents are writable by no one but
us, and $NODE_NAME is held to node_name's rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.config import ConfigError, settings_from_mapping
from reconciler.testing.config_file import block_device_node, write_config
from reconciler.testing.fakekernel import FakeKernel

# A user id that owns nothing here: not root, not us (the tests run as root).
STRANGER = 4242


@pytest.fixture
def devices(tmp_path: Path) -> tuple[Path, Path]:
    """Two block device nodes, for data_device and metadata_device."""
    return (block_device_node(tmp_path / "data", 250), block_device_node(tmp_path / "meta", 251))


def _device_keys(tmp_path: Path, data: Path, meta: Path) -> dict[str, object]:
    return {"root_path": str(tmp_path / "state"), "data_device": str(data),
            "metadata_device": str(meta)}


def test_block_devices_are_taken_through_links_too(tmp_path: Path,
                                                   devices: tuple[Path, Path]) -> None:
    """Block device nodes are accepted, also through a link (/dev/disk/by-id is links)."""
    data, meta = devices
    (tmp_path / "by-id").mkdir()
    (tmp_path / "by-id" / "disk-1").symlink_to(data)
    settings = settings_from_mapping(_device_keys(tmp_path, tmp_path / "by-id" / "disk-1", meta))
    assert settings.data_device == tmp_path / "by-id" / "disk-1"
    assert not settings.loopback


@pytest.mark.parametrize("key", ["data_device", "metadata_device"])
@pytest.mark.parametrize("what", ["/dev/null", "regular file", "directory", "missing"])
def test_a_device_key_that_is_no_block_device_is_refused(
    tmp_path: Path, devices: tuple[Path, Path], key: str, what: str
) -> None:
    """/dev/null, a regular file, a directory or nothing at a device key: a ConfigError
    naming the key and what is there."""
    bad = {"/dev/null": Path("/dev/null"), "regular file": tmp_path / "file",
           "directory": tmp_path, "missing": tmp_path / "sdz"}[what]
    (tmp_path / "file").write_bytes(b"\0" * 4096)
    raw = _device_keys(tmp_path, *devices)
    raw[key] = str(bad)
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(raw)
    assert caught.value.key == key
    assert str(bad) in str(caught.value) and "block device" in str(caught.value)


def test_config_check_says_a_device_is_no_block_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], devices: tuple[Path, Path]
) -> None:
    """`config check` with data_device = "/dev/null" exits 2, naming the key in one line."""
    config = write_config(tmp_path / "config.toml", root_path=tmp_path / "state",
                          data_device="/dev/null", metadata_device=devices[1])
    assert main(["-c", str(config), "config", "check"], host=FakeKernel()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data_device" in err[0] and "/dev/null" in err[0]


@pytest.mark.parametrize("spec_dir", ["/proc/self", "/proc/self/fdinfo", "/sys/kernel",
                                      "/proc/no-such-thing", "link-to-proc"])
def test_a_spec_dir_under_proc_or_sys_is_refused(tmp_path: Path, spec_dir: str) -> None:
    """spec_dir under /proc or /sys, however it is written (resolved through links, or not
    there yet), is a ConfigError naming spec_dir."""
    (tmp_path / "link-to-proc").symlink_to("/proc/self")
    raw = {"root_path": str(tmp_path / "state"), "spec_dir": spec_dir}
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(raw, tmp_path)
    assert caught.value.key == "spec_dir"
    assert "/proc" in str(caught.value) or "/sys" in str(caught.value)


@pytest.mark.parametrize("value", ["worker\n1", "w" * 300, " worker-1", "worker\x00"])
def test_node_name_from_the_environment_is_checked_as_the_key_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    value: str
) -> None:
    """$NODE_NAME that node_name would refuse is refused, exit 2, naming NODE_NAME in one
    line: with a config file and without one."""
    root = {"root_path": str(tmp_path / "state")}
    with pytest.raises(ConfigError) as in_config:
        settings_from_mapping({**root, "node_name": value})
    if "\x00" not in value:  # the environment cannot hold a NUL
        monkeypatch.setenv("NODE_NAME", value)
        with pytest.raises(ConfigError) as from_env:
            settings_from_mapping(root)
        assert from_env.value.key == "node_name" and "NODE_NAME" in str(from_env.value)
        assert in_config.value.problem in from_env.value.problem
        config = write_config(tmp_path / "config.toml", **root)
        assert main(["-c", str(config), "config", "check"], host=FakeKernel()) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "NODE_NAME" in err[0]
        monkeypatch.delenv("RECONCILER_CONFIG", raising=False)
        assert main(["status", "--check"], host=FakeKernel()) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "NODE_NAME" in err[0]


def test_a_good_node_name_from_the_environment_is_taken(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid $NODE_NAME is node_name's default; node_name in the config wins over a bad
    one (the environment is then not read)."""
    monkeypatch.setenv("NODE_NAME", "worker-7")
    root = {"root_path": str(tmp_path / "state")}
    assert settings_from_mapping(root).node_name == "worker-7"
    monkeypatch.setenv("NODE_NAME", "bad\nname")
    assert settings_from_mapping({**root, "node_name": "worker-8"}).node_name == "worker-8"


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o722])
def test_a_root_path_others_may_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    """root_path writable by its group or everyone (sticky or not: others could make the
    database's name) is a ConfigError naming root_path, its mode and the fix."""
    root = tmp_path / "state"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"root_path": str(root)})
    assert caught.value.key == "root_path"
    assert str(root) in str(caught.value) and f"{mode:04o}" in str(caught.value)


def test_a_parent_others_may_write_to_is_refused_unless_sticky(tmp_path: Path) -> None:
    """A parent writable by others is refused (they could rename root_path away); one with
    the sticky bit (/tmp) is not. A root_path not made yet is judged by its parents."""
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    for root in (parent / "state", parent / "not-yet" / "state"):
        with pytest.raises(ConfigError) as caught:
            settings_from_mapping({"root_path": str(root)})
        assert caught.value.key == "root_path" and str(parent) in str(caught.value)
    parent.chmod(0o1777)
    assert settings_from_mapping({"root_path": str(parent / "state")}).root_path.parent == parent


@pytest.mark.parametrize("owned", ["root_path", "parent"])
def test_a_root_path_or_parent_owned_by_another_user_is_refused(tmp_path: Path,
                                                                owned: str) -> None:
    """root_path, or a parent, owned by a user that is neither root nor us is refused,
    naming the owner's uid: that user could replace what we keep there."""
    parent = tmp_path / "home"
    root = parent / "state"
    root.mkdir(parents=True)
    os.chown(root if owned == "root_path" else parent, STRANGER, -1)
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"root_path": str(root)})
    assert caught.value.key == "root_path" and str(STRANGER) in str(caught.value)


@pytest.mark.parametrize("argv", [["run", "--once"], ["status"], ["plan"], ["config", "check"]])
def test_commands_refuse_an_open_root_path_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """With root_path writable by all, `run --once`, `status`, `plan` and `config check`
    exit 2 at start with one line naming root_path, and make nothing in it (the daemon's
    `run` loads its config the same way; not run here, where a regression would serve on)."""
    root = tmp_path / "state"
    root.mkdir()
    root.chmod(0o777)
    config = write_config(tmp_path / "config.toml", root_path=root, dm_driver="dmsetup")
    assert main(["-c", str(config), *argv], host=FakeKernel()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "root_path" in err[0] and "writable by others" in err[0]
    assert list(root.iterdir()) == []
