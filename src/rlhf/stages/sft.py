"""Stage 1: supervised fine-tuning.

    rlhf sft configs/sft_lab.yaml                      # the lab base model on lab demonstrations
    rlhf sft examples/sft_smollm2_hh.yaml max_steps=5  # SmolLM2-135M + LoRA on HH-RLHF chosen responses

Data: prompt-completion rows (standard strings or conversational messages), language-modelling rows
(``text``, or ``messages`` with the loss on every assistant turn), preference rows (the prompt and
the chosen response), and the label-true rows of unpaired preference or stepwise data (see
``rlhf.data.load_sft``). Conversations are rendered with the tokenizer's chat template and each row's
``chat_template_kwargs``; a prompt ending with an assistant message (a prefill) is continued by the
completion; reasoning fields (``thinking``, ``reasoning_content``) go to the template, which must render
them. The loss is on the completion / assistant tokens only unless ``completion_only_loss: false``.

Loss normalisation: the summed NLL of a micro-batch is divided by the number of loss tokens in the
whole optimisation step (all its micro-batches), so gradient accumulation gives the same update as one
large batch (see ``rlhf.losses.sft_loss``).

Truncation (``max_length``): with ``truncation: left`` a sequence too long loses tokens from the start
of its prompt, so the response is kept whole; an example whose response alone does not fit is skipped.
With ``truncation: drop`` every example too long is skipped. Skips are counted and reported.

Padding: training batches are right-padded; ``attention_mask`` and ``loss_mask`` (True = real token /
token to learn) mark what counts, so the PAD id never matters.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from rlhf import data as rdata
from rlhf.encoding import Example, collate, encode_example, fit_length, pack_examples
from rlhf.errors import UsageError
from rlhf.losses import sft_loss
from rlhf.modeling import (
    autocast,
    count_parameters,
    is_made_model,
    load_causal_lm,
    load_tokenizer,
    prepare_for_training,
)
from rlhf.training import RunSettings, StageRun, TrainConfig, backward, load_splits


class SFTConfig(TrainConfig):
    """``rlhf sft`` settings (with the shared fields of ``rlhf.training.TrainConfig``). Defaults: the lab
    base model on 2,000 lab demonstrations."""

    data: str = Field(
        "lab",
        description="a data source (lab: the lab's demonstrations; rlhf.data.SOURCES), or a dataset: file, "
        "saved folder, hub name",
    )
    lab_examples: int = Field(2000, ge=1, description="demonstrations a data source generates (data: lab)")
    truncation: Literal["left", "drop"] = Field(
        "left", description="too long: cut the prompt's start, or skip"
    )
    completion_only_loss: bool = Field(True, description="loss on completion/assistant tokens only")
    packing: bool = Field(False, description="pack several examples into each max_length row")
    max_steps: int | None = Field(300, ge=1, description="optimiser steps (null: use epochs)")
    lab_eval_prompts: int = Field(
        120, ge=0, description="held-out prompts the data source's judge scores the model on (0: off)"
    )
    run: RunSettings = Field(default_factory=lambda: RunSettings(output_dir="runs/sft"))

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.gguf_file and is_made_model(self.model):
            raise ValueError("gguf_file needs `model` to be the folder that holds it")
        return self


def prepare(records, tokenizer, cfg: SFTConfig, what: str, log) -> list[Example]:
    """Tokenise, truncate (and pack) records; report what was truncated or skipped."""
    out, counts = [], Counter()
    for record in records:
        ex = encode_example(record, tokenizer, cfg.completion_only_loss)
        if not any(ex.loss_mask[1:]):
            counts["no token to learn"] += 1
            continue
        fitted = fit_length(ex, cfg.max_length, cfg.truncation)
        if fitted is None:
            counts[f"longer than max_length={cfg.max_length}"] += 1
            continue
        if fitted is not ex:
            counts["prompt start cut"] += 1
        out.append(fitted)
    if counts:
        log(f"{what}: " + ", ".join(f"{reason}: {n}" for reason, n in counts.items()))
    if not out:
        raise UsageError(f"{what}: no example left after tokenisation ({dict(counts)})")
    return out


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


def load_records(cfg: SFTConfig, log) -> tuple[list, list]:
    """Training and evaluation records (``rlhf.data`` records)."""
    source = rdata.named_source(cfg.data)
    if source is not None:
        train, report = rdata.load_sft(source.demonstrations(cfg.lab_examples, cfg.run.seed), limit=cfg.limit)
        n_eval = max(16, int(cfg.lab_examples * cfg.eval_fraction)) if cfg.eval_fraction else 0
        evals = rdata.load_sft(source.demonstrations(n_eval, cfg.run.seed + 7_777))[0] if n_eval else []
        log(f"{cfg.data} demonstrations: {report.summary()}")
        return train, evals
    return load_splits(cfg, rdata.load_sft, log)


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def eval_loss(model, examples: list[Example], pad_id: int, batch_size: int, device, bf16) -> float:
    """Mean NLL per loss token over ``examples``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        with autocast(device, bf16):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        _, stats = sft_loss(logits, batch["input_ids"], batch["loss_mask"], 1.0)
        total += stats["nll_sum"].item()
        count += stats["tokens"].item()
    model.train()
    return total / max(1, count)


