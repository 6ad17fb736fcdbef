"""kubelet's AtomicWriter, step for step: how a ConfigMap volume's content changes.

kubernetes/pkg/volume/util/atomic_writer.go (Write): the payload goes into a new timestamped
directory (`..2026_12_01_02_03_04.<random>`, mode 0755), a symlink `..data_tmp` to it is
renamed over `..data`, each key that has no link yet gets `key -> ..data/key`, the links of
keys no longer in the payload are removed, and last the old timestamped directory. Tests
drive a spec_dir through exactly this to see what a daemon watching it sees.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

DATA = "..data"
DATA_TMP = "..data_tmp"


def atomic_write(target: Path, payload: Mapping[str, str],
                 stamp: str = "2026_12_01_02_03_04") -> Path:
    """Project `payload` (key -> text) into `target` as kubelet does; the new timestamped
    directory is returned."""
    data = target / DATA
    old = os.readlink(data) if data.is_symlink() else None
    old_keys = set(os.listdir(target / old)) if old is not None else set()
    made = Path(tempfile.mkdtemp(prefix=f"..{stamp}.", dir=target))
    made.chmod(0o755)
    for key, text in payload.items():
        path = made / key
        path.write_text(text)
        path.chmod(0o644)
    os.symlink(made.name, target / DATA_TMP)
    os.rename(target / DATA_TMP, data)
    for key in payload:
        if not os.path.lexists(target / key):
            os.symlink(f"{DATA}/{key}", target / key)
    for key in sorted(old_keys - set(payload)):
        os.remove(target / key)
    if old is not None:
        shutil.rmtree(target / old)
    return made
