"""The command's parser: standard library only, constants equal to their originals, and the
global options taken before or after the subcommand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reconciler import config, logs
from reconciler.arguments import DEFAULT_CONFIG_PATH, LOG_LEVELS

ROOT = Path(__file__).resolve().parent.parent


def test_the_copied_constants_equal_their_originals() -> None:
    """The parser's copies of the default config path and the log levels are the originals'."""
    assert DEFAULT_CONFIG_PATH == config.DEFAULT_CONFIG_PATH
    assert LOG_LEVELS == logs.LEVELS


def test_the_parser_loads_by_file_path_with_only_the_standard_library() -> None:
    """Loaded from its file (as setup.py does) with site-packages off (-S, -I), it builds."""
    path = str(ROOT / "reconciler" / "arguments.py")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('arguments', {path!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module.build_parser().parse_args(['status'])\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] not in (*sys.stdlib_module_names, '__main__')))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
