"""`plan` and `status` for scripts on a real kernel, as processes of their own: `plan`
leaves every file under root_path byte-identical and names a removal (a word and prose); `status -o
--no-headers` rows; `status --json --watch` through a pipe is one JSON document per line."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.testing.config_file import write_config
from reconciler.testing.process import foreground
from reconciler.testing.world import World

pytestmark = pytest.mark.kernel
TIMEOUT = 120.0


def cli(config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`reconciler -c CONFIG ARGV...` in this process (on the real host: each process costs
    seconds in the emulated VM), its exit code and output printed for the record."""
    capsys.readouterr()
    code = main(["-c", str(config), *argv])
    out, err = capsys.readouterr()
    with capsys.disabled():
        print(" ".join(argv), f"-> exit {code}:", out, err[-500:])
    return code, out


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root but the loop files, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "loopback" not in p.parts}


def test_plan_and_status_for_scripts_on_the_real_kernel(
        real_world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pass makes two devices; with one spec gone, `plan` (and `plan --json`) says
    remove and changes no byte under root_path; `status -o name,state,thin_id
    --no-headers` gives bare rows; `status --json --watch` gives NDJSON through a pipe."""
    world = real_world
    assert world.store is not None
    world.store.close()
    config = write_config(tmp_path / "config.toml", root_path=world.settings.root_path,
                          pool_name=world.pool, spec_dir=world.settings.specs_path,
                          loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                          base_image_size="32MiB")
    world.spec("keep", 'filesystem = "none"\nsize = "16MiB"\n')
    world.spec("gone", 'filesystem = "none"\nsize = "16MiB"\n')
    assert cli(config, capsys, "run", "--once")[0] == 0
    world.unspec("gone")
    before = _files(world.settings.root_path)
    assert cli(config, capsys, "plan") == (
        0, "gone  remove: deactivate, then delete its thin id\nkeep  nothing\n")
    code, out = cli(config, capsys, "plan", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["schema_version"] == 1
    assert plan["actions"][0] == {"name": "gone", "action": "remove",
                                  "summary": "remove: deactivate, then delete its thin id"}
    assert _files(world.settings.root_path) == before

    code, out = cli(config, capsys, "status", "-o", "name,state,thin_id", "--no-headers")
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["gone", "Activated"], ["keep", "Activated"]]

    watcher = subprocess.Popen(
        foreground([sys.executable, "-m", "reconciler.cli", "-c", str(config), "status",
                    "--json", "--watch", "0.5"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        assert watcher.stdout is not None
        ready, _, _ = select.select([watcher.stdout], [], [], TIMEOUT)
        assert ready
        line = watcher.stdout.readline()
        assert b"\x1b" not in line and line.endswith(b"\n")
        document = json.loads(line)
        assert document["schema_version"] == 1
        assert document["pool"]["data_used_percent"] is not None
        assert [d["thin_id"] for d in document["devices"]] == \
            [d["device_id"] for d in document["devices"]]
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=TIMEOUT) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
