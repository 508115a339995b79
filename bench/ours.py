"""One measurement of OUR trainer (runs in the project's .venv): ``python bench/ours.py SPEC.json RESULT.json``.

The timed block is the whole ``train_sft`` / ``train_rm`` / ``train_ppo`` call: it loads the model and
tokenizer, tokenises the data (our own preparation, unlike TRL's, happens inside the call), trains, and
writes the final model. That is conservative for us. The seconds of the training loop alone (from our
``metrics.jsonl``: its clock starts after the model and data are ready) are reported beside it as
``loop_seconds``.

Evaluation, checkpoints, the progress bar and most metric lines are switched off through the config.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Clock, TokenCounter, run_measurement  # noqa: E402


def shared_overrides(spec: dict) -> list[str]:
    """Settings every stage gets: the model, sizes, a constant learning rate, and no evaluation,
    checkpoints, progress bar or resumption (``run.log_every = steps``: one metrics line, at the end)."""
    return [
        f"model={spec['model']}",
        f"data={spec['data']}",
        "eval_fraction=0",
        f"max_length={spec['max_length']}",
        f"batch_size={spec['batch_size']}",
        f"grad_accum={spec['grad_accum']}",
        f"max_steps={spec['steps']}",
        f"optim.lr={spec['lr']}",
        "optim.warmup_steps=0",
        "optim.schedule=constant",
        "optim.weight_decay=0",
        f"run.output_dir={spec['output_dir']}",
        f"run.seed={spec['seed']}",
        f"run.device={spec['device']}",
        f"run.bf16={str(spec['bf16']).lower()}",
        "run.eval_every=0",
        "run.save_every=0",
        "run.progress=false",
        "run.resume=false",
        f"run.log_every={spec['steps']}",
    ]


def read_loop_rows(output_dir: str) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split") == "train"]


def count_tokens_through(module, loader: str, counter: TokenCounter) -> None:
    """Wrap the model loader that a ``train_*`` function calls (``module.<loader>``), so that the model it
    returns carries the token counter: no change to our source, and the same hook TRL's model gets."""
    load = getattr(module, loader)

    def load_and_count(*args, **kwargs):
        model = load(*args, **kwargs)
        counter.attach(model)
        return model

    setattr(module, loader, load_and_count)


def timed_stage(spec: dict, counter: TokenCounter, module, config_cls, train, loader: str, extra: list[str]):
    """Config from the shared overrides + ``extra``, the token counter on the model ``module.<loader>``
    returns, and ``train(cfg)`` timed; returns ``(seconds, loop_seconds)`` (see the module docstring)."""
    from rlhf.config import load_config

    cfg = load_config(config_cls, None, [*shared_overrides(spec), *extra])
    count_tokens_through(module, loader, counter)
    with Clock(spec["device"].startswith("cuda")) as clock:
        train(cfg, log=lambda *_: None)
    return clock.seconds, read_loop_rows(spec["output_dir"])[-1]["time"]


def run_sft(spec: dict, counter: TokenCounter) -> dict:
    import rlhf.stages.sft as sft

    extra = ["lab_eval_prompts=0", "truncation=left", "packing=false"]
    seconds, loop = timed_stage(spec, counter, sft, sft.SFTConfig, sft.train_sft, "load_causal_lm", extra)
    return {"seconds": seconds, "work": counter.tokens, "unit": "tokens", "loop_seconds": loop}


def run_rm(spec: dict, counter: TokenCounter) -> dict:
    import rlhf.stages.rm as reward

    # reward_stats.json is written at the end over `stats_responses` responses: keep that to the minimum.
    extra = ["eval_data=null", "stats_responses=2", "use_margin=false"]
    seconds, loop = timed_stage(
        spec, counter, reward, reward.RMConfig, reward.train_rm, "load_reward_model", extra
    )
    pairs = spec["steps"] * spec["batch_size"] * spec["grad_accum"]
    return {
        "seconds": seconds,
        "work": pairs,
        "unit": "pairs",
        "loop_seconds": loop,
        "tokens": counter.tokens,
    }


def run_ppo(spec: dict) -> dict:
    from rlhf.config import load_config
    from rlhf.stages.ppo import PPOConfig, train_ppo

    p = spec["ppo"]
    overrides = [
        *shared_overrides(spec),
        "run.log_every=1",  # one metrics line per PPO step: it carries the phase timings
        "eval_prompts=0",
        f"reward_models=[{{path: '{spec['rm_model']}', normalize: false}}]",
        "critic=reward",
        f"rollout_size={p['rollout_size']}",
        f"ppo_epochs={p['ppo_epochs']}",
        f"max_new_tokens={p['response_length']}",
        f"temperature={p['temperature']}",
        "top_p=1.0",
        f"kl_coef={p['kl_coef']}",
        "adaptive_kl=false",
        "kl_estimator=k1",
        f"missing_eos_penalty={p['missing_eos_penalty']}",
        "clip_eps=0.2",
        "value_clip=0.2",
        "vf_coef=0.1",
        "entropy_coef=0",
        "gamma=1.0",
        "lam=0.95",
        "whiten_rewards=false",
        "optim.max_grad_norm=null",  # TRL's PPO loop does not clip gradients
    ]
    # max_length bounds the prompt only in our PPO; the prompts are far shorter.
    cfg = load_config(PPOConfig, None, overrides)
    with Clock(spec["device"].startswith("cuda")) as clock:
        train_ppo(cfg, log=lambda *_: None)
    rows = read_loop_rows(spec["output_dir"])
    phases = {
        name: sum(r.get(f"time/{name}", 0.0) for r in rows) for name in ("generation", "scoring", "training")
    }
    samples = spec["steps"] * p["rollout_size"]
    return {
        "seconds": clock.seconds, "work": samples, "unit": "samples", "loop_seconds": rows[-1]["time"],
        "phases": phases,
        "response_tokens": sum(r.get("response_tokens", 0.0) for r in rows) / max(1, len(rows)),
    }  # fmt: skip


def main() -> None:
    run_measurement(
        {"sft": run_sft, "rm": run_rm, "ppo": lambda spec, counter: run_ppo(spec)},
        "ours",
        ("torch", "transformers", "rlhf"),
    )


if __name__ == "__main__":
    main()
