"""Rule-based reward functions, and how PPO finds them.

A reward function is any Python callable named ``module:function`` in a config::

    reward_functions:
      - function: rlhf.rewards:contains_word
        weight: 1.0
        kwargs: {word: "yes"}

It is called once per rollout batch as ``fn(prompts, responses, meta, **kwargs)`` and returns one float
per response:

- ``prompts``: each prompt as given in the data (a string, or a list of ``{"role", "content"}`` dicts);
- ``responses``: the decoded responses (after truncation at EOS or a stop string);
- ``meta``: each prompt row's other columns (for lab prompts: ``family``, ``key`` and ``truth``).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from rlhf.errors import RewardFunctionError

RewardFn = Callable[..., Sequence[float]]


def load_reward_function(name: str) -> RewardFn:
    """Import ``module:function`` (the module must be importable: installed, or on ``PYTHONPATH``)."""
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise RewardFunctionError(
            f"reward function {name!r}: expected 'module:function', e.g. rlhf.rewards:contains_word"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardFunctionError(f"reward function {name!r}: cannot import {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardFunctionError(f"reward function {name!r}: {module_name} has no callable {attr!r}")
    return fn


def call_reward_function(
    fn: RewardFn, name: str, prompts: list[Any], responses: list[str], meta: list[dict], kwargs: dict
) -> list[float]:
    """Call ``fn`` and check that it gave one finite number per response."""
    values = list(fn(prompts, responses, meta, **kwargs))
    if len(values) != len(responses):
        raise RewardFunctionError(
            f"reward function {name}: returned {len(values)} values for {len(responses)} responses"
        )
    for i, v in enumerate(values):
        if not isinstance(v, int | float) or not math.isfinite(v):
            raise RewardFunctionError(f"reward function {name}: value {i} is {v!r}, not a finite number")
    return [float(v) for v in values]


# ---------------------------------------------------------------------------------------------------
# Built-in rule rewards
# ---------------------------------------------------------------------------------------------------


def contains_word(prompts, responses, meta, word: str = "yes") -> list[float]:
    """1.0 where the response contains ``word`` as a whole word (case-insensitive), else 0.0."""
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return [1.0 if pattern.search(r) else 0.0 for r in responses]


def starts_with(prompts, responses, meta, prefix: str = "") -> list[float]:
    """1.0 where the response starts with ``prefix`` (case-insensitive, leading spaces ignored)."""
    return [1.0 if r.lstrip().lower().startswith(prefix.lower()) else 0.0 for r in responses]


def length_penalty(prompts, responses, meta, free_words: int = 20, rate: float = 0.05) -> list[float]:
    """-rate per word beyond ``free_words``."""
    return [-rate * max(0, len(r.split()) - free_words) for r in responses]


def lab_gold(prompts, responses, meta) -> list[float]:
    """The lab's gold utility (``rlhf.lab.judge.gold_utility``) for lab prompts (rows with ``truth``)."""
    from rlhf.lab.judge import gold_utility

    return [gold_utility(lab_prompt(p, m), r) for p, m, r in zip(prompts, meta, responses)]


def lab_prompt(prompt: Any, meta: dict):
    """The ``LabPrompt`` behind a lab prompt row (its text, and the ``family``/``key``/``truth`` columns)."""
    from rlhf.lab.world import LabPrompt

    if "truth" not in meta or "family" not in meta:
        raise RewardFunctionError(
            "lab reward: the prompt row has no `family`/`truth` columns (not a lab prompt)"
        )
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    return LabPrompt(meta["family"], text, meta.get("key", ""), meta["truth"])
