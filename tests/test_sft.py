"""Stage 1: supervised fine-tuning."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf import data as rdata
from rlhf.config import load_config
from rlhf.losses import sft_loss
from rlhf.stages.sft import Example, SFTConfig, collate, fit_length, train_sft
from rlhf.encoding import continued, encode_example as tokenize, pack_examples as pack, prompt_text
from rlhf.training import Stream, list_checkpoints, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def test_sft_loss_hand_worked():
    # Vocabulary of 3. Position t predicts token t + 1; the loss counts tokens 2 and 3 only.
    input_ids = torch.tensor([[0, 1, 2, 1]])
    loss_mask = torch.tensor([[False, False, True, True]])
    logits = torch.zeros(1, 4, 3)
    logits[0, 0] = torch.tensor([5.0, -5.0, 0.0])  # predicts token 1, which is not learned: ignored
    logits[0, 1] = torch.log(torch.tensor([1.0, 1.0, 2.0]))  # p(token 2) = 2/4
    logits[0, 2] = torch.log(torch.tensor([1.0, 3.0, 4.0]))  # p(token 1) = 3/8
    loss, stats = sft_loss(logits, input_ids, loss_mask, normalizer=2)
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(3 / 8)) / 2, rel=1e-6)
    assert stats["tokens"].item() == 2
    # The normalizer is the step's token count: with 4 tokens in the step this batch weighs half.
    assert sft_loss(logits, input_ids, loss_mask, normalizer=4)[0].item() == pytest.approx(loss.item() / 2)


def test_padding_does_not_change_the_loss():
    torch.manual_seed(0)
    logits, ids = torch.randn(1, 5, 7), torch.randint(0, 7, (1, 5))
    mask = torch.tensor([[False, False, True, True, True]])
    padded_logits = torch.cat([logits, torch.randn(1, 3, 7)], dim=1)
    padded_ids = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    assert sft_loss(padded_logits, padded_ids, padded_mask, 3)[0].item() == pytest.approx(
        sft_loss(logits, ids, mask, 3)[0].item()
    )


@pytest.fixture(scope="module")
def tok(lab_base_path):
    return AutoTokenizer.from_pretrained(lab_base_path)


def _learned(tok, ex: Example) -> str:
    return tok.decode([i for i, m in zip(ex.input_ids, ex.loss_mask) if m])


def test_tokenize_conversational_prompt_completion(tok):
    record = rdata.parse_row(
        {
            "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
            "completion": [{"role": "assistant", "content": "2 + 3 = 5."}],
        }
    )
    ex = tokenize(record, tok)
    assert _learned(tok, ex) == "2 + 3 = 5.<|end|>"
    assert tok.decode(ex.input_ids) == "<|bos|><|user|>What is 2 + 3?<|end|><|assistant|>2 + 3 = 5.<|end|>"
    assert all(tokenize(record, tok, completion_only=False).loss_mask)


def test_tokenize_multi_turn_learns_every_assistant_turn(tok):
    messages = [
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2."},
    ]
    ex = tokenize(rdata.parse_row({"messages": messages}), tok)
    assert _learned(tok, ex) == "Hello.<|end|>2.<|end|>"


def test_tokenize_standard_strings_and_preferences(tok):
    ex = tokenize(rdata.parse_row({"prompt": "Question: 1 + 1?\nAnswer:", "completion": " 2."}), tok)
    assert _learned(tok, ex) == " 2.<|end|>"
    pair = rdata.parse_row({"prompt": "Say yes.", "chosen": " Yes.", "rejected": " No."})
    assert _learned(tok, tokenize(pair, tok)) == " Yes.<|end|>"  # SFT on preference data uses the chosen


def test_a_prefill_is_continued_by_the_completion(tok):
    """A prompt ending with an assistant message: the prompt is rendered as TRL's apply_chat_template
    renders it (``continue_final_message``: the message left open) and the completion continues that
    message, so only what follows the prefill is learned."""
    lake = {"role": "user", "content": "Which lake is deepest?"}
    record = rdata.parse_row(
        {
            "prompt": [lake, {"role": "assistant", "content": "Lake"}],
            "completion": [{"role": "assistant", "content": " Baikal."}],
        }
    )
    assert prompt_text(tok, record.prompt) == "<|bos|><|user|>Which lake is deepest?<|end|><|assistant|>Lake"
    ex = tokenize(record, tok)
    assert (
        tok.decode(ex.input_ids)
        == "<|bos|><|user|>Which lake is deepest?<|end|><|assistant|>Lake Baikal.<|end|>"
    )
    assert _learned(tok, ex) == " Baikal.<|end|>"
    assert continued([lake], [{"role": "assistant", "content": "Hi."}]) == [
        lake,
        {"role": "assistant", "content": "Hi."},
    ]


# A template that renders `thinking` only when asked to, through a chat template argument.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{% if m.get('thinking') and think %}<think>{{ m['thinking'] }}"
    "</think>{% endif %}{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_template_kwargs_and_reasoning_reach_the_template(tok):
    thinker = copy.deepcopy(tok)
    thinker.chat_template = THINKING_TEMPLATE
    row = {
        "prompt": [{"role": "user", "content": "Which lake is deepest?"}],
        "completion": [{"role": "assistant", "thinking": "Baikal, 1642 m.", "content": "Baikal."}],
        "chat_template_kwargs": {"think": True},
    }
    ex = tokenize(rdata.parse_row(row), thinker)
    assert _learned(thinker, ex) == "<think>Baikal, 1642 m.</think>Baikal.<|end|>"
    # The same row without the argument: the template leaves the reasoning out, which is refused.
    with pytest.raises(
        rdata.DataError, match=r"^row: field 'thinking': the tokenizer's chat template does not render"
    ):
        tokenize(rdata.parse_row({**row, "chat_template_kwargs": {"think": False}}), thinker)
    with pytest.raises(rdata.DataError, match="does not render the assistant's 'thinking'"):
        tokenize(rdata.parse_row(row), tok)  # the lab template renders no reasoning
    plain = {"prompt": row["prompt"], "completion": [{"role": "assistant", "content": "Baikal."}]}
    assert _learned(thinker, tokenize(rdata.parse_row(plain), thinker)) == "Baikal.<|end|>"


def test_truncation_keeps_the_response():
    ex = Example(list(range(10)), [False] * 6 + [True] * 4)
    cut = fit_length(ex, 7, "left")
    assert cut.input_ids == [3, 4, 5, 6, 7, 8, 9] and cut.loss_mask == [False] * 3 + [True] * 4
    assert fit_length(ex, 7, "drop") is None
    assert fit_length(ex, 3, "left") is None  # the response alone does not fit: skipped
    assert fit_length(ex, 10, "drop") is ex


def test_pack_and_collate():
    rows = pack(
        [
            Example([1, 2], [False, True]),
            Example([3, 4, 5], [False, True, True]),
            Example([6] * 4, [True] * 4),
        ],
        5,
    )
    assert [r.input_ids for r in rows] == [[1, 2, 3, 4, 5], [6, 6, 6, 6]]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 6, 6, 6, 0]]
    assert batch["attention_mask"].tolist() == [[True] * 5, [True] * 4 + [False]]
    assert batch["loss_mask"].tolist() == [[False, True, False, True, True], [True] * 4 + [False]]


def _padding(stream: Stream, lengths: list[int], steps: int, rows: int, micro: int) -> int:
    """PAD positions of ``steps`` steps of ``rows`` rows cut into micro-batches (rows sorted first)."""
    waste = 0
    for _ in range(steps):
        step = sorted(lengths[i] for i in stream.take(rows))
        for m in range(0, rows, micro):
            part = step[m : m + micro]
            waste += len(part) * max(part) - sum(part)
    return waste


def test_length_grouped_order_sees_every_example_once_and_cuts_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 120, (1000,), generator=g).tolist()
    epoch = Stream(1000, 3, lengths=lengths, group=16).take(1000)
    assert sorted(epoch) == list(range(1000))  # one epoch: a permutation
    assert Stream(1000, 3, lengths=lengths, group=16).take(1000) == epoch  # seeded
    assert Stream(1000, 4, lengths=lengths, group=16).take(1000) != epoch
    plain = _padding(Stream(1000, 3), lengths, 60, 16, 4)
    grouped = _padding(Stream(1000, 3, lengths=lengths, group=16), lengths, 60, 16, 4)
    assert grouped < 0.1 * plain
    # A resumed stream continues exactly where the first one was, across an epoch boundary.
    first = Stream(1000, 3, lengths=lengths, group=16)
    first.take(1037)
    resumed = Stream(1000, 3, lengths=lengths, group=16)
    resumed.seek(**first.position())
    assert resumed.take(50) == first.take(50)
    with pytest.raises(ValueError, match="lengths"):
        Stream(10, 0, lengths=[1, 2], group=2)


# ---------------------------------------------------------------------------------------------------
# Runs on the lab base model
# ---------------------------------------------------------------------------------------------------


def _data_file(tmp_path: Path) -> str:
    """Twelve examples of very different response lengths."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
            "completion": [
                {"role": "assistant", "content": ("Let me think. " * (i % 4)) + f"{i} + 1 = {i + 1}."}
            ],
        }
        for i in range(12)
    ]
    path = tmp_path / "sft.jsonl"
    rdata.write_jsonl(rows, path)
    return str(path)


