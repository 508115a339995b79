"""The lab as a data source and an evaluator: what a stage receives for ``data: lab``.

A stage never asks whether its data is the lab's: ``rlhf.data.named_source(cfg.data)`` gives it this
object (registered in ``rlhf.data.SOURCES``), which makes rows in the formats ``rlhf.data`` loads and
judges what a model says with the lab's gold judge. Another simulated world would be another object
with the same methods.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rlhf.lab.datasets import demonstration_rows, prompt_rows
from rlhf.lab.evaluate import EVAL_SEED, gold_eval
from rlhf.lab.judge import GOLD_MAX, gold_reward, n_words
from rlhf.stats import perfect_win_rate, wilson_interval, win_rate


def judge_model(model, tokenizer, n: int) -> dict[str, float]:
    """Gold-judge utility of the model's samples on ``n`` held-out lab prompts, and their length."""
    report = gold_eval(model, tokenizer, n=n)
    return {"gold_utility": report.mean, "response_words": report.mean_words()}


def judge_against(plain, meta, responses: list[str], reference: list[str]) -> dict[str, float]:
    """Gold utility of the responses, by family, their win rate against the reference's (ties half) and
    a perfect policy's; ``meta``: the prompt rows' columns."""
    gold, ref = gold_reward(plain, responses, meta), gold_reward(plain, reference, meta)
    wins = win_rate(gold, ref)
    wins_low, wins_high = wilson_interval(wins, len(gold))
    stats = {
        "gold": sum(gold) / len(gold),
        "gold_reference": sum(ref) / len(ref),
        "win_rate": wins,
        "win_rate_low": wins_low,  # 95% Wilson interval over the held-out prompts
        "win_rate_high": wins_high,
        "win_rate_perfect": perfect_win_rate(ref, GOLD_MAX),  # the most any policy can win
        "response_words": sum(n_words(x) for x in responses) / len(responses),
    }
    by_family: dict[str, list[float]] = defaultdict(list)
    for m, g in zip(meta, gold):
        by_family[m["family"]].append(g)
    stats.update({f"gold/{f}": sum(v) / len(v) for f, v in sorted(by_family.items())})
    return stats


class LabSource:
    """The lab's rows and judge (module docstring)."""

    name = "lab"

    def demonstrations(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` SFT demonstrations (prompt-completion rows)."""
        return demonstration_rows(n, seed)

    def prompts(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` training prompts (prompt-only rows, with the columns the judge needs)."""
        return prompt_rows(n, seed)

    def eval_prompts(self, n: int) -> list[dict[str, Any]]:
        """``n`` held-out prompts, from the evaluation's own seed range."""
        return prompt_rows(n, EVAL_SEED)

    judge = staticmethod(gold_reward)  # (prompts, responses, meta) -> gold utility of each response
    judge_model = staticmethod(judge_model)
    judge_against = staticmethod(judge_against)


LAB = LabSource()
