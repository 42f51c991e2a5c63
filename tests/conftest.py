"""Shared test fixtures: where the real datasets live, and small seeded settings."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public datasets beside the repository (../shared/data); CI provides them."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real datasets not found at {SHARED_DATA}: the tests read them from ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bundled_data() -> Path:
    return REPO / "data" / "ml-latest-small"
