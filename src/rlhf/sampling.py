"""Batched sampling from a causal LM on chat prompts (evaluation and demos).

Prompts are rendered with the tokenizer's chat template and **left-padded** (generation appends on the
right, so every row's last prompt token must sit at the same position).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
) -> list[str]:
    """Sample one response per conversation; ``temperature == 0`` decodes greedily."""
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    torch.manual_seed(seed)
    responses: list[str] = []
    try:
        for i in range(0, len(conversations), batch_size):
            texts = [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in conversations[i : i + batch_size]
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                **(sampling if temperature > 0 else {"do_sample": False}),
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            responses += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return [r.strip() for r in responses]