def train_sft(cfg: SFTConfig, stop_after: int | None = None, log=print) -> Path:
    """Run SFT; return the folder of the final model. ``stop_after`` ends the run after that many
    optimiser steps as if interrupted (its checkpoint stays for the next run to resume from)."""
    # 1. Run folder, config.yaml, seeds, device.
    run = StageRun(cfg, "sft", log, stop_after)
    device, log = run.device, run.log

    # 2. Model and tokenizer (+ LoRA, gradient checkpointing).
    tokenizer = load_tokenizer(cfg.model, cfg.gguf_file)
    model = load_causal_lm(cfg.model, cfg.gguf_file)
    model = prepare_for_training(model, cfg.lora, cfg.run.gradient_checkpointing).to(device).train()
    trainable, total = count_parameters(model)
    log(f"model {cfg.model}: {total:,} parameters, {trainable:,} trained")

    # 3. Data.
    train_records, eval_records = load_records(cfg, log)
    train = prepare(train_records, tokenizer, cfg, "train", log)
    evals = prepare(eval_records, tokenizer, cfg, "eval", log) if eval_records else []
    if cfg.packing:
        random.Random(cfg.run.seed).shuffle(train)
        train = pack_examples(train, cfg.max_length)
    per_step, total_steps = cfg.rows_per_step, cfg.total_steps(len(train))
    log(f"{len(train)} training rows, {len(evals)} eval rows; {total_steps} steps of {per_step} rows")

    # 4. Optimiser, schedule, data order, and the state of an interrupted run.
    lengths = [len(e.input_ids) for e in train]
    optimizer, scheduler, stream, step = run.start(model, cfg, len(train), lengths)
    # A data source with a judge (the lab's gold judge) scores the model's samples, before and after.
    source = rdata.named_source(cfg.data)
    judge = source.judge_model if source is not None and cfg.lab_eval_prompts > 0 else None
    if step == 0 and judge is not None:
        run.metrics.log(0, "eval", **judge(model, tokenizer, cfg.lab_eval_prompts))

    # 5. The loop: one optimiser step per iteration.
    window = {"nll": 0.0, "tokens": 0, "seen": 0, "t0": time.perf_counter()}
    while step < total_steps:
        # 5a. This step's rows, split into micro-batches; the loss tokens of all of them normalise.
        rows = [train[i] for i in stream.take(per_step)]
        if cfg.group_by_length:  # micro-batches of similar length: the same step, less padding
            rows.sort(key=lambda e: len(e.input_ids))
        micro = [
            collate(rows[i : i + cfg.batch_size], tokenizer.pad_token_id)
            for i in range(0, per_step, cfg.batch_size)
        ]

        # 5b. Forward and backward each micro-batch.
        def loss_fn(batch: dict[str, torch.Tensor], normalizer) -> tuple[torch.Tensor, dict[str, float]]:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, cfg.run.bf16):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, stats = sft_loss(logits, batch["input_ids"], batch["loss_mask"], normalizer)
            return loss, {
                "nll": stats["nll_sum"],
                "tokens": stats["tokens"],
                "seen": batch["attention_mask"].sum(),
            }

        loss_tokens = sum(int(b["loss_mask"][:, 1:].sum()) for b in micro)  # this step's, every micro-batch's
        for k, v in backward(micro, loss_fn, loss_tokens).items():
            window[k] += v
        # 5c. Clip, step, schedule (a non-finite loss or gradient norm stops the run first).
        grad_norm = run.optimizer_step(
            model, optimizer, cfg.optim.max_grad_norm, scheduler, loss=window["nll"]
        )
        step = run.advance()

        # 6. Log, evaluate, checkpoint.
        if run.due(step, cfg.run.log_every):
            loss_value = window["nll"] / max(1, window["tokens"])
            run.metrics.log(
                step, "train", loss=loss_value, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                tokens_per_s=window["seen"] / (time.perf_counter() - window["t0"]), epoch=stream.epoch,
            )  # fmt: skip
            run.bar.set_postfix(loss=f"{loss_value:.3f}")
            window = {"nll": 0.0, "tokens": 0, "seen": 0, "t0": time.perf_counter()}
        if evals and run.due(step, cfg.run.eval_every):
            value = eval_loss(model, evals, tokenizer.pad_token_id, cfg.batch_size, device, cfg.run.bf16)
            run.metrics.log(step, "eval", loss=value)
        run.checkpoint(step, model, tokenizer, optimizer, scheduler, stream)
        if run.interrupted(step):
            return run.dir

    # 7. The judge's verdict (a data source with one); then the final model.
    extra = {}
    if judge is not None:
        gold = judge(model, tokenizer, cfg.lab_eval_prompts)
        run.metrics.log(step, "eval", **gold)
        extra["gold.json"] = json.dumps(gold, indent=2)
        log(
            f"gold utility on {cfg.lab_eval_prompts} held-out {cfg.data} prompts: {gold['gold_utility']:+.3f}"
        )
    return run.finish(model, tokenizer, cfg.lora, extra)
