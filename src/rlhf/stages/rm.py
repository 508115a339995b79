"""Stage 2: the reward model.

    rlhf rm configs/rm_lab.yaml                      # on pairs from `rlhf collect`
    rlhf rm examples/rm_smollm2_hh.yaml              # SmolLM2-135M + LoRA on HH-RLHF pairs
    rlhf rm-eval runs/rm-lab/final runs/heldout/eval.jsonl   # a saved reward model on other pairs

A reward model is ``AutoModelForSequenceClassification`` with one label, initialised from the SFT model
(a new score head) or any Hugging Face model. The reward r(P, R) of a prompt and response is the score
head read at the last real token of the rendered conversation, found from the attention mask, so left,
right or no padding give the same reward (``rlhf.modeling.sequence_scores``).

Loss: Bradley-Terry, ``-log sigmoid(r(P, chosen) - r(P, rejected) - margin)``, with the ``margin``
column when the data has one (``use_margin``), an optional reward-centering term, and ties (a ``tie``
column that is True) trained toward equal rewards or skipped (``ties``); see
``rlhf.losses.bradley_terry_loss``.

Each evaluation logs the pairwise accuracy, the mean margin, the calibration of
P(A > B) = sigmoid(r(A) - r(B)) (expected calibration error; the bins go to ``calibration.json``) and
the correlation of reward with response length. At the end, the reward's mean and standard deviation
over the training responses (for lab data: samples of the SFT policy) are stored in the final folder as
``reward_stats.json`` (over up to ``stats_responses`` of them), for PPO to normalise with.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from rlhf import data as rdata
from rlhf.encoding import Pair, collate, collate_pairs, encode_pair, pair_length
from rlhf.errors import UsageError
from rlhf.guards import atomic_dir
from rlhf.losses import bradley_terry_loss
from rlhf.modeling import (
    ENSEMBLE_FILE,
    autocast,
    count_parameters,
    load_reward_model,
    load_tokenizer,
    packed_sequence_scores,
    prepare_for_training,
    sequence_scores,
    supports_packing,
)
from rlhf.stats import best_possible_accuracy, calibration, pearson, wilson_interval
from rlhf.training import (
    OptimSettings,
    RunSettings,
    Sources,
    StageRun,
    TrainConfig,
    backward,
    load_splits,
    resolve_device,
)


class RMConfig(TrainConfig):
    """``rlhf rm`` settings (with the shared fields of ``rlhf.training.TrainConfig``). Defaults: the lab
    SFT model on pairs written by ``rlhf collect``."""

    model: str = Field("runs/sft-lab/final", description="initial model: SFT folder, lab, smollm2, hub name")
    data: Sources = Field(
        "runs/prefs-lab/train.jsonl", description="preference data: file, saved folder, hub name, or a list"
    )
    eval_data: Sources | None = Field(
        "runs/prefs-lab/eval.jsonl",
        description="eval pairs, one dataset or a list (null: hold out eval_fraction)",
    )
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of data held out when eval_data is null")
    use_margin: bool = Field(True, description="use the `margin` column when the data has one")
    center_coef: float = Field(0.0, ge=0, description="reward-centering coefficient (0: off)")
    ties: Literal["equal", "skip"] = Field("equal", description="tied pairs: pull rewards together, or skip")
    epochs: float = Field(2.0, gt=0, description="passes over the data when max_steps is null")
    # Packing already removes the padding; random steps keep each step's pairs as varied as the data.
    group_by_length: bool = Field(
        False, description="steps of pairs of similar length (see rlhf.training.Stream)"
    )
    padding_free: bool = Field(
        True, description="score each micro-batch packed end to end, without padding (decoders)"
    )
    stats_responses: int = Field(2000, ge=2, description="training responses scored for reward_stats.json")
    members: int = Field(
        1, ge=1, description="an ensemble of this many reward models (member k: run.seed + k), see train_rm"
    )
    bootstrap: bool = Field(
        False, description="each ensemble member trains on a bootstrap resample of the pairs"
    )
    optim: OptimSettings = Field(default_factory=lambda: OptimSettings(lr=5e-4))
    run: RunSettings = Field(default_factory=lambda: RunSettings(output_dir="runs/rm-lab"))


def pair_rewards(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r_chosen, r_rejected)``, each (B,), from a ``collate_pairs`` batch (padded or packed)."""
    if "last" in batch:
        rewards = packed_sequence_scores(model, batch)
    else:
        rewards = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
    n = len(batch["margin"])
    return rewards[:n], rewards[n:]


# ---------------------------------------------------------------------------------------------------
# Evaluation metrics (pure functions)
# ---------------------------------------------------------------------------------------------------


def _mean(x: torch.Tensor) -> float:
    return x.float().mean().item()


