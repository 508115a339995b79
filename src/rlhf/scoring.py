"""Scoring responses: reward models (one, or an ensemble) and rule-based reward functions, combined.

A **reward model** (``RewardModelSpec``) is a frozen sequence classifier read at the last real token of
prompt + response, standardised with the ``reward_stats.json`` stored beside it; a folder holding
``ensemble.json`` stands for its members (``rlhf.modeling.reward_model_members``), whose combined reward
is the conservative mean - ``uncertainty_coef`` * std over members (``rlhf.losses.conservative_reward``,
after Coste et al. 2023). A **reward function** (``RewardFunctionSpec``) is any Python callable named
``module:function``, called once per batch as ``fn(prompts, responses, meta, **kwargs)`` and returning
one float per response (the built-in ones are in ``rlhf.rewards``; the lab's gold judge is
``rlhf.lab.judge:gold_reward``):

- ``prompts``: each prompt as given in the data (a string, or a list of ``{"role", "content"}`` dicts);
- ``responses``: the decoded responses (after truncation at EOS or a stop string);
- ``meta``: each prompt row's other columns (for lab prompts: ``family``, ``key`` and ``truth``).

:class:`Scoring` is every reward of a run together: the weighted sum of its reward models' and
functions' values, optionally clipped, minus a penalty for a response that never stopped. PPO's
rollouts, evaluation and best-of-n all score through it or through :class:`RewardEnsemble`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from rlhf.errors import RewardFunctionError, StateError
from rlhf.guards import read_reward_stats
from rlhf.losses import conservative_reward
from rlhf.modeling import autocast, load_reward_model, load_tokenizer, reward_model_members, sequence_scores


class RewardModelSpec(BaseModel):
    """One frozen reward model, or an ensemble of them (a folder with ``ensemble.json``)."""

    model_config = {"extra": "forbid"}

    path: str = Field(
        description="a reward model folder (AutoModelForSequenceClassification, one label), or an ensemble's"
    )
    gguf_file: str | None = Field(None, description="a GGUF file inside `path`")
    weight: float = Field(1.0, description="weight in the combined reward")
    normalize: bool = Field(True, description="standardise with the reward_stats.json stored beside it")
    fresh_head: bool = Field(False, description="a model with no reward head gets a random one (a baseline)")


class RewardFunctionSpec(BaseModel):
    """One rule-based reward, ``module:function`` (see ``rlhf.rewards``)."""

    model_config = {"extra": "forbid"}

    function: str = Field(description="module:function, called as fn(prompts, responses, meta, **kwargs)")
    weight: float = Field(1.0, description="weight in the combined reward")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments")


# Reward functions that moved, so that an old config's error says where to.
MOVED = {"rlhf.rewards:lab_gold": "rlhf.lab.judge:gold_reward"}

RewardFn = Callable[..., Sequence[float]]


def load_reward_function(name: str) -> RewardFn:
    """Import ``module:function`` (the module must be importable: installed, or on ``PYTHONPATH``)."""
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise RewardFunctionError(
            f"reward function {name!r}: expected 'module:function', e.g. rlhf.rewards:contains_word"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardFunctionError(f"reward function {name!r}: cannot import {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        moved = f" (it is now {MOVED[name]})" if name in MOVED else ""
        raise RewardFunctionError(f"reward function {name!r}: {module_name} has no callable {attr!r}{moved}")
    return fn


def call_reward_function(
    fn: RewardFn, name: str, prompts: list[Any], responses: list[str], meta: list[dict], kwargs: dict
) -> list[float]:
    """Call ``fn`` and check that it gave one finite number per response."""
    values = list(fn(prompts, responses, meta, **kwargs))
    if len(values) != len(responses):
        raise RewardFunctionError(
            f"reward function {name}: returned {len(values)} values for {len(responses)} responses"
        )
    for i, v in enumerate(values):
        if not isinstance(v, int | float) or not math.isfinite(v):
            raise RewardFunctionError(f"reward function {name}: value {i} is {v!r}, not a finite number")
    return [float(v) for v in values]


class Scorer:
    """One frozen reward model with its tokenizer and normalisation statistics."""

    def __init__(self, spec: RewardModelSpec, policy_tokenizer, device: torch.device) -> None:
        self.spec = spec
        self.path = spec.path
        self.tokenizer = load_tokenizer(spec.path, spec.gguf_file)
        self.model = load_reward_model(
            spec.path, spec.gguf_file, pad_token_id=self.tokenizer.pad_token_id, fresh_head=spec.fresh_head
        )
        self.model.to(device).eval().requires_grad_(False)
        # Same vocabulary: score the policy's token ids directly; otherwise re-render the text.
        self.same_tokens = self.tokenizer.get_vocab() == policy_tokenizer.get_vocab()
        self.mean, self.std = 0.0, 1.0
        stats = Path(spec.path) / "reward_stats.json"
        if spec.normalize:
            if not stats.exists():
                raise StateError(f"{stats}: missing (set normalize: false for this reward model)")
            s = read_reward_stats(stats)
            self.mean, self.std = float(s["mean"]), max(float(s["std"]), 1e-6)

    @torch.no_grad()
    def __call__(
        self, input_ids, attention_mask, conversations, batch_size: int, device, bf16
    ) -> torch.Tensor:
        """Raw scores (B,), each read at the last real token of prompt + response: from the policy's
        token ids when the vocabularies match, else from ``conversations`` rendered with this model's
        chat template (also when ``input_ids`` is None)."""
        out = []
        use_ids = self.same_tokens and input_ids is not None
        n = len(input_ids) if use_ids else len(conversations)
        for i in range(0, n, batch_size):
            if use_ids:
                ids, mask = input_ids[i : i + batch_size], attention_mask[i : i + batch_size]
            else:
                texts = [
                    self.tokenizer.apply_chat_template(c, tokenize=False)
                    for c in conversations[i : i + batch_size]
                ]
                enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device).bool()
            with autocast(device, bf16):
                out.append(sequence_scores(self.model, ids, mask).float())
        return torch.cat(out)


class RewardEnsemble:
    """The reward model(s) of one ``RewardModelSpec``: one :class:`Scorer`, or one per member of an
    ensemble; called, it gives every member's normalised scores."""

    def __init__(self, spec: RewardModelSpec, policy_tokenizer, device: torch.device) -> None:
        self.spec = spec
        self.members = [
            Scorer(spec.model_copy(update={"path": path}), policy_tokenizer, device)
            for path in reward_model_members(spec.path)
        ]

    def __call__(
        self, input_ids, attention_mask, conversations, batch_size: int, device, bf16
    ) -> torch.Tensor:
        """(K, B): member k's score of each response, standardised by its own statistics (see
        :meth:`Scorer.__call__` for the arguments)."""
        return torch.stack(
            [(m(input_ids, attention_mask, conversations, batch_size, device, bf16) - m.mean) / m.std
             for m in self.members]
        )  # fmt: skip


