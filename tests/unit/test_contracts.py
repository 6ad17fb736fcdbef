"""The import contracts keep what they say: lint-imports run on a copy of the package.

Each test copies the package Python imports (the source tree's, or the installed wheel's when
scripts/floors runs the tier without the source) and pyproject.toml into a temporary
directory, changes the copy (never the worktree), and runs `lint-imports` there with the copy
first on the path, so the graph it checks is the copy's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import reconciler

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(reconciler.__file__).parent
PURITY = "The decision is pure: decide imports no kernel access, store access or I/O"
SPECS_PURE = ("What a spec says is decided without I/O: the specs' model, parsing, node "
              "selection and parent resolution read no file")
# The floors' venv has the `lint` extra beside `dev`; the checkout keeps it in .venv-lint
# (scripts/setup), out of the venv the tests run in (pyproject.toml says why).
LINT_IMPORTS = next(
    (path for path in (Path(sys.executable).parent / "lint-imports",
                       ROOT / ".venv-lint" / "bin" / "lint-imports") if path.exists()),
    Path(sys.executable).parent / "lint-imports")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to change at will."""
    shutil.copytree(PACKAGE, tmp_path / "reconciler",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over `tree`'s package (not the installed one) and contracts."""
    # Wide enough that no contract's name is wrapped over two lines of the report.
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "1000"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _add_import(module: Path, line: str) -> None:
    """Put `line` among the module's imports (after `from __future__`)."""
    text = module.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text
    module.write_text(text.replace(anchor, anchor + line + "\n", 1))


def _broken(output: str) -> list[str]:
    """The names of the contracts lint-imports reported broken."""
    return [line.removesuffix(" BROKEN") for line in output.splitlines()
            if line.endswith(" BROKEN")]


def test_unchanged_tree_keeps_every_contract(tree: Path) -> None:
    """The package as it is keeps all its import contracts."""
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _broken(result.stdout) == []


def test_store_reached_through_its_package_breaks_the_purity_contract(tree: Path) -> None:
    """decide importing the store's package (which brings in the Store) breaks the purity
    contract, though the store module itself is reached only indirectly."""
    _add_import(tree / "reconciler/reconcile/decide.py", "from reconciler.store import Store")
    result = _lint(tree)
    assert result.returncode != 0
    assert _broken(result.stdout) == [PURITY]
    assert "reconciler.store.store" in result.stdout


def test_observing_code_reached_indirectly_breaks_the_purity_contract(tree: Path) -> None:
    """decide reaching file I/O through another module (the specs package, whose __init__
    brings in the spec directory's reading) breaks the purity contract."""
    _add_import(tree / "reconciler/reconcile/decide.py", "from reconciler.specs import SpecSet")
    result = _lint(tree)
    assert result.returncode != 0
    assert _broken(result.stdout) == [PURITY]


def test_file_access_reached_from_parent_resolution_breaks_its_contract(tree: Path) -> None:
    """specs.resolve reaching the spec directory's reading (through the loading module)
    breaks the contract that keeps what a spec says decided without I/O."""
    _add_import(tree / "reconciler/specs/resolve.py", "import reconciler.specs.load")
    result = _lint(tree)
    assert result.returncode != 0
    assert _broken(result.stdout) == [SPECS_PURE]