def _per_group(name: str, values: torch.Tensor, pairs: list[Pair], stat) -> dict[str, float]:
    """``{name/<group>: stat(values of that group's pairs)}``; ``values`` is aligned with ``pairs``."""
    groups = [p.group for p in pairs]
    return {
        f"{name}/{g}": stat(values[torch.tensor([x == g for x in groups])])
        for g in sorted({x for x in groups if x is not None})
    }


@torch.no_grad()
def evaluate_pairs(
    model, pairs: list[Pair], pad_id: int, batch_size: int, device, bf16
) -> tuple[dict[str, float], list[dict]]:
    """Accuracy (overall and ``accuracy/<group>`` per group), mean margin, calibration and reward-length
    correlation over ``pairs`` (ties left out of accuracy and calibration). Where every pair knows its
    labeller's probabilities (``Pair.p_chosen``), also the Bayes-optimal accuracy on the same labels,
    ``bayes_accuracy`` and ``bayes_accuracy/<group>``: the ceiling to read the accuracy against. Where
    every pair knows a reference judge's verdict (``Pair.gold_gap``), ``gold_accuracy`` (and per group):
    how often the reward orders a pair as the judge does, over the pairs the judge does not tie (label
    ties included), free of the labellers' noise."""
    model.eval()
    r_c, r_r = [], []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in collate_pairs(pairs[i : i + batch_size], pad_id).items()}
        with autocast(device, bf16):
            c, r = pair_rewards(model, batch)
        r_c.append(c.cpu())
        r_r.append(r.cpu())
    model.train()
    r_c, r_r = torch.cat(r_c), torch.cat(r_r)
    margins = r_c - r_r  # (N,) every pair's r(chosen) - r(rejected)
    kept = [p for p in pairs if not p.tie]
    diff = margins[torch.tensor([not p.tie for p in pairs])]
    # Calibration needs both outcomes: present each pair as (A, B) with A the chosen one in even rows.
    flip = torch.arange(len(diff)) % 2 == 1
    p_first = torch.sigmoid(torch.where(flip, -diff, diff))
    ece, table = calibration(p_first, ~flip)
    lengths = torch.tensor(
        [sum(p.chosen.loss_mask) for p in pairs] + [sum(p.rejected.loss_mask) for p in pairs]
    )
    accuracy = (diff > 0).float().mean().item()
    accuracy_low, accuracy_high = wilson_interval(accuracy, len(diff)) if len(diff) else (math.nan, math.nan)
    metrics = {
        "accuracy": accuracy,
        "accuracy_low": accuracy_low,  # 95% Wilson interval over the decisive pairs
        "accuracy_high": accuracy_high,
        "margin": diff.mean().item(),
        "ece": ece,
        "reward_length_corr": pearson(torch.cat([r_c, r_r]), lengths),
        "reward_mean": torch.cat([r_c, r_r]).mean().item(),
        **_per_group("accuracy", diff > 0, kept, _mean),
    }
    if kept and all(p.p_chosen is not None for p in kept):
        bayes = torch.tensor([p.p_chosen for p in kept], dtype=torch.float64)
        metrics["bayes_accuracy"] = best_possible_accuracy(bayes)
        metrics.update(_per_group("bayes_accuracy", bayes, kept, best_possible_accuracy))
    judged = [i for i, p in enumerate(pairs) if p.gold_gap]  # the judge's ties left out
    if judged and all(p.gold_gap is not None for p in pairs):
        agree = margins[judged].sign() == torch.tensor([pairs[i].gold_gap for i in judged]).sign()
        metrics["gold_accuracy"] = _mean(agree)
        metrics.update(_per_group("gold_accuracy", agree, [pairs[i] for i in judged], _mean))
    return metrics, table


@torch.no_grad()
def reward_stats(
    model, pairs: list[Pair], pad_id: int, batch_size: int, device, bf16, limit: int
) -> dict[str, float]:
    """Mean and standard deviation of the reward over the first ``limit`` distinct responses of ``pairs``."""
    model.eval()
    seen, examples = set(), []
    for p in pairs:
        for ex in (p.chosen, p.rejected):
            if tuple(ex.input_ids) not in seen and len(examples) < limit:
                seen.add(tuple(ex.input_ids))
                examples.append(ex)
    rewards = []
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        with autocast(device, bf16):
            rewards.append(sequence_scores(model, batch["input_ids"], batch["attention_mask"]).cpu())
    r = torch.cat(rewards)
    return {"mean": r.mean().item(), "std": r.std().item(), "n": len(r)}


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


