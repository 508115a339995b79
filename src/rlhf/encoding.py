"""Tokenisation and collation: records of ``rlhf.data`` into token ids and masks, and batches of them.

- Examples (SFT; one side of a preference pair): :func:`encode_example` renders a record with the
  tokenizer's chat template and the row's ``chat_template_kwargs``; a prompt ending with an assistant
  message (a prefill) is continued by the completion; reasoning fields go to the template, which must
  render them. ``loss_mask`` marks the tokens to learn (the completion / assistant turns, unless
  ``completion_only`` is off). :func:`fit_length` applies a truncation policy, :func:`pack_examples`
  packs whole examples into rows, :func:`collate` right-pads a batch.
- Pairs (reward models): :func:`encode_pair` renders prompt + chosen and prompt + rejected like SFT
  examples; :func:`collate_pairs` lays the chosen then the rejected sequences in one batch (padded or
  packed).
- Prompts (sampling): :func:`encode_prompts` gives the ids a policy continues; :func:`left_pad` pads
  them on the left, so that every row's last prompt token sits at the same position.

One mask convention throughout: True marks a real token (``attention_mask``) or a token to learn
(``loss_mask``); the PAD id never matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf import data as rdata
from rlhf.errors import UsageError
from rlhf.modeling import pack_sequences


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


def encode_example(record, tokenizer, completion_only: bool = True) -> Example:
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


def pack_examples(examples: list[Example], max_length: int) -> list[Example]:
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


@dataclass
class Pair:
    """One tokenised preference pair (the loss masks mark each response's tokens)."""

    chosen: Example
    rejected: Example
    margin: float
    tie: bool
    group: str | None = None  # the row's ``family`` column, if any: accuracy is also reported per group
    # The labeller's probability that ``chosen`` wins, given a decisive label: p_chosen / (p_chosen +
    # p_rejected) from the row's columns (``rlhf collect`` writes them); None when the row lacks them.
    p_chosen: float | None = None
    # A reference judge's utility of chosen minus that of rejected (``gold_chosen - gold_rejected``,
    # which the lab's collection writes); None when the row lacks them.
    gold_gap: float | None = None


def encode_pair(record: rdata.Preference, tokenizer, max_length: int) -> Pair | None:
    """Render prompt + chosen and prompt + rejected like SFT examples; None if a response does not fit."""
    chosen, rejected = (
        fit_length(
            encode_example(
                rdata.PromptCompletion(record.prompt, response, record.meta, record.source), tokenizer
            ),
            max_length,
            "left",
        )
        for response in (record.chosen, record.rejected)
    )
    if chosen is None or rejected is None:
        return None
    meta = record.meta
    p_c, p_r = meta.get("p_chosen"), meta.get("p_rejected")
    known = isinstance(p_c, (int, float)) and isinstance(p_r, (int, float)) and p_c + p_r > 0
    g_c, g_r = meta.get("gold_chosen"), meta.get("gold_rejected")
    gold = isinstance(g_c, (int, float)) and isinstance(g_r, (int, float))
    return Pair(
        chosen,
        rejected,
        float(record.margin or 0.0),
        bool(meta.get("tie", False)),
        meta.get("family"),
        p_c / (p_c + p_r) if known else None,
        float(g_c - g_r) if gold else None,
    )


def pair_length(pair: Pair) -> int:
    """The longer of a pair's two sequences (what a padded micro-batch of pairs is as wide as)."""
    return max(len(pair.chosen.input_ids), len(pair.rejected.input_ids))


def collate_pairs(pairs: list[Pair], pad_id: int, packed: bool = False) -> dict[str, torch.Tensor]:
    """Chosen sequences then rejected ones: right-padded in one batch of 2B rows, or with ``packed``
    laid end to end without padding (``rlhf.modeling.pack_sequences``: same rewards, fewer positions)."""
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = pack_sequences([e.input_ids for e in sequences], pad_id) if packed else collate(sequences, pad_id)
    batch["margin"] = torch.tensor([p.margin for p in pairs])
    batch["tie"] = torch.tensor([p.tie for p in pairs])
    return batch


def encode_prompts(records, tokenizer, max_length: int) -> tuple[list[list[int]], list[Any]]:
    """Token ids of each prompt (chat template with the generation prompt and the row's
    ``chat_template_kwargs``, or plain text) and the prompts as plain data; prompts longer than
    ``max_length`` come back as None."""
    ids, plain = [], []
    for r in records:
        if isinstance(r.prompt, str):
            tokens = tokenizer(r.prompt)["input_ids"]
            plain.append(r.prompt)
        else:
            messages = [dict(m) for m in r.prompt]
            text = prompt_text(tokenizer, messages, r.meta.get("chat_template_kwargs"))
            tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
            plain.append(messages)
        ids.append(tokens if len(tokens) <= max_length else None)
    return ids, plain


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids left-padded with ``pad_id`` and the bool mask of real tokens."""
    P = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (P - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[False] * (P - len(s)) + [True] * len(s) for s in seqs], device=device)
    return ids, mask
