"""rlhf.losses: every loss and PPO piece on hand-worked numbers (SFT, Bradley-Terry, GAE, whitening, clipped losses, KL estimators and controllers)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.losses import (
    adaptive_kl_coef,
    bradley_terry_loss,
    gae,
    kl_estimate,
    penalised_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    predictive_kl_coef,
    sft_loss,
    whiten,
)


def _log_sigmoid(x: float) -> float:
    return -math.log(1 + math.exp(-x))


def _gae_reference(rewards, values, mask, gamma, lam):
    """A plain per-row loop over the real tokens only."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv, (adv + values) * mask


def _betas(controller, kls, beta=0.3, target=0.8):
    out, prev = [], None
    for kl in kls:
        beta = (
            controller(beta, kl, prev, target)
            if controller is not adaptive_kl_coef
            else (adaptive_kl_coef(beta, kl, target, 200, 64))
        )
        prev = kl
        out.append(beta)
    return out


def test_sft_loss_hand_worked():
    # Vocabulary of 3. Position t predicts token t + 1; the loss counts tokens 2 and 3 only.
    input_ids = torch.tensor([[0, 1, 2, 1]])
    loss_mask = torch.tensor([[False, False, True, True]])
    logits = torch.zeros(1, 4, 3)
    logits[0, 0] = torch.tensor([5.0, -5.0, 0.0])  # predicts token 1, which is not learned: ignored
    logits[0, 1] = torch.log(torch.tensor([1.0, 1.0, 2.0]))  # p(token 2) = 2/4
    logits[0, 2] = torch.log(torch.tensor([1.0, 3.0, 4.0]))  # p(token 1) = 3/8
    loss, stats = sft_loss(logits, input_ids, loss_mask, normalizer=2)
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(3 / 8)) / 2, rel=1e-6)
    assert stats["tokens"].item() == 2
    # The normalizer is the step's token count: with 4 tokens in the step this batch weighs half.
    assert sft_loss(logits, input_ids, loss_mask, normalizer=4)[0].item() == pytest.approx(loss.item() / 2)


def test_padding_does_not_change_the_loss():
    torch.manual_seed(0)
    logits, ids = torch.randn(1, 5, 7), torch.randint(0, 7, (1, 5))
    mask = torch.tensor([[False, False, True, True, True]])
    padded_logits = torch.cat([logits, torch.randn(1, 3, 7)], dim=1)
    padded_ids = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    assert sft_loss(padded_logits, padded_ids, padded_mask, 3)[0].item() == pytest.approx(
        sft_loss(logits, ids, mask, 3)[0].item()
    )


def test_bradley_terry_hand_worked():
    r_c, r_r = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])  # differences +1 and -1
    loss, stats = bradley_terry_loss(r_c, r_r)
    assert loss.item() == pytest.approx(-(_log_sigmoid(1.0) + _log_sigmoid(-1.0)) / 2)
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == pytest.approx(0.0)
    # A margin of 0.5 on the first pair: -log sigmoid(1 - 0.5).
    loss, _ = bradley_terry_loss(r_c, r_r, margin=torch.tensor([0.5, 0.0]))
    assert loss.item() == pytest.approx(-(_log_sigmoid(0.5) + _log_sigmoid(-1.0)) / 2)
    # Centering adds coef * (r_c + r_r)^2: (3^2 + 2^2) * 0.1 / 2 on top of the plain loss.
    loss, _ = bradley_terry_loss(r_c, r_r, center_coef=0.1)
    assert loss.item() == pytest.approx(-(_log_sigmoid(1.0) + _log_sigmoid(-1.0)) / 2 + 0.1 * (9 + 4) / 2)
    # A tie is a soft label of 1/2: -(log sigmoid(d) + log sigmoid(-d)) / 2, and leaves the accuracy.
    loss, stats = bradley_terry_loss(r_c, r_r, tie=torch.tensor([True, False]))
    tie_term = -(_log_sigmoid(1.0) + _log_sigmoid(-1.0)) / 2
    assert loss.item() == pytest.approx((tie_term - _log_sigmoid(-1.0)) / 2)
    assert stats["accuracy"].item() == 0.0 and stats["pairs"].item() == 1
    # The step normaliser: 4 pairs in the step, 2 in this micro-batch.
    assert bradley_terry_loss(r_c, r_r, normalizer=4)[0].item() == pytest.approx(
        bradley_terry_loss(r_c, r_r)[0].item() / 2
    )


