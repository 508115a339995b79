"""Stage 3: PPO against the reward model, with a per-token KL penalty to the frozen SFT model.

    rlhf ppo configs/ppo_lab.yaml                    # the lab: SFT policy, lab reward model
    rlhf ppo examples/ppo_smollm2_hh.yaml            # SmolLM2-135M + LoRA, the HH-RLHF reward model

One PPO step (Ouyang et al. 2022; the per-token KL of Ziegler et al. 2019; PPO of Schulman et al. 2017):

1. **Rollout.** ``rollout_size`` prompts, rendered with the chat template and left-padded (PAD, not EOS),
   are sampled with the KV cache at ``temperature`` / ``top_p``. Each response is cut after its first
   EOS or stop string; a response that never stops is penalised by ``missing_eos_penalty``.
2. **Scoring.** log pi(a_t | s_t) of the sampled tokens is recomputed with the sampling temperature,
   the reference's log pi_ref(a_t | s_t) with the same temperature (a LoRA policy's reference is the
   policy with its adapters disabled: no second copy), the critic's V(s_t), and each response's score
   at its last real token: reward models (normalised with their ``reward_stats.json``) and rule-based
   functions (``rlhf.rewards``), combined by weight, optionally clipped.
3. **Advantages.** r_t = -beta * KL_t, plus the score at the last token; GAE(gamma, lambda) over V; the
   advantages are whitened over the batch.
4. **Update.** ``ppo_epochs`` passes over shuffled minibatches of ``batch_size * grad_accum`` samples:
   clipped surrogate + ``vf_coef`` * clipped value loss - ``entropy_coef`` * entropy, gradient clipping;
   an epoch stops early when the approximate KL passes ``early_stop_kl``.
5. **KL controller.** beta fixed, or adapted toward ``kl_target``: on the KL extrapolated one step ahead
   (``kl_controller: predictive``, fast to rise) or on the last KL (``ziegler``, Ziegler et al. 2019).

The pure pieces (KL estimators, rewards, GAE, whitening, losses, controller) are in ``rlhf.losses``.
All per-token tensors sit on the response positions; ``Rollout`` documents each one's shape.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, model_validator

from rlhf import data as rdata
from rlhf.errors import StateError, UsageError
from rlhf.guards import read_json_state, read_reward_stats
from rlhf.losses import (
    adaptive_kl_coef,
    conservative_reward,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_estimate,
    masked_sum,
    penalised_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    predictive_kl_coef,
    token_logprobs,
    whiten,
)
from rlhf.modeling import (
    _inner,
    count_parameters,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    position_ids,
    prepare_for_training,
    reward_model_members,
    sequence_scores,
    token_scores,
)
from rlhf.rewards import call_reward_function, lab_gold, load_reward_function
from rlhf.sft import prompt_text
from rlhf.training import (
    OptimSettings,
    RunSettings,
    StageRun,
    TrainConfig,
    atomic_dir,
    autocast,
    clip_gradients,
    is_main_process,
    load_splits,
    save_pretrained,
)

# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------


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


class PPOConfig(TrainConfig):
    """``rlhf ppo`` settings (with the shared fields of ``rlhf.training.TrainConfig``; ``batch_size`` is
    the micro-batch of the update, ``batch_size * grad_accum`` samples make one minibatch, and one PPO
    step is one rollout of ``rollout_size`` prompts and its update). Defaults: the lab."""

    model: str = Field("runs/sft-lab/final", description="the initial policy (and reference): SFT folder")
    reference: str | None = Field(
        None,
        description="the frozen KL reference, if not the initial policy (a later round starts from "
        "the last round's policy and keeps the SFT model as reference)",
    )
    data: str = Field("lab", description="prompts: lab, or a file/folder/hub dataset with a prompt column")
    lab_prompts: int = Field(5000, ge=1, description="training prompts drawn from the lab when data=lab")
    eval_prompts: int = Field(400, ge=0, description="held-out prompts per evaluation (0: no evaluation)")
    reward_models: list[RewardModelSpec] = Field(
        default_factory=lambda: [RewardModelSpec(path="runs/rm-lab/final")],
        description="frozen reward models",
    )
    reward_functions: list[RewardFunctionSpec] = Field(
        default_factory=list, description="rule-based rewards (module:function)"
    )
    uncertainty_coef: float = Field(
        1.0,
        ge=0,
        description="a reward-model ensemble's reward: mean - uncertainty_coef * std over its members",
    )
    reward_clip: float | None = Field(None, gt=0, description="clip the combined score to [-c, c]")
    missing_eos_penalty: float = Field(
        1.0, ge=0, description="subtracted from the score of a response that never stops"
    )
    whiten_rewards: bool = Field(False, description="scale the per-token rewards to unit variance first")
    critic: str = Field(
        "reward", description="value model: reward (from the first reward model), policy_head, or a folder"
    )
    rollout_size: int = Field(64, ge=1, description="prompts sampled per PPO step")
    max_new_tokens: int = Field(48, ge=1, description="longest response")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (log-probs use it too)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    stop_strings: list[str] = Field(default_factory=list, description="a response ends after any of these")
    ppo_epochs: int = Field(4, ge=1, description="passes over each rollout")
    clip_eps: float = Field(0.2, gt=0, description="policy ratio clip")
    value_clip: float | None = Field(
        0.2, gt=0, description="value clip around the rollout's values (null: off)"
    )
    vf_coef: float = Field(0.1, ge=0, description="value-loss coefficient")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus coefficient")
    gamma: float = Field(1.0, ge=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="per-token KL estimator in the reward")
    kl_coef: float = Field(0.3, ge=0, description="beta, the KL penalty coefficient (initial, if adaptive)")
    adaptive_kl: bool = Field(True, description="adapt beta toward kl_target")
    kl_controller: Literal["predictive", "ziegler"] = Field(
        "predictive",
        description="predictive: on the KL extrapolated one step, fast to rise (rlhf.losses.predictive_kl_coef); "
        "ziegler: Ziegler et al. 2019 on the last KL (rlhf.losses.adaptive_kl_coef)",
    )
    kl_target: float = Field(0.8, gt=0, description="target per-sequence KL (nats) of the controller")
    kl_horizon: float = Field(200.0, gt=0, description="controller horizon, in samples")
    early_stop_kl: float | None = Field(None, gt=0, description="stop an update when approx KL exceeds this")
    max_steps: int | None = Field(30, ge=1, description="PPO steps (null: epochs over the prompts)")
    batch_size: int = Field(16, ge=1, description="samples per micro-batch of the update")
    max_length: int = Field(512, ge=8, description="longest prompt; longer ones are skipped (counted)")
    optim: OptimSettings = Field(
        default_factory=lambda: OptimSettings(lr=5e-5, warmup_steps=0, schedule="constant")
    )
    run: RunSettings = Field(
        default_factory=lambda: RunSettings(
            output_dir="runs/ppo-lab", log_every=1, eval_every=10, save_every=10
        )
    )

    @model_validator(mode="after")
    def _check(self) -> PPOConfig:
        if self.rollout_size % self.rows_per_step:
            raise ValueError(
                f"rollout_size ({self.rollout_size}) must be a multiple of batch_size * grad_accum "
                f"({self.rows_per_step}), the minibatch"
            )
        if not self.reward_models and not self.reward_functions:
            raise ValueError("no reward: give reward_models, reward_functions, or both")
        if self.reference is not None and self.lora.r:
            raise ValueError(
                "reference: with LoRA the reference is the policy without its adapters; unset it"
            )
        if self.critic == "reward" and not self.reward_models:
            raise ValueError(
                "critic=reward starts the critic from the first reward model, and there is none: "
                "use critic=policy_head or a critic folder"
            )
        return self

    def total_steps(self, n_rows: int) -> int:
        return self.max_steps or max(1, math.ceil(self.epochs * n_rows / self.rollout_size))


# ---------------------------------------------------------------------------------------------------
# The rollout container
# ---------------------------------------------------------------------------------------------------


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
    values:         (B, R) float, V_old(s_t)
    scores:         (B,)   float, the combined sequence score (reward models + functions - penalties)
    kl:             (B, R) float, per-token KL estimate (``kl_estimator``)
    rewards:        (B, R) float, -beta * kl, plus ``scores`` at the last real token
    advantages:     (B, R) float, whitened GAE advantages
    returns:        (B, R) float, GAE returns (advantages before whitening + values)
    stopped:        (B,)   bool, the response ended with EOS or a stop string
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    kl: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    stopped: torch.Tensor

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
        part = {f.name: getattr(self, f.name)[idx] for f in fields(self)}
        R = int(part["response_mask"].sum(1).max())
        for name, value in part.items():
            if value.ndim == 2 and not name.startswith("prompt"):
                part[name] = value[:, :R]
        return Rollout(**part)


# ---------------------------------------------------------------------------------------------------
# Pieces of a step
# ---------------------------------------------------------------------------------------------------


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


class ValueHead(torch.nn.Module):
    """A linear value head on the policy's last hidden state (``critic: policy_head``)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.score = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.score.weight)
        torch.nn.init.zeros_(self.score.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden.float()).squeeze(-1)

    def save_pretrained(self, folder: Path) -> None:
        from safetensors.torch import save_file

        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()}, Path(folder) / "value_head.safetensors"
        )


