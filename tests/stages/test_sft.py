"""rlhf.stages.sft: accumulation equals one large batch, resume, LoRA round trip, and SFT on the lab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhf import data as rdata
from rlhf.config import load_config
from rlhf.stages.sft import SFTConfig, train_sft
from rlhf.training import list_checkpoints, read_metrics

ROOT = Path(__file__).resolve().parents[2]


# A template that renders `thinking` only when asked to, through a chat template argument.


# ---------------------------------------------------------------------------------------------------
# Runs on the lab base model
# ---------------------------------------------------------------------------------------------------


def _data_file(tmp_path: Path) -> str:
    """Twelve examples of very different response lengths."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
            "completion": [
                {"role": "assistant", "content": ("Let me think. " * (i % 4)) + f"{i} + 1 = {i + 1}."}
            ],
        }
        for i in range(12)
    ]
    path = tmp_path / "sft.jsonl"
    rdata.write_jsonl(rows, path)
    return str(path)


def _cfg(tmp_path: Path, name: str, data: str, **kw) -> SFTConfig:
    overrides = {
        "data": data, "eval_fraction": 0.0, "lab_eval_prompts": 0, "max_steps": 2,
        "run.output_dir": str(tmp_path / name), "run.save_every": 0, "run.progress": False,
        "optim.warmup_steps": 0, "optim.lr": 1e-3, **kw,
    }  # fmt: skip
    return load_config(SFTConfig, None, [f"{k}={v}" for k, v in overrides.items()])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_accumulation_matches_one_large_batch(tmp_path, lab_base_path):
    data = _data_file(tmp_path)
    big = train_sft(_cfg(tmp_path, "big", data, batch_size=8, grad_accum=1), log=lambda *_: None)
    small = train_sft(_cfg(tmp_path, "small", data, batch_size=1, grad_accum=8), log=lambda *_: None)
    base, small_w = _weights(lab_base_path), _weights(small)
    for name, w in _weights(big).items():
        step = w - base[name]
        assert step.abs().max() > 1e-4, name  # it trained
        # Adam divides by |gradient|: where a gradient is ~0, float rounding can flip a coordinate's
        # tiny update, so compare the whole update's size as well as each weight.
        assert (small_w[name] - w).norm() < 1e-3 * step.norm(), name
        torch.testing.assert_close(small_w[name], w, atol=5e-5, rtol=1e-5)  # lr = 1e-3


def test_resume_reaches_the_uninterrupted_result(tmp_path, lab_base_path):
    data = _data_file(tmp_path)
    whole = train_sft(_cfg(tmp_path, "whole", data, batch_size=3, max_steps=6), log=lambda *_: None)
    cfg = _cfg(tmp_path, "split", data, batch_size=3, max_steps=6)
    train_sft(cfg, stop_after=3, log=lambda *_: None)
    assert [p.name for p in list_checkpoints(Path(cfg.run.output_dir))] == ["step-0000003"]
    assert not (Path(cfg.run.output_dir) / "final").exists()
    resumed = train_sft(cfg, log=lambda *_: None)
    for name, w in _weights(whole).items():
        torch.testing.assert_close(_weights(resumed)[name], w, atol=1e-6, rtol=1e-6)
    steps = [row["step"] for row in read_metrics(cfg.run.output_dir) if row["split"] == "train"]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


def test_lora_save_load_merge_round_trip(tmp_path, lab_base_path):
    data = _data_file(tmp_path)
    adapters = train_sft(_cfg(tmp_path, "lora", data, batch_size=4, **{"lora.r": 4}), log=lambda *_: None)
    merged = train_sft(
        _cfg(tmp_path, "merged", data, batch_size=4, **{"lora.r": 4, "lora.merge_on_save": True}),
        log=lambda *_: None,
    )
    assert (adapters / "adapter_config.json").exists() and not (merged / "adapter_config.json").exists()
    ids = torch.tensor([[1, 5, 9, 30, 40, 2]])
    with torch.no_grad():
        from_adapters = AutoModelForCausalLM.from_pretrained(adapters)(ids).logits
        from_merged = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        from_base = AutoModelForCausalLM.from_pretrained(lab_base_path)(ids).logits
    torch.testing.assert_close(from_adapters, from_merged, atol=1e-5, rtol=1e-4)
    assert (from_adapters - from_base).abs().max() > 1e-4  # the adapters changed the model


@pytest.mark.figure
def test_lab_sft_beats_the_base_model(tmp_path, lab_model, test_seed, figure):
    """The metric that matters: with the shipped config, the gold judge's mean utility of sampled
    responses rises clearly above the base model's."""
    cfg = load_config(
        SFTConfig,
        ROOT / "configs/sft_lab.yaml",
        [
            f"model={lab_model}",
            f"run.seed={test_seed}",
            f"run.output_dir={tmp_path / 'lab'}",
            "run.progress=false",
            "run.save_every=0",
            "run.eval_every=0",
        ],
    )
    train_sft(cfg, log=lambda *_: None)
    gold = [row for row in read_metrics(cfg.run.output_dir) if "gold_utility" in row]
    assert [row["step"] for row in gold] == [0, cfg.max_steps]
    figure("gold_gain", gold[1]["gold_utility"] - gold[0]["gold_utility"], above=0.05)
    assert (
        json.loads((Path(cfg.run.output_dir) / "final" / "gold.json").read_text())["gold_utility"]
        == gold[1]["gold_utility"]
    )
