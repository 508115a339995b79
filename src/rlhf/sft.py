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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from rlhf import data as rdata
from rlhf.errors import UsageError
from rlhf.losses import sft_loss
from rlhf.modeling import count_parameters, lab_seed, load_causal_lm, load_tokenizer, prepare_for_training
from rlhf.training import (
    RunSettings,
    StageRun,
    TrainConfig,
    autocast,
    load_splits,
)


class SFTConfig(TrainConfig):
    """``rlhf sft`` settings (with the shared fields of ``rlhf.training.TrainConfig``). Defaults: the lab
    base model on 2,000 lab demonstrations."""

    data: str = Field(
        "lab", description="lab (lab demonstrations), or a dataset: file, saved folder, hub name"
    )
    lab_examples: int = Field(2000, ge=1, description="demonstrations generated when data is lab")
    truncation: Literal["left", "drop"] = Field(
        "left", description="too long: cut the prompt's start, or skip"
    )
    completion_only_loss: bool = Field(True, description="loss on completion/assistant tokens only")
    packing: bool = Field(False, description="pack several examples into each max_length row")
    max_steps: int | None = Field(300, ge=1, description="optimiser steps (null: use epochs)")
    lab_eval_prompts: int = Field(120, ge=0, description="gold-judge evaluation prompts on the lab (0: off)")
    run: RunSettings = Field(default_factory=lambda: RunSettings(output_dir="runs/sft"))

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.gguf_file and lab_seed(self.model) is not None:
            raise ValueError("gguf_file needs `model` to be the folder that holds it")
        return self


# ---------------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------------


@dataclass
class Example:
    """One tokenised example. ``loss_mask[t]`` is True where token t is to be learned."""

    input_ids: list[int]
    loss_mask: list[bool]


def _chat_ids(
    tokenizer, messages: Sequence[dict], generation_prompt: bool, kwargs=None, continue_final: bool = False
) -> list[int]:
    return tokenizer(
        chat_text(tokenizer, messages, generation_prompt, kwargs, continue_final), add_special_tokens=False
    )["input_ids"]


def chat_text(
    tokenizer,
    messages: Sequence[dict],
    generation_prompt: bool = False,
    kwargs=None,
    continue_final: bool = False,
) -> str:
    """``messages`` rendered with the chat template and a row's ``chat_template_kwargs``; with
    ``continue_final`` the last (assistant) message is left open for its continuation."""
    extra = {"continue_final_message": True} if continue_final else {}
    return tokenizer.apply_chat_template(
        [dict(m) for m in messages],
        tokenize=False,
        add_generation_prompt=generation_prompt,
        **extra,
        **(kwargs or {}),
    )


def prompt_text(tokenizer, prompt: Sequence[dict], kwargs=None) -> str:
    """A conversational prompt as the model sees it before its response: with the generation prompt
    after a user message, or left open after an assistant message (a prefill), as TRL renders prompts."""
    prefill = prompt[-1]["role"] == "assistant"
    return chat_text(tokenizer, prompt, not prefill, kwargs, continue_final=prefill)


def continued(prompt: Sequence[dict], completion: Sequence[dict]) -> list[dict]:
    """The whole conversation of a prompt and its completion: after a prefill (a prompt ending with an
    assistant message) the completion's first message continues that message's content."""
    if prompt[-1]["role"] != "assistant":
        return [*prompt, *completion]
    merged = {**prompt[-1], "content": prompt[-1]["content"] + completion[0]["content"]}
    return [*prompt[:-1], merged, *completion[1:]]


