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


# ---------------------------------------------------------------------------------------------------
# PPO (Schulman et al. 2017) with a KL penalty (Ziegler et al. 2019; Ouyang et al. 2022)
#
# Every (B, T) tensor below lives on the response positions of a rollout: t = 0 is the first response
# token, and ``mask`` (B, T) is True for the response's real tokens (up to and including its EOS) and
# False for the right padding after it. The state s_t is the prompt plus response[:t]; the action a_t is
# response token t.
# ---------------------------------------------------------------------------------------------------


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020, "Approximating
    KL divergence"): with log r = ref_logp - logp,

    - ``k1`` = -log r: unbiased, one term per token can be negative;
    - ``k2`` = (log r)^2 / 2: biased, low variance;
    - ``k3`` = (r - 1) - log r: unbiased and never negative.

    logp, ref_logp: (B, T) -> (B, T).
    """
    log_r = ref_logp - logp
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {kind!r}; expected k1, k2 or k3")


def penalised_rewards(
    scores: torch.Tensor, kl: torch.Tensor, beta: float, mask: torch.Tensor
) -> torch.Tensor:
    """Per-token rewards r_t = -beta * KL_t, plus the sequence score at the last real response token.

    scores: (B,) one reward per response; kl: (B, T) per-token KL estimates; mask: (B, T) -> (B, T),
    zero where ``mask`` is False.
    """
    rewards = torch.where(mask, -beta * kl, torch.zeros_like(kl))
    last = mask.shape[1] - 1 - mask.flip(-1).long().argmax(-1)  # (B,) index of the last True
    return rewards.scatter_add(1, last.unsqueeze(1), scores.to(rewards.dtype).unsqueeze(1))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t), with V = 0 after the last real token;
    A_t = delta_t + gamma * lam * A_{t+1}; returns R_t = A_t + V(s_t).

    rewards, values: (B, T); mask: (B, T), a prefix of True per row (right padding). Returns
    ``(advantages, returns)``, both (B, T) and zero where ``mask`` is False.
    """
    T = rewards.shape[1]
    m = mask.to(rewards.dtype)
    values = values * m
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * m


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to unit variance over its masked-in entries (and to zero mean if ``shift_mean``);
    (B, T) -> (B, T), zero where ``mask`` is False. The variance is the unbiased one."""
    mean = masked_mean(x, mask)
    n = mask.sum().clamp(min=2)
    var = masked_sum((x - mean) ** 2, mask) / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros_like(out))


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss: per token, ``max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps))`` with
    rho = pi(a_t | s_t) / pi_old(a_t | s_t), summed over the masked-in tokens and divided by
    ``normalizer`` (the tokens of the whole minibatch, so gradient accumulation matches one batch;
    default: this batch's tokens).

    logp, old_logp, advantages, mask: (B, T). Stats: ``clipfrac`` (share of tokens where the clipped
    term is the active one), ``approx_kl`` (k3 estimate of KL(pi_old || pi)), ``ratio`` (mean rho).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    loss = masked_sum(per_token, mask) / (normalizer if normalizer is not None else mask.sum().clamp(min=1))
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = 0.2,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: per token ``0.5 * max((V - R)^2, (V_clip - R)^2)`` with
    V_clip = V_old + clip(V - V_old, -c, c) (plain ``0.5 * (V - R)^2`` when ``clip_range`` is None),
    summed over the masked-in tokens and divided by ``normalizer`` as in :func:`ppo_policy_loss`.

    values, old_values, returns, mask: (B, T). Stats: ``vf_clipfrac``.
    """
    err = (values - returns) ** 2
    if clip_range is None:
        per_token, clipped_active = err, torch.zeros_like(err, dtype=torch.bool)
    else:
        v_clip = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        err_clip = (v_clip - returns) ** 2
        per_token, clipped_active = torch.maximum(err, err_clip), err_clip > err
    loss = (
        0.5
        * masked_sum(per_token, mask)
        / (normalizer if normalizer is not None else mask.sum().clamp(min=1))
    )
    return loss, {"vf_clipfrac": masked_mean(clipped_active.float(), mask).detach()}


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position: (B, T, V) -> (B, T), float32."""
    logits = logits.float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the masked-in entries (1: perfect critic, 0: no better than a mean)."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    return float(1.0 - var_d / var_r) if var_r > 0 else float("nan")


def adaptive_kl_coef(beta: float, kl: float, target: float, horizon: float, n_steps: int) -> float:
    """One update of the adaptive KL controller (Ziegler et al. 2019):
    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon).

    ``kl``: the mean per-sequence KL of the last batch; ``n_steps``: the samples in that batch."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)


def predictive_kl_coef(
    beta: float, kl: float, kl_prev: float | None, target: float, horizon: float, n_steps: int,
    max_rise: float = 1.0, max_fall: float = 0.05,
) -> float:  # fmt: skip
    """The adaptive controller of ``rlhf ppo`` (``kl_controller: predictive``): on the KL one step ahead,
    quick to tighten and slow to relax. KL_next = KL + (KL - KL_prev);
    e = clip(KL_next / target - 1, -max_fall, max_rise); beta <- beta * (1 + e * n_steps / horizon).

    Ziegler's controller (:func:`adaptive_kl_coef`) reacts to the KL measured on the last rollout, which
    lags the policy by one update, within +-0.2: in a short run it lowers beta by 6% a step (64
    samples, horizon 200) while the KL is still small, so beta has halved by the time the KL arrives,
    and then it raises beta by at most 6% a step while the KL overshoots (2-3x the target in 20 steps).
    Here the error is that of the extrapolated KL, so beta starts rising before the KL reaches the
    target; above it beta may grow by up to ``max_rise * n / horizon`` a step (1.32x for KL at 2x the
    target), and below it falls by at most ``max_fall * n / horizon`` (1.6% a step). ``kl_prev`` is None
    at the first step (no trend yet)."""
    trend = 0.0 if kl_prev is None else kl - kl_prev
    error = min(max((kl + trend) / target - 1.0, -max_fall), max_rise)
    return beta * (1.0 + error * n_steps / horizon)


def conservative_reward(member_scores: torch.Tensor, coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward of a reward-model ensemble, penalised by its disagreement (uncertainty-weighted
    optimisation, Coste et al. 2023): r = mean_k r_k - coef * std_k r_k.

    ``member_scores``: (K, B), each member's normalised score of the B responses; ``coef``: lambda.
    Returns r (B,) and the members' standard deviation (B,) (population std; 0 for K = 1)."""
    mean = member_scores.mean(0)
    std = member_scores.std(0, unbiased=False)
    return mean - coef * std, std
