"""Shared fixtures: the real data in ../shared/data, the lab base model (built once, cached), and the seeds
that decide the tests which assert a trained or sampled figure.

Seeds, changeable from outside so that no figure holds only on one machine's model or one lucky draw:

- ``--lab-seed N`` (or ``RLHF_TEST_LAB_SEED=N``): the seed of the lab base model the tests use
  (``lab:N``; default 0, the model ``rlhf lab build`` makes). Each seed builds its own model into
  ``$RLHF_HOME`` (about 3 minutes on 2 cores, once).
- ``--test-seed N`` (or ``RLHF_TEST_SEED=N``): shifts the seeds of the figure tests' own sampling,
  collection and training (default 0, the seeds written in each test).

The tests that assert such a figure are marked ``figure`` and assert through the :func:`figure` fixture,
which records the value and its bound as a pytest property (``--junitxml`` keeps them).
``bash tests/seed_sweep.sh`` (``make seed-sweep``) runs them over 5 base-model seeds x 2 test seeds and
tabulates each figure's bound, minimum and median.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--lab-seed", type=int, default=int(os.environ.get("RLHF_TEST_LAB_SEED", "0")),
        help="seed of the lab base model the tests use (env RLHF_TEST_LAB_SEED; default 0)",
    )  # fmt: skip
    parser.addoption(
        "--test-seed", type=int, default=int(os.environ.get("RLHF_TEST_SEED", "0")),
        help="offset of the figure tests' own seeds (env RLHF_TEST_SEED; default 0)",
    )  # fmt: skip


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"../shared/data not present beside the repository: {path} is missing")
    return path


@pytest.fixture(scope="session")
def lab_seed(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("--lab-seed")


@pytest.fixture(scope="session")
def test_seed(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("--test-seed")


@pytest.fixture(scope="session")
def lab_model(lab_seed: int) -> str:
    """The lab base model's alias, for configs that name the model (``model=lab:N``)."""
    return f"lab:{lab_seed}"


@pytest.fixture(scope="session")
def lab_base_path(lab_seed: int) -> Path:
    """The lab base model folder for ``--lab-seed`` (built on first use, then read from $RLHF_HOME)."""
    from rlhf.lab.base import BaseModelSpec, build_base_model

    return build_base_model(BaseModelSpec(seed=lab_seed), log=None)


@pytest.fixture
def figure(record_property):
    """``figure(name, value, above=x)`` / ``below=x``: assert a trained or sampled figure against its bound
    and record both (``name``, ``name:above`` / ``name:below``) for the seed sweep."""

    def check(name: str, value: float, *, above: float | None = None, below: float | None = None) -> None:
        record_property(name, value)
        if above is not None:
            record_property(f"{name}:above", above)
            assert value > above, f"{name} = {value:.4f}, not above {above}"
        if below is not None:
            record_property(f"{name}:below", below)
            assert value < below, f"{name} = {value:.4f}, not below {below}"

    return check
