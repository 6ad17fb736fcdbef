"""read_bounded asks the kernel for what the file holds, not for MAX_SPEC_BYTES: a read of
1 MiB allocated (and shrank) a 1 MiB buffer per spec file, 34 µs each, 1.7 s of a 50,000
file start-up. What it returns and rejects is the same whatever size fstat reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.specs.model import SpecError
from reconciler.specs.trust import MAX_SPEC_BYTES, read_bounded


def _asked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes read_bounded asks os.read for, recorded."""
    asked: list[int] = []
    real_read = os.read

    def read(fd: int, wanted: int) -> bytes:
        asked.append(wanted)
        return real_read(fd, wanted)

    monkeypatch.setattr(os, "read", read)
    return asked


def _stat_says(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """fstat reports `size` bytes, as if the file grew after it (or shrank: size above)."""
    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:
        fields = list(real_fstat(fd))
        fields[6] = size  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", fstat)


def test_a_small_file_is_read_in_one_call_of_its_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.toml"
    path.write_bytes(b'filesystem = "none"\n')
    asked = _asked(monkeypatch)
    assert read_bounded(str(path), allow_foreign=True) == b'filesystem = "none"\n'
    assert len(asked) == 1
    assert asked[0] <= 4096


@pytest.mark.parametrize("stat_size", [0, 10, 4096, 1 << 16])
def test_a_file_larger_than_fstat_said_is_read_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stat_size: int) -> None:
    path = tmp_path / "d.toml"
    data = b"# " + b"x" * 20_000 + b"\n"
    path.write_bytes(data)
    _stat_says(monkeypatch, stat_size)
    assert read_bounded(str(path), allow_foreign=True) == data


@pytest.mark.parametrize("stat_size", [0, 100, MAX_SPEC_BYTES, MAX_SPEC_BYTES + 1])
def test_a_file_over_the_bound_is_rejected_whatever_fstat_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stat_size: int) -> None:
    path = tmp_path / "d.toml"
    path.write_bytes(b"x" * (MAX_SPEC_BYTES + 1))
    _stat_says(monkeypatch, stat_size)
    asked = _asked(monkeypatch)
    with pytest.raises(SpecError, match="larger than"):
        read_bounded(str(path), allow_foreign=True)
    assert sum(asked) <= 2 * (MAX_SPEC_BYTES + 1)  # bounded, whatever the file holds


def test_a_file_of_exactly_the_bound_is_read(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_bytes(b"x" * MAX_SPEC_BYTES)
    assert len(read_bounded(str(path), allow_foreign=True)) == MAX_SPEC_BYTES