def load_pairs(cfg: RMConfig, tokenizer, log) -> tuple[list[Pair], list[Pair]]:
    train, evals = load_splits(cfg, rdata.load_preferences, log)
    out = []
    for what, records in (("train", train), ("eval", evals)):
        pairs = [encode_pair(r, tokenizer, cfg.max_length) for r in records]
        kept = [p for p in pairs if p is not None and not (p.tie and cfg.ties == "skip" and what == "train")]
        if not cfg.use_margin:
            kept = [replace(p, margin=0.0) for p in kept]
        if len(kept) < len(pairs):
            log(
                f"{what}: skipped {len(pairs) - len(kept)} pairs (a response longer than max_length={cfg.max_length}, or a tie)"
            )
        out.append(kept)
    if not out[0]:
        raise UsageError(f"{cfg.data}: no training pair left")
    if cfg.bootstrap:  # n pairs drawn with replacement, by this member's seed
        rng = random.Random(cfg.run.seed)
        out[0] = [out[0][i] for i in rng.choices(range(len(out[0])), k=len(out[0]))]
    return out[0], out[1]


def describe_eval(values: dict[str, float]) -> str:
    """One evaluation in a line: ``accuracy A (95% L-H; Bayes-optimal B), ece E`` (Bayes where known)."""
    bayes = f"; Bayes-optimal {values['bayes_accuracy']:.3f}" if "bayes_accuracy" in values else ""
    interval = f"95% {values['accuracy_low']:.3f}-{values['accuracy_high']:.3f}"
    return f"accuracy {values['accuracy']:.3f} ({interval}{bayes}), ece {values['ece']:.3f}"


def evaluate_saved(
    model_path: str, data: str, max_length: int = 512, batch_size: int = 32, gguf_file: str | None = None,
    split: str = "train", device: str = "auto", on_error: rdata.OnError = "raise", log=print,
    fresh_head: bool = False,
) -> tuple[dict[str, float], list[dict]]:  # fmt: skip
    """``rlhf rm-eval``: a saved reward model scored on a preference dataset, with the metrics of a training
    run's evaluation (:func:`evaluate_pairs`), plus ``pairs`` (scored) and ``skipped`` (a response
    longer than ``max_length``). Bad rows stop it, or with ``on_error="skip"`` are skipped and counted in
    the log line. Returns them and the calibration bins."""
    tokenizer = load_tokenizer(model_path, gguf_file)
    model = load_reward_model(
        model_path, gguf_file, pad_token_id=tokenizer.pad_token_id, fresh_head=fresh_head
    )
    records, report = rdata.load_preferences(data, split=split, on_error=on_error)
    log(f"{data}: {report.summary()}")
    tokenized = [encode_pair(r, tokenizer, max_length) for r in records]
    pairs = [p for p in tokenized if p is not None]
    if len(pairs) < len(tokenized):
        log(
            f"skipped {len(tokenized) - len(pairs)} pairs with a response longer than max_length={max_length}"
        )
    if not pairs:
        raise rdata.DataError(data, f"no pair fits max_length={max_length}", reason="too long")
    where = resolve_device(device)
    values, table = evaluate_pairs(model.to(where), pairs, tokenizer.pad_token_id, batch_size, where, False)
    return {**values, "pairs": len(pairs), "skipped": len(tokenized) - len(pairs)}, table


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------


def train_ensemble(cfg: RMConfig, stop_after: int | None, log) -> Path:
    """``members`` reward models, then ``final/ensemble.json`` naming them (see :func:`train_rm`)."""
    out = Path(cfg.run.output_dir)
    members = []
    for k in range(cfg.members):
        run = cfg.run.model_copy(update={"seed": cfg.run.seed + k, "output_dir": str(out / f"member-{k}")})
        member = cfg.model_copy(update={"members": 1, "run": run})
        if not (Path(run.output_dir) / "final").is_dir():
            log(f"== reward model {k + 1} of {cfg.members} (seed {run.seed}) ==")
            final = train_rm(member, stop_after, log)
            if final.name != "final":  # interrupted: a rerun resumes this member
                return out
        members.append(f"../member-{k}/final")
    with atomic_dir(out / "final") as tmp:
        (tmp / ENSEMBLE_FILE).write_text(json.dumps({"members": members}, indent=2))
    return out / "final"


