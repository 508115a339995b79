"""Built-in rule-based reward functions, for ``reward_functions`` in a PPO config::

    reward_functions:
      - function: rlhf.rewards:contains_word
        weight: 1.0
        kwargs: {word: "yes"}

How PPO finds and calls a reward function (any ``module:function``) is in ``rlhf.scoring``.
"""

from __future__ import annotations

import re

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
