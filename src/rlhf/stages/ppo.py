"""Stage 3: PPO against the reward model, with a per-token KL penalty to the frozen SFT model.

    rlhf ppo configs/ppo_lab.yaml                    # the lab: SFT policy, lab reward model
    rlhf ppo examples/ppo_smollm2_hh.yaml            # SmolLM2-135M + LoRA, the HH-RLHF reward model

One PPO step (Ouyang et al. 2022; the per-token KL of Ziegler et al. 2019; PPO of Schulman et al. 2017):

1-2. **Rollout** (``rlhf.rollout.make_rollout``, shared with any online method). ``rollout_size``
   prompts are sampled (``rlhf.sampling``: left-padded, the KV cache, ``temperature`` / ``top_p``, each
   response cut after its first EOS or stop string) and scored (``rlhf.scoring.Scoring``: reward models
   normalised with their ``reward_stats.json``, ensembles' conservative mean - std, rule functions,
   combined by weight, optionally clipped, minus ``missing_eos_penalty`` for a response that never
   stops); log pi(a_t | s_t) is recomputed at the sampling temperature, with the reference's
   log pi_ref(a_t | s_t) (a LoRA policy's reference is the policy with its adapters disabled: no second
   copy) and the critic's V(s_t).
3. **Advantages.** r_t = -beta * KL_t, plus the score at the last token; GAE(gamma, lambda) over V; the
   advantages are whitened over the batch.
4. **Update.** ``ppo_epochs`` passes over shuffled minibatches of ``batch_size * grad_accum`` samples
   (``rlhf.training.backward``: the shared micro-batch path): clipped surrogate + ``vf_coef`` * clipped
   value loss - ``entropy_coef`` * entropy, gradient clipping; an epoch stops early when the approximate
   KL passes ``early_stop_kl``.
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
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from rlhf import data as rdata
from rlhf.encoding import encode_prompts
from rlhf.errors import UsageError
from rlhf.guards import atomic_dir, read_json_state
from rlhf.losses import (
    adaptive_kl_coef,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_estimate,
    masked_sum,
    penalised_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    predictive_kl_coef,
    whiten,
)
from rlhf.modeling import (
    ValueHead,
    _inner,
    autocast,
    count_parameters,
    critic_values,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    policy_forward,
    prepare_for_training,
    reference_policy,
)
from rlhf.rollout import Rollout, make_rollout
from rlhf.sampling import SamplingSettings, sample_responses
from rlhf.scoring import RewardFunctionSpec, RewardModelSpec, Scoring
from rlhf.training import (
    OptimSettings,
    RunSettings,
    StageRun,
    TrainConfig,
    backward,
    is_main_process,
    load_splits,
    save_pretrained,
)

# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------


class PPOConfig(TrainConfig, SamplingSettings):
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
        if self.temperature <= 0:
            raise ValueError("temperature: PPO samples and recomputes log-probs at it, so it must be > 0")
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
        self.scoring = Scoring(
            cfg.reward_models, cfg.reward_functions, self.tokenizer, device, cfg.uncertainty_coef,
            cfg.reward_clip, cfg.missing_eos_penalty,
        )  # fmt: skip
        self.value_head: ValueHead | None = None
        self.critic = None
        if cfg.critic == "policy_head":
            self.value_head = ValueHead(_inner(self.policy).config.hidden_size).to(device)
        else:
            first = self.scoring.models[0].members[0] if cfg.critic == "reward" else None
            path = first.path if first is not None else cfg.critic
            if first is not None and not first.same_tokens:
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

    # --- 1-3: rollout (sampling, scoring, log-probs, values), then rewards and advantages -----------

    @torch.no_grad()
    def rollout(self, records, prompts_plain, prompt_tokens) -> tuple[Rollout, list[str], dict[str, float]]:
        """One batch of prompts through ``rlhf.rollout.make_rollout``, then PPO's own part: per-token
        rewards with the KL penalty and GAE advantages. Returns the rollout, the decoded responses and
        this phase's timings and statistics."""
        cfg = self.cfg
        ro, responses, stats = make_rollout(
            self.policy, self.reference, self.tokenizer, self.scoring, prompts_plain, [r.meta for r in records],
            prompt_tokens, cfg.sampling, cfg.batch_size, self.device, cfg.run.bf16, self.value_head, self.critic,
        )  # fmt: skip
        # 3. Per-token rewards with the KL penalty, then GAE on the critic's values.
        ro.kl = kl_estimate(ro.logprobs, ro.ref_logprobs, cfg.kl_estimator)
        ro.rewards = penalised_rewards(ro.scores, ro.kl, self.beta, ro.response_mask)
        if cfg.whiten_rewards:
            ro.rewards = whiten(ro.rewards, ro.response_mask, shift_mean=False)
        advantages, ro.returns = gae(ro.rewards, ro.values, ro.response_mask, cfg.gamma, cfg.lam)
        ro.advantages = whiten(advantages, ro.response_mask)
        k3 = kl_estimate(ro.logprobs, ro.ref_logprobs, "k3")
        stats.update(
            kl=masked_sum(ro.kl, ro.response_mask, 1).mean().item(),
            kl_k3=masked_sum(k3, ro.response_mask, 1).mean().item(),
            beta=self.beta,
        )
        return ro, responses, stats

    # --- 4: the update ------------------------------------------------------------------------------

    def update(self, ro: Rollout, optimizer, generator: torch.Generator, run: StageRun) -> dict[str, float]:
        """``ppo_epochs`` passes of clipped PPO over shuffled minibatches of the rollout, each minibatch
        one optimiser step (``rlhf.training.backward``, then ``StageRun.optimizer_step``)."""
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

                def loss_fn(part: Rollout, normalizer) -> tuple[torch.Tensor, dict[str, float]]:
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
                    share = (rm.sum() / normalizer).item()  # this micro-batch's share of the tokens
                    stats = {k: v.item() * share for k, v in {**pg, **vf}.items()}
                    stats.update(policy_loss=pg_loss.item(), value_loss=vf_loss.item(), entropy=ent.item())
                    return loss, stats

                micro = (ro.select(idx[m0 : m0 + cfg.batch_size]) for m0 in range(0, mini, cfg.batch_size))
                mb = backward(micro, loss_fn, ro.response_mask[idx].sum())  # this minibatch's statistics
                if cfg.early_stop_kl is not None and mb["approx_kl"] > cfg.early_stop_kl:
                    # The policy moved too far from the one that sampled: drop this step, end the update.
                    optimizer.zero_grad(set_to_none=True)
                    stopped_early = True
                    break
                for k, v in mb.items():
                    sums[k] += v
                sums["grad_norm"] += run.optimizer_step(trained, optimizer, cfg.optim.max_grad_norm)
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
    source = rdata.named_source(cfg.data)
    if source is not None:
        train, report = rdata.load_prompts(
            source.prompts(cfg.lab_prompts, cfg.run.seed + 31_337), limit=cfg.limit
        )
        log(f"{cfg.data} prompts: {report.summary()}")
        evals = rdata.load_prompts(source.eval_prompts(cfg.eval_prompts))[0] if cfg.eval_prompts else []
        return train, evals
    train, evals = load_splits(cfg, rdata.load_prompts, log)
    return train, evals[: cfg.eval_prompts]