def _cfg(tmp_path: Path, name: str, data: str, **kw) -> SFTConfig:
    overrides = {
        "data": data, "eval_fraction": 0.0, "lab_eval_prompts": 0, "max_steps": 2,
        "run.output_dir": str(tmp_path / name), "run.save_every": 0, "run.progress": False,
        "optim.warmup_steps": 0, "optim.lr": 1e-3, **kw,
    }  # fmt: skip
    return load_config(SFTConfig, None, [f"{k}={v}" for k, v in overrides.items()])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_accumulation_matches_one_large_batch(tmp_path, lab_base_path):
    data = _data_file(tmp_path)
    big = train_sft(_cfg(tmp_path, "big", data, batch_size=8, grad_accum=1), log=lambda *_: None)
    small = train_sft(_cfg(tmp_path, "small", data, batch_size=1, grad_accum=8), log=lambda *_: None)
    base, small_w = _weights(lab_base_path), _weights(small)
    for name, w in _weights(big).items():
        step = w - base[name]
        assert step.abs().max() > 1e-4, name  # it trained
        # Adam divides by |gradient|: where a gradient is ~0, float rounding can flip a coordinate's
        # tiny update, so compare the whole update's size as well as each weight.
        assert (small_w[name] - w).norm() < 1e-3 * step.norm(), name
        torch.testing.assert_close(small_w[name], w, atol=5e-5, rtol=1e-5)  # lr = 1e-3


