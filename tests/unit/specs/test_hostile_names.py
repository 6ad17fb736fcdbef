"""Spec file names that are not valid UTF-8: rejected with an escaped name, never a wedge."""

from __future__ import annotations

import json
import os
from pathlib import Path

from structlog.testing import capture_logs

from reconciler.specs import Defaults, SpecFileCache, scan_spec_dir, scan_spec_files
from reconciler.testing.world import World
from reconciler.units import Bytes
from reconciler.vocabulary import DeviceState, Filesystem

VALID = 'size = "8MiB"\nfilesystem = "none"\n'
BAD_NAME = b"\xff.toml"
DEFAULTS = Defaults(size=Bytes(64 << 20), filesystem=Filesystem.EXT4)


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_a_pass_beside_a_non_utf8_name_makes_the_good_spec(fake_world: World) -> None:
    """A `\\xff` file name is a rejected spec with an escaped name; the good spec is made."""
    fake_world.spec("good", VALID)
    specs = os.fsencode(fake_world.settings.specs_path)
    with open(os.path.join(specs, BAD_NAME), "wb") as handle:
        handle.write(b'filesystem = "none"\n')
    with capture_logs() as logs:
        result = fake_world.run_pass()
    assert result.converged == ["good"]
    assert fake_world.store is not None
    good = fake_world.store.device("good")
    assert good is not None and good.state is DeviceState.ACTIVATED
    assert [r.name for r in result.rejected] == ["\\xff"]
    assert "not valid UTF-8" in result.rejected[0].error
    report = fake_world.report()
    text = json.dumps(report, ensure_ascii=False)
    text.encode("utf-8")  # no surrogate can reach status
    rejected = report["rejected_specs"]
    assert [r["name"] for r in rejected] == ["\\xff"]
    assert rejected[0]["path"].endswith("\\xff.toml")
    assert not any(_has_surrogate(str(v)) for entry in logs for v in entry.values())
    # A file event names it as the watcher decodes it, with a surrogate: the same answer.
    targeted = fake_world.reconciler().run_pass(only=[os.fsdecode(b"\xff"), "good"])
    assert [r.name for r in targeted.rejected] == ["\\xff"]


def test_a_watched_non_utf8_name_is_rejected_escaped(tmp_path: Path) -> None:
    """A name the watcher hands over with surrogates is rejected escaped, like a scan's."""
    cache = SpecFileCache()
    (tmp_path / "good.toml").write_text(VALID)
    scan_spec_dir(tmp_path, DEFAULTS, cache)
    with open(os.path.join(os.fsencode(tmp_path), BAD_NAME), "wb") as handle:
        handle.write(b'filesystem = "none"\n')
    files = scan_spec_files(tmp_path, [os.fsdecode(b"\xff")], DEFAULTS, cache)
    assert [r.name for r in files.rejected] == ["\\xff"]
    assert not _has_surrogate(files.rejected[0].path)
    assert "good" in files.parsed
