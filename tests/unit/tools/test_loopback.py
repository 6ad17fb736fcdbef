"""The loopback files' checks (issue 23, finding 8): never followed, only plain files of ours
with one name, in a directory of ours that an older version's loose umask may have left open."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler.tools.errors import ToolError
from reconciler.tools.loopback import LoopbackFiles, ensure_file


def test_a_loopback_directory_left_open_is_made_private(tmp_path: Path) -> None:
    """A loopback directory of ours that others may write to (umask 0) is made go-w, and
    the file is made in it."""
    files = LoopbackFiles.under(tmp_path)
    files.data.parent.mkdir()
    files.data.parent.chmod(0o777)
    assert ensure_file(files.data, 1 << 20)
    assert stat.S_IMODE(os.lstat(files.data.parent).st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(files.data).st_mode) == 0o600
    assert not ensure_file(files.data, 1 << 20)  # there: kept as it is


@pytest.mark.parametrize("what", ["hard link", "other owner", "fifo"])
def test_a_loopback_file_that_is_not_a_plain_file_of_ours_is_refused(tmp_path: Path,
                                                                     what: str) -> None:
    """A hard link, another user's file or a FIFO at a loopback file's path: a permanent
    ToolError naming it; the file is left as it was."""
    other = tmp_path / "other"
    other.write_text("keep me\n")
    files = LoopbackFiles.under(tmp_path / "root")
    files.data.parent.mkdir(parents=True)
    if what == "hard link":
        os.link(other, files.data)
    elif what == "other owner":
        files.data.write_text("")
        os.chown(files.data, 4242, -1)
    else:
        os.mkfifo(files.data)
    with pytest.raises(ToolError) as caught:
        ensure_file(files.data, 1 << 20)
    assert str(files.data) in str(caught.value) and not caught.value.temporary
    assert other.read_text() == "keep me\n"
