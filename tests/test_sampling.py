"""rlhf.sampling: responses cut after the first EOS or a stop string; sampled log-probs equal the recomputed ones."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.encoding import left_pad
from rlhf.losses import (
    penalised_rewards,
    token_logprobs,
)
from rlhf.sampling import truncate_responses
from rlhf.stages.ppo import policy_forward

EOS, PAD = 2, 0


def _prompt_tokens(tok, prompts: list[str]) -> list[list[int]]:
    """Each prompt as a one-turn chat with the generation prompt, as PPO encodes it."""
    from rlhf.data import PromptOnly
    from rlhf.stages.ppo import encode_prompts

    return encode_prompts([PromptOnly([{"role": "user", "content": p}]) for p in prompts], tok, 10**6)[0]


@pytest.mark.parametrize("pad", [PAD, EOS])
def test_truncation_after_the_first_eos_for_any_pad(pad):
    ids = torch.tensor(
        [
            [5, 6, EOS, pad, pad],  # stopped at t = 2; the EOS is kept
            [5, 6, 7, 8, 9],  # never stopped: all kept
            [EOS, pad, pad, pad, pad],  # empty answer: the EOS alone
            [5, EOS, 7, EOS, 9],  # tokens after the first EOS are dropped
        ]
    )
    out, mask, stopped = truncate_responses(ids, EOS, pad)
    assert mask.sum(1).tolist() == [3, 5, 1, 2]
    assert stopped.tolist() == [True, False, True, True]
    assert out[3].tolist() == [5, EOS, pad, pad, pad]
    scores = penalised_rewards(torch.ones(4), torch.zeros(4, 5), 0.0, mask)
    assert scores.argmax(1).tolist() == [2, 4, 0, 1]  # the score sits on the last kept token


def test_stop_strings_end_a_response(lab_base_path):
    tok = AutoTokenizer.from_pretrained(lab_base_path)
    ids = torch.tensor([tok("Yes. Stop here and more", add_special_tokens=False)["input_ids"]])
    out, mask, stopped = truncate_responses(ids, tok.eos_token_id, tok.pad_token_id, tok, ["here"])
    assert stopped.item() and tok.decode(out[0][mask[0]]).endswith("here")
    _, mask2, stopped2 = truncate_responses(ids, tok.eos_token_id, tok.pad_token_id, tok, ["absent"])
    assert not stopped2.item() and mask2.all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_training_logprobs(lab_base_path, tok, temperature):
    model = AutoModelForCausalLM.from_pretrained(lab_base_path).eval()
    prompts = ["What is 3 + 4?", "Name three fruits, please. I need them for a list."]
    tokens = _prompt_tokens(tok, prompts)
    ids, mask = left_pad(tokens, tok.pad_token_id, "cpu")
    torch.manual_seed(0)
    out = model.generate(
        input_ids=ids, attention_mask=mask.long(), do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
        max_new_tokens=20, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    response = out.sequences[:, ids.shape[1] :]
    at_sampling = token_logprobs(torch.stack(out.logits, 1), response, temperature)
    response, rmask, _ = truncate_responses(response, tok.eos_token_id, tok.pad_token_id)
    with torch.no_grad():
        _, recomputed, _ = policy_forward(
            model, torch.cat([ids, response], 1), torch.cat([mask, rmask], 1), ids.shape[1], temperature
        )
    torch.testing.assert_close(recomputed[rmask], at_sampling[rmask], atol=1e-4, rtol=1e-4)
