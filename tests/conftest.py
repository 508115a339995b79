"""Shared fixtures: the real data in ../shared/data, and the lab base model (built once, cached)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"../shared/data not present beside the repository: {path} is missing")
    return path


@pytest.fixture(scope="session")
def lab_base_path() -> Path:
    """The default lab base model folder (built on first use, then read from $RLHF_HOME)."""
    from rlhf.lab.base import build_base_model

    return build_base_model(log=None)