def conversations(prompts: Sequence[Any], responses: Sequence[str]) -> list[list[dict[str, str]]]:
    """Each prompt (a string is a user's turn) followed by its response as the assistant's turn."""
    return [
        [
            *([{"role": "user", "content": p}] if isinstance(p, str) else p),
            {"role": "assistant", "content": r},
        ]
        for p, r in zip(prompts, responses)
    ]


class Scoring:
    """Every reward of a run: reward models and functions, combined by weight (module docstring)."""

    def __init__(
        self, reward_models: Sequence[RewardModelSpec], reward_functions: Sequence[RewardFunctionSpec],
        policy_tokenizer, device: torch.device, uncertainty_coef: float = 1.0, reward_clip: float | None = None,
        missing_eos_penalty: float = 0.0,
    ) -> None:  # fmt: skip
        self.models = [RewardEnsemble(spec, policy_tokenizer, device) for spec in reward_models]
        self.functions = [(load_reward_function(f.function), f) for f in reward_functions]
        self.device = device
        self.uncertainty_coef, self.reward_clip = uncertainty_coef, reward_clip
        self.missing_eos_penalty = missing_eos_penalty

    @torch.no_grad()
    def __call__(
        self, input_ids, attention_mask, prompts: list[Any], responses: list[str], meta: list[dict],
        stopped: torch.Tensor, batch_size: int, bf16: bool | str = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """The combined scores (B,) of prompt + response (``input_ids``/``attention_mask``: (B, P + R),
        the policy's tokens) and the parts, by name: ``score/<rm>`` (normalised, the members' mean),
        ``ensemble_std/<rm>`` (an ensemble's spread), ``reward/<function>``."""
        device = self.device
        convs = conversations(prompts, responses)
        parts: dict[str, torch.Tensor] = {}
        scores = torch.zeros(len(responses), device=device)
        for scorer in self.models:
            members = scorer(input_ids, attention_mask, convs, batch_size, device, bf16)  # (K, B)
            reward, spread = conservative_reward(members, self.uncertainty_coef)
            name = Path(scorer.spec.path).name
            parts[f"score/{name}"] = members.mean(0)  # normalised (each member by its own statistics)
            if len(members) > 1:
                parts[f"ensemble_std/{name}"] = spread
            scores += scorer.spec.weight * reward
        for fn, spec in self.functions:
            value = torch.tensor(
                call_reward_function(fn, spec.function, prompts, responses, meta, spec.kwargs), device=device
            )
            parts[f"reward/{spec.function}"] = value
            scores += spec.weight * value
        if self.reward_clip is not None:
            scores = scores.clamp(-self.reward_clip, self.reward_clip)
        return scores - self.missing_eos_penalty * (~stopped).float(), parts
