"""Reading the config file (issue 23, finding 11): a regular file only, never blocked on; a
link to one (a ConfigMap's key is a link) is read as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.config import ConfigError, load_settings
from reconciler.testing.config_file import fifo_at, write_config
from reconciler.testing.fakekernel import FakeKernel


def test_config_check_of_a_fifo_says_so_at_once(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`config check -c FIFO` exits 2 with one line naming the file as a FIFO (it used to
    block until a writer came)."""
    with fifo_at(tmp_path / "config.toml") as fifo:
        assert main(["-c", str(fifo), "config", "check"], host=FakeKernel()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(fifo) in err[0] and "FIFO" in err[0]
    assert "not a regular file" in err[0]


@pytest.mark.parametrize("what", ["directory", "/dev/zero", "/dev/null"])
def test_a_config_path_that_is_no_regular_file_is_refused(tmp_path: Path, what: str) -> None:
    """A directory or a device at the config's path is a ConfigError naming it."""
    path = tmp_path if what == "directory" else Path(what)
    with pytest.raises(ConfigError, match="not a regular file") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


def test_a_config_reached_through_links_is_read(tmp_path: Path) -> None:
    """A config file behind two links (a ConfigMap: key -> ..data/key, ..data -> dir) is
    read as the file it leads to."""
    real = tmp_path / "..2026_12_01" / "config.toml"
    real.parent.mkdir()
    write_config(real, root_path=tmp_path / "state", pool_name="linked")
    (tmp_path / "..data").symlink_to(real.parent.name)
    (tmp_path / "config.toml").symlink_to("..data/config.toml")
    assert load_settings(tmp_path / "config.toml").pool_name == "linked"
