"""rlhf.training: length-grouped data order."""

from __future__ import annotations

import pytest
import torch

from rlhf.training import Stream


def _padding(stream: Stream, lengths: list[int], steps: int, rows: int, micro: int) -> int:
    """PAD positions of ``steps`` steps of ``rows`` rows cut into micro-batches (rows sorted first)."""
    waste = 0
    for _ in range(steps):
        step = sorted(lengths[i] for i in stream.take(rows))
        for m in range(0, rows, micro):
            part = step[m : m + micro]
            waste += len(part) * max(part) - sum(part)
    return waste


def test_length_grouped_order_sees_every_example_once_and_cuts_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 120, (1000,), generator=g).tolist()
    epoch = Stream(1000, 3, lengths=lengths, group=16).take(1000)
    assert sorted(epoch) == list(range(1000))  # one epoch: a permutation
    assert Stream(1000, 3, lengths=lengths, group=16).take(1000) == epoch  # seeded
    assert Stream(1000, 4, lengths=lengths, group=16).take(1000) != epoch
    plain = _padding(Stream(1000, 3), lengths, 60, 16, 4)
    grouped = _padding(Stream(1000, 3, lengths=lengths, group=16), lengths, 60, 16, 4)
    assert grouped < 0.1 * plain
    # A resumed stream continues exactly where the first one was, across an epoch boundary.
    first = Stream(1000, 3, lengths=lengths, group=16)
    first.take(1037)
    resumed = Stream(1000, 3, lengths=lengths, group=16)
    resumed.seek(**first.position())
    assert resumed.take(50) == first.take(50)
    with pytest.raises(ValueError, match="lengths"):
        Stream(10, 0, lengths=[1, 2], group=2)
