"""The fake kernel answers exactly as the real one did: every captured command of
fixtures/dmsetup/*.json is replayed on a FakeKernel and compared byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.dm.fake import FakeKernel

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "dmsetup"
CAPTURE_ROOT = "/tmp/rc"


def scenarios() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


def replay(step: dict[str, Any], kernel: FakeKernel, root: Path) -> None:
    """Apply one non-command step (files, holders, writes) to the fake."""
    kind = step["kind"]
    if kind == "file":
        path = Path(step["path"].replace(CAPTURE_ROOT, str(root)))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            handle.truncate(step["size_bytes"])
    elif kind in ("hold_open", "release"):
        getattr(kernel, kind)(step["device"].removeprefix("/dev/mapper/"))
    elif kind == "write":
        kernel.write_blocks(step["device"].removeprefix("/dev/mapper/"),
                            step["offset_bytes"], step["length_bytes"])
    else:
        raise AssertionError(f"unknown step kind {kind}")


@pytest.mark.parametrize("fixture", scenarios(), ids=lambda p: p.stem)
def test_fake_kernel_matches_captured_outputs_byte_for_byte(fixture: Path,
                                                            tmp_path: Path) -> None:
    """Same argv, same exit code, same stdout, same stderr as the real kernel gave."""
    document = json.loads(fixture.read_text())
    kernel = FakeKernel()
    compared = 0
    for index, step in enumerate(document["steps"]):
        if step["kind"] != "cmd":
            replay(step, kernel, tmp_path)
            continue
        argv = [word.replace(CAPTURE_ROOT, str(tmp_path)) for word in step["argv"]]
        if argv[0] == "dd":
            # Not a tool we run: replay it as the write it is, which the full pool refuses.
            with pytest.raises(OSError, match="No space left"):
                kernel.write_blocks(argv[2].removeprefix("of=/dev/mapper/"), 0, 4 << 20)
            continue
        got = kernel.run(argv)
        where = f"{fixture.name} step {index}: {' '.join(step['argv'])}"
        assert (got.rc, got.stdout, got.stderr) == (step["rc"], step["stdout"],
                                                    step["stderr"]), where
        compared += 1
    assert compared >= 10


def test_fixtures_were_captured_from_a_real_kernel() -> None:
    """Each fixture names the kernel and dmsetup it came from (regenerate: capture-fixtures)."""
    assert scenarios(), "no fixtures: run scripts/capture-fixtures"
    for fixture in scenarios():
        document = json.loads(fixture.read_text())
        assert document["kernel"]
        assert "Driver version" in document["dmsetup_version"]