def test_tie_loss_is_smallest_at_equal_rewards():
    tie = torch.tensor([True])
    losses = [
        bradley_terry_loss(torch.tensor([d]), torch.tensor([0.0]), tie=tie)[0].item()
        for d in (-1.0, 0.0, 1.0)
    ]
    assert losses[1] < losses[0] and losses[1] < losses[2]
    assert losses[1] == pytest.approx(math.log(2))


def test_gae_hand_worked():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 99.0]])
    values = torch.tensor([[0.5, 0.2, 0.1], [0.5, 0.2, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0: delta_2 = 2 - 0.1 = 1.9;              A_2 = 1.9
    #        delta_1 = 0 + 0.9 * 0.1 - 0.2 = -0.11; A_1 = -0.11 + 0.72 * 1.9 = 1.258
    #        delta_0 = 1 + 0.9 * 0.2 - 0.5 = 0.68;  A_0 = 0.68 + 0.72 * 1.258 = 1.58576
    # Row 1 ends at t = 1 (the 99 and the 7 are padding): delta_1 = -0.2 = A_1;
    #        A_0 = 0.68 + 0.72 * -0.2 = 0.536
    torch.testing.assert_close(adv, torch.tensor([[1.58576, 1.258, 1.9], [0.536, -0.2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.08576, 1.458, 2.0], [1.036, 0.0, 0.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_a_reference_loop_with_masks(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = torch.tensor([9, 1, 4, 7, 2, 5])
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _gae_reference(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)


def test_whiten_over_the_mask_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, -50.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    w = whiten(x, mask)
    real = w[mask]
    assert abs(real.mean().item()) < 1e-6 and abs(real.std().item() - 1.0) < 1e-4
    assert (w[~mask] == 0).all()
    kept = whiten(x, mask, shift_mean=False)[mask]
    assert abs(kept.mean().item() - 3.0) < 1e-5  # the mean of 1..5 stays


def test_clipped_policy_loss_hand_worked():
    # One token per row, eps = 0.2:
    #   rho 1.1, A = +2: inside the range, -A rho = -2.2
    #   rho 1.5, A = +1: above 1 + eps, clipped term -1.2 wins (max of -1.5, -1.2): no gradient
    #   rho 0.5, A = -1: below 1 - eps, clipped term 0.8 wins (max of 0.5, 0.8): no gradient
    #   rho 0.5, A = +1: below, but the unclipped -0.5 is the pessimistic one (max of -0.5, -0.8)
    ratio = torch.tensor([[1.1], [1.5], [0.5], [0.5]])
    old = torch.zeros(4, 1)
    logp = ratio.log().requires_grad_(True)
    adv = torch.tensor([[2.0], [1.0], [-1.0], [1.0]])
    mask = torch.ones(4, 1, dtype=torch.bool)
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2, normalizer=1.0)
    assert loss.item() == pytest.approx(-2.2 - 1.2 + 0.8 - 0.5, abs=1e-6)
    loss.backward()
    # d(-A rho)/d logp = -A rho where the unclipped term is active, 0 where the clip is.
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.2], [0.0], [0.0], [-0.5]]))
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    per_token, _ = ppo_policy_loss(logp.detach(), old, adv, mask, clip_eps=0.2)
    assert per_token.item() == pytest.approx((-2.2 - 1.2 + 0.8 - 0.5) / 4, abs=1e-6)  # default: token mean


def test_clipped_value_loss_hand_worked():
    # old V = 1, return 2, clip 0.2:
    #   V 1.1 (inside):      0.5 * max(0.81, 0.81) = 0.405
    #   V 1.5 (above):       clipped V 1.2 -> 0.5 * max(0.25, 0.64) = 0.32
    #   V 0.5 (below):       clipped V 0.8 -> 0.5 * max(2.25, 1.44) = 1.125
    values = torch.tensor([[1.1], [1.5], [0.5]])
    old, ret = torch.ones(3, 1), torch.full((3, 1), 2.0)
    mask = torch.ones(3, 1, dtype=torch.bool)
    for i, expected in enumerate([0.405, 0.32, 1.125]):
        loss, _ = ppo_value_loss(values[i : i + 1], old[i : i + 1], ret[i : i + 1], mask[i : i + 1], 0.2)
        assert loss.item() == pytest.approx(expected, abs=1e-6)
    unclipped, _ = ppo_value_loss(values, old, ret, mask, clip_range=None)
    assert unclipped.item() == pytest.approx((0.81 + 0.25 + 2.25) / 2 / 3, abs=1e-6)


def test_kl_estimators_on_known_distributions():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    true_kl = (p * (p / q).log()).sum().item()  # KL(p || q) = 0.2749...
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 400_000, replacement=True, generator=g)
    logp, logq = p.log()[x], q.log()[x]
    k1, k3 = kl_estimate(logp, logq, "k1"), kl_estimate(logp, logq, "k3")
    assert k1.mean().item() == pytest.approx(true_kl, abs=0.01)
    assert k3.mean().item() == pytest.approx(true_kl, abs=0.01)
    assert (k1 < 0).any() and (k3 >= 0).all()  # k1 terms can be negative, k3 never
    assert kl_estimate(logp, logp, "k3").abs().max() == 0
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_estimate(logp, logq, "k4")


def test_adaptive_kl_controller_formula():
    # KL above target: the error clips at +0.2, beta grows by 0.2 * n / horizon.
    assert adaptive_kl_coef(0.1, kl=3.0, target=2.0, horizon=10_000, n_steps=64) == pytest.approx(
        0.1 * (1 + 0.2 * 64 / 10_000)
    )
    # Slightly below: error -0.05.
    assert adaptive_kl_coef(0.1, kl=1.9, target=2.0, horizon=10_000, n_steps=64) == pytest.approx(
        0.1 * (1 - 0.05 * 64 / 10_000)
    )
    assert adaptive_kl_coef(0.1, kl=0.0, target=2.0, horizon=100, n_steps=100) == pytest.approx(0.08)


def test_predictive_kl_controller_formula():
    # KL 0.6 after 0.4, target 0.8: extrapolated 0.8, error 0: beta stays.
    assert predictive_kl_coef(0.3, kl=0.6, kl_prev=0.4, target=0.8, horizon=200, n_steps=64) == pytest.approx(
        0.3
    )
    # KL 1.2 after 0.8: extrapolated 1.6, error +1.0 (no 0.2 cap above the target): x (1 + 64 / 200).
    assert predictive_kl_coef(0.3, 1.2, 0.8, 0.8, 200, 64) == pytest.approx(0.3 * 1.32)
    # Far above: the rise is capped at max_rise; far below: the fall at max_fall (0.05: 1.6% a step).
    assert predictive_kl_coef(0.3, 4.0, 4.0, 0.8, 200, 64, max_rise=1.0) == pytest.approx(0.3 * 1.32)
    assert predictive_kl_coef(0.3, 0.0, None, 0.8, 200, 64) == pytest.approx(0.3 * (1 - 0.05 * 0.32))


def test_predictive_controller_pushes_back_on_a_kl_that_climbs_past_its_target():
    """A scripted KL sequence like the lab demo's: 0.15 nats more every step of 64 samples, past the 0.8
    target at step 6. Ziegler's controller lets beta fall until the KL arrives and has it barely back
    where it started 4 steps later; the predictive one has doubled it by then."""
    kls = [0.15 * t for t in range(1, 21)]
    ziegler = _betas(adaptive_kl_coef, kls)
    predictive = _betas(lambda b, kl, prev, target: predictive_kl_coef(b, kl, prev, target, 200, 64), kls)
    assert min(ziegler) < 0.8 * 0.3 and ziegler[9] < 1.05 * 0.3  # fell by a fifth, barely back at step 10
    assert predictive[9] > 2 * 0.3 and predictive[-1] > 10 * ziegler[-1]
    assert min(predictive) > 0.9 * 0.3  # slow to relax: it barely fell before the KL arrived
    # Once the KL turns back down toward the target, beta stops rising at once.
    settle = _betas(lambda b, kl, prev, target: predictive_kl_coef(b, kl, prev, target, 200, 64),
                    [2.0, 1.6, 1.2, 0.9, 0.8, 0.8])  # fmt: skip
    assert settle[2] <= settle[1] and settle[-1] == pytest.approx(settle[-2])


def test_penalised_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [True] * 4])
    rewards = penalised_rewards(torch.tensor([1.0, 2.0, 3.0]), kl, beta=0.5, mask=mask)
    expected = torch.tensor(
        [[-0.05, -0.1, -0.15 + 1.0, 0.0], [-0.25 + 2.0, 0.0, 0.0, 0.0], [-0.5, -0.5, -0.5, -0.5 + 3.0]]
    )
    torch.testing.assert_close(rewards, expected)
