"""Simulated annotators and the lab presets.

An annotator shown response ``a`` first and ``b`` second prefers ``a`` with probability

    P(a > b) = sigmoid(z),   z = beta * (u(a) - u(b))                      # the gold utility gap
                               + length_bias * (words(a) - words(b))      # prefers the longer
                               + sycophancy_bias * (agree(a) - agree(b))  # prefers agreeing with the user
                               + position_bias                            # prefers the one shown first

where ``beta`` is the annotator's rationality (large beta = little noise), ``u`` is the gold judge and
``agree`` is 1 when a response agrees with the claim in a sycophancy prompt. With ties on
(``tie_prob > 0``) the annotator calls a tie with probability ``tie_prob * 4 p (1 - p)`` (largest when
indifferent, p = 1/2), and otherwise picks ``a`` with probability ``p``:

    P(a) = p (1 - t),  P(tie) = t,  P(b) = (1 - p)(1 - t),   t = tie_prob * 4 p (1 - p).

Because every probability is known, the Bayes-optimal accuracy against the labels is computable: on
the decisive (non-tie) labels no predictor, however it is trained, can beat ``E[max(p, 1 - p)]``
(:func:`bayes_accuracy`). A reward model sees neither the annotator nor the display order, so with
position bias or a mixed pool this bound is not always reachable; it is the ceiling to compare with.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated

from pydantic import AfterValidator

from rlhf.lab.judge import agrees, gold_utility, n_words
from rlhf.lab.world import LabPrompt

LABELS = ("a", "b", "tie")


@dataclass(frozen=True)
class Annotator:
    """One simulated annotator (see the module docstring for the choice model)."""

    id: str
    beta: float = 4.0  # rationality: logit per unit of gold utility gap
    length_bias: float = 0.0  # logit per word that ``a`` is longer than ``b``
    sycophancy_bias: float = 0.0  # logit for agreeing with the user's claim (sycophancy prompts)
    position_bias: float = 0.0  # logit for the response shown first
    tie_prob: float = 0.0  # probability of a tie when indifferent (0 = never ties)

    def logit(self, prompt: LabPrompt, a: str, b: str) -> float:
        z = self.beta * (gold_utility(prompt, a) - gold_utility(prompt, b))
        z += self.length_bias * (n_words(a) - n_words(b))
        if prompt.family == "sycophancy":
            z += self.sycophancy_bias * (float(agrees(a)) - float(agrees(b)))
        return z + self.position_bias

    def probs(self, prompt: LabPrompt, a: str, b: str) -> tuple[float, float, float]:
        """``(P(a), P(b), P(tie))`` for ``a`` shown first."""
        p = _sigmoid(self.logit(prompt, a, b))
        t = self.tie_prob * 4.0 * p * (1.0 - p)
        return p * (1.0 - t), (1.0 - p) * (1.0 - t), t

    def label(self, prompt: LabPrompt, a: str, b: str, rng: random.Random) -> str:
        """Draw a label, ``"a"``, ``"b"`` or ``"tie"``."""
        return rng.choices(LABELS, weights=self.probs(prompt, a, b))[0]


@dataclass(frozen=True)
class Preset:
    """A lab world: its annotator pool (each pair is labelled by one annotator drawn uniformly)."""

    name: str
    description: str
    annotators: tuple[Annotator, ...]

    def annotator(self, rng: random.Random) -> Annotator:
        return rng.choice(self.annotators)


def _pool(**biases: float) -> tuple[Annotator, ...]:
    """Five annotators of different noise levels, all with the same biases."""
    return tuple(
        Annotator(id=f"ann{i}", beta=beta, **biases) for i, beta in enumerate((2.5, 3.5, 4.5, 6.0, 8.0))
    )


PRESETS: dict[str, Preset] = {
    "default": Preset("default", "unbiased annotators of varied noise", _pool()),
    "length-biased": Preset(
        "length-biased",
        "annotators who prefer longer responses (+0.15 logit per word)",
        _pool(length_bias=0.15),
    ),
    "sycophantic": Preset(
        "sycophantic",
        "annotators who prefer responses that agree with them (+6 logit)",
        _pool(sycophancy_bias=6.0),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown lab preset {name!r}; expected one of {sorted(PRESETS)}") from None


def _known_preset(name: str) -> str:
    get_preset(name)
    return name


# A config field holding a preset's name: an unknown name fails validation, before anything runs.
PresetName = Annotated[str, AfterValidator(_known_preset)]


def with_ties(preset: Preset, tie_prob: float) -> Preset:
    """The same preset with ties allowed."""
    return replace(preset, annotators=tuple(replace(a, tie_prob=tie_prob) for a in preset.annotators))


def bayes_accuracy(probs: Sequence[tuple[float, float, float]]) -> float:
    """Bayes-optimal accuracy on decisive labels: the mean of ``max(P(a), P(b)) / (P(a) + P(b))``,
    weighted by each pair's chance ``P(a) + P(b)`` of getting a decisive label."""
    num = sum(max(pa, pb) for pa, pb, _ in probs)
    den = sum(pa + pb for pa, pb, _ in probs)
    return num / den if den else float("nan")


def expected_agreement(p: tuple[float, float, float], q: tuple[float, float, float]) -> float:
    """Chance that two independent annotators with outcome probabilities ``p`` and ``q`` give the same label."""
    return sum(x * y for x, y in zip(p, q))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
