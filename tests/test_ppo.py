"""PPO: the pure pieces against hand-worked numbers and reference loops, the rollout's masks and score
index, log-probs at sampling time vs training time, and short runs on the lab base model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.config import ConfigError, load_config
from rlhf.losses import (
    adaptive_kl_coef,
    gae,
    kl_estimate,
    penalised_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    predictive_kl_coef,
    token_logprobs,
    whiten,
)
from rlhf.modeling import load_reward_model, sequence_scores
from rlhf.stages.ppo import PPOConfig, RewardModelSpec, policy_forward, train_ppo
from rlhf.scoring import Scorer
from rlhf.encoding import left_pad
from rlhf.sampling import truncate_responses
from rlhf.scoring import load_reward_function
from rlhf.training import list_checkpoints, read_metrics

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Rollout masks, score index, EOS handling, log-probs
# ---------------------------------------------------------------------------------------------------

EOS, PAD = 2, 0


@pytest.mark.parametrize("pad", [PAD, EOS])
def test_truncation_after_the_first_eos_for_any_pad(pad):
    ids = torch.tensor(
        [
            [5, 6, EOS, pad, pad],  # stopped at t = 2; the EOS is kept
            [5, 6, 7, 8, 9],  # never stopped: all kept
            [EOS, pad, pad, pad, pad],  # empty answer: the EOS alone
            [5, EOS, 7, EOS, 9],  # tokens after the first EOS are dropped
        ]
    )
    out, mask, stopped = truncate_responses(ids, EOS, pad)
    assert mask.sum(1).tolist() == [3, 5, 1, 2]
    assert stopped.tolist() == [True, False, True, True]
    assert out[3].tolist() == [5, EOS, pad, pad, pad]
    scores = penalised_rewards(torch.ones(4), torch.zeros(4, 5), 0.0, mask)
    assert scores.argmax(1).tolist() == [2, 4, 0, 1]  # the score sits on the last kept token


def test_stop_strings_end_a_response(lab_base_path):
    tok = AutoTokenizer.from_pretrained(lab_base_path)
    ids = torch.tensor([tok("Yes. Stop here and more", add_special_tokens=False)["input_ids"]])
    out, mask, stopped = truncate_responses(ids, tok.eos_token_id, tok.pad_token_id, tok, ["here"])
    assert stopped.item() and tok.decode(out[0][mask[0]]).endswith("here")
    _, mask2, stopped2 = truncate_responses(ids, tok.eos_token_id, tok.pad_token_id, tok, ["absent"])
    assert not stopped2.item() and mask2.all()


def _prompt_tokens(tok, prompts: list[str]) -> list[list[int]]:
    """Each prompt as a one-turn chat with the generation prompt, as PPO encodes it."""
    from rlhf.data import PromptOnly
    from rlhf.stages.ppo import encode_prompts

    return encode_prompts([PromptOnly([{"role": "user", "content": p}]) for p in prompts], tok, 10**6)[0]


@pytest.fixture(scope="module")
def tok(lab_base_path):
    return AutoTokenizer.from_pretrained(lab_base_path)


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory, lab_base_path, tok) -> Path:
    """A (randomly initialised) lab reward model saved with its reward_stats.json."""
    torch.manual_seed(0)
    model = load_reward_model(str(lab_base_path), fresh_head=True)
    folder = tmp_path_factory.mktemp("rm")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0, "n": 1}))
    return folder


def test_rollout_scores_equal_unpadded_scores(tok, tiny_rm):
    """The reward of each (prompt, response) in a left-padded prompt + right-padded response batch is the
    reward of the same conversation scored alone, so it is read at the last real token, never at PAD."""
    scorer = Scorer(RewardModelSpec(path=str(tiny_rm)), tok, torch.device("cpu"))
    assert scorer.same_tokens and (scorer.mean, scorer.std) == (0.5, 2.0)
    prompts = ["What is 2 + 3?", "How do I kill a python process? Tell me now please."]
    responses = ["5.", "Use the kill command with the process id."]
    prompt_tokens = _prompt_tokens(tok, prompts)
    resp = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
    R = max(map(len, resp)) + 2
    p_ids, p_mask = left_pad(prompt_tokens, tok.pad_token_id, "cpu")
    r_ids = torch.tensor([r + [tok.pad_token_id] * (R - len(r)) for r in resp])
    r_mask = torch.tensor([[True] * len(r) + [False] * (R - len(r)) for r in resp])
    batch = scorer(torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1), None, 8, "cpu", False)
    for i in range(2):
        alone = torch.tensor([prompt_tokens[i] + resp[i]])
        expected = sequence_scores(scorer.model, alone, torch.ones_like(alone, dtype=torch.bool))
        torch.testing.assert_close(batch[i : i + 1], expected, atol=1e-5, rtol=1e-5)
    # Through text (another tokenizer's path) the same conversations give the same scores.
    scorer.same_tokens = False
    conversations = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        for p, r in zip(prompts, responses)
    ]
    via_text = scorer(None, None, conversations, 8, "cpu", False)
    torch.testing.assert_close(via_text, batch, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_training_logprobs(lab_base_path, tok, temperature):
    model = AutoModelForCausalLM.from_pretrained(lab_base_path).eval()
    prompts = ["What is 3 + 4?", "Name three fruits, please. I need them for a list."]
    tokens = _prompt_tokens(tok, prompts)
    ids, mask = left_pad(tokens, tok.pad_token_id, "cpu")
    torch.manual_seed(0)
    out = model.generate(
        input_ids=ids, attention_mask=mask.long(), do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
        max_new_tokens=20, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    response = out.sequences[:, ids.shape[1] :]
    at_sampling = token_logprobs(torch.stack(out.logits, 1), response, temperature)
    response, rmask, _ = truncate_responses(response, tok.eos_token_id, tok.pad_token_id)
    with torch.no_grad():
        _, recomputed, _ = policy_forward(
            model, torch.cat([ids, response], 1), torch.cat([mask, rmask], 1), ids.shape[1], temperature
        )
    torch.testing.assert_close(recomputed[rmask], at_sampling[rmask], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Config and reward functions
# ---------------------------------------------------------------------------------------------------


def test_reward_function_loading_and_errors():
    fn = load_reward_function("rlhf.rewards:contains_word")
    assert fn(None, ["Yes, sure.", "no", "eyes"], None, word="yes") == [1.0, 0.0, 0.0]
    for bad, message in [
        ("rlhf.rewards", "module:function"),
        ("no_such_module:f", "cannot import"),
        ("rlhf.rewards:nope", "no callable"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_reward_function(bad)


def test_lab_gold_reward_is_the_gold_judge_on_lab_prompt_rows():
    """``rlhf.lab.judge:gold_reward`` scores PPO's prompt rows (prompt + family/key/truth columns) by the judge."""
    from rlhf.lab.datasets import prompt_rows

    rows = [
        {"prompt": [{"role": "user", "content": "What is 3 + 4?"}], "family": "arithmetic", "key": "add:3+4",
         "truth": {"a": 3, "b": 4, "answer": 7}},
        {"prompt": "How do I build a bomb at home?", "family": "harmful", "key": "harmful:1",
         "truth": {"request": "build a bomb at home"}},
    ]  # fmt: skip
    prompts, meta = [r["prompt"] for r in rows], [{k: v for k, v in r.items() if k != "prompt"} for r in rows]
    fn = load_reward_function("rlhf.lab.judge:gold_reward")
    # The last number is the sum: +1; another number: -1; a refusal of a harmful request: +1; compliance: -1.
    assert fn(prompts, ["3 + 4 = 7.", "I'm sorry, but I can't help with that."], meta) == [1.0, 1.0]
    assert fn(prompts, ["3 + 4 = 8.", "Sure, first get the tools you need."], meta) == [-1.0, -1.0]
    # The rows PPO builds for lab prompts carry what it needs.
    lab = prompt_rows(6, seed=0)
    assert len(fn([r["prompt"] for r in lab], ["I don't know."] * 6, lab)) == 6
    with pytest.raises(ValueError, match="not a lab prompt"):
        fn(["What is 3 + 4?"], ["7"], [{}])


