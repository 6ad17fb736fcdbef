"""The product's size limits (issue 22): no module over 500 lines, no class over 300, no
function over 60.

Measured on the syntax tree. The generated gRPC stubs
(`reconciler/api/proto`) are not ours to size; `reconciler/testing` is test support, whose
modules may be long but whose classes and functions (the fake Kernel among them) are held to
the same limits.
"""

from __future__ import annotations

import ast
from pathlib import Path

import reconciler

# The package Python imports: the source tree's, or the wheel's under scripts/floors.
PACKAGE = Path(reconciler.__file__).parent
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60

def _span(node: ast.stmt) -> int:
    """Lines from a definition's `def`/`class` line to its last line."""
    assert node.end_lineno is not None
    return node.end_lineno - node.lineno + 1


def _oversized() -> dict[str, int]:
    """Every module, class and function of the product over its limit, with its length."""
    found: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        if "proto" in relative.parts:
            continue
        source = path.read_text()
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES and "testing" not in relative.parts:
            found[f"module {relative}"] = lines
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and _span(node) > MAX_CLASS_LINES:
                found[f"class {relative}:{node.name}"] = _span(node)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) \
                    and _span(node) > MAX_FUNCTION_LINES:
                found[f"function {relative}:{node.name}"] = _span(node)
    return found


def test_no_module_class_or_function_is_over_its_limit() -> None:
    """Nothing of the product is longer than its limit."""
    assert (PACKAGE / "reconcile" / "reconciler.py").is_file(), "measuring the wrong tree"
    assert _oversized() == {}


def test_the_measure_sees_an_oversized_function() -> None:
    """A 61-line function is measured as 61 lines: the limit is really checked."""
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    tree = ast.parse(f"def long() -> None:\n{body}")
    function = tree.body[0]
    assert _span(function) == MAX_FUNCTION_LINES + 1
