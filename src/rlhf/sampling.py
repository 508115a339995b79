"""The one sampler: every response the project samples (collection, evaluation, PPO's rollouts,
best-of-n, the lab's gold evaluation) comes from :func:`sample_tokens`, with one settings object.

Prompts are token ids (``rlhf.encoding.encode_prompts``: the chat template with the generation prompt,
or plain text), **left-padded** (generation appends on the right, so every row's last prompt token must
sit at the same position). Sampling is softmax(logits / temperature) with nucleus ``top_p`` and no other
logits processing: every setting that changes the distribution is given, so none comes from the model's
own ``generation_config`` (a repetition penalty there would make the samples disagree with the log-probs
PPO recomputes). ``temperature: 0`` decodes greedily. Each response is cut after its first EOS (kept: it
is the action that ends the episode) or the token that completes a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from transformers import GenerationConfig

from rlhf.config import StageConfig
from rlhf.data import PromptOnly
from rlhf.encoding import encode_prompts, left_pad
from rlhf.modeling import autocast


class SamplingSettings(StageConfig):
    """How responses are sampled; the stages that sample (collection, PPO) take these fields as their own."""

    max_new_tokens: int = Field(48, ge=1, description="longest response")
    temperature: float = Field(1.0, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    stop_strings: list[str] = Field(default_factory=list, description="a response ends after any of these")

    @property
    def sampling(self) -> SamplingSettings:
        """Just the sampling fields (of a stage config that has them among its own)."""
        return SamplingSettings(**{k: getattr(self, k) for k in SamplingSettings.model_fields})


@torch.no_grad()
def sample_tokens(model, tokenizer, prompt_ids, prompt_mask, s: SamplingSettings) -> torch.Tensor:
    """Sample responses (B, R) to left-padded prompts (B, P) with the KV cache (module docstring)."""
    common = dict(
        max_new_tokens=s.max_new_tokens, min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        stop_strings=s.stop_strings or None, remove_invalid_values=True,  # nan logits: caught by the NaN guard
    )  # fmt: skip
    if s.temperature > 0:
        gen = GenerationConfig(
            do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0, typical_p=1.0, min_p=0.0,
            epsilon_cutoff=0.0, eta_cutoff=0.0, **common,
        )  # fmt: skip
    else:
        gen = GenerationConfig(do_sample=False, **common)
    extra = {"tokenizer": tokenizer} if s.stop_strings else {}
    out = model.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask.long(), generation_config=gen, **extra
    )
    return out[:, prompt_ids.shape[1] :]


def truncate_responses(
    response_ids: torch.Tensor,
    eos_id: int,
    pad_id: int,
    tokenizer=None,
    stop_strings: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first EOS (kept: it is the action that ends the episode) or, failing
    that, after the first token that completes a stop string. Returns ``(ids, mask, stopped)``: ids with
    PAD after the end, mask (B, R) True on the kept tokens, stopped (B,) True where an end was found.

    Works whether or not PAD equals EOS, since only the first EOS of a row counts."""
    B, R = response_ids.shape
    is_eos = response_ids == eos_id
    stopped = is_eos.any(1)
    length = torch.where(stopped, is_eos.long().argmax(1) + 1, torch.full_like(stopped, R, dtype=torch.long))
    if stop_strings and tokenizer is not None:
        for b in range(B):
            n = int(length[b])
            text = tokenizer.decode(response_ids[b, :n])
            if not any(s in text for s in stop_strings):
                continue
            for k in range(1, n + 1):  # the shortest prefix that contains a stop string
                if any(s in tokenizer.decode(response_ids[b, :k]) for s in stop_strings):
                    length[b], stopped[b] = k, True
                    break
    mask = torch.arange(R, device=response_ids.device).unsqueeze(0) < length.unsqueeze(1)
    return torch.where(mask, response_ids, torch.full_like(response_ids, pad_id)), mask, stopped


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """The text of each response (its kept tokens, special tokens dropped, stripped)."""
    kept = torch.where(response_mask, response_ids, tokenizer.pad_token_id)
    return [t.strip() for t in tokenizer.batch_decode(kept, skip_special_tokens=True)]


@torch.no_grad()
def sample_responses(
    model, tokenizer, prompt_tokens: list[list[int]], s: SamplingSettings, batch_size: int, seed: int,
    device=None, bf16: bool | str = False,
) -> tuple[list[str], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]]:  # fmt: skip
    """One sampled response per tokenised prompt, ``batch_size`` prompts at a time, under its own seed
    (the global RNG is restored afterwards; the model's train/eval mode too). Returns the decoded
    responses and, per batch, the ``(prompt_ids, prompt_mask, response_ids, response_mask)`` tensors."""
    device = torch.device(device) if device is not None else model.device
    state, was_training = torch.get_rng_state(), model.training
    torch.manual_seed(seed)
    model.eval()
    texts, batches = [], []
    try:
        for i in range(0, len(prompt_tokens), batch_size):
            ids, mask = left_pad(prompt_tokens[i : i + batch_size], tokenizer.pad_token_id, device)
            with autocast(device, bf16):
                raw = sample_tokens(model, tokenizer, ids, mask, s)
            resp, rmask, _ = truncate_responses(
                raw, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer, s.stop_strings
            )
            batches.append((ids, mask, resp, rmask))
            texts += decode_responses(tokenizer, resp, rmask)
    finally:
        torch.set_rng_state(state)
        model.train(was_training)
    return texts, batches


def sample_replies(
    model, tokenizer, prompts: Sequence[Any], s: SamplingSettings | None = None, batch_size: int = 64,
    seed: int = 0,
) -> tuple[list[str], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]]:  # fmt: skip
    """One sampled response per prompt (a string, or a conversation of ``{"role", "content"}`` dicts):
    :func:`sample_responses` of the prompts' tokens (``rlhf.encoding.encode_prompts``)."""
    tokens, _ = encode_prompts([PromptOnly(p) for p in prompts], tokenizer, max_length=10**9)
    return sample_responses(model, tokenizer, tokens, s or SamplingSettings(), batch_size, seed)


def generate(
    model, tokenizer, prompts: Sequence[Any], s: SamplingSettings | None = None, batch_size: int = 64,
    seed: int = 0,
) -> list[str]:  # fmt: skip
    """The responses of :func:`sample_replies`, without the tensors."""
    return sample_replies(model, tokenizer, prompts, s, batch_size, seed)[0]
