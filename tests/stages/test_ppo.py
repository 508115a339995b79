"""rlhf.stages.ppo: its config checks and short runs on the lab base model (a rule reward rises; a LoRA
reference is the policy without adapters; resume is exact)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlhf.config import ConfigError, load_config
from rlhf.stages.ppo import PPOConfig, train_ppo
from rlhf.training import list_checkpoints, read_metrics

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Rollout masks, score index, EOS handling, log-probs
# ---------------------------------------------------------------------------------------------------

EOS, PAD = 2, 0


# ---------------------------------------------------------------------------------------------------
# Config and reward functions
# ---------------------------------------------------------------------------------------------------


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
    assert all(r["win_rate"] <= r["win_rate_perfect"] for r in evals)  # nothing beats a perfect policy
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