def policy_forward(
    policy, input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int, temperature: float,
    value_head: ValueHead | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Logits, log-probs and (with a value head) values on the response positions.

    input_ids, attention_mask: (B, P + R). The backbone runs once; the LM head only on the R positions
    that predict response tokens (position P - 1 + t predicts response token t). Returns
    ``(logits (B, R, V), logp (B, R), values (B, R) or None)``; ``logp`` at ``temperature``.
    """
    inner = _inner(policy)
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
        use_cache=False,
    ).last_hidden_state[:, P - 1 : -1]  # fmt: skip
    logits = inner.get_output_embeddings()(hidden)
    logp = token_logprobs(logits, input_ids[:, P:], temperature)
    return logits, logp, value_head(hidden) if value_head is not None else None


def critic_values(critic, input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int) -> torch.Tensor:
    """V(s_t) from a separate value model: its score head at position P - 1 + t, (B, P + R) -> (B, R)."""
    return token_scores(critic, input_ids, attention_mask)[:, P - 1 : -1]


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


@torch.no_grad()
def sample(policy, tokenizer, prompt_ids, prompt_mask, cfg: PPOConfig) -> torch.Tensor:
    """Sample responses (B, R) with the KV cache: softmax(logits / temperature), nucleus ``top_p``, no
    other logits processing (so the recomputed log-probs are those of the sampling distribution)."""
    from transformers import GenerationConfig

    # Every setting that changes the distribution is given, so none comes from the model's own
    # generation_config (a repetition penalty there would make the samples disagree with the log-probs).
    gen = GenerationConfig(
        do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0, max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0, min_p=0.0,
        epsilon_cutoff=0.0, eta_cutoff=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        stop_strings=cfg.stop_strings or None, remove_invalid_values=True,  # nan logits: caught by the NaN guard
    )  # fmt: skip
    extra = {"tokenizer": tokenizer} if cfg.stop_strings else {}
    out = policy.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask.long(), generation_config=gen, **extra
    )
    return out[:, prompt_ids.shape[1] :]


# ---------------------------------------------------------------------------------------------------
# The PPO trainer state
# ---------------------------------------------------------------------------------------------------


class PPO:
    """The models of a PPO run and the two phases of a step: :meth:`rollout` and :meth:`update`."""

    def __init__(self, cfg: PPOConfig, device: torch.device, log=print) -> None:
        self.cfg, self.device = cfg, device
        self.tokenizer = load_tokenizer(cfg.model, cfg.gguf_file)
        if self.tokenizer.pad_token_id == self.tokenizer.eos_token_id:
            log("note: PAD is EOS in this tokenizer; masks (not ids) mark real tokens, so this is safe")
        policy = load_causal_lm(cfg.model, cfg.gguf_file)
        # The reference: the frozen initial policy, or (LoRA) the policy with its adapters disabled.
        self.reference = None
        if cfg.reference is not None:
            self.reference = load_causal_lm(cfg.reference).to(device).eval().requires_grad_(False)
        elif not cfg.lora.r:
            self.reference = copy.deepcopy(policy).to(device).eval().requires_grad_(False)
        self.policy = prepare_for_training(policy, cfg.lora, cfg.run.gradient_checkpointing).to(device)
        self.scorers = [RewardEnsemble(spec, self.tokenizer, device) for spec in cfg.reward_models]
        self.functions = [(load_reward_function(f.function), f) for f in cfg.reward_functions]
        self.value_head: ValueHead | None = None
        self.critic = None
        if cfg.critic == "policy_head":
            self.value_head = ValueHead(_inner(self.policy).config.hidden_size).to(device)
        else:
            path = self.scorers[0].members[0].path if cfg.critic == "reward" else cfg.critic
            if cfg.critic == "reward" and not self.scorers[0].members[0].same_tokens:
                raise UsageError(
                    f"critic=reward: the reward model {path} has another tokenizer than the policy; "
                    "use critic=policy_head or a critic folder with the policy's tokenizer"
                )
            # A value model may start from a causal LM (a critic folder): its head is new by design.
            critic = load_reward_model(path, pad_token_id=self.tokenizer.pad_token_id, fresh_head=True)
            self.critic = prepare_for_training(
                critic, cfg.lora, cfg.run.gradient_checkpointing, "SEQ_CLS", ["score"]
            ).to(device)
        self.beta = cfg.kl_coef
        self.kl_prev: float | None = None  # the last rollout's KL, for the predictive controller

    def trained(self) -> dict[str, torch.nn.Module]:
        """The trained modules, by checkpoint subfolder."""
        return {"policy": self.policy, "critic": self.critic if self.critic is not None else self.value_head}

    # --- 1-3: rollout, scoring, advantages ----------------------------------------------------------

    @torch.no_grad()
    def rollout(self, records, prompts_plain, prompt_tokens) -> tuple[Rollout, list[str], dict[str, float]]:
        """Sample, score and compute advantages for one batch of prompts. Returns the rollout, the
        decoded responses and this phase's timings and statistics."""
        cfg, tok, device = self.cfg, self.tokenizer, self.device
        mb = cfg.batch_size
        self.policy.eval()
        t0 = time.perf_counter()
        prompt_ids, prompt_mask = left_pad(prompt_tokens, tok.pad_token_id, device)
        with autocast(device, cfg.run.bf16):
            raw = sample(self.policy, tok, prompt_ids, prompt_mask, cfg)
        response_ids, response_mask, stopped = truncate_responses(
            raw, tok.eos_token_id, tok.pad_token_id, tok, cfg.stop_strings
        )
        R = max(1, int(response_mask.sum(1).max()))
        response_ids, response_mask = response_ids[:, :R], response_mask[:, :R]
        t_gen = time.perf_counter() - t0

        t0 = time.perf_counter()
        P = prompt_ids.shape[1]
        input_ids = torch.cat([prompt_ids, response_ids], 1)
        attention_mask = torch.cat([prompt_mask, response_mask], 1)
        logprobs, ref_logprobs, values = [], [], []
        for i in range(0, len(input_ids), mb):
            ids, mask = input_ids[i : i + mb], attention_mask[i : i + mb]
            with autocast(device, cfg.run.bf16):
                _, lp, v = policy_forward(self.policy, ids, mask, P, cfg.temperature, self.value_head)
                with self._reference() as ref:
                    _, ref_lp, _ = policy_forward(ref, ids, mask, P, cfg.temperature)
                if self.critic is not None:
                    v = critic_values(self.critic, ids, mask, P)
            logprobs.append(lp)
            ref_logprobs.append(ref_lp)
            values.append(v.float())
        logprobs, ref_logprobs, values = torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values)

        responses = tok.batch_decode(
            torch.where(response_mask, response_ids, tok.pad_token_id), skip_special_tokens=True
        )
        responses = [r.strip() for r in responses]
        conversations = [
            [
                *(p if isinstance(p, list) else [{"role": "user", "content": p}]),
                {"role": "assistant", "content": r},
            ]
            for p, r in zip(prompts_plain, responses)
        ]
        parts: dict[str, torch.Tensor] = {}
        scores = torch.zeros(len(responses), device=device)
        for scorer in self.scorers:
            members = scorer(input_ids, attention_mask, conversations, mb, device, cfg.run.bf16)  # (K, B)
            reward, spread = conservative_reward(members, cfg.uncertainty_coef)
            name = Path(scorer.spec.path).name
            parts[f"score/{name}"] = members.mean(0)  # normalised (each member by its own statistics)
            if len(members) > 1:
                parts[f"ensemble_std/{name}"] = spread
            scores += scorer.spec.weight * reward
        meta = [r.meta for r in records]
        for fn, spec in self.functions:
            value = torch.tensor(
                call_reward_function(fn, spec.function, prompts_plain, responses, meta, spec.kwargs),
                device=device,
            )
            parts[f"reward/{spec.function}"] = value
            scores += spec.weight * value
        if cfg.reward_clip is not None:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        scores = scores - cfg.missing_eos_penalty * (~stopped).float()
        t_score = time.perf_counter() - t0

        # 3. Per-token rewards with the KL penalty, then GAE on the critic's values.
        kl = kl_estimate(logprobs, ref_logprobs, cfg.kl_estimator)
        rewards = penalised_rewards(scores, kl, self.beta, response_mask)
        if cfg.whiten_rewards:
            rewards = whiten(rewards, response_mask, shift_mean=False)
        advantages, returns = gae(rewards, values, response_mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, response_mask)

        rollout = Rollout(
            prompt_ids, prompt_mask, response_ids, response_mask, logprobs, ref_logprobs, values,
            scores, kl, rewards, advantages, returns, stopped,
        )  # fmt: skip
        n_tokens = int(response_mask.sum())
        seq_kl = masked_sum(kl, response_mask, 1)
        stats = {
            "score": scores.mean().item(),
            **{k: v.mean().item() for k, v in parts.items()},
            "kl": seq_kl.mean().item(),
            "kl_k3": masked_sum(kl_estimate(logprobs, ref_logprobs, "k3"), response_mask, 1).mean().item(),
            "beta": self.beta,
            "response_tokens": response_mask.sum(1).float().mean().item(),
            "stopped": stopped.float().mean().item(),
            "time/generation": t_gen,
            "time/scoring": t_score,
            "tokens_per_s/generation": n_tokens / max(t_gen, 1e-9),
            "tokens_per_s/scoring": n_tokens / max(t_score, 1e-9),
        }
        return rollout, responses, stats

    @contextmanager
    def _reference(self):
        """The reference model: the frozen copy, or (LoRA) the policy with its adapters disabled."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy

    # --- 4: the update ------------------------------------------------------------------------------

    def update(self, ro: Rollout, optimizer, generator: torch.Generator) -> dict[str, float]:
        """``ppo_epochs`` passes of clipped PPO over shuffled minibatches of the rollout."""
        cfg = self.cfg
        self.policy.train()
        if self.critic is not None:
            self.critic.train()
        trained = torch.nn.ModuleDict(self.trained())  # policy and critic, clipped together
        B, mini = len(ro.scores), cfg.rows_per_step
        P = ro.prompt_ids.shape[1]
        lengths = ro.response_mask.sum(1).tolist()
        sums: dict[str, float] = defaultdict(float)
        n_minibatches = 0
        t0 = time.perf_counter()
        stopped_early = False
        for _epoch in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=generator).tolist()
            for start in range(0, B, mini):
                idx = order[start : start + mini]
                if cfg.group_by_length:  # micro-batches of similar length: the same minibatch gradient
                    idx.sort(key=lambda i: -lengths[i])
                normalizer = ro.response_mask[idx].sum()
                mb: dict[str, float] = defaultdict(float)  # this minibatch's statistics
                for m0 in range(0, mini, cfg.batch_size):
                    part = ro.select(idx[m0 : m0 + cfg.batch_size])
                    ids, mask = part.input_ids, part.attention_mask
                    with autocast(self.device, cfg.run.bf16):
                        logits, logp, values = policy_forward(
                            self.policy, ids, mask, P, cfg.temperature, self.value_head
                        )
                        if self.critic is not None:
                            values = critic_values(self.critic, ids, mask, P)
                    rm = part.response_mask
                    pg_loss, pg = ppo_policy_loss(
                        logp, part.logprobs, part.advantages, rm, cfg.clip_eps, normalizer
                    )
                    vf_loss, vf = ppo_value_loss(
                        values.float(), part.values, part.returns, rm, cfg.value_clip, normalizer
                    )
                    # The entropy is only logged unless it has a coefficient (no (B, R, V) graph kept).
                    with torch.set_grad_enabled(cfg.entropy_coef > 0 and torch.is_grad_enabled()):
                        ent = masked_sum(entropy_from_logits(logits, cfg.temperature), rm) / normalizer
                    loss = pg_loss + cfg.vf_coef * vf_loss - cfg.entropy_coef * ent
                    loss.backward()
                    share = (rm.sum() / normalizer).item()  # this micro-batch's share of the tokens
                    for k, v in {**pg, **vf}.items():
                        mb[k] += v.item() * share
                    mb["policy_loss"] += pg_loss.item()
                    mb["value_loss"] += vf_loss.item()
                    mb["entropy"] += ent.item()
                if cfg.early_stop_kl is not None and mb["approx_kl"] > cfg.early_stop_kl:
                    # The policy moved too far from the one that sampled: drop this step, end the update.
                    optimizer.zero_grad(set_to_none=True)
                    stopped_early = True
                    break
                for k, v in mb.items():
                    sums[k] += v
                sums["grad_norm"] += clip_gradients(trained, cfg.optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                n_minibatches += 1
            if stopped_early:
                break
        t_train = time.perf_counter() - t0
        n_tokens = int(ro.response_mask.sum()) * n_minibatches * mini / B
        stats = {k: v / max(1, n_minibatches) for k, v in sums.items()}
        stats.update(
            {
                "explained_variance": explained_variance(ro.values, ro.returns, ro.response_mask),
                "update_epochs": n_minibatches * mini / B,
                "early_stopped": float(stopped_early),
                "time/training": t_train,
                "tokens_per_s/training": n_tokens / max(t_train, 1e-9),
            }
        )
        return stats

    def update_beta(self, seq_kl: float, n: int) -> None:
        """5. The adaptive KL controller (a no-op with ``adaptive_kl: false``)."""
        cfg = self.cfg
        if cfg.adaptive_kl and cfg.kl_controller == "ziegler":
            self.beta = adaptive_kl_coef(self.beta, seq_kl, cfg.kl_target, cfg.kl_horizon, n)
        elif cfg.adaptive_kl:
            self.beta = predictive_kl_coef(self.beta, seq_kl, self.kl_prev, cfg.kl_target, cfg.kl_horizon, n)
        self.kl_prev = seq_kl


# ---------------------------------------------------------------------------------------------------
# Prompts and evaluation
# ---------------------------------------------------------------------------------------------------


def load_prompt_records(cfg: PPOConfig, log) -> tuple[list, list]:
    """Training and held-out prompts (``rlhf.data.PromptOnly`` records)."""
    if cfg.data == "lab":
        from rlhf.lab.datasets import prompt_rows
        from rlhf.lab.evaluate import EVAL_SEED

        train, report = rdata.load_prompts(
            prompt_rows(cfg.lab_prompts, cfg.run.seed + 31_337), limit=cfg.limit
        )
        log(f"lab prompts: {report.summary()}")
        evals = rdata.load_prompts(prompt_rows(cfg.eval_prompts, EVAL_SEED))[0] if cfg.eval_prompts else []
        return train, evals
    train, evals = load_splits(cfg, rdata.load_prompts, log)
    return train, evals[: cfg.eval_prompts]


def is_lab(records) -> bool:
    return bool(records) and all("truth" in r.meta and "family" in r.meta for r in records)


@torch.no_grad()
def sample_batches(model, tok, tokens: list[list[int]], cfg: PPOConfig, seed: int, device, bf16=False):
    """One sampled response per tokenised prompt, ``cfg.rollout_size`` prompts at a time, under its own
    seed (the global RNG is restored afterwards). Returns the decoded responses and, per batch, the
    ``(prompt_ids, prompt_mask, response_ids, response_mask)`` tensors."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    model.eval()
    texts, batches = [], []
    try:
        for i in range(0, len(tokens), cfg.rollout_size):
            ids, mask = left_pad(tokens[i : i + cfg.rollout_size], tok.pad_token_id, device)
            with autocast(torch.device(device), bf16):
                raw = sample(model, tok, ids, mask, cfg)
            resp, rmask, _ = truncate_responses(
                raw, tok.eos_token_id, tok.pad_token_id, tok, cfg.stop_strings
            )
            batches.append((ids, mask, resp, rmask))
            decoded = tok.batch_decode(torch.where(rmask, resp, tok.pad_token_id), skip_special_tokens=True)
            texts += [t.strip() for t in decoded]
    finally:
        torch.set_rng_state(state)
    return texts, batches


