"""Stage 2: preference collection and the reward model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import shared_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf import data as rdata
from rlhf.stages import rm as reward_mod
from rlhf.stages.collect import CollectConfig, collect
from rlhf.config import ConfigError, load_config
from rlhf.losses import bradley_terry_loss
from rlhf.modeling import (
    last_token_index,
    load_causal_lm,
    load_reward_model,
    pack_sequences,
    sequence_scores,
    supports_packing,
)
from rlhf.stages.rm import (
    Pair,
    RMConfig,
    calibration,
    collate_pairs,
    evaluate_pairs,
    pair_rewards,
    pearson,
    train_rm,
    wilson_interval,
)
from rlhf.stats import best_possible_accuracy
from rlhf.encoding import encode_pair as tokenize_pair
from rlhf.stages.sft import Example
from rlhf.training import load_splits, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _log_sigmoid(x: float) -> float:
    return -math.log(1 + math.exp(-x))


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


def test_calibration_and_pearson():
    p = torch.tensor([0.1, 0.1, 0.9, 0.9])
    ece, table = calibration(p, torch.tensor([False, False, True, False]))
    # bin [0, 0.1): no; 0.1 lies in bin [0.1, 0.2): predicted 0.1, observed 0; bin [0.9, 1]: 0.9 vs 0.5
    assert ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)
    assert [b["count"] for b in table] == [2, 2]
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


def test_last_token_index_for_every_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


@pytest.fixture(scope="module")
def tok(lab_base_path):
    return AutoTokenizer.from_pretrained(lab_base_path)


@pytest.fixture(scope="module")
def fresh_rm(lab_base_path):
    torch.manual_seed(0)
    return load_reward_model(str(lab_base_path), fresh_head=True).eval()


def test_score_is_read_at_the_same_token_for_any_padding(tok, fresh_rm):
    texts = [
        "<|bos|><|user|>What is 2 + 3?<|end|><|assistant|>2 + 3 = 5.<|end|>",
        "<|bos|><|user|>Hi<|end|><|assistant|>Hello.<|end|>",
    ]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    with torch.no_grad():
        alone = torch.cat(
            [
                sequence_scores(fresh_rm, torch.tensor([x]), torch.ones(1, len(x), dtype=torch.bool))
                for x in ids
            ]
        )
        scores = {}
        for side in ("left", "right"):
            tok.padding_side = side
            batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
            scores[side] = sequence_scores(fresh_rm, batch["input_ids"], batch["attention_mask"].bool())
        tok.padding_side = "right"
    torch.testing.assert_close(scores["left"], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores["right"], alone, atol=1e-5, rtol=1e-5)
    # Plain transformers (which finds the last non-PAD id) agrees where PAD is distinct from EOS.
    with torch.no_grad():
        plain = fresh_rm(
            **tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        ).logits.squeeze(-1)
    torch.testing.assert_close(plain, alone, atol=1e-5, rtol=1e-5)


def test_pack_sequences_layout():
    packed = pack_sequences([[1, 2, 3], [4], [5, 6]], pad_id=0)
    # Rows as wide as the longest sequence, filled longest first: [1 2 3] and [5 6 4].
    assert packed["input_ids"].tolist() == [[1, 2, 3], [5, 6, 4]]
    assert packed["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert packed["last"].tolist() == [2, 5, 4]  # flat index of each sequence's last token, input order
    wide = pack_sequences([[1, 2], [3]], pad_id=9, width=5)
    assert wide["input_ids"].tolist() == [[1, 2, 3, 9, 9]]
    assert wide["position_ids"].tolist() == [[0, 1, 0, 0, 1]]  # the PAD tail restarts: its own sequence


def test_packed_scores_and_gradients_equal_padded_ones(tok, lab_base_path):
    torch.manual_seed(0)
    rm = load_reward_model(str(lab_base_path), fresh_head=True)
    assert supports_packing(rm)
    assert not supports_packing(load_causal_lm(str(lab_base_path)))  # no score head: scored padded
    texts = [
        ("What is 2 + 3?", "2 + 3 = 5.", "I'm not sure."),
        ("Hi", "Hello.", "Hello! How can I help you today? I am here for you."),
        ("Name a colour.", "Blue.", "Sure, here is a colour: red. I hope this helps."),
    ]

    def example(prompt: str, answer: str) -> Example:
        text = f"<|bos|><|user|>{prompt}<|end|><|assistant|>{answer}<|end|>"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return Example(ids, [True] * len(ids))

    pairs = [Pair(example(p, a), example(p, b), 0.0, False) for p, a, b in texts]
    grads, rewards = {}, {}
    for packed in (False, True):
        batch = collate_pairs(pairs, tok.pad_token_id, packed)
        if packed:  # fewer positions than the padded batch
            assert batch["input_ids"].numel() < collate_pairs(pairs, tok.pad_token_id)["input_ids"].numel()
        rm.zero_grad()
        r_chosen, r_rejected = pair_rewards(rm, batch)
        bradley_terry_loss(r_chosen, r_rejected)[0].backward()
        rewards[packed] = torch.cat([r_chosen, r_rejected]).detach()
        grads[packed] = {n: p.grad.clone() for n, p in rm.named_parameters() if p.grad is not None}
    torch.testing.assert_close(rewards[True], rewards[False], atol=1e-5, rtol=1e-5)
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, atol=1e-5, rtol=1e-4)


def test_bayes_accuracy_from_the_labellers_probabilities(tok):
    """A pair's p_chosen is P(chosen wins | a decisive label); the ceiling is the mean of max(p, 1 - p)."""
    row = {"prompt": "What is 2 + 3?", "chosen": "5.", "rejected": "6.", "family": "arithmetic"}
    pair = tokenize_pair(rdata.parse_row({**row, "p_chosen": 0.6, "p_rejected": 0.2, "p_tie": 0.2}), tok, 128)
    assert pair.p_chosen == pytest.approx(0.75) and pair.group == "arithmetic"
    assert tokenize_pair(rdata.parse_row(row), tok, 128).p_chosen is None  # no probabilities: unknown
    # An annotator who picked the less likely response (p = 0.1) caps the accuracy there at 0.9.
    assert best_possible_accuracy(torch.tensor([0.75, 0.1])) == pytest.approx((0.75 + 0.9) / 2)
    assert best_possible_accuracy(torch.tensor([0.5, 0.5])) == pytest.approx(0.5)