def _check_reasoning(tokenizer, messages: Sequence[dict], text: str, kwargs, source: str) -> None:
    """Reasoning fields reach the model only if the chat template renders them: refuse a template that
    ignores them rather than train without them unseen."""
    keys = sorted({key for m in messages for key in rdata.REASONING_KEYS if key in m})
    if not keys:
        return
    bare = [{k: v for k, v in m.items() if k not in rdata.REASONING_KEYS} for m in messages]
    if chat_text(tokenizer, bare, False, kwargs) == text:
        problem = (
            f"the tokenizer's chat template does not render the assistant's '{keys[0]}' field, so the "
            "reasoning would be lost; use a model whose template renders it, or remove the field"
        )
        raise rdata.DataError(source or "row", problem, field=keys[0], reason="reasoning not rendered")


def _conversation(
    tokenizer, messages: Sequence[dict], learn_from: int, completion_only: bool, kwargs=None,
    prefill: dict | None = None, source: str = "",
) -> Example:  # fmt: skip
    """Tokens of a conversation; the assistant turns at index >= ``learn_from`` are learned. With
    ``prefill`` (the prompt's last message), message ``learn_from`` continues it: only what follows
    the prefill is learned.

    Each assistant turn's span is found by rendering the conversation up to it (with the generation
    prompt, or the open prefill) and up to its end: the template must render a prefix as a prefix,
    which we check.
    """
    text = chat_text(tokenizer, messages, False, kwargs)
    _check_reasoning(tokenizer, messages, text, kwargs, source)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not completion_only:
        return Example(ids, [True] * len(ids))
    mask = [False] * len(ids)
    for i in range(learn_from, len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        if prefill is not None and i == learn_from:
            start = _chat_ids(tokenizer, [*messages[:i], prefill], False, kwargs, continue_final=True)
        else:
            start = _chat_ids(tokenizer, messages[:i], True, kwargs)
        last = i == len(messages) - 1  # then the turn ends where the conversation does
        end = ids if last else _chat_ids(tokenizer, messages[: i + 1], False, kwargs)
        if ids[: len(start)] != start or ids[: len(end)] != end:
            raise UsageError("the chat template does not render a conversation's beginning as a prefix of it")
        mask[len(start) : len(end)] = [True] * (len(end) - len(start))
    return Example(ids, mask)


def tokenize(record, tokenizer, completion_only: bool = True) -> Example:
    """Tokenise a record of ``rlhf.data`` (prompt-completion, language modelling, or preference: chosen).

    Conversations are rendered with the row's ``chat_template_kwargs``; a prompt that ends with an
    assistant message is a prefill, which the completion continues (:func:`continued`)."""
    if isinstance(record, rdata.Preference):
        record = rdata.PromptCompletion(record.prompt, record.chosen, meta=record.meta, source=record.source)
    kwargs = record.meta.get("chat_template_kwargs")
    if isinstance(record, rdata.LMExample):
        if record.messages is not None:
            return _conversation(tokenizer, record.messages, 0, completion_only, kwargs, source=record.source)
        ids = tokenizer(record.text)["input_ids"] + [tokenizer.eos_token_id]
        return Example(ids, [True] * len(ids))
    if isinstance(record.prompt, str):  # standard: prompt text + completion text + EOS
        prompt = tokenizer(record.prompt)["input_ids"]
        completion = tokenizer(record.completion, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        return Example(prompt + completion, [not completion_only] * len(prompt) + [True] * len(completion))
    prefill = record.prompt[-1] if record.prompt[-1]["role"] == "assistant" else None
    messages = continued(record.prompt, record.completion)
    learn_from = len(record.prompt) - (prefill is not None)
    return _conversation(tokenizer, messages, learn_from, completion_only, kwargs, prefill, record.source)


def fit_length(ex: Example, max_length: int, truncation: str) -> Example | None:
    """Apply the truncation policy (module docstring); None means skip the example."""
    if len(ex.input_ids) <= max_length:
        return ex
    first = ex.loss_mask.index(True) if any(ex.loss_mask) else len(ex.input_ids)
    cut = len(ex.input_ids) - max_length
    if truncation == "drop" or cut > first:
        return None
    return Example(ex.input_ids[cut:], ex.loss_mask[cut:])


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Greedy packing of whole examples, in order, into rows of at most ``max_length`` tokens.
    (Tokens of a row attend to the earlier examples of that row, as in classic packing.)"""
    rows: list[Example] = []
    for ex in examples:
        if rows and len(rows[-1].input_ids) + len(ex.input_ids) <= max_length:
            rows[-1] = Example(rows[-1].input_ids + ex.input_ids, rows[-1].loss_mask + ex.loss_mask)
        else:
            rows.append(Example(list(ex.input_ids), list(ex.loss_mask)))
    return rows


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, loss_mask, each (B, T)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.bool)
    loss = torch.zeros((len(examples), width), dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        attn[i, :n] = True
        loss[i, :n] = torch.tensor(e.loss_mask)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def prepare(records, tokenizer, cfg: SFTConfig, what: str, log) -> list[Example]:
    """Tokenise, truncate (and pack) records; report what was truncated or skipped."""
    out, counts = [], Counter()
    for record in records:
        ex = tokenize(record, tokenizer, cfg.completion_only_loss)
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
    if cfg.data == "lab":
        from rlhf.lab.datasets import demonstration_rows

        train, report = rdata.load_sft(demonstration_rows(cfg.lab_examples, cfg.run.seed), limit=cfg.limit)
        n_eval = max(16, int(cfg.lab_examples * cfg.eval_fraction)) if cfg.eval_fraction else 0
        evals = rdata.load_sft(demonstration_rows(n_eval, cfg.run.seed + 7_777))[0] if n_eval else []
        log(f"lab demonstrations: {report.summary()}")
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


def lab_gold(model, tokenizer, n: int) -> dict[str, float]:
    """Gold-judge utility of the model's samples on held-out lab prompts."""
    from rlhf.lab.evaluate import gold_eval

    report = gold_eval(model, tokenizer, n=n)
    return {"gold_utility": report.mean, "response_words": report.mean_words()}


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
        train = pack(train, cfg.max_length)
    per_step, total_steps = cfg.rows_per_step, cfg.total_steps(len(train))
    log(f"{len(train)} training rows, {len(evals)} eval rows; {total_steps} steps of {per_step} rows")

    # 4. Optimiser, schedule, data order, and the state of an interrupted run.
    lengths = [len(e.input_ids) for e in train]
    optimizer, scheduler, stream, step = run.start(model, cfg, len(train), lengths)
    lab_eval = lab_seed(cfg.model) is not None and cfg.lab_eval_prompts > 0
    if step == 0 and lab_eval:
        run.metrics.log(0, "eval", **lab_gold(model, tokenizer, cfg.lab_eval_prompts))

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
        normalizer = sum(int(b["loss_mask"][:, 1:].sum()) for b in micro)
        # 5b. Forward and backward each micro-batch.
        for batch in micro:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, cfg.run.bf16):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, stats = sft_loss(logits, batch["input_ids"], batch["loss_mask"], normalizer)
            loss.backward()
            window["nll"] += stats["nll_sum"].item()
            window["tokens"] += int(stats["tokens"])
            window["seen"] += int(batch["attention_mask"].sum())
        # 5c. Clip, step, schedule (a non-finite loss or gradient norm stops the run first).
        run.check_finite(step + 1, loss=window["nll"])
        grad_norm = run.optimizer_step(model, optimizer, scheduler, cfg.optim.max_grad_norm)
        step += 1

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

    # 7. On the lab, the gold judge's verdict; then the final model.
    extra = {}
    if lab_eval:
        gold = lab_gold(model, tokenizer, cfg.lab_eval_prompts)
        run.metrics.log(step, "eval", **gold)
        extra["gold.json"] = json.dumps(gold, indent=2)
        log(f"gold utility on {cfg.lab_eval_prompts} held-out lab prompts: {gold['gold_utility']:+.3f}")
    return run.finish(model, tokenizer, cfg.lora, extra)