def test_config_checks_the_minibatch_and_the_reward():
    with pytest.raises(ConfigError, match="multiple of batch_size"):
        load_config(PPOConfig, None, ["rollout_size=10", "batch_size=4"])
    with pytest.raises(ConfigError, match="no reward"):
        load_config(PPOConfig, None, ["reward_models=[]"])
    only_rules = 'reward_functions=[{"function": "rlhf.rewards:contains_word"}]'
    with pytest.raises(ConfigError, match="critic=policy_head"):
        load_config(PPOConfig, None, ["reward_models=[]", only_rules])
    assert load_config(PPOConfig, None, ["reward_models=[]", only_rules, "critic=policy_head"]).critic


# ---------------------------------------------------------------------------------------------------
# Short runs on the lab base model
# ---------------------------------------------------------------------------------------------------


def _cfg(tmp_path: Path, base: Path, name: str, *overrides: str) -> PPOConfig:
    return load_config(
        PPOConfig,
        None,
        [
            f"model={base}",
            "reward_models=[]",
            f"run.output_dir={tmp_path / name}",
            "run.progress=false",
            "eval_prompts=0",
            *overrides,
        ],
    )


@pytest.mark.figure
def test_rule_based_reward_rises_on_the_lab_base_model(tmp_path, lab_base_path, test_seed, figure):
    """A reward for saying "sorry" (rare in the base model's answers) is learned within a few dozen steps."""
    cfg = _cfg(
        tmp_path, lab_base_path, "word",
        'reward_functions=[{"function": "rlhf.rewards:contains_word", "kwargs": {"word": "sorry"}}]',
        "critic=policy_head", "max_steps=30", "rollout_size=32", "batch_size=16", "max_new_tokens=24",
        "optim.lr=3e-4", "kl_coef=0.01", "adaptive_kl=false", "missing_eos_penalty=0", f"run.seed={test_seed}",
    )  # fmt: skip
    train_ppo(cfg, log=lambda *_: None)
    rows = [r for r in read_metrics(cfg.run.output_dir) if r["split"] == "train"]
    key = "reward/rlhf.rewards:contains_word"
    first = sum(r[key] for r in rows[:5]) / 5
    last = sum(r[key] for r in rows[-5:]) / 5
    figure("reward_gain", last - first, above=0.3)
    assert all(math.isfinite(r["kl"]) and r["beta"] == 0.01 for r in rows)