def generate_for_eval(ppo: PPO, model_ctx, tokens, seed: int) -> list[str]:
    """One sampled response per held-out prompt (training temperature), from the model ``model_ctx`` gives."""
    with model_ctx as model:
        return sample_batches(model, ppo.tokenizer, tokens, ppo.cfg, seed, ppo.device, ppo.cfg.run.bf16)[0]


def lab_eval_stats(records, plain, responses: list[str], reference: list[str]) -> dict[str, float]:
    """Gold utility of the responses, by family, their win rate against the reference's (ties half)."""
    from rlhf.evaluate import win_rate
    from rlhf.lab.judge import n_words
    from rlhf.reward import wilson_interval

    meta = [r.meta for r in records]
    gold, ref = lab_gold(plain, responses, meta), lab_gold(plain, reference, meta)
    wins = win_rate(gold, ref)
    wins_low, wins_high = wilson_interval(wins, len(gold))
    stats = {
        "gold": sum(gold) / len(gold),
        "gold_reference": sum(ref) / len(ref),
        "win_rate": wins,
        "win_rate_low": wins_low,  # 95% Wilson interval over the held-out prompts
        "win_rate_high": wins_high,
        "response_words": sum(n_words(x) for x in responses) / len(responses),
    }
    by_family: dict[str, list[float]] = defaultdict(list)
    for r, g in zip(records, gold):
        by_family[r.meta["family"]].append(g)
    stats.update({f"gold/{f}": sum(v) / len(v) for f, v in sorted(by_family.items())})
    return stats


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------


