"""rlhf.encoding: examples, pairs and prompts into token ids and masks (chat templates, prefills, reasoning fields, truncation, packing, collation)."""

from __future__ import annotations

import copy

import pytest

from rlhf import data as rdata
from rlhf.encoding import continued, prompt_text
from rlhf.encoding import encode_example as tokenize
from rlhf.encoding import encode_pair as tokenize_pair
from rlhf.encoding import pack_examples as pack
from rlhf.stages.sft import Example, collate, fit_length

THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{% if m.get('thinking') and think %}<think>{{ m['thinking'] }}"
    "</think>{% endif %}{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


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


def test_explicit_and_implicit_prompt_tokenise_the_same(tok):
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    explicit = rdata.parse_row(
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "5."}],
            "rejected": [{"role": "assistant", "content": "6."}],
        }
    )
    implicit = rdata.parse_row(
        {
            "chosen": [*prompt, {"role": "assistant", "content": "5."}],
            "rejected": [*prompt, {"role": "assistant", "content": "6."}],
        }
    )
    hh = rdata.parse_row(
        {
            "chosen": "\n\nHuman: What is 2 + 3?\n\nAssistant: 5.",
            "rejected": "\n\nHuman: What is 2 + 3?\n\nAssistant: 6.",
        }
    )
    a, b, c = (tokenize_pair(r, tok, 128) for r in (explicit, implicit, hh))
    assert a.chosen.input_ids == b.chosen.input_ids == c.chosen.input_ids
    assert a.rejected.input_ids == b.rejected.input_ids == c.rejected.input_ids
    assert a.chosen.input_ids != a.rejected.input_ids
