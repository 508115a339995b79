"""rlhf.stages.collect: preference pairs from the lab's annotators."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from rlhf import data as rdata
from rlhf.encoding import encode_pair as tokenize_pair
from rlhf.stages.collect import CollectConfig, collect


@pytest.mark.figure
def test_collect_writes_labelled_preference_data(lab_prefs, figure):
    summary = json.loads((lab_prefs / "summary.json").read_text())
    assert summary["train"]["pairs"] > 500 and summary["eval"]["pairs"] > 50
    figure(
        "chosen_is_gold_better", summary["train"]["chosen_is_gold_better"], above=0.8
    )  # annotators follow gold
    figure("bayes_accuracy", summary["train"]["bayes_accuracy"], above=0.6)
    assert summary["train"]["bayes_accuracy"] < 1.0
    records, report = rdata.load_preferences(lab_prefs / "train.jsonl")
    assert report.n_loaded == summary["train"]["pairs"]
    meta = records[0].meta
    assert {"annotator", "p_chosen", "p_rejected", "p_tie", "tie", "shown_first", "family"} <= set(meta)
    assert meta["p_chosen"] + meta["p_rejected"] + meta["p_tie"] == pytest.approx(1.0)


def test_collect_is_reproducible(tmp_path, lab_base_path):
    runs = [
        collect(
            CollectConfig(policy=str(lab_base_path), prompts=40, k=4, output_dir=str(tmp_path / n), seed=3),
            log=lambda *_: None,
        )
        for n in "ab"
    ]
    assert (runs[0] / "train.jsonl").read_text() == (runs[1] / "train.jsonl").read_text()


def test_collect_writes_ties_beside_the_pairs(tmp_path, lab_base_path):
    """With ties on, train.jsonl / eval.jsonl hold decisive pairs only (any TRL preference trainer may read
    them); the tied pairs go to train_ties.jsonl / eval_ties.jsonl, which the reward model reads as ties."""
    cfg = CollectConfig(
        policy=str(lab_base_path), prompts=60, k=4, tie_prob=0.5, output_dir=str(tmp_path), seed=2
    )
    out = collect(cfg, log=lambda *_: None)
    summary = json.loads((out / "summary.json").read_text())
    for split in ("train", "eval"):
        pairs, _ = rdata.load_preferences(out / f"{split}.jsonl")
        ties, _ = rdata.load_preferences(out / f"{split}_ties.jsonl")
        assert not any(p.meta["tie"] for p in pairs) and all(t.meta["tie"] for t in ties)
        assert len(pairs) + len(ties) == summary[split]["pairs"]
        assert len(ties) / summary[split]["pairs"] == pytest.approx(summary[split]["tie_rate"])
    tok = AutoTokenizer.from_pretrained(lab_base_path)
    assert tokenize_pair(ties[0], tok, 128).tie  # read as a tie, as the loss and the evaluation expect
    without = collect(
        cfg.model_copy(update={"tie_prob": 0.0, "output_dir": str(tmp_path / "none")}), log=lambda *_: None
    )
    assert not list(without.glob("*_ties.jsonl"))
