"""One measurement of Hugging Face TRL (runs in bench/.venv-trl116 for SFT and the reward model, in
bench/.venv-trl112 for PPO): ``python bench/theirs.py SPEC.json RESULT.json``.

The models, tokenizer and datasets are loaded and the trainer is built (TRL tokenises the dataset in the
trainer's constructor) before the clock starts; the timed block is ``trainer.train()`` alone. Evaluation,
checkpoints, logging integrations, the progress bar, gradient checkpointing and bf16 (TRL's defaults
turn the last two on) are switched off; nothing is saved after training.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Clock, TokenCounter, run_measurement  # noqa: E402


def trainer_args(spec: dict) -> dict:
    """``TrainingArguments`` shared by the three trainers, matching ours (see ours.py)."""
    return dict(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["grad_accum"],
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        seed=spec["seed"],
        bf16=spec["bf16"],
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=spec["device"] == "cpu",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def load_tokenizer(path: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    if tok.pad_token is None:  # as ours does (rlhf.modeling.load_tokenizer)
        tok.pad_token = tok.eos_token
    return tok


def jsonl_dataset(path: str):
    from datasets import load_dataset

    return load_dataset("json", data_files=path, split="train")


def run_sft(spec: dict, counter: TokenCounter) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = load_tokenizer(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    args = SFTConfig(
        **trainer_args(spec),
        max_steps=spec["steps"],
        max_length=spec["max_length"],
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        # Off by default in TRL, as in ours' RESULTS table; `run.py --trl-group-by-length` turns it on.
        train_sampling_strategy="group_by_length" if spec.get("trl_group_by_length") else "random",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=jsonl_dataset(spec["data"]), processing_class=tok
    )
    counter.attach(trainer.model)
    with Clock(spec["device"].startswith("cuda")) as clock:
        trainer.train()
    return {
        "seconds": clock.seconds, "work": counter.tokens, "unit": "tokens",
        "trl_total_train_tokens": int(getattr(trainer, "_total_train_tokens", -1)),
    }  # fmt: skip


def run_rm(spec: dict, counter: TokenCounter) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tok = load_tokenizer(spec["model"])
    # A new one-label score head on the causal LM, as ours makes (rlhf.modeling.load_reward_model).
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"], num_labels=1, dtype=torch.float32
    )
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(
        **trainer_args(spec),
        max_steps=spec["steps"],
        max_length=spec["max_length"],
        center_rewards_coefficient=None,
    )
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=jsonl_dataset(spec["data"]), processing_class=tok
    )
    counter.attach(trainer.model)
    with Clock(spec["device"].startswith("cuda")) as clock:
        trainer.train()
    pairs = spec["steps"] * spec["batch_size"] * spec["grad_accum"]
    return {"seconds": clock.seconds, "work": pairs, "unit": "pairs", "tokens": counter.tokens}


class PhaseTimer:
    """Times the phases of TRL's PPO step without copying its loop: ``batch_generation`` (a module-level
    function the loop calls by name) is wrapped to mark the rollout's generation; the first training
    forward (``forward`` with grad enabled) after it marks the end of scoring; the next generation (or the
    end of ``train``) marks the end of the update."""

    def __init__(self, module, cuda: bool) -> None:
        self.cuda = cuda
        self.totals = {"generation": 0.0, "scoring": 0.0, "training": 0.0}
        self._gen_end = None  # end of the last generation, until its scoring ends
        self._train_start = None  # start of the current update
        generate, forward = module.batch_generation, module.forward

        def timed_generation(*args, **kwargs):
            self._close_update()
            t0 = self._now()
            out = generate(*args, **kwargs)
            self._gen_end = self._now()
            self.totals["generation"] += self._gen_end - t0
            return out

        def timed_forward(*args, **kwargs):
            import torch

            if torch.is_grad_enabled() and self._gen_end is not None:
                self._train_start = self._now()
                self.totals["scoring"] += self._train_start - self._gen_end
                self._gen_end = None
            return forward(*args, **kwargs)

        module.batch_generation, module.forward = timed_generation, timed_forward

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def _close_update(self) -> None:
        if self._train_start is not None:
            self.totals["training"] += self._now() - self._train_start
            self._train_start = None

    def finish(self) -> dict[str, float]:
        self._close_update()
        return dict(self.totals)


def run_ppo(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    p = spec["ppo"]
    rollout, mini, micro = p["rollout_size"], spec["batch_size"] * spec["grad_accum"], spec["batch_size"]
    # TRL's PPO appends the responses to left-padded queries.
    tok = load_tokenizer(spec["model"], padding_side="left")
    dtype = torch.float32
    policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype)
    ref_policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype)
    # Reward model and critic start from the same sequence-classification folder, as ours (critic=reward).
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        spec["rm_model"], num_labels=1, dtype=dtype
    )
    value_model = AutoModelForSequenceClassification.from_pretrained(
        spec["rm_model"], num_labels=1, dtype=dtype
    )

    # Prompts tokenised as ours does (rlhf.stages.ppo.encode_prompts): chat template with the generation prompt.
    texts = [
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for messages in jsonl_dataset(spec["data"])["prompt"]
    ]
    ids = [tok(text, add_special_tokens=False)["input_ids"] for text in texts]
    train_dataset = Dataset.from_dict({"input_ids": ids})

    # One PPO batch = per_device_train_batch_size * gradient_accumulation_steps prompts (= our rollout_size),
    # split into num_mini_batches minibatches (of our batch_size * grad_accum), each in micro-batches.
    args = trainer_args(spec)
    args.update(
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=rollout // micro,
        logging_strategy="steps",  # TRL's PPO loop logs every step whatever this says; keep it cheap
        logging_steps=1,
    )
    config = PPOConfig(
        **args,
        num_mini_batches=rollout // mini,
        total_episodes=spec["steps"] * rollout,
        num_ppo_epochs=p["ppo_epochs"],
        response_length=p["response_length"],
        temperature=p["temperature"],
        stop_token="eos",
        missing_eos_penalty=p["missing_eos_penalty"],
        kl_coef=p["kl_coef"],
        kl_estimator="k1",
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=0.95,
        whiten_rewards=False,
        local_rollout_forward_batch_size=rollout,  # generate the whole rollout at once, as ours does
        num_sample_generations=0,
    )
    if spec["bf16"]:
        # TRL 1.12's PPOTrainer makes its own Accelerator without a mixed_precision argument, and
        # transformers 5's TrainingArguments no longer exports bf16 to the environment: say it here.
        # (Its autocast then covers the update, through the prepared policy+value wrapper; generation
        # and the reference / reward / value forwards of the rollout run in the weights' dtype, fp32.)
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    trainer = PPOTrainer(
        args=config, processing_class=tok, model=policy, ref_model=ref_policy, reward_model=reward_model,
        train_dataset=train_dataset, value_model=value_model, eval_dataset=train_dataset,
    )  # fmt: skip
    cuda = spec["device"].startswith("cuda")
    timer = PhaseTimer(ppo_module, cuda)
    with Clock(cuda) as clock:
        trainer.train()
    return {
        "seconds": clock.seconds, "work": spec["steps"] * rollout, "unit": "samples",
        "phases": timer.finish(),
    }  # fmt: skip


def main() -> None:
    run_measurement(
        {"sft": run_sft, "rm": run_rm, "ppo": lambda spec, counter: run_ppo(spec)},
        "theirs",
        ("torch", "transformers", "trl", "accelerate", "datasets"),
    )


if __name__ == "__main__":
    main()
