"""rlhf.modeling: reward read at the last real token for any padding, packed scoring, loading reward models."""

from __future__ import annotations

import pytest
import torch

from rlhf.losses import (
    bradley_terry_loss,
)
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
    collate_pairs,
    pair_rewards,
)
from rlhf.stages.sft import Example


def test_last_token_index_for_every_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


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
