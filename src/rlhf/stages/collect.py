"""Preference collection on the lab: sample K responses per prompt from a policy, pair them, and have the
preset's simulated annotators label each pair.

    rlhf collect configs/collect_lab.yaml
    rlhf collect policy=runs/sft-lab/final preset=length-biased output_dir=runs/prefs-length

Writes ``train.jsonl`` and ``eval.jsonl`` (split by prompt, so evaluation prompts are never trained on)
in TRL's conversational preference format (``prompt``, ``chosen``, ``rejected``), each row with:

- ``annotator``: the id of the annotator who labelled it;
- ``p_chosen``, ``p_rejected``, ``p_tie``: that annotator's probabilities of each outcome;
- ``tie``: False (see below);
- ``shown_first``: ``"chosen"`` or ``"rejected"``;
- ``family``, ``key``, ``gold_chosen``, ``gold_rejected``, ``words_chosen``, ``words_rejected``.

Ties (``tie_prob > 0``) are not preferences, so they stay out of those files, which any TRL trainer can
read as they are: they go to ``train_ties.jsonl`` and ``eval_ties.jsonl``, rows of the same columns
with ``tie: True``, where ``chosen`` is only the response shown first. ``rlhf rm`` reads them beside the
pairs (``data: [train.jsonl, train_ties.jsonl]``, as ``rlhf run`` wires it) and trains them toward equal
rewards or skips them (``RMConfig.ties``). ``summary.json`` holds the counts, the label shares (ties
included) and the Bayes-optimal accuracy of each split.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rlhf import guards
from rlhf.data import write_jsonl
from rlhf.guards import atomic_file
from rlhf.lab.annotators import PresetName, bayes_accuracy, get_preset, with_ties
from rlhf.lab.judge import gold_utility, n_words
from rlhf.lab.preferences import label_pair
from rlhf.lab.world import sample_prompts
from rlhf.modeling import load_causal_lm, load_tokenizer
from rlhf.preflight import check_stage
from rlhf.sampling import SamplingSettings, generate


class CollectConfig(SamplingSettings):
    """``rlhf collect`` settings."""

    policy: str = Field(
        "runs/sft-lab/final", description="the model that writes the responses (folder, lab, ...)"
    )
    preset: PresetName = Field("default", description="annotator preset: default, length-biased, sycophantic")
    tie_prob: float = Field(0.0, ge=0, lt=1, description="annotators may call ties (see rlhf.lab.annotators)")
    prompts: int = Field(1500, ge=2, description="lab prompts")
    k: int = Field(4, ge=2, description="responses sampled per prompt")
    pairing: Literal["disjoint", "all"] = Field(
        "disjoint", description="disjoint: k/2 pairs per prompt (1-2, 3-4, ...); all: every pair"
    )
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of prompts whose pairs go to eval.jsonl")
    output_dir: str = Field(
        "runs/prefs-lab", description="where train.jsonl, eval.jsonl, their *_ties.jsonl and summary.json go"
    )
    seed: int = Field(0, description="seed of prompts, sampling, pairing and labels")

    @model_validator(mode="after")
    def _check(self) -> CollectConfig:
        if self.temperature <= 0:
            raise ValueError("temperature: the k responses of a prompt must differ, so it must be > 0")
        return self


def _pairs(k: int, pairing: str) -> list[tuple[int, int]]:
    if pairing == "all":
        return list(itertools.combinations(range(k), 2))
    return [(i, i + 1) for i in range(0, k - 1, 2)]


def collect(cfg: CollectConfig, log=print) -> Path:
    """Run the collection; return the output folder."""
    out = Path(cfg.output_dir)
    check_stage(cfg)  # the policy, before anything is written
    guards.enter_stage(out, "collect", cfg, log)  # folder locked, settings compared
    preset = with_ties(get_preset(cfg.preset), cfg.tie_prob) if cfg.tie_prob else get_preset(cfg.preset)
    tokenizer, model = load_tokenizer(cfg.policy), load_causal_lm(cfg.policy)

    # 1. Prompts, each repeated k times, sampled in one batched pass.
    prompts = sample_prompts(cfg.prompts, seed=cfg.seed + 424_242)
    conversations = [p.messages() for p in prompts for _ in range(cfg.k)]
    log(f"sampling {len(conversations)} responses ({cfg.prompts} prompts x {cfg.k}) from {cfg.policy}")
    responses = generate(model, tokenizer, conversations, cfg.sampling, seed=cfg.seed)

    # 2. Pairs, shown in a random order, labelled by an annotator drawn from the pool.
    rng = random.Random(cfg.seed)
    n_eval = int(cfg.prompts * cfg.eval_fraction)
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    skipped = Counter()
    for j, p in enumerate(prompts):
        samples = responses[j * cfg.k : (j + 1) * cfg.k]
        for x, y in _pairs(cfg.k, cfg.pairing):
            a, b = samples[x], samples[y]
            if not a or not b:
                skipped["empty response"] += 1
                continue
            if a == b:
                skipped["identical responses"] += 1
                continue
            if rng.random() < 0.5:
                a, b = b, a
            pair = label_pair(preset, p, a, b, rng)
            a_wins = pair.label in ("a", "tie")
            chosen, rejected = (a, b) if a_wins else (b, a)
            p_chosen, p_rejected = (pair.p_a, pair.p_b) if a_wins else (pair.p_b, pair.p_a)
            row = {
                "prompt": p.messages(),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "annotator": pair.annotator,
                "p_chosen": p_chosen,
                "p_rejected": p_rejected,
                "p_tie": pair.p_tie,
                "tie": pair.label == "tie",
                "shown_first": "chosen" if a_wins else "rejected",
                "family": p.family,
                "key": p.key,
                "gold_chosen": gold_utility(p, chosen),
                "gold_rejected": gold_utility(p, rejected),
                "words_chosen": n_words(chosen),
                "words_rejected": n_words(rejected),
            }
            splits["eval" if j < n_eval else "train"].append(row)

    # 3. Write both splits and a summary.
    out.mkdir(parents=True, exist_ok=True)
    summary = {"policy": cfg.policy, "preset": cfg.preset, "skipped": dict(skipped)}
    for name, rows in splits.items():
        write_jsonl([r for r in rows if not r["tie"]], out / f"{name}.jsonl")
        if cfg.tie_prob:
            write_jsonl([r for r in rows if r["tie"]], out / tie_file(name))
        summary[name] = split_summary(rows)
    with atomic_file(out / "summary.json") as f:  # the file that marks the collection done
        json.dump(summary, f, indent=2)
    (out / "config.yaml").write_text(cfg.to_yaml())
    ties = sum(r["tie"] for rows in splits.values() for r in rows)
    guards.release_lock(out)
    log(
        f"wrote {len(splits['train'])} train and {len(splits['eval'])} eval pairs to {out}"
        + (f", {ties} of them ties in *_ties.jsonl" if cfg.tie_prob else "")
        + f" (skipped {dict(skipped)})"
    )
    return out


def tie_file(split: str) -> str:
    """The file of a split's tied pairs, beside ``<split>.jsonl`` (written when ``tie_prob > 0``)."""
    return f"{split}_ties.jsonl"


def split_summary(rows: list[dict]) -> dict[str, float]:
    """Counts, tie rate, how often the chosen response is the gold-better one, and the Bayes accuracy."""
    decisive = [r for r in rows if not r["tie"]]
    gold_differs = [r for r in decisive if r["gold_chosen"] != r["gold_rejected"]]
    return {
        "pairs": len(rows),
        "tie_rate": (len(rows) - len(decisive)) / max(1, len(rows)),
        "chosen_is_gold_better": sum(r["gold_chosen"] > r["gold_rejected"] for r in gold_differs)
        / max(1, len(gold_differs)),
        "chosen_is_longer": sum(r["words_chosen"] > r["words_rejected"] for r in decisive)
        / max(1, len(decisive)),
        "bayes_accuracy": bayes_accuracy([(r["p_chosen"], r["p_rejected"], r["p_tie"]) for r in rows]),
    }