def test_a_reward_model_from_a_causal_lm_loads_quietly_and_a_missing_folder_is_named(
    lab_base_path, tmp_path, capfd
):
    from transformers.utils import logging as hf_logging

    from rlhf.modeling import ModelNotFoundError, resolve_model

    verbosity = hf_logging.get_verbosity()
    load_reward_model(str(lab_base_path), fresh_head=True)
    # The new score head is expected from a causal LM: no "MISSING" report, and logging is as it was.
    assert "MISSING" not in capfd.readouterr().err and hf_logging.get_verbosity() == verbosity
    for name in (str(tmp_path / "nope"), "./nope/x", "a/b/c"):
        with pytest.raises(ModelNotFoundError, match="no such folder"):
            resolve_model(name)
    assert resolve_model("some-org/some-model") == ("some-org/some-model", None)  # a hub name: left as is


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


def test_wilson_interval_against_hand_worked_values():
    # 50 of 100: centre (0.5 + 1.96^2/200) / (1 + 1.96^2/100) = 0.5; half-width
    # 1.96 / 1.038416 * sqrt(0.25/100 + 3.8416/40000) = 0.096171.
    low, high = wilson_interval(0.5, 100)
    assert (low, high) == (pytest.approx(0.403829, abs=1e-6), pytest.approx(0.596171, abs=1e-6))
    # 0 of 10: the interval stays in [0, 1] (a normal one would be [0, 0]); its top is twice the centre,
    # 2 * (3.8416 / 20) / 1.38416 = 0.277540.
    assert wilson_interval(0.0, 10) == (0.0, pytest.approx(0.277540, abs=1e-6))
    # Symmetric under relabelling, and narrower with more trials.
    assert wilson_interval(0.8, 50) == pytest.approx(tuple(1 - x for x in reversed(wilson_interval(0.2, 50))))
    assert (
        wilson_interval(0.6, 1000)[1] - wilson_interval(0.6, 1000)[0]
        < wilson_interval(0.6, 100)[1] - wilson_interval(0.6, 100)[0]
    )
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wilson_interval(1.5, 10)


def test_explicit_and_implicit_prompt_tokenise_the_same(tok):
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    explicit = rdata.parse_row(
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "5."}],
            "rejected": [{"role": "assistant", "content": "6."}],
        }
    )
    implicit = rdata.parse_row(
        {
            "chosen": [*prompt, {"role": "assistant", "content": "5."}],
            "rejected": [*prompt, {"role": "assistant", "content": "6."}],
        }
    )
    hh = rdata.parse_row(
        {
            "chosen": "\n\nHuman: What is 2 + 3?\n\nAssistant: 5.",
            "rejected": "\n\nHuman: What is 2 + 3?\n\nAssistant: 6.",
        }
    )
    a, b, c = (tokenize_pair(r, tok, 128) for r in (explicit, implicit, hh))
    assert a.chosen.input_ids == b.chosen.input_ids == c.chosen.input_ids
    assert a.rejected.input_ids == b.rejected.input_ids == c.rejected.input_ids
    assert a.chosen.input_ids != a.rejected.input_ids


# ---------------------------------------------------------------------------------------------------
# Collection and training on the lab
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_prefs(tmp_path_factory, lab_base_path, test_seed) -> Path:
    """Pairs sampled from the lab base model (a stand-in policy), labelled by default annotators; 30% of
    the prompts hold out about 550 pairs, so that an accuracy is known to +-4 points."""
    out = tmp_path_factory.mktemp("prefs")
    cfg = CollectConfig(
        policy=str(lab_base_path),
        prompts=1000,
        k=4,
        eval_fraction=0.3,
        output_dir=str(out),
        seed=1 + test_seed,
    )
    return collect(cfg, log=lambda *_: None)


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
