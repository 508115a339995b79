"""rlhf.stages.rm: the reward model stage (evaluation metrics, data lists, training on the lab, LoRA, real pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import shared_file
from transformers import AutoModelForSequenceClassification

from rlhf import data as rdata
from rlhf.config import ConfigError, load_config
from rlhf.encoding import encode_pair as tokenize_pair
from rlhf.modeling import (
    load_reward_model,
    sequence_scores,
)
from rlhf.stages import rm as reward_mod
from rlhf.stages.rm import (
    RMConfig,
    evaluate_pairs,
    train_rm,
)
from rlhf.training import load_splits, read_metrics

ROOT = Path(__file__).resolve().parents[2]


def test_gold_accuracy_follows_the_judge_not_the_labels(tok, fresh_rm):
    """gold_accuracy orders pairs by the reference judge: swapping chosen and rejected (and their gold
    utilities) turns the label accuracy into its complement but leaves it unchanged."""
    answers = [
        ("5.", "6."),
        ("The answer is 5.", "I can't help with that."),
        ("5", "five"),
        ("2 + 3 = 5.", "7."),
    ]
    rows = [
        {
            "prompt": "What is 2 + 3?",
            "chosen": a,
            "rejected": b,
            "family": fam,
            "gold_chosen": 1.0,
            "gold_rejected": g,
        }
        for (a, b), fam, g in zip(
            answers, ["arithmetic", "arithmetic", "format", "format"], [-1.0, -0.5, 0.2, 1.0]
        )
    ]
    swapped = [
        {
            **r,
            "chosen": r["rejected"],
            "rejected": r["chosen"],
            "gold_chosen": r["gold_rejected"],
            "gold_rejected": 1.0,
        }
        for r in rows
    ]
    pairs, flipped = ([tokenize_pair(rdata.parse_row(r), tok, 128) for r in rs] for rs in (rows, swapped))
    assert [p.gold_gap for p in pairs] == [2.0, 1.5, 0.8, 0.0]
    m, _ = evaluate_pairs(fresh_rm, pairs, tok.pad_token_id, 4, torch.device("cpu"), False)
    f, _ = evaluate_pairs(fresh_rm, flipped, tok.pad_token_id, 4, torch.device("cpu"), False)
    assert f["accuracy"] == pytest.approx(1 - m["accuracy"])
    assert f["gold_accuracy"] == pytest.approx(m["gold_accuracy"])
    assert f["gold_accuracy/format"] == pytest.approx(m["gold_accuracy/format"])
    # The judge's tie (the fourth pair) is left out: the format figure rests on one pair, so it is 0 or 1.
    assert m["gold_accuracy/format"] in (0.0, 1.0)
    assert (
        tokenize_pair(rdata.parse_row({"prompt": "Q", "chosen": "a", "rejected": "b"}), tok, 128).gold_gap
        is None
    )


def test_evaluate_pairs_builds_no_autograd_graph(fresh_rm, tok, monkeypatch):
    # Evaluation must run without gradients: a graph kept per batch grows memory with the eval set
    # (a 135M reward model on 251 pairs ran out of 24 GiB when it did).
    seen, original = [], reward_mod.pair_rewards

    def spy(model, batch):
        seen.append(torch.is_grad_enabled())
        return original(model, batch)

    pairs = [tokenize_pair(rdata.parse_row({"prompt": "Q", "chosen": "a", "rejected": "b"}), tok, 128)] * 3
    monkeypatch.setattr(reward_mod, "pair_rewards", spy)
    evaluate_pairs(fresh_rm, pairs, tok.pad_token_id, 2, torch.device("cpu"), False)
    assert seen == [False, False]


# ---------------------------------------------------------------------------------------------------
# Collection and training on the lab
# ---------------------------------------------------------------------------------------------------


def _rm_cfg(tmp_path: Path, prefs: Path, base: Path, name: str, *overrides: str) -> RMConfig:
    return load_config(
        RMConfig,
        ROOT / "configs/rm_lab.yaml",
        [
            f"model={base}",
            f"data={prefs / 'train.jsonl'}",
            f"eval_data={prefs / 'eval.jsonl'}",
            f"run.output_dir={tmp_path / name}",
            "run.progress=false",
            *overrides,
        ],
    )


def test_data_may_be_a_list_of_datasets(tmp_path):
    """Pairs of two collection rounds train one reward model: ``data`` and ``eval_data`` take lists."""
    rounds = []
    for r in (1, 2):
        rows = [{"prompt": f"Q{r}.{i}", "chosen": f"good {r}", "rejected": f"bad {r}"} for i in range(r + 2)]
        rdata.write_jsonl(rows, tmp_path / f"round{r}.jsonl")
        rounds.append(str(tmp_path / f"round{r}.jsonl"))
    cfg = load_config(RMConfig, None, [f"data=[{rounds[0]}, {rounds[1]}]", f"eval_data=[{rounds[1]}]"])
    said: list[str] = []
    train, evals = load_splits(cfg, rdata.load_preferences, said.append)
    assert [r.prompt for r in train] == ["Q1.0", "Q1.1", "Q1.2", "Q2.0", "Q2.1", "Q2.2", "Q2.3"]
    assert len(evals) == 4
    assert [line.split(":")[0] for line in said] == [rounds[0], rounds[1], rounds[1]]
    with pytest.raises(ConfigError, match="at least 1 item"):
        load_config(RMConfig, None, ["data=[]"])


@pytest.mark.figure
def test_lab_reward_model_learns_the_preferences(tmp_path, lab_prefs, lab_base_path, test_seed, figure):
    cfg = _rm_cfg(
        tmp_path, lab_prefs, lab_base_path, "rm", "epochs=2", "optim.lr=1e-3", "run.eval_every=0",
        f"run.seed={test_seed}",
    )  # fmt: skip
    final = train_rm(cfg, log=lambda *_: None)
    evals = [row for row in read_metrics(cfg.run.output_dir) if row["split"] == "eval"]
    # Above chance with 95% confidence (0.60-0.65 measured on 60 pairs over base-model and test seeds).
    figure("accuracy_low", evals[-1]["accuracy_low"], above=0.5)
    figure("accuracy", evals[-1]["accuracy"], above=0.55)
    assert evals[-1]["accuracy_low"] < evals[-1]["accuracy"] < evals[-1]["accuracy_high"]
    # Against the gold judge itself (the lab's rows carry its utilities), per family too.
    figure("gold_accuracy", evals[-1]["gold_accuracy"], above=0.5)
    assert 0.0 <= evals[-1]["gold_accuracy/harmful"] <= 1.0
    assert {f"accuracy/{f}" for f in ("arithmetic", "harmful", "format")} <= set(evals[-1])
    # The ceiling beside it, per family too: the same number `rlhf collect` wrote for these pairs.
    summary = json.loads((lab_prefs / "summary.json").read_text())["eval"]
    assert evals[-1]["bayes_accuracy"] == pytest.approx(summary["bayes_accuracy"], abs=1e-6)
    assert 0.5 <= evals[-1]["bayes_accuracy/arithmetic"] <= 1.0
    stats = json.loads((final / "reward_stats.json").read_text())
    assert stats["std"] > 0 and stats["n"] > 500
    assert (Path(cfg.run.output_dir) / "calibration.json").exists()

    # `rlhf rm-eval` scores the saved model on the same pairs as the run's last evaluation did.
    from click.testing import CliRunner

    from rlhf.cli import main

    out = tmp_path / "rm-eval.json"
    args = ["rm-eval", str(final), str(lab_prefs / "eval.jsonl"), "--max-length", "128", "--output", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    again = json.loads(out.read_text())["metrics"]
    for key in ("accuracy", "bayes_accuracy", "gold_accuracy", "accuracy/arithmetic", "ece"):
        assert again[key] == pytest.approx(evals[-1][key], abs=1e-6), key
    assert f"accuracy {evals[-1]['accuracy']:.3f}" in result.output
    missing = CliRunner().invoke(main, ["rm-eval", str(final), str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 1 and "nope.jsonl" in missing.output


def test_lora_score_head_survives_save_and_load(tmp_path, lab_prefs, lab_base_path, tok):
    common = ("max_steps=4", "run.eval_every=0", "lora.r=4", "optim.lr=5e-3", "limit=64")
    adapters = train_rm(_rm_cfg(tmp_path, lab_prefs, lab_base_path, "lora", *common), log=lambda *_: None)
    merged = train_rm(
        _rm_cfg(tmp_path, lab_prefs, lab_base_path, "merged", *common, "lora.merge_on_save=true"),
        log=lambda *_: None,
    )
    texts = [
        "<|bos|><|user|>What is 2 + 3?<|end|><|assistant|>2 + 3 = 5.<|end|>",
        "<|bos|><|user|>Hi<|end|><|assistant|>No.<|end|>",
    ]
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        plain_merged = AutoModelForSequenceClassification.from_pretrained(merged)(**batch).logits.squeeze(-1)
        ours_merged = sequence_scores(
            load_reward_model(str(merged)), batch["input_ids"], batch["attention_mask"].bool()
        )
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(lab_base_path, num_labels=1)
        head_before = base.score.weight.clone()
        with_adapters = PeftModel.from_pretrained(base, adapters)
        ours_adapters = sequence_scores(with_adapters, batch["input_ids"], batch["attention_mask"].bool())
    torch.testing.assert_close(plain_merged, ours_merged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_adapters, ours_merged, atol=1e-4, rtol=1e-4)  # the trained head came back
    assert not torch.equal(
        with_adapters.base_model.model.score.modules_to_save["default"].weight, head_before
    )


def test_rm_eval_takes_the_skip_policy_on_real_hh_data(lab_base_path):
    """7 of the 1,800 shared HH-RLHF rows are malformed: `rlhf rm-eval` stops at the first, located, or with
    --on-error skip scores the rest and counts the skipped rows by reason."""
    from click.testing import CliRunner

    from rlhf.cli import main

    hh = shared_file("hh-rlhf-harmless-base.sample.jsonl.gz")
    args = [
        "rm-eval",
        str(lab_base_path),
        str(hh),
        "--max-length",
        "48",
        "--fresh-head",
    ]  # an untrained score head (asked for explicitly): any model
    stopped = CliRunner().invoke(main, args)
    assert stopped.exit_code == 1 and f"error: {hh}:67: field 'chosen'" in stopped.output
    result = CliRunner().invoke(main, [*args, "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert "loaded 1793 of 1800 rows (implicit_preference); skipped 7:" in result.output