def generate_for_eval(ppo: PPO, model_ctx, tokens, seed: int) -> list[str]:
    """One sampled response per held-out prompt (training temperature), from the model ``model_ctx`` gives."""
    cfg = ppo.cfg
    with model_ctx as model:
        return sample_responses(
            model, ppo.tokenizer, tokens, cfg.sampling, cfg.rollout_size, seed, ppo.device, cfg.run.bf16
        )[0]


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------


def train_ppo(cfg: PPOConfig, stop_after: int | None = None, log=print) -> Path:
    """Run PPO; return the final policy folder. ``stop_after``: as in ``rlhf.stages.sft.train_sft``."""
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
    # A data source with a judge (the lab's gold judge) scores the rollouts and the held-out samples.
    source = rdata.named_source(cfg.data)
    judge = source if source is not None and hasattr(source, "judge") else None

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
            reference = generate_for_eval(
                ppo, reference_policy(ppo.policy, ppo.reference), eval_tokens, cfg.run.seed + 1
            )
            if is_main_process():
                reference_file.write_text(json.dumps(reference))

    def evaluate(step: int) -> None:
        responses = generate_for_eval(ppo, nullcontext(ppo.policy), eval_tokens, cfg.run.seed + 2)
        values: dict[str, float] = {}
        if judge is not None:
            values.update(
                judge.judge_against(eval_plain, [r.meta for r in eval_records], responses, reference)
            )
        else:
            values["response_words"] = sum(len(r.split()) for r in responses) / len(responses)
        run.metrics.log(step, "eval", **values)
        if is_main_process():
            rows = [
                {"prompt": p, "response": r, "reference": ref}
                for p, r, ref in zip(eval_plain, responses, reference)
            ]
            (run.dir / "eval_samples.json").write_text(json.dumps({"step": step, "samples": rows}, indent=1))
        if judge is not None:
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
        if judge is not None:
            gold = judge.judge(plain, responses, [r.meta for r in records])
            roll_stats["gold"] = sum(gold) / len(gold)
        generator = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)  # minibatch order
        upd_stats = ppo.update(rollout, optimizer, generator, run)
        run.check_finite(step + 1, model=ppo.trained(), **upd_stats)  # losses, gradient norm, weights
        ppo.update_beta(roll_stats["kl"], cfg.rollout_size)
        scheduler.step()
        step = run.advance()

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
