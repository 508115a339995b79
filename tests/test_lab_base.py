"""The lab tokenizer and base model."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.lab.base import BaseModelSpec, build_base_model, corpus
from rlhf.lab.evaluate import EVAL_SEED, gold_eval

# The bound on the default base model's held-out next-token loss (nats/token). The lab text has
# irreducible randomness (sampled numbers, styles and phrasings), so the loss cannot go to zero; an
# untrained model scores ln(vocab) ~ 6.9. Measured for the default spec: 0.445.
HELDOUT_LOSS_BOUND = 0.55


@pytest.fixture(scope="module")
def tok(lab_base_path):
    return AutoTokenizer.from_pretrained(lab_base_path)


def test_special_tokens(tok):
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token == "<|end|>" and tok.bos_token == "<|bos|>"


@pytest.mark.parametrize(
    "text",
    [
        "What is 7 + 5?",
        "Here are three fruits: apple, pear and plum.",
        "naïve café — 東京 🙂",
        "  two  spaces\nand\ttabs ",
    ],
)
def test_tokenizer_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_chat_template_splits_prompt_and_response(tok):
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|bos|><|user|>What is 2 + 3?<|end|><|assistant|>2 + 3 = 5.<|end|>"
    full = tok(text, add_special_tokens=False)["input_ids"]
    prompt_text = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    prompt = tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert full[: len(prompt)] == prompt  # the prompt is a prefix of the conversation, token for token
    assert prompt[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert tok.decode(full[len(prompt) :]) == "2 + 3 = 5.<|end|>"
    assert full[-1] == tok.eos_token_id


def test_chat_template_rejects_unknown_role(tok):
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "robot", "content": "hi"}], tokenize=False)


@pytest.mark.figure
def test_base_model_figures(lab_base_path, figure):
    info = json.loads((lab_base_path / "lab_base.json").read_text())
    assert 0.5e6 < info["n_params"] < 5e6
    figure("heldout_loss", info["heldout_loss"], below=HELDOUT_LOSS_BOUND)


@pytest.mark.figure
def test_base_model_samples_look_like_lab_text(lab_base_path, tok, test_seed, figure):
    model = AutoModelForCausalLM.from_pretrained(lab_base_path)
    report = gold_eval(model, tok, n=200, max_new_tokens=48, seed=EVAL_SEED + test_seed)
    lab_words = {w for doc in corpus(3000, seed=123) for w in re.findall(r"[a-z]+", doc.lower())}
    sample_words = [w for r in report.responses for w in re.findall(r"[a-z]+", r.lower())]
    assert len(sample_words) > 100
    figure("lab_word_share", sum(w in lab_words for w in sample_words) / len(sample_words), above=0.95)
    # Most samples stop (emit EOS) well before the limit, like the lab's short responses: 0.72-0.83 of
    # 200 samples over 5 base-model seeds x 2 test seeds (the seed sweep), so the bound leaves 4 sd.
    short = sum(len(tok(r)["input_ids"]) < 40 for r in report.responses) / len(report.responses)
    figure("short_response_share", short, above=0.6)


def test_build_is_deterministic_and_cached(tmp_path):
    spec = BaseModelSpec(
        n_docs=400, steps=3, batch_size=4, hidden_size=32, intermediate_size=64, num_layers=1
    )
    first = build_base_model(spec, home=tmp_path / "a", log=None)
    second = build_base_model(spec, home=tmp_path / "b", log=None)
    m1 = AutoModelForCausalLM.from_pretrained(first)
    m2 = AutoModelForCausalLM.from_pretrained(second)
    for (name, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(p1, p2), name
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    assert build_base_model(spec, home=tmp_path / "a", log=None) == first  # found in the cache
    assert not list((tmp_path / "a" / "lab").glob(".tmp-*"))  # no temporary folder left behind
