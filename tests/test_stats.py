"""rlhf.stats: intervals, calibration, correlation, win rate and the best possible accuracy, on hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf import data as rdata
from rlhf.encoding import encode_pair as tokenize_pair
from rlhf.stages.rm import (
    calibration,
    pearson,
    wilson_interval,
)
from rlhf.stats import best_possible_accuracy, t_interval, win_rate


def test_calibration_and_pearson():
    p = torch.tensor([0.1, 0.1, 0.9, 0.9])
    ece, table = calibration(p, torch.tensor([False, False, True, False]))
    # bin [0, 0.1): no; 0.1 lies in bin [0.1, 0.2): predicted 0.1, observed 0; bin [0.9, 1]: 0.9 vs 0.5
    assert ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)
    assert [b["count"] for b in table] == [2, 2]
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


def test_bayes_accuracy_from_the_labellers_probabilities(tok):
    """A pair's p_chosen is P(chosen wins | a decisive label); the ceiling is the mean of max(p, 1 - p)."""
    row = {"prompt": "What is 2 + 3?", "chosen": "5.", "rejected": "6.", "family": "arithmetic"}
    pair = tokenize_pair(rdata.parse_row({**row, "p_chosen": 0.6, "p_rejected": 0.2, "p_tie": 0.2}), tok, 128)
    assert pair.p_chosen == pytest.approx(0.75) and pair.group == "arithmetic"
    assert tokenize_pair(rdata.parse_row(row), tok, 128).p_chosen is None  # no probabilities: unknown
    # An annotator who picked the less likely response (p = 0.1) caps the accuracy there at 0.9.
    assert best_possible_accuracy(torch.tensor([0.75, 0.1])) == pytest.approx((0.75 + 0.9) / 2)
    assert best_possible_accuracy(torch.tensor([0.5, 0.5])) == pytest.approx(0.5)


def test_wilson_interval_against_hand_worked_values():
    # 50 of 100: centre (0.5 + 1.96^2/200) / (1 + 1.96^2/100) = 0.5; half-width
    # 1.96 / 1.038416 * sqrt(0.25/100 + 3.8416/40000) = 0.096171.
    low, high = wilson_interval(0.5, 100)
    assert (low, high) == (pytest.approx(0.403829, abs=1e-6), pytest.approx(0.596171, abs=1e-6))
    # 0 of 10: the interval stays in [0, 1] (a normal one would be [0, 0]); its top is twice the centre,
    # 2 * (3.8416 / 20) / 1.38416 = 0.277540.
    assert wilson_interval(0.0, 10) == (0.0, pytest.approx(0.277540, abs=1e-6))
    # Symmetric under relabelling, and narrower with more trials.
    assert wilson_interval(0.8, 50) == pytest.approx(tuple(1 - x for x in reversed(wilson_interval(0.2, 50))))
    assert (
        wilson_interval(0.6, 1000)[1] - wilson_interval(0.6, 1000)[0]
        < wilson_interval(0.6, 100)[1] - wilson_interval(0.6, 100)[0]
    )
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wilson_interval(1.5, 10)


def test_t_interval_by_hand():
    # 0.5, 0.6, 0.7: mean 0.6, sd 0.1, t(2) = 4.303: half-width 4.303 * 0.1 / sqrt(3) = 0.24844
    m, low, high = t_interval([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and high - m == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert low == pytest.approx(2 * m - high)
    assert t_interval([0.4]) == (0.4, 0.4, 0.4)  # one seed: no spread to speak of
    # 12 values (df 11, not in the table): the next tabulated df's quantile, 2.179
    values = [0.0, 1.0] * 6
    sd = math.sqrt(sum((v - 0.5) ** 2 for v in values) / 11)
    assert t_interval(values)[2] - 0.5 == pytest.approx(2.179 * sd / math.sqrt(12))


def test_win_rate_counts_ties_half():
    assert win_rate([1.0, 0.0, 0.5, 0.2], [0.0, 0.0, 0.9, 0.2]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    with pytest.raises(ValueError):
        win_rate([1.0], [])


def test_perfect_win_rate_ties_where_the_baseline_is_already_best():
    from rlhf.stats import perfect_win_rate

    # Two of four baseline samples already score the maximum: a perfect policy ties those, wins the rest.
    assert perfect_win_rate([1.0, 0.5, -1.0, 1.0], best=1.0) == pytest.approx((0.5 + 1 + 1 + 0.5) / 4)
    assert perfect_win_rate([1.0, 1.0], best=1.0) == 0.5  # nothing left to win


def test_block_drift_reads_a_series_in_blocks_counted_back_from_the_last_step():
    from rlhf.stats import block_drift

    # width 2 over 7 values: the leading 9 is left out; blocks [1, 3] [4, 4] [1, 1] -> means 2, 4, 1.
    # Successive differences 2, 1, 0, -3, 0: sigma^2 = (4 + 1 + 0 + 9 + 0) / 5 / 2 = 1.4, se = sigma.
    d = block_drift([9, 1, 3, 4, 4, 1, 1], width=2)
    assert (d["first"], d["last"], d["best"], d["best_start"]) == (2, 1, 4, 3)
    assert d["se"] == pytest.approx(math.sqrt(1.4))
    # A constant shift moves the means and leaves the noise; a single spike moves its block by 1/width.
    shifted = block_drift([v + 10 for v in [9, 1, 3, 4, 4, 1, 1]], width=2)
    assert shifted["best"] == 14 and shifted["se"] == pytest.approx(d["se"])
    spiked = block_drift([0.0] * 9 + [1.0] + [0.0] * 10, width=5)
    assert spiked["best"] == pytest.approx(0.2) and spiked["best_start"] == 5
    with pytest.raises(ValueError, match="at least 4 values"):
        block_drift([1, 2, 3], width=2)


def test_paired_change_is_the_mean_change_per_item_and_its_standard_error():
    from rlhf.stats import paired_change

    # Changes 1, 2, 3: mean 2, sample sd 1, se 1 / sqrt(3); the items' own levels (10, 20, 30) drop out.
    mean, se = paired_change([11, 22, 33], [10, 20, 30])
    assert mean == pytest.approx(2.0) and se == pytest.approx(1 / math.sqrt(3))
    assert paired_change([1.0, 2.0], [1.0, 2.0]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="2 or more"):
        paired_change([1.0], [0.0])
