"""The fake kernel answers exactly as the real one did.

Every step of fixtures/dmsetup/*.json (captured on a real kernel by scripts/capture-fixtures) is
replayed on a fresh FakeKernel, and each command's exit code, stdout and stderr are compared
byte for byte. The capture's paths under /tmp/rc become the test's tmp dir and are mapped back
in the outputs. Steps of tools the fake does not play (truncate, dd) are done by the test as
what they are: a sparse file, or writes through the fake. No output field is masked.

The thin tools are also checked against the real thin_ls and thin_check run on the same
metadata (written with thin_restore), for argv forms the capture does not hold.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler.testing.fakekernel import FakeKernel, PoolMetadata

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "dmsetup"
SCENARIOS = ("empty", "lifecycle", "full", "reactivate")  # what scripts/capture-fixtures makes
CAPTURE_ROOT = "/tmp/rc"
FAKED_TOOLS = {"dmsetup", "losetup", "stat", "blockdev", "thin_check", "thin_ls"}
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20}

Step = dict[str, Any]
Outcome = tuple[int, str, str]


def load(scenario: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / f"{scenario}.json").read_text())
    return document


class Replay:
    """One scenario's steps played on a FakeKernel, with the capture's paths moved to `root`."""

    def __init__(self, root: Path) -> None:
        self.kernel = FakeKernel()
        self.root = root

    def here(self, text: str) -> str:
        return text.replace(CAPTURE_ROOT, str(self.root))

    def there(self, text: str) -> str:
        return text.replace(str(self.root), CAPTURE_ROOT)

    def side_step(self, step: Step) -> None:
        """file, hold_open, release and write steps: what the capture's driver did."""
        if step["kind"] == "file":  # older captures: a sparse file instead of `truncate`
            self.truncate(["truncate", "-s", str(step["size_bytes"]), self.here(step["path"])])
            return
        name = step["device"].removeprefix("/dev/mapper/")
        if step["kind"] == "write":
            self.kernel.write_blocks(name, step["offset_bytes"], step["length_bytes"])
        elif step["kind"] == "hold_open":
            self.kernel.hold_open(name)
        else:
            assert step["kind"] == "release", step
            self.kernel.release(name)

    def command(self, step: Step, retried: bool) -> Outcome:
        argv = [self.here(word) for word in step["argv"]]
        if argv[:1] == ["timeout"]:
            argv = argv[2:]  # the capture bounded a write that queues; the fake never blocks
        if argv[0] == "truncate":
            return self.truncate(argv)
        if argv[0] == "dd":
            return self.dd(argv)
        assert argv[0] in FAKED_TOOLS, f"no replay for {argv}"
        if retried:
            # udev still had a new device open (EBUSY) and the capture retried: a race the fake
            # does not have, so the recorded failure is injected.
            self.kernel.fail_next(tuple(argv), step["rc"], step["stderr"])
        got = self.kernel.run(argv)
        return got.rc, self.there(got.stdout), self.there(got.stderr)

    @staticmethod
    def truncate(argv: list[str]) -> Outcome:
        assert argv[1] == "-s" and len(argv) == 4, argv
        path = Path(argv[3])
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as handle:
            handle.truncate(int(argv[2]))
        return 0, "", ""

    def dd(self, argv: list[str]) -> Outcome:
        """dd if=/dev/zero as writes through the fake (devices) or to the file itself."""
        operands = dict(word.split("=", 1) for word in argv[1:])
        assert operands["if"] == "/dev/zero", argv
        size = operands["bs"]
        block = int(size.rstrip("KM")) * UNITS[size.lstrip("0123456789")]
        start = int(operands.get("seek", "0")) * block
        target = operands["of"]
        try:
            for index in range(int(operands["count"])):
                self.write(target, start + index * block, bytes(block))
        except OSError as exc:
            return 1, "", f"dd: error writing '{self.there(target)}': {exc.strerror}\n"
        return 0, "", ""

    def write(self, target: str, offset: int, data: bytes) -> None:
        if target.startswith("/dev/"):
            self.kernel.write(target, offset, data)
            return
        with open(target, "r+b") as handle:
            handle.seek(offset)
            handle.write(data)


def retried(steps: list[Step], index: int) -> bool:
    """Whether the capture retried this command right after it (its note says so)."""
    later = steps[index + 1] if index + 1 < len(steps) else {}
    return later.get("argv") == steps[index]["argv"] and "(retry" in later.get("note", "")


@pytest.mark.parametrize("scenario", sorted(p.stem for p in FIXTURES.glob("*.json")))
def test_fake_kernel_answers_every_captured_command_byte_for_byte(scenario: str,
                                                                  tmp_path: Path) -> None:
    """Same argv, same exit code, same stdout, same stderr as the real kernel gave."""
    steps: list[Step] = load(scenario)["steps"]
    replay = Replay(tmp_path)
    for index, step in enumerate(steps):
        if step["kind"] != "cmd":
            replay.side_step(step)
            continue
        got = replay.command(step, retried(steps, index))
        where = f"{scenario}.json step {index}: {' '.join(step['argv'])} ({step['note']})"
        assert got == (step["rc"], step["stdout"], step["stderr"]), where


