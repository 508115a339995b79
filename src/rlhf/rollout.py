"""The rollout: a batch of prompts sampled, scored, and their log-probs under the policy and its
reference (and, with a critic, its values): the building block of every online method. PPO adds the
KL-penalised rewards and GAE advantages; a critic-free method (GRPO, RLOO) adds group-relative
advantages and needs no critic at all.

    rollout, responses, stats = make_rollout(policy, reference, tokenizer, scoring, prompts, meta,
                                             prompt_tokens, sampling, batch_size, device)

1. **Sample** (``rlhf.sampling``): left-padded prompts, the KV cache, ``temperature`` / ``top_p``; each
   response cut after its first EOS or stop string.
2. **Score** (``rlhf.scoring.Scoring``): the combined score of each response at its last real token.
3. **Log-probs**: log pi(a_t | s_t) of the sampled tokens, recomputed at the sampling temperature, and
   the reference's log pi_ref(a_t | s_t) (a LoRA policy's reference is the policy with its adapters
   disabled: ``rlhf.modeling.reference_policy``); with a value head or a critic, V(s_t).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import torch

from rlhf.encoding import left_pad
from rlhf.modeling import ValueHead, autocast, critic_values, policy_forward, reference_policy
from rlhf.sampling import SamplingSettings, decode_responses, sample_tokens, truncate_responses
from rlhf.scoring import Scoring


@dataclass
class Rollout:
    """One batch of sampled responses and everything the update needs. B = samples, P = prompt length
    (left-padded), R = response length (right-padded). Per-token fields are on the response positions:
    index t is response token t, the action taken in state s_t = prompt + response[:t].

    prompt_ids:     (B, P) long, left-padded with PAD
    prompt_mask:    (B, P) bool, True = real prompt token
    response_ids:   (B, R) long, PAD after the end
    response_mask:  (B, R) bool, True = real response token, up to and including its EOS / stop string
    logprobs:       (B, R) float, log pi_old(a_t | s_t) at the sampling temperature
    ref_logprobs:   (B, R) float, log pi_ref(a_t | s_t), same temperature
    scores:         (B,)   float, the combined sequence score (``rlhf.scoring.Scoring``)
    stopped:        (B,)   bool, the response ended with EOS or a stop string
    values:         (B, R) float, V_old(s_t); None without a critic (a critic-free method)

    What a method adds (PPO: ``rlhf.stages.ppo``; None until it does):

    kl:             (B, R) float, per-token KL estimate
    rewards:        (B, R) float, the per-token rewards (PPO: -beta * kl, plus ``scores`` at the last token)
    advantages:     (B, R) float, the advantages the policy loss weighs
    returns:        (B, R) float, the value targets
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    scores: torch.Tensor
    stopped: torch.Tensor
    values: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        """(B, P + R) prompt and response."""
        return torch.cat([self.prompt_ids, self.response_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + R) bool."""
        return torch.cat([self.prompt_mask, self.response_mask], 1)

    def select(self, index: torch.Tensor | list[int]) -> Rollout:
        """The rows ``index`` of every tensor, trimmed to the longest response among them."""
        idx = torch.as_tensor(index, device=self.prompt_ids.device)
        part = {f.name: getattr(self, f.name) for f in fields(self)}
        part = {k: v[idx] if v is not None else None for k, v in part.items()}
        R = int(part["response_mask"].sum(1).max())
        for name, value in part.items():
            if value is not None and value.ndim == 2 and not name.startswith("prompt"):
                part[name] = value[:, :R]
        return Rollout(**part)


@torch.no_grad()
def make_rollout(
    policy, reference, tokenizer, scoring: Scoring, prompts: list[Any], meta: list[dict],
    prompt_tokens: list[list[int]], s: SamplingSettings, batch_size: int, device: torch.device,
    bf16: bool | str = False, value_head: ValueHead | None = None, critic=None,
) -> tuple[Rollout, list[str], dict[str, float]]:  # fmt: skip
    """Sample, score and take the log-probs of one batch of prompts (module docstring). ``reference``:
    the frozen reference model, or None for a LoRA policy (its adapters disabled). ``value_head`` or
    ``critic`` give the values; neither, no values. Returns the rollout, the decoded responses and the
    phase's timings and score parts (batch means)."""
    policy.eval()
    t0 = time.perf_counter()
    prompt_ids, prompt_mask = left_pad(prompt_tokens, tokenizer.pad_token_id, device)
    with autocast(device, bf16):
        raw = sample_tokens(policy, tokenizer, prompt_ids, prompt_mask, s)
    response_ids, response_mask, stopped = truncate_responses(
        raw, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer, s.stop_strings
    )
    R = max(1, int(response_mask.sum(1).max()))
    response_ids, response_mask = response_ids[:, :R], response_mask[:, :R]
    t_gen = time.perf_counter() - t0

    t0 = time.perf_counter()
    P = prompt_ids.shape[1]
    input_ids = torch.cat([prompt_ids, response_ids], 1)
    attention_mask = torch.cat([prompt_mask, response_mask], 1)
    logprobs, ref_logprobs, values = [], [], []
    for i in range(0, len(input_ids), batch_size):
        ids, mask = input_ids[i : i + batch_size], attention_mask[i : i + batch_size]
        with autocast(device, bf16):
            _, lp, v = policy_forward(policy, ids, mask, P, s.temperature, value_head)
            with reference_policy(policy, reference) as ref:
                _, ref_lp, _ = policy_forward(ref, ids, mask, P, s.temperature)
            if critic is not None:
                v = critic_values(critic, ids, mask, P)
        logprobs.append(lp)
        ref_logprobs.append(ref_lp)
        if v is not None:
            values.append(v.float())
    responses = decode_responses(tokenizer, response_ids, response_mask)
    scores, parts = scoring(input_ids, attention_mask, prompts, responses, meta, stopped, batch_size, bf16)
    t_score = time.perf_counter() - t0

    rollout = Rollout(
        prompt_ids, prompt_mask, response_ids, response_mask, torch.cat(logprobs), torch.cat(ref_logprobs),
        scores, stopped, torch.cat(values) if values else None,
    )  # fmt: skip
    n_tokens = int(response_mask.sum())
    stats = {
        "score": scores.mean().item(),
        **{k: v.mean().item() for k, v in parts.items()},
        "response_tokens": response_mask.sum(1).float().mean().item(),
        "stopped": stopped.float().mean().item(),
        "time/generation": t_gen,
        "time/scoring": t_score,
        "tokens_per_s/generation": n_tokens / max(t_gen, 1e-9),
        "tokens_per_s/scoring": n_tokens / max(t_score, 1e-9),
    }
    return rollout, responses, stats
