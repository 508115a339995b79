"""Make what both sides train on, once (runs in the project's .venv: it needs ``rlhf`` for the lab):

- ``models/<shape>``: a causal LM with random weights (a Llama of a few million parameters, or a model of
  Qwen2.5-0.5B's shape for the GPU script) and the lab tokenizer, saved with ``save_pretrained``;
- ``models/<shape>-rm``: a one-label sequence classifier of the same shape (the PPO reward model and the
  initial critic of both sides; ``pad_token_id`` set);
- optionally ``models/smollm2`` and ``models/smollm2-rm``: SmolLM2-135M-Instruct, dequantised once from
  its GGUF file to plain fp32 safetensors, so that both sides load the same weights the same way;
- ``data/sft.jsonl``, ``data/prefs.jsonl``, ``data/prompts.jsonl``: lab rows in TRL's conversational
  formats (prompt-completion, preference, prompt-only), without the lab's extra columns.

It writes ``prepared.json`` (paths, parameter counts, mean prompt length) for ``run.py``. Everything is
deterministic (seeded); what exists with the same settings is reused.

    python bench/prepare.py --workdir bench/.work [--shape tiny|qwen2.5-0.5b] [--smollm2] [--tokenizer DIR|train]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path

# Model shapes. "tiny": a Llama of ~3.7M parameters with the lab's 1,024-token vocabulary (CPU rows).
# "qwen2.5-0.5b": Qwen2.5-0.5B's sizes (24 layers, hidden 896, MLP 4864, 14 query / 2 KV heads, tied
# embeddings) with random weights and the lab tokenizer's vocabulary (the GPU script).
SHAPES = {
    "tiny": dict(
        arch="llama", hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
    ),
}  # fmt: skip


def lab_tokenizer_folder(given: str | None, workdir: Path) -> Path:
    """The lab tokenizer's folder: ``--tokenizer DIR``; or the lab base model's (built and cached if
    missing, which pretrains it: minutes); or, with ``--tokenizer train``, the lab tokenizer alone, trained
    the way ``build_base_model`` trains it (``train_tokenizer`` on the lab corpus: seconds; the GPU script)."""
    if given == "train":
        from rlhf.lab.base import BaseModelSpec, corpus, train_tokenizer

        folder = workdir / "lab-tokenizer"
        if not (folder / "tokenizer_config.json").exists():
            spec = BaseModelSpec()
            train_tokenizer(corpus(spec.n_docs // 4, spec.seed), spec.vocab_size).save_pretrained(folder)
        return folder
    if given:
        return Path(given)
    from rlhf.lab.base import build_base_model

    return build_base_model()


def build_models(workdir: Path, shape: str, tokenizer_dir: Path, seed: int) -> dict:
    """The causal LM and the reward model of ``shape``, random init, with the tokenizer saved beside each."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2ForSequenceClassification,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    sizes = dict(SHAPES[shape])
    arch = sizes.pop("arch")
    config_cls, lm_cls, rm_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification),
    }[arch]
    common = dict(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **sizes,
    )  # fmt: skip
    folders = {"policy": workdir / "models" / shape, "reward": workdir / "models" / f"{shape}-rm"}
    stamp = json.dumps(
        {"shape": shape, "tokenizer": str(tokenizer_dir), "seed": seed, **common}, sort_keys=True
    )
    info = {}
    for role, folder in folders.items():
        if (folder / "bench-stamp.json").exists() and (folder / "bench-stamp.json").read_text() == stamp:
            n = json.loads((folder / "config.json").read_text()).get("bench_params")
        else:
            torch.manual_seed(seed + (role == "reward"))
            if role == "policy":
                model = lm_cls(config_cls(**common))
            else:
                model = rm_cls(config_cls(**common, num_labels=1))
            model.config.bench_params = n = sum(p.numel() for p in model.parameters())
            folder.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(folder)  # fp32, as initialised
            tok.save_pretrained(folder)
            (folder / "bench-stamp.json").write_text(stamp)
            del model
        info[role] = {"path": str(folder), "params": n}
    info["flops"] = flops_info(folders["policy"], info["policy"]["params"], info["reward"]["params"])
    return info


def flops_info(policy_dir: Path, policy_params: int, reward_params: int) -> dict:
    """The sizes run.py's MFU arithmetic needs."""
    config = json.loads((policy_dir / "config.json").read_text())
    return {
        "vocab_size": config["vocab_size"], "hidden_size": config["hidden_size"],
        "num_layers": config["num_hidden_layers"], "tied": bool(config.get("tie_word_embeddings", False)),
        "policy_params": policy_params, "reward_params": reward_params,
    }  # fmt: skip


