"""Fixtures for reconcile's module tests (the stage itself is reconciler.testing.stage)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.testing.stage import Stage, new_stage


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Stage]:
    """A fresh stage, torn down afterwards."""
    made = new_stage(tmp_path)
    try:
        yield made
    finally:
        made.world.teardown()