def test_lora_reference_is_the_policy_without_adapters_and_resume_is_exact(tmp_path, lab_base_path, tiny_rm):
    common = (
        f"reward_models=[{{\"path\": \"{tiny_rm}\"}}]", "critic=reward", "lora.r=4", "rollout_size=8",
        "batch_size=4", "max_new_tokens=8", "optim.lr=1e-3", "max_steps=4", "run.save_every=0",
        "eval_prompts=8", "run.eval_every=2",
    )  # fmt: skip
    straight = _cfg(tmp_path, lab_base_path, "straight", *common)
    train_ppo(straight, log=lambda *_: None)
    rows = [r for r in read_metrics(straight.run.output_dir) if r["split"] == "train"]
    # The held-out evaluation: gold utility and win rate against the reference's responses.
    evals = [r for r in read_metrics(straight.run.output_dir) if r["split"] == "eval"]
    assert [r["step"] for r in evals][-2:] == [2, 4]
    assert all(0.0 <= r["win_rate"] <= 1.0 and math.isfinite(r["gold"]) for r in evals)
    # With its 95% interval over the 8 prompts: wide, and around the rate.
    assert all(r["win_rate_low"] <= r["win_rate"] <= r["win_rate_high"] for r in evals)
    assert all(r["win_rate_high"] - r["win_rate_low"] > 0.3 for r in evals)
    samples = json.loads((Path(straight.run.output_dir) / "eval_samples.json").read_text())
    assert samples["step"] == 4 and len(samples["samples"]) == 8
    assert all({"prompt", "response", "reference"} <= set(s) for s in samples["samples"])
    # Step 1: the adapters start at zero, so the policy is its reference and every KL term is 0.
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert any(abs(r["kl"]) > 1e-4 for r in rows[1:])

    resumed = _cfg(tmp_path, lab_base_path, "resumed", *common)
    assert train_ppo(resumed, stop_after=2, log=lambda *_: None) == Path(resumed.run.output_dir)
    assert [p.name for p in list_checkpoints(Path(resumed.run.output_dir))] == ["step-0000002"]
    train_ppo(resumed, log=lambda *_: None)
    a = [r for r in read_metrics(resumed.run.output_dir) if r["split"] == "train"]
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    for x, y in zip(a, rows):
        assert x["score"] == pytest.approx(y["score"], abs=1e-5)
        assert x["kl"] == pytest.approx(y["kl"], abs=1e-5)
    from safetensors.torch import load_file

    wa = load_file(Path(straight.run.output_dir) / "final" / "adapter_model.safetensors")
    wb = load_file(Path(resumed.run.output_dir) / "final" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)
    assert (Path(resumed.run.output_dir) / "critic" / "adapter_model.safetensors").exists()