def test_every_scenario_was_captured_from_a_real_kernel() -> None:
    """Each scenario is there and names the kernel and dmsetup it came from."""
    present = {p.stem for p in FIXTURES.glob("*.json")}
    assert present >= set(SCENARIOS), "missing: run scripts/capture-fixtures"
    for scenario in sorted(present):
        document = load(scenario)
        assert document["kernel"] and "Driver version" in document["dmsetup_version"]
        assert FakeKernel().run(["dmsetup", "version"]).stdout == document["dmsetup_version"]


# -- the thin tools against the real ones ---------------------------------------------------

THIN_TOOL_FORMS = [
    ["thin_ls", "--no-headers", "-o", "DEV"],
    ["thin_ls", "-o", "DEV,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES"],
    ["thin_ls", "--format", "DEV,MAPPED_BLOCKS,EXCLUSIVE_SECTORS,SHARED_BLOCKS"],
    ["thin_check"],
]


def restore_xml(meta: PoolMetadata) -> str:
    """thin_dump's XML for the fake's metadata, so thin_restore can write the real thing."""
    devices = []
    for thin_id, thin in sorted(meta.thins.items()):
        mappings = "".join(f'<single_mapping origin_block="{v}" data_block="{p}" time="0"/>'
                           for v, p in sorted(thin.mappings.items()))
        devices.append(f'<device dev_id="{thin_id}" mapped_blocks="{len(thin.mappings)}" '
                       f'transaction="0" creation_time="0" snap_time="0">{mappings}</device>')
    return (f'<superblock uuid="" time="0" transaction="{meta.transaction_id}" flags="0" '
            f'version="2" data_block_size="{meta.block_sectors}" '
            f'nr_data_blocks="{meta.data_blocks}">{"".join(devices)}</superblock>\n')


def build_pool(kernel: FakeKernel, root: Path) -> None:
    """A pool with an origin, a snapshot of it that diverged, a big id and an empty one."""
    for name, size in (("meta", 16 << 20), ("data", 64 << 20)):
        with (root / name).open("wb") as handle:
            handle.truncate(size)
    for name in ("meta", "data"):
        assert kernel.run(["losetup", "--find", "--show", str(root / name)]).ok
    steps = [
        ["create", "p", "--uuid", "u-p", "--table", "0 131072 thin-pool /dev/loop0 /dev/loop1 "
         "128 32768"],
        ["message", "p", "0", "create_thin", "0"],
        ["create", "p-0", "--uuid", "u-0", "--table", "0 65536 thin /dev/mapper/p 0"],
        ["suspend", "p-0"], ["message", "p", "0", "create_snap", "1", "0"], ["resume", "p-0"],
        ["message", "p", "0", "create_thin", "16777215"],
        ["message", "p", "0", "create_thin", "7"],
        ["create", "p-1", "--uuid", "u-1", "--table", "0 65536 thin /dev/mapper/p 1"],
        ["message", "p", "0", "set_transaction_id", "0", "9"],
    ]
    for index, words in enumerate(steps):
        if index == 3:
            kernel.write_blocks("p-0", 0, 5 << 16)
        assert kernel.run(["dmsetup", *words]).ok, words
    kernel.write_blocks("p-1", 1 << 16, 100)  # copies one shared block
    kernel.write_blocks("p-1", 40 << 16, 1)  # a block of its own


@pytest.mark.skipif(shutil.which("thin_restore") is None, reason="no thin-provisioning-tools")
def test_thin_tools_print_what_the_real_ones_print_for_the_same_metadata(
        tmp_path: Path) -> None:
    """thin_ls (production's form too) and thin_check match the real tools on equal metadata."""
    kernel = FakeKernel()
    build_pool(kernel, tmp_path)
    meta = kernel.pool_metadata(tmp_path / "meta")
    real = tmp_path / "restored"
    with real.open("wb") as handle:
        handle.truncate(16 << 20)
    (tmp_path / "dump.xml").write_text(restore_xml(meta))
    subprocess.run(["thin_restore", "-i", str(tmp_path / "dump.xml"), "-o", str(real)],
                   check=True, capture_output=True, env={**os.environ, "LC_ALL": "C"})
    # Production's form reads the live pool through a held metadata snapshot.
    assert kernel.run(["dmsetup", "message", "p", "0", "reserve_metadata_snap"]).ok
    live = kernel.run(["thin_ls", "--metadata-snap", "--no-headers", "-o", "DEV", "/dev/loop0"])
    truth = subprocess.run(["thin_ls", "--no-headers", "-o", "DEV", str(real)],
                           capture_output=True, text=True, check=False)
    assert (live.rc, live.stdout, live.stderr) == (truth.returncode, truth.stdout, truth.stderr)
    for name in ("p-0", "p-1", "p"):
        assert kernel.run(["dmsetup", "remove", name]).ok
    for form in THIN_TOOL_FORMS:
        got = kernel.run([*form, "/dev/loop0"])
        truth = subprocess.run([*form, str(real)], capture_output=True, text=True, check=False)
        assert (got.rc, got.stdout, got.stderr) == (truth.returncode, truth.stdout,
                                                    truth.stderr), form
