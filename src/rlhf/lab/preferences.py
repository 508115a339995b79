"""Labelling response pairs with a preset's annotators, and the statistics of a preset.

``label_pair`` is what preference collection uses; ``preset_stats`` measures a preset on pairs of
demonstrator responses: the label shares, how often the label follows the gold judge, how often the
longer response wins (against what the gold utility alone predicts), the agreement between two
annotators (measured, and predicted from the choice model) and the Bayes-optimal accuracy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from rlhf.lab.annotators import Preset, bayes_accuracy, expected_agreement
from rlhf.lab.judge import gold_utility, n_words
from rlhf.lab.world import FAMILIES, STYLES, LabPrompt, make_prompt, respond


@dataclass(frozen=True)
class LabelledPair:
    """One annotated pair; ``a`` was shown first. ``p_a + p_b + p_tie == 1``."""

    prompt: LabPrompt
    a: str
    b: str
    annotator: str
    p_a: float
    p_b: float
    p_tie: float
    label: str  # "a", "b" or "tie"


def label_pair(preset: Preset, prompt: LabPrompt, a: str, b: str, rng: random.Random) -> LabelledPair:
    """Draw an annotator from the preset's pool and have it label ``(a, b)``."""
    annotator = preset.annotator(rng)
    p_a, p_b, p_tie = annotator.probs(prompt, a, b)
    label = annotator.label(prompt, a, b, rng)
    return LabelledPair(prompt, a, b, annotator.id, p_a, p_b, p_tie, label)


def demonstrator_pairs(n: int, seed: int) -> list[tuple[LabPrompt, str, str]]:
    """``n`` prompts, each with two different responses in uniformly drawn styles."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        p = make_prompt(rng.choice(FAMILIES), rng)
        a, b = (respond(p, rng.choice(STYLES), rng) for _ in range(2))
        if a != b:
            pairs.append((p, a, b))
    return pairs


def preset_stats(preset: Preset, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Measured statistics of ``preset`` on ``n`` demonstrator pairs (see the module docstring)."""
    rng = random.Random(seed)
    pairs = demonstrator_pairs(n, seed)
    labelled = [label_pair(preset, p, a, b, rng) for p, a, b in pairs]
    decisive = [x for x in labelled if x.label != "tie"]

    # Agreement: two distinct annotators label the same pair independently.
    agree_measured, agree_predicted = 0.0, 0.0
    # Length: how often the longer response wins, against the same annotators with no length bias.
    longer_wins, longer_wins_unbiased, n_len = 0.0, 0.0, 0
    for p, a, b in pairs:
        first, second = rng.sample(preset.annotators, 2)
        pf, ps = first.probs(p, a, b), second.probs(p, a, b)
        agree_measured += first.label(p, a, b, rng) == second.label(p, a, b, rng)
        agree_predicted += expected_agreement(pf, ps)
        if n_words(a) != n_words(b):
            longer_is_a = n_words(a) > n_words(b)
            unbiased = replace(first, length_bias=0.0).probs(p, a, b)
            longer_wins += first.label(p, a, b, rng) == ("a" if longer_is_a else "b")
            longer_wins_unbiased += unbiased[0] if longer_is_a else unbiased[1]
            n_len += 1

    gold_follows = [
        (x.label == "a") == (gold_utility(x.prompt, x.a) > gold_utility(x.prompt, x.b))
        for x in decisive
        if gold_utility(x.prompt, x.a) != gold_utility(x.prompt, x.b)
    ]
    return {
        "pairs": float(n),
        "tie_rate": sum(x.label == "tie" for x in labelled) / n,
        "first_shown_wins": sum(x.label == "a" for x in decisive) / max(1, len(decisive)),
        "label_follows_gold": sum(gold_follows) / max(1, len(gold_follows)),
        "longer_wins": longer_wins / max(1, n_len),
        "longer_wins_if_unbiased": longer_wins_unbiased / max(1, n_len),
        "agreement_measured": agree_measured / n,
        "agreement_predicted": agree_predicted / n,
        "bayes_accuracy": bayes_accuracy([(x.p_a, x.p_b, x.p_tie) for x in labelled]),
    }
