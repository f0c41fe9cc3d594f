"""Every test under tests/e2e is ``slow`` (a real CLI, Dagster, anvil and cryo end to end):
``pytest -m "not slow"`` runs the rest in a fraction of the time."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