def test_resume_reaches_the_uninterrupted_result(tmp_path, lab_base_path):
    data = _data_file(tmp_path)
    whole = train_sft(_cfg(tmp_path, "whole", data, batch_size=3, max_steps=6), log=lambda *_: None)
    cfg = _cfg(tmp_path, "split", data, batch_size=3, max_steps=6)
    train_sft(cfg, stop_after=3, log=lambda *_: None)
    assert [p.name for p in list_checkpoints(Path(cfg.run.output_dir))] == ["step-0000003"]
    assert not (Path(cfg.run.output_dir) / "final").exists()
    resumed = train_sft(cfg, log=lambda *_: None)
    for name, w in _weights(whole).items():
        torch.testing.assert_close(_weights(resumed)[name], w, atol=1e-6, rtol=1e-6)
    steps = [row["step"] for row in read_metrics(cfg.run.output_dir) if row["split"] == "train"]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


def test_lora_save_load_merge_round_trip(tmp_path, lab_base_path):
    data = _data_file(tmp_path)
    adapters = train_sft(_cfg(tmp_path, "lora", data, batch_size=4, **{"lora.r": 4}), log=lambda *_: None)
    merged = train_sft(
        _cfg(tmp_path, "merged", data, batch_size=4, **{"lora.r": 4, "lora.merge_on_save": True}),
        log=lambda *_: None,
    )
    assert (adapters / "adapter_config.json").exists() and not (merged / "adapter_config.json").exists()
    ids = torch.tensor([[1, 5, 9, 30, 40, 2]])
    with torch.no_grad():
        from_adapters = AutoModelForCausalLM.from_pretrained(adapters)(ids).logits
        from_merged = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        from_base = AutoModelForCausalLM.from_pretrained(lab_base_path)(ids).logits
    torch.testing.assert_close(from_adapters, from_merged, atol=1e-5, rtol=1e-4)
    assert (from_adapters - from_base).abs().max() > 1e-4  # the adapters changed the model


@pytest.mark.figure
def test_lab_sft_beats_the_base_model(tmp_path, lab_model, test_seed, figure):
    """The metric that matters: with the shipped config, the gold judge's mean utility of sampled
    responses rises clearly above the base model's."""
    cfg = load_config(
        SFTConfig,
        ROOT / "configs/sft_lab.yaml",
        [
            f"model={lab_model}",
            f"run.seed={test_seed}",
            f"run.output_dir={tmp_path / 'lab'}",
            "run.progress=false",
            "run.save_every=0",
            "run.eval_every=0",
        ],
    )
    train_sft(cfg, log=lambda *_: None)
    gold = [row for row in read_metrics(cfg.run.output_dir) if "gold_utility" in row]
    assert [row["step"] for row in gold] == [0, cfg.max_steps]
    figure("gold_gain", gold[1]["gold_utility"] - gold[0]["gold_utility"], above=0.05)
    assert (
        json.loads((Path(cfg.run.output_dir) / "final" / "gold.json").read_text())["gold_utility"]
        == gold[1]["gold_utility"]
    )


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from rlhf.training import atomic_dir, atomic_file

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "a.txt") as f:
            f.write("x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
