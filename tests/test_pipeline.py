"""rlhf.pipeline: tiny `rlhf run`s end to end (an interruption mid-PPO and its resumption; two rounds with a
reward-model ensemble), their report included."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------------
# The refusal classifier
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# XSTest
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# The report and `rlhf run`
# ---------------------------------------------------------------------------------------------------


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.images, self.tags = [], 0, []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.refs.append(value)
        self.images += tag == "img"


def _check_report(path: Path, stages: list[str]) -> str:
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    parser = _Refs()
    parser.feed(text)
    assert parser.images >= 3
    assert all(ref.startswith("data:image/png;base64,") for ref in parser.refs), parser.refs
    for stage in stages:
        assert stage in text, stage
    return text


def test_tiny_run_end_to_end_with_an_interruption(tmp_path, lab_base_path):
    from rlhf.config import load_config
    from rlhf.pipeline import RunConfig, run_pipeline

    cfg = load_config(
        RunConfig, None,
        [
            f"runs_dir={tmp_path}", "name=tiny", f"model={lab_base_path}", "rounds=1",
            "sft.max_steps=10", "sft.lab_examples=200", "sft.run.progress=false",
            "collect.prompts=48", "collect.k=2",
            "rm.max_steps=5", "rm.run.progress=false",
            "ppo.max_steps=4", "ppo.rollout_size=16", "ppo.batch_size=8", "ppo.max_new_tokens=16",
            "ppo.run.progress=false", "ppo.run.save_every=1",
            "eval.prompts=24", "eval.best_of_n=[1,2,4]", "eval.best_of_n_prompts=6", "eval.samples_shown=3",
        ],
    )  # fmt: skip
    logs: list[str] = []
    out = run_pipeline(cfg, log=logs.append, stop_after={"ppo": 2})
    d = tmp_path / "tiny"
    assert out == d and (d / "sft/final").is_dir() and (d / "rm/final").is_dir()
    assert not (d / "ppo/final").exists() and (d / "ppo/checkpoints").is_dir()
    sft_stamp = (d / "sft/final/model.safetensors").stat().st_mtime_ns
    rm_stamp = (d / "rm/final/model.safetensors").stat().st_mtime_ns

    logs.clear()
    report = run_pipeline(cfg, log=logs.append)
    assert "== sft: done, skipped ==" in logs and "== rm: done, skipped ==" in logs
    assert any("resumed from" in m for m in logs)
    assert (d / "sft/final/model.safetensors").stat().st_mtime_ns == sft_stamp
    assert (d / "rm/final/model.safetensors").stat().st_mtime_ns == rm_stamp
    ppo_steps = [
        r["step"]
        for r in map(json.loads, (d / "ppo/metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    assert ppo_steps == [1, 2, 3, 4]
    result = json.loads((d / "eval.json").read_text())
    assert set(result["results"]) == {"sft", "ppo"}
    for key in ("win_rate_gold", "kl_to_reference", "sycophancy_rate", "over_refusal_rate", "length_bias"):
        assert key in result["results"]["ppo"], key
    ppo = result["results"]["ppo"]
    assert ppo["win_rate_gold_low"] <= ppo["win_rate_gold"] <= ppo["win_rate_gold_high"]
    # No policy wins more than one perfect by the gold judge would, overall and in any family.
    families = [k.split("/", 1)[1] for k in ppo if k.startswith("gold/")]
    assert families and ppo["win_rate_gold"] <= ppo["win_rate_gold_perfect"]
    assert all(ppo[f"win_rate_gold/{f}"] <= ppo[f"win_rate_gold_perfect/{f}"] for f in families)
    assert [r["n"] for r in result["best_of_n"]] == [1, 2, 4] and len(result["ppo_trace"]) == 4
    timings = json.loads((d / "timings.json").read_text())
    assert {"sft", "collect", "rm", "ppo", "eval", "report"} <= set(timings)
    _check_report(
        report, ["SFT", "Reward model", "PPO", "Over-optimisation", "Probes", "side by side", "Settings"]
    )


def test_tiny_run_with_two_rounds_and_a_reward_model_ensemble(tmp_path, lab_base_path):
    """Iterated RLHF: round 2 collects pairs on the round-1 policy, retrains the (2-member) reward model on
    all pairs and continues PPO from the round-1 policy with the SFT model as reference."""
    from rlhf.config import load_config
    from rlhf.pipeline import RunConfig, run_pipeline, stage_configs

    cfg = load_config(
        RunConfig, None,
        [
            f"runs_dir={tmp_path}", "name=rounds", f"model={lab_base_path}", "rounds=2", "round_prompts=24",
            "sft.max_steps=6", "sft.lab_examples=100", "sft.run.progress=false",
            "collect.prompts=32", "collect.k=2",
            "rm.max_steps=3", "rm.members=2", "rm.run.progress=false",
            "ppo.max_steps=2", "ppo.rollout_size=8", "ppo.batch_size=8", "ppo.max_new_tokens=12",
            "ppo.run.progress=false",
            "eval.prompts=12", "eval.best_of_n=[1,2]", "eval.best_of_n_prompts=4", "eval.samples_shown=2",
        ],
    )  # fmt: skip
    stages = stage_configs(cfg)
    d = tmp_path / "rounds"
    assert stages["ppo-2"].model == str(d / "ppo/final") and stages["ppo-2"].reference == str(d / "sft/final")
    assert stages["collect-2"].policy == str(d / "ppo/final") and stages["collect-2"].prompts == 24
    assert stages["rm-2"].model == str(d / "sft/final") and len(stages["rm-2"].data) == 2
    assert stages["collect-2"].seed == stages["collect"].seed + 1000  # other prompts than round 1's
    logs: list[str] = []
    run_pipeline(cfg, log=logs.append)
    members = json.loads((d / "rm-2/final/ensemble.json").read_text())["members"]
    assert members == ["../member-0/final", "../member-1/final"] and (d / "rm-2/member-1/final").is_dir()
    rounds = json.loads((d / "rounds.json").read_text())
    assert set(rounds) == {"rm-2"} and rounds["rm-2"]["pairs"] > 0
    assert 0 <= rounds["rm-2"]["old_rm_accuracy"] <= 1 and 0 <= rounds["rm-2"]["new_rm_accuracy"] <= 1
    rows = [
        r
        for r in map(json.loads, (d / "ppo-2/metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    assert all(r["ensemble_std/final"] >= 0 for r in rows)
    result = json.loads((d / "eval.json").read_text())
    assert result["policies"]["ppo"] == str(d / "ppo-2/final") and result["rounds"] == rounds
    assert [(r["round"], r["step"]) for r in result["ppo_trace"]] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    # What rlhf sweep reads of a finished run: the same figures, the last 5 training steps' KL.
    from rlhf.sweep import run_figures

    figures = run_figures(d, kl_target=0.8)
    ppo, sft = result["results"]["ppo"], result["results"]["sft"]
    assert figures["win_rate"] == ppo["win_rate_gold"] and figures["gold_gain"] == pytest.approx(
        ppo["gold"] - sft["gold"]
    )
    assert figures["kl_final"] == pytest.approx(
        sum(r["kl"] for r in result["ppo_trace"][-5:]) / 4
    )  # 4 steps in all
    assert figures["rounds"] == rounds and any(k.startswith("gold_gain/") for k in figures)  # per family
    assert figures["win_rate_perfect"] == ppo["win_rate_gold_perfect"]
    assert any(k.startswith("win_rate_perfect/") for k in figures)
    logs.clear()
    run_pipeline(cfg, log=logs.append)  # a rerun skips every finished stage of both rounds
    assert {f"== {s}: done, skipped ==" for s in ("rm-2", "ppo-2", "collect-2", "eval")} <= set(logs)