def build_smollm2(workdir: Path, seed: int) -> dict:
    """SmolLM2-135M-Instruct from its GGUF file (``rlhf.modeling.smollm2_folder``), dequantised to fp32 and
    saved as a plain folder, plus a one-label reward model on it (a new score head, seeded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.modeling import SMOLLM2_GGUF, forget_gguf, smollm2_folder

    policy, reward = workdir / "models" / "smollm2", workdir / "models" / "smollm2-rm"
    if not (policy / "bench-stamp.json").exists():
        src = smollm2_folder()
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        if tok.pad_token is None:  # as ours does: masks, not PAD ids, mark real tokens
            tok.pad_token = tok.eos_token
        model = forget_gguf(
            AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        )
        model.config.pad_token_id = tok.pad_token_id
        model.save_pretrained(policy)
        tok.save_pretrained(policy)
        (policy / "bench-stamp.json").write_text("{}")
        del model
    if not (reward / "bench-stamp.json").exists():
        torch.manual_seed(seed + 1)
        tok = AutoTokenizer.from_pretrained(policy)
        rm = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1, dtype=torch.float32)
        rm.config.pad_token_id = tok.pad_token_id
        rm.save_pretrained(reward)
        tok.save_pretrained(reward)
        (reward / "bench-stamp.json").write_text("{}")
        del rm
    info = {
        "policy": {"path": str(policy), "params": count_saved_parameters(policy)},
        "reward": {"path": str(reward), "params": count_saved_parameters(reward)},
    }
    info["flops"] = flops_info(policy, info["policy"]["params"], info["reward"]["params"])
    return info


def count_saved_parameters(folder: Path) -> int:
    """Parameters stored in a folder's safetensors files (tied weights are stored once)."""
    from safetensors import safe_open

    total = 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is no dict)
                total += math.prod(f.get_slice(key).get_shape())
    return total


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def build_data(workdir: Path, n: int, seed: int) -> dict:
    """The three lab datasets (``n`` rows each) in TRL's conversational formats, extra columns dropped."""
    from rlhf.lab.datasets import demonstration_rows, prompt_rows
    from rlhf.lab.world import respond, sample_prompts

    folder = workdir / "data"
    sft = [{"prompt": r["prompt"], "completion": r["completion"]} for r in demonstration_rows(n, seed)]
    rng = random.Random(seed + 1)
    prefs = []
    for p in sample_prompts(n, seed + 2):
        chosen = respond(p, "ideal", rng)
        rejected = respond(p, rng.choice(("wrong", "verbose")), rng)
        prefs.append(
            {
                "prompt": p.messages(),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    prompts = [{"prompt": r["prompt"]} for r in prompt_rows(n, seed + 3)]
    paths = {"sft": folder / "sft.jsonl", "rm": folder / "prefs.jsonl", "ppo": folder / "prompts.jsonl"}
    for key, rows in (("sft", sft), ("rm", prefs), ("ppo", prompts)):
        write_jsonl(paths[key], rows)
    return {key: str(path) for key, path in paths.items()}


def mean_prompt_tokens(model_dir: str, prompts_file: str) -> float:
    """Mean length of the chat-rendered prompts (with the generation prompt): for the MFU arithmetic."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    lengths = []
    for line in Path(prompts_file).read_text().splitlines()[:500]:
        text = tok.apply_chat_template(json.loads(line)["prompt"], tokenize=False, add_generation_prompt=True)
        lengths.append(len(tok(text, add_special_tokens=False)["input_ids"]))
    return statistics.mean(lengths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--smollm2", action="store_true", help="also prepare the SmolLM2-135M row")
    ap.add_argument(
        "--tokenizer", help="the lab tokenizer's folder, or 'train' (default: the lab base model's)"
    )
    ap.add_argument("--rows", type=int, default=1000, help="rows of each dataset (>= steps x batch of a row)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    workdir = Path(args.workdir).resolve()
    tokenizer_dir = lab_tokenizer_folder(args.tokenizer, workdir)
    data = build_data(workdir, args.rows, args.seed)
    models = {args.shape: build_models(workdir, args.shape, tokenizer_dir, args.seed)}
    if args.smollm2:
        models["smollm2"] = build_smollm2(workdir, args.seed)
    prompt_tokens = {name: mean_prompt_tokens(m["policy"]["path"], data["ppo"]) for name, m in models.items()}
    out = {
        "tokenizer": str(tokenizer_dir),
        "data": data,
        "models": models,
        "mean_prompt_tokens": prompt_tokens,
    }
    (workdir / "prepared.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
