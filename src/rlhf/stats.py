"""Pure statistics: win rates, intervals, calibration, correlation.

Plain functions of numbers or tensors, tested on hand-worked values; every module that reports a
figure with its uncertainty takes it from here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch


def win_rate(scores: Sequence[float], baseline: Sequence[float]) -> float:
    """Share of paired comparisons where ``scores`` beats ``baseline``; ties count half."""
    if len(scores) != len(baseline) or not scores:
        raise ValueError(f"win_rate needs two equal, non-empty lists (got {len(scores)} and {len(baseline)})")
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline)) / len(scores)


def perfect_win_rate(baseline: Sequence[float], best: float) -> float:
    """The win rate of a policy that scores ``best`` (the judge's maximum) on every prompt against
    ``baseline``: the most any policy can win against these samples (it ties where they are best)."""
    return win_rate([best] * len(baseline), baseline)


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate observed over ``n`` independent trials (95% for z = 1.96):
    the uncertainty to read an accuracy or a win rate with, since a few hundred pairs or prompts leave
    several points of it. For a win rate with ties counted half, outcomes lie in {0, 1/2, 1}; no variable
    on [0, 1] has more variance than a 0/1 one of the same mean, so there the interval errs wide."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n >= 1 trials (got {n})")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"wilson_interval needs a rate in [0, 1] (got {rate})")
    z2 = z * z
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def calibration(p_pred: torch.Tensor, outcome: torch.Tensor, bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error and per-bin ``{lo, hi, predicted, observed, count}`` of predicted
    probabilities ``p_pred`` (N,) against binary outcomes (N,)."""
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.bucketize(p_pred, edges[1:-1], right=False)  # (N,) in 0..bins-1
    table, ece = [], 0.0
    for b in range(bins):
        member = index == b
        n = int(member.sum())
        if n == 0:
            continue
        predicted, observed = p_pred[member].mean().item(), outcome[member].float().mean().item()
        ece += n / len(p_pred) * abs(predicted - observed)
        table.append(
            {
                "lo": edges[b].item(),
                "hi": edges[b + 1].item(),
                "predicted": predicted,
                "observed": observed,
                "count": n,
            }
        )
    return ece, table


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = (x.norm() * y.norm()).item()
    return (x @ y).item() / denom if denom else 0.0


def best_possible_accuracy(p_chosen: torch.Tensor) -> float:
    """The best accuracy any reward model can expect on decisive labels drawn with these probabilities
    of ``chosen`` winning: the mean of ``max(p, 1 - p)`` (always predict the likelier label)."""
    return torch.maximum(p_chosen, 1 - p_chosen).mean().item()


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval of ``values`` (the interval is the mean alone for one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, m, m
    df = len(values) - 1
    t = T95.get(df) or next((T95[k] for k in sorted(T95) if k >= df), 1.96)
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def block_drift(values: Sequence[float], width: int = 5) -> dict[str, float | int]:
    """How a noisy per-step series moved, read in blocks of ``width`` steps counted back from the last
    step (a leading remainder shorter than a block is left out): ``first`` and ``last`` are the first and
    last blocks' means, ``best`` the highest block mean and ``best_start`` the index of that block's first
    value; ``se`` the standard error of the difference of two block means, sigma * sqrt(2 / width), with
    the per-step noise sigma estimated from successive differences (sigma^2 = mean((x_t+1 - x_t)^2) / 2,
    von Neumann's estimator, which a slow trend barely inflates). A single lucky step moves a block by
    1/width of its excess, so a fall from the best block is read against ``se``, not against one step."""
    n = len(values) // width * width
    if n < 2 * width:
        raise ValueError(f"block_drift needs at least {2 * width} values (got {len(values)})")
    start = len(values) - n
    means = [statistics.fmean(values[i : i + width]) for i in range(start, len(values), width)]
    best = max(range(len(means)), key=lambda b: means[b])
    diffs = [b - a for a, b in zip(values[start:-1], values[start + 1 :])]
    sigma = math.sqrt(statistics.fmean(d * d for d in diffs) / 2)
    return {
        "first": means[0],
        "last": means[-1],
        "best": means[best],
        "best_start": start + best * width,
        "se": sigma * math.sqrt(2 / width),
    }


def paired_change(after: Sequence[float], before: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the per-item change ``after - before`` (the same prompts answered by
    two policies: pairing by prompt leaves the prompts' own spread out of the error)."""
    if len(after) != len(before) or len(after) < 2:
        raise ValueError(
            f"paired_change needs two equal lists of 2 or more (got {len(after)} and {len(before)})"
        )
    d = [a - b for a, b in zip(after, before)]
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))
