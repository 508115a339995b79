"""Losses and masked statistics: pure functions over tensors and a mask.

Mask convention, everywhere in the project: a boolean tensor, ``True`` = a real token that counts.
Shapes use ``B`` (batch), ``T`` (sequence length) and ``V`` (vocabulary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is True (over ``dim``, or everything)."""
    x = torch.where(mask, x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is True; 0 where nothing is masked in."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log p(targets[b, t])`` under ``softmax(logits[b, t] / temperature)``.

    logits: (B, T, V), already aligned with targets: (B, T)  ->  (B, T), float32.
    Uses the fused cross-entropy kernel, so no (B, T, V) log-softmax is kept.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return -nll.view(targets.shape)


def sft_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor, normalizer: float | torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token NLL summed over the tokens where ``loss_mask`` is True, divided by ``normalizer``.

    logits: (B, T, V) from the model on input_ids: (B, T); loss_mask: (B, T), True = token to learn.
    Position t predicts token t + 1, so the loss is on ``input_ids[:, 1:]`` where ``loss_mask[:, 1:]``.

    ``normalizer`` is the number of loss tokens in the whole optimisation step (all micro-batches of a
    gradient-accumulation step, all ranks), so that summing the micro-batch gradients gives the mean
    over every response token of the step: batch 8 x accumulation 1 and batch 1 x accumulation 8 make
    the same update, however the response lengths differ.
    """
    logp = token_logprobs(logits[:, :-1], input_ids[:, 1:])  # (B, T-1)
    mask = loss_mask[:, 1:]
    nll_sum = -masked_sum(logp, mask)
    return nll_sum / normalizer, {"nll_sum": nll_sum.detach(), "tokens": mask.sum()}


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    tie: torch.Tensor | None = None,
    center_coef: float = 0.0,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry reward-model loss, ``-log sigmoid(r(P, chosen) - r(P, rejected) - margin)``.

    r_chosen, r_rejected: (B,) scalar rewards; margin: (B,) or None, a required reward gap (Llama 2's
    margin loss; 0 when None); tie: (B,) bool or None. A tie is a soft label of 1/2 (Rao-Kupper style):
    ``-(log sigmoid(d) + log sigmoid(-d)) / 2``, smallest at d = 0, so tied responses are pulled
    to equal rewards. ``center_coef`` adds ``center_coef * (r_chosen + r_rejected)^2`` (reward centering,
    Eisenstein et al. 2023), which keeps the rewards near zero mean without changing their differences.

    The per-pair losses are summed and divided by ``normalizer`` (the number of pairs in the whole
    optimisation step; default: this batch's size), so gradient accumulation matches one large batch.
    Stats: ``accuracy`` (share of decisive pairs with r_chosen > r_rejected) and ``margin`` (mean of
    r_chosen - r_rejected), both over decisive pairs.
    """
    diff = r_chosen - r_rejected  # (B,)
    shifted = diff - margin if margin is not None else diff
    per_pair = -F.logsigmoid(shifted)
    decisive = torch.ones_like(diff, dtype=torch.bool) if tie is None else ~tie
    if tie is not None:
        per_pair = torch.where(tie, -0.5 * (F.logsigmoid(diff) + F.logsigmoid(-diff)), per_pair)
    if center_coef:
        per_pair = per_pair + center_coef * (r_chosen + r_rejected) ** 2
    loss = per_pair.sum() / (normalizer if normalizer is not None else len(diff))
    with torch.no_grad():
        stats = {
            "accuracy": masked_mean((diff > 0).float(), decisive),
            "margin": masked_mean(diff, decisive),
            "pairs": decisive.sum(),
        }
    return loss, stats
