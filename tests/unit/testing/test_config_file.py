"""write_config: every value a test passes reads back from the file as TOML gives it; the
FIFO and block device node the config's tests put where a config points."""

from __future__ import annotations

import math
import os
import stat
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.config import load_settings
from reconciler.testing.config_file import (
    block_device_node,
    config_text,
    fifo_at,
    write_config,
)


@given(st.text())
def test_any_string_reads_back_as_itself(text: str) -> None:
    """Quotes, backslashes, newlines and control characters are escaped, never pasted."""
    assert tomllib.loads(config_text({"fs_options": text})) == {"fs_options": text}


def test_each_kind_of_value_reads_back(tmp_path: Path) -> None:
    """Paths as strings, booleans, integers, floats (nan and inf too), arrays and tables."""
    path = write_config(tmp_path / "config.toml", root_path=tmp_path / 'a "quoted" dir',
                        async_remove=True, max_attempts=3, retry_max=1e308,
                        resync_interval=math.inf, retry_initial=-math.inf,
                        names=["a", 'b"c'], pool={"name": "x"})
    read = tomllib.loads(path.read_text())
    nan = tomllib.loads(config_text({"x": math.nan}))["x"]
    assert read == {"root_path": str(tmp_path / 'a "quoted" dir'), "async_remove": True,
                    "max_attempts": 3, "retry_max": 1e308, "resync_interval": math.inf,
                    "retry_initial": -math.inf, "names": ["a", 'b"c'], "pool": {"name": "x"}}
    assert math.isnan(nan)


def test_a_directory_gets_a_config_toml_that_the_daemon_loads(tmp_path: Path) -> None:
    """Given a directory, the file is DIR/config.toml, and load_settings takes its keys."""
    path = write_config(tmp_path, root_path=tmp_path / "state", pool_name="harness")
    assert path == tmp_path / "config.toml"
    settings = load_settings(path)
    assert (settings.root_path, settings.pool_name) == (tmp_path / "state", "harness")


def test_a_value_toml_cannot_hold_is_refused(tmp_path: Path) -> None:
    """None (TOML has no null) is a TypeError naming the type, not a file with a hole."""
    with pytest.raises(TypeError, match="NoneType"):
        write_config(tmp_path / "config.toml", node_name=None)
    assert not (tmp_path / "config.toml").exists()


def test_fifo_at_releases_a_reader_that_blocked_on_it(tmp_path: Path) -> None:
    """A plain blocking read of the FIFO (what a regression would do) ends with an empty
    read once released, rather than hanging the test run; the FIFO is left for the test."""
    with fifo_at(tmp_path / "config.toml", release_after=0.1) as fifo:
        assert fifo.read_bytes() == b""
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_block_device_node_is_a_block_device(tmp_path: Path) -> None:
    """The node the device keys' tests use is a block device, as the config requires."""
    node = block_device_node(tmp_path / "sdz", 9)
    assert stat.S_ISBLK(os.stat(node).st_mode) and os.major(os.stat(node).st_rdev) == 7
