"""The lab's datasets as rows of TRL's conversational formats (what ``rlhf.data`` loaders take)."""

from __future__ import annotations

import random
from collections.abc import Mapping

from rlhf.lab.world import DEMONSTRATOR_MIX, FAMILIES, demonstrate, make_prompt, sample_prompts


def demonstration_rows(
    n: int, seed: int, mix: Mapping[str, float] = DEMONSTRATOR_MIX
) -> list[dict[str, object]]:
    """``n`` SFT demonstrations in the prompt-completion format, with the family, style and prompt key
    as extra columns."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        p = make_prompt(rng.choice(FAMILIES), rng)
        style, response = demonstrate(p, rng, mix)
        rows.append(
            {
                "prompt": p.messages(),
                "completion": [{"role": "assistant", "content": response}],
                "family": p.family,
                "style": style,
                "key": p.key,
            }
        )
    return rows


def prompt_rows(n: int, seed: int) -> list[dict[str, object]]:
    """``n`` lab prompts in TRL's conversational prompt-only format, with ``family``, ``key`` and the
    ground ``truth`` as extra columns (what the gold judge and ``rlhf.lab.judge:gold_reward`` need)."""
    return [
        {"prompt": p.messages(), "family": p.family, "key": p.key, "truth": dict(p.truth)}
        for p in sample_prompts(n, seed)
    ]