def train_ppo(cfg: PPOConfig, stop_after: int | None = None, log=print) -> Path:
    """Run PPO; return the final policy folder. ``stop_after``: as in ``rlhf.sft.train_sft``."""
    # 1. Run folder, config.yaml, seeds, device.
    run = StageRun(cfg, "ppo", log, stop_after)
    device, log = run.device, run.log

    # 2. Models: policy (+ reference), reward models and functions, critic.
    ppo = PPO(cfg, device, log)
    tok = ppo.tokenizer
    trainable, total = count_parameters(ppo.policy)
    log(f"policy {cfg.model}: {total:,} parameters, {trainable:,} trained; critic: {cfg.critic}")

    # 3. Prompts.
    train_records, eval_records = load_prompt_records(cfg, log)
    train_tokens, train_plain = encode_prompts(train_records, tok, cfg.max_length)
    keep = [i for i, t in enumerate(train_tokens) if t is not None]
    if len(keep) < len(train_tokens):
        log(f"skipped {len(train_tokens) - len(keep)} prompts longer than max_length={cfg.max_length}")
    if not keep:
        raise UsageError(f"{cfg.data}: no prompt fits max_length={cfg.max_length}")
    train_records = [train_records[i] for i in keep]
    train_tokens, train_plain = [train_tokens[i] for i in keep], [train_plain[i] for i in keep]
    eval_tokens, eval_plain = encode_prompts(eval_records, tok, cfg.max_length)
    eval_keep = [i for i, t in enumerate(eval_tokens) if t is not None]
    eval_records = [eval_records[i] for i in eval_keep]
    eval_tokens, eval_plain = [eval_tokens[i] for i in eval_keep], [eval_plain[i] for i in eval_keep]
    lab = is_lab(train_records)

    # 4. Optimiser (policy and critic together), schedule, prompt order, and an interrupted run's state.
    optimizer, scheduler, stream, step = run.start(ppo.trained(), cfg, len(train_records))
    ppo.beta = run.resumed_state.get("beta", cfg.kl_coef)
    ppo.kl_prev = run.resumed_state.get("kl_prev")
    total_steps = run.total_steps
    log(
        f"{len(train_records)} prompts, {len(eval_records)} held out; {total_steps} PPO steps of {cfg.rollout_size}"
    )

    # The reference policy's responses to the held-out prompts (for the win rate), made once.
    reference_file = run.dir / "eval_reference.json"
    reference: list[str] = []
    if eval_records:
        if reference_file.exists():
            reference = read_json_state(reference_file, log) or []  # a torn file is made again
        if len(reference) != len(eval_records):
            reference = generate_for_eval(ppo, ppo._reference(), eval_tokens, cfg.run.seed + 1)
            if is_main_process():
                reference_file.write_text(json.dumps(reference))

    def evaluate(step: int) -> None:
        responses = generate_for_eval(ppo, nullcontext(ppo.policy), eval_tokens, cfg.run.seed + 2)
        values: dict[str, float] = {}
        if lab:
            values.update(lab_eval_stats(eval_records, eval_plain, responses, reference))
        else:
            values["response_words"] = sum(len(r.split()) for r in responses) / len(responses)
        run.metrics.log(step, "eval", **values)
        if is_main_process():
            rows = [
                {"prompt": p, "response": r, "reference": ref}
                for p, r, ref in zip(eval_plain, responses, reference)
            ]
            (run.dir / "eval_samples.json").write_text(json.dumps({"step": step, "samples": rows}, indent=1))
        if lab:
            log(f"step {step}: gold {values['gold']:+.3f} (reference {values['gold_reference']:+.3f}), "
                f"win rate {values['win_rate']:.3f} (95% {values['win_rate_low']:.3f}-{values['win_rate_high']:.3f}), "
                f"{values['response_words']:.1f} words")  # fmt: skip

    if eval_records and step == 0:
        evaluate(0)

    # 5. The loop: one rollout and its update per step.
    while step < total_steps:
        idx = stream.take(cfg.rollout_size)
        records, plain = [train_records[i] for i in idx], [train_plain[i] for i in idx]
        rollout, responses, roll_stats = ppo.rollout(records, plain, [train_tokens[i] for i in idx])
        run.check_finite(step + 1, **roll_stats)  # scores, rewards and KL
        if lab:
            gold = lab_gold(plain, responses, [r.meta for r in records])
            roll_stats["gold"] = sum(gold) / len(gold)
        generator = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)  # minibatch order
        upd_stats = ppo.update(rollout, optimizer, generator)
        run.check_finite(step + 1, model=ppo.trained(), **upd_stats)  # losses, gradient norm, weights
        ppo.update_beta(roll_stats["kl"], cfg.rollout_size)
        scheduler.step()
        run.bar.update(1)
        step += 1

        # 6. Log, evaluate, checkpoint.
        if run.due(step, cfg.run.log_every):
            run.metrics.log(step, "train", **roll_stats, **upd_stats, lr=scheduler.get_last_lr()[0])
            run.bar.set_postfix(score=f"{roll_stats['score']:+.2f}", kl=f"{roll_stats['kl']:.2f}")
        if eval_records and run.due(step, cfg.run.eval_every):
            evaluate(step)
        run.checkpoint(
            step,
            ppo.trained(),
            tok,
            optimizer,
            scheduler,
            stream,
            extra={"beta": ppo.beta, "kl_prev": ppo.kl_prev},
        )
        if run.interrupted(step):
            return run.dir

    # 7. The final policy (and, beside it, the critic).
    if is_main_process():
        with atomic_dir(run.dir / "critic") as tmp:
            save_pretrained(ppo.trained()["critic"], None, tmp)
    return run.finish(ppo.policy, tok, cfg.lora)
