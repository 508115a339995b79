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

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from rlhf.modeling import load_reward_model
from rlhf.stages.collect import CollectConfig, collect

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


@pytest.fixture(scope="session")
def tok(lab_base_path):
    return AutoTokenizer.from_pretrained(lab_base_path)


@pytest.fixture(scope="module")
def fresh_rm(lab_base_path):
    torch.manual_seed(0)
    return load_reward_model(str(lab_base_path), fresh_head=True).eval()


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory, lab_base_path, tok) -> Path:
    """A (randomly initialised) lab reward model saved with its reward_stats.json."""
    torch.manual_seed(0)
    model = load_reward_model(str(lab_base_path), fresh_head=True)
    folder = tmp_path_factory.mktemp("rm")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0, "n": 1}))
    return folder


@pytest.fixture(scope="session")
def lab_prefs(tmp_path_factory, lab_base_path, test_seed) -> Path:
    """Pairs sampled from the lab base model (a stand-in policy), labelled by default annotators; 30% of
    the prompts hold out about 550 pairs, so that an accuracy is known to +-4 points."""
    out = tmp_path_factory.mktemp("prefs")
    cfg = CollectConfig(
        policy=str(lab_base_path),
        prompts=1000,
        k=4,
        eval_fraction=0.3,
        output_dir=str(out),
        seed=1 + test_seed,
    )
    return collect(cfg, log=lambda *_: None)