def train_rm(cfg: RMConfig, stop_after: int | None = None, log=print) -> Path:
    """Train the reward model; return the final folder. ``stop_after``: as in ``rlhf.stages.sft.train_sft``.

    With ``members: K > 1``, K reward models are trained one after another, member k under
    ``run.output_dir/member-k/`` with seed ``run.seed + k`` (on a bootstrap resample of the pairs with
    ``bootstrap: true``); ``run.output_dir/final/`` then holds only ``ensemble.json``, the list of the
    members' folders, which PPO, ``rlhf eval`` and best-of-n read as one ensemble
    (``rlhf.modeling.reward_model_members``)."""
    if cfg.members > 1:
        return train_ensemble(cfg, stop_after, log)
    # 1. Run folder, config.yaml, seeds, device.
    run = StageRun(cfg, "rm", log, stop_after)
    device, log = run.device, run.log

    # 2. Model (a one-label sequence classifier) and tokenizer; with LoRA the score head trains in full.
    tokenizer = load_tokenizer(cfg.model, cfg.gguf_file)
    # Training starts from any model: a causal LM (the SFT model) gets the new score head it needs.
    model = load_reward_model(cfg.model, cfg.gguf_file, pad_token_id=tokenizer.pad_token_id, fresh_head=True)
    model = prepare_for_training(model, cfg.lora, cfg.run.gradient_checkpointing, "SEQ_CLS", ["score"])
    model.to(device).train()
    trainable, total = count_parameters(model)
    log(f"reward model from {cfg.model}: {total:,} parameters, {trainable:,} trained")

    # 3. Data.
    train, evals = load_pairs(cfg, tokenizer, log)
    per_step, total_steps = cfg.rows_per_step, cfg.total_steps(len(train))
    log(f"{len(train)} training pairs, {len(evals)} eval pairs; {total_steps} steps of {per_step} pairs")

    # 4. Optimiser, schedule, data order, and the state of an interrupted run.
    optimizer, scheduler, stream, step = run.start(model, cfg, len(train), [pair_length(p) for p in train])
    pad_id = tokenizer.pad_token_id
    packed = cfg.padding_free and supports_packing(model)
    if cfg.padding_free and not packed:
        log("padding_free: this model does not take packed batches; training on padded ones")

    # 5. The loop: one optimiser step per iteration.
    window = {"loss": 0.0, "pairs": 0, "correct": 0.0, "decisive": 0, "t0": time.perf_counter()}
    while step < total_steps:
        # 5a. This step's pairs in micro-batches; the loss is averaged over all pairs of the step.
        rows = [train[i] for i in stream.take(per_step)]
        if cfg.group_by_length:  # micro-batches of similar length: the same step, less padding
            rows.sort(key=pair_length)
        micro = [
            collate_pairs(rows[i : i + cfg.batch_size], pad_id, packed)
            for i in range(0, per_step, cfg.batch_size)
        ]

        def loss_fn(batch: dict[str, torch.Tensor], normalizer) -> tuple[torch.Tensor, dict[str, float]]:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, cfg.run.bf16):
                r_chosen, r_rejected = pair_rewards(model, batch)
            loss, stats = bradley_terry_loss(
                r_chosen, r_rejected, batch["margin"], batch["tie"], cfg.center_coef, normalizer=normalizer
            )
            return loss, {"loss": loss.item() * per_step, "pairs": len(r_chosen),
                          "correct": stats["accuracy"] * stats["pairs"], "decisive": stats["pairs"]}  # fmt: skip

        for k, v in backward(micro, loss_fn, per_step).items():
            window[k] += v
        # 5b. Clip, step, schedule (a non-finite loss or gradient norm stops the run first).
        grad_norm = run.optimizer_step(
            model, optimizer, cfg.optim.max_grad_norm, scheduler, loss=window["loss"]
        )
        step = run.advance()

        # 6. Log, evaluate, checkpoint.
        if run.due(step, cfg.run.log_every):
            loss_value = window["loss"] / max(1, window["pairs"])
            run.metrics.log(
                step, "train", loss=loss_value, accuracy=window["correct"] / max(1, window["decisive"]),
                lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                pairs_per_s=window["pairs"] / (time.perf_counter() - window["t0"]), epoch=stream.epoch,
            )  # fmt: skip
            run.bar.set_postfix(loss=f"{loss_value:.3f}")
            window = {"loss": 0.0, "pairs": 0, "correct": 0.0, "decisive": 0, "t0": time.perf_counter()}
        if evals and run.due(step, cfg.run.eval_every):
            values, table = evaluate_pairs(model, evals, pad_id, cfg.batch_size, device, cfg.run.bf16)
            run.metrics.log(step, "eval", **values)
            log(f"step {step}: eval {describe_eval(values)}")
            (run.dir / "calibration.json").write_text(json.dumps({"step": step, "bins": table}, indent=2))
        run.checkpoint(step, model, tokenizer, optimizer, scheduler, stream)
        if run.interrupted(step):
            return run.dir

    # 7. The final model, with the reward statistics PPO normalises with.
    stats = reward_stats(model, train, pad_id, cfg.batch_size, device, cfg.run.bf16, cfg.stats_responses)
    run.check_finite(step, reward_mean=stats["mean"], reward_std=stats["std"])
    log(f"reward on training responses: mean {stats['mean']:+.3f}, std {stats['std']:.3f}")
    return run.finish(model, tokenizer, cfg.lora, {"reward_stats.json": json.dumps(stats, indent=2)})
