"""The benchmark orchestrator: ours against Hugging Face TRL, side by side on this machine.

    python bench/run.py                       # what `make bench` runs (after bench/setup.sh)
    python bench/run.py --steps 2 --repeats 1 # a smoke test of the whole pipeline
    BENCH_SMOLLM2=1 python bench/run.py       # also the (slow) SmolLM2-135M rows

Standard library only, so any Python can drive it; the work happens in subprocesses:

1. ``prepare.py`` (the project's Python) makes the model folders and the lab data both sides use.
2. For each row (SFT, reward model, PPO; on the tiny random Llama, optionally SmolLM2-135M), it runs
   ``ours.py`` and ``theirs.py`` alternately (ours, theirs, ours, theirs, ...) ``--repeats`` times, each
   measurement in a fresh process with the same thread count, and collects what each wrote: the seconds
   of the training call, the work done (tokens, pairs, samples) and the process's peak RSS.
3. It writes ``results.json`` (every run, the medians, the machine and the versions) and ``RESULTS.md``.

Which venv runs what: ours in the project's ``.venv``; TRL 1.16.0 (SFT, reward model) in
``bench/.venv-trl116``; TRL 1.12.0 (PPO, ``trl.experimental.ppo``) in ``bench/.venv-trl112``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# ---------------------------------------------------------------------------------------------------
# What each row runs. The same numbers go to both sides (ours.py and theirs.py map them onto each
# trainer's own settings). PPO: `rollout_size` prompts per step; minibatch = batch_size * grad_accum
# samples; micro-batch = batch_size. The default minibatch is the whole rollout: TRL 1.12 counts its
# gradient-accumulation micro-batches across minibatches (it steps the optimiser once per
# `gradient_accumulation_steps` micro-batches, whatever `num_mini_batches` is), so one minibatch per
# epoch is the setting where both do the same number of optimiser steps.
# ---------------------------------------------------------------------------------------------------

TASKS = {
    "sft": {"metric": "SFT tokens/s", "peer": "trl116"},
    "rm": {"metric": "reward-model pairs/s", "peer": "trl116"},
    "ppo": {"metric": "PPO samples/s", "peer": "trl112"},
}

ROW_SETTINGS = {
    # The random Llama of a few million parameters (bench/prepare.py SHAPES["tiny"]).
    "cpu": {
        "sft": dict(steps=60, batch_size=16, grad_accum=1, max_length=128, lr=1e-4),
        "rm": dict(steps=40, batch_size=16, grad_accum=1, max_length=128, lr=1e-4),
        "ppo": dict(steps=6, batch_size=8, grad_accum=4, max_length=128, lr=1e-5,
                    ppo=dict(rollout_size=32, ppo_epochs=4, response_length=48, temperature=1.0,
                             kl_coef=0.05, missing_eos_penalty=1.0)),
    },
    # SmolLM2-135M on CPU: ~40x the compute per token, so fewer and smaller steps.
    "smollm2": {
        "sft": dict(steps=8, batch_size=8, grad_accum=1, max_length=128, lr=1e-5),
        "rm": dict(steps=4, batch_size=8, grad_accum=1, max_length=128, lr=1e-5),
        "ppo": dict(steps=2, batch_size=4, grad_accum=2, max_length=128, lr=1e-6,
                    ppo=dict(rollout_size=8, ppo_epochs=1, response_length=48, temperature=1.0,
                             kl_coef=0.05, missing_eos_penalty=1.0)),
    },
    # The GPU script's row: a model of Qwen2.5-0.5B's shape (random weights), bf16 autocast on CUDA.
    "gpu": {
        "ppo": dict(steps=3, batch_size=16, grad_accum=4, max_length=128, lr=1e-6,
                    ppo=dict(rollout_size=64, ppo_epochs=4, response_length=48, temperature=1.0,
                             kl_coef=0.05, missing_eos_penalty=1.0)),
    },
}  # fmt: skip

# Dense bf16 peak of the GPUs we expect (TFLOP/s, no sparsity), for MFU; BENCH_PEAK_TFLOPS overrides.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0}


# ---------------------------------------------------------------------------------------------------
# Machine and versions
# ---------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
    }
    try:
        mem = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            info["gpu"] = out.stdout.strip().splitlines()[0]
    return info


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True, text=True
        )
        return rev.stdout.strip() + (" (src/ modified)" if dirty.stdout.strip() else "")
    except OSError:
        return "-"


def venv_pins(python: str) -> str | None:
    """The note bench/setup.sh wrote beside a peer venv (what was pinned, what pip chose)."""
    pins = Path(python).parent.parent / "bench-pins.txt"
    return pins.read_text().strip() if pins.exists() else None


# ---------------------------------------------------------------------------------------------------
# Running one measurement
# ---------------------------------------------------------------------------------------------------


def child_env(threads: int, workdir: Path) -> dict[str, str]:
    """The environment of every measurement: the same thread count, offline, quiet."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_DATASETS_CACHE=str(workdir / "hf-datasets"),
        TRL_EXPERIMENTAL_SILENCE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",  # no load/save progress bars in the logs, on either side
        TQDM_DISABLE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_one(python: str, script: str, spec: dict, workdir: Path, tag: str, env: dict, timeout: float) -> dict:
    """One measurement in its own process; returns its result (or ``{"error": ...}``)."""
    specs, logs = workdir / "specs", workdir / "logs"
    specs.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = (
        specs / f"{tag}.json",
        specs / f"{tag}.result.json",
        logs / f"{tag}.log",
    )
    shutil.rmtree(spec["output_dir"], ignore_errors=True)
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2))
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        try:
            proc = subprocess.run(
                [python, str(HERE / script), str(spec_path), str(result_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, timeout=timeout,
            )  # fmt: skip
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    wall = time.perf_counter() - t0
    shutil.rmtree(spec["output_dir"], ignore_errors=True)  # final models and checkpoints: not kept
    if code != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        print(f"    FAILED ({code}); log {log_path}:\n      " + "\n      ".join(tail), flush=True)
        return {"error": f"exit {code}", "log": str(log_path), "process_seconds": wall}
    result = json.loads(result_path.read_text())
    result["process_seconds"] = wall
    return result


# ---------------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def flops_per_sample(info: dict, prompt_tokens: float, response_length: int) -> float:
    """Training FLOPs of one sample in one PPO epoch: forward + backward (6 per parameter per token) of the
    policy (its LM head included) and the critic (no LM head; the embedding lookup is no matmul), plus
    causal attention (6 * layers * context * hidden per token), on prompt + full-length response."""
    tokens = prompt_tokens + response_length
    vocab_hidden = info["vocab_size"] * info["hidden_size"]
    policy = info["policy_params"] if info["tied"] else info["policy_params"] - vocab_hidden
    critic = info["reward_params"] - vocab_hidden
    attention = 2 * 6 * info["num_layers"] * (tokens / 2) * info["hidden_size"]  # two models
    return tokens * (6 * (policy + critic) + attention)


def summarise(row: dict, runs: list[dict], prepared: dict, machine: dict) -> dict:
    ok = {
        side: [r for r in runs if r.get("side") == side and "error" not in r] for side in ("ours", "theirs")
    }
    out = {
        "row": row["name"], "task": row["task"], "model": row["model"], "metric": TASKS[row["task"]]["metric"],
        "runs_ok": {side: len(v) for side, v in ok.items()},
        "runs_failed": sum(1 for r in runs if "error" in r),
    }  # fmt: skip
    for side, rs in ok.items():
        out[f"{side}_rate"] = median([r["rate"] for r in rs])
        out[f"{side}_seconds"] = median([r["seconds"] for r in rs])
        out[f"{side}_peak_rss_mib"] = median([r["peak_rss_mib"] for r in rs])
        if any("peak_cuda_mib" in r for r in rs):
            out[f"{side}_peak_cuda_mib"] = median([r.get("peak_cuda_mib") for r in rs])
        phases = [r["phases"] for r in rs if "phases" in r]
        if phases:
            steps = row["spec"]["steps"]
            out[f"{side}_phase_seconds_per_step"] = {
                k: median([p[k] / steps for p in phases]) for k in ("generation", "scoring", "training")
            }
    loop = [r["work"] / r["loop_seconds"] for r in ok["ours"] if r.get("loop_seconds")]
    out["ours_loop_rate"] = median(loop)
    out["rate_ratio"] = ratio(out["ours_rate"], out["theirs_rate"])
    out["rss_ratio"] = ratio(out["ours_peak_rss_mib"], out["theirs_peak_rss_mib"])
    if row["task"] == "ppo" and row["spec"]["device"].startswith("cuda"):
        gpu = next((r["cuda_device"] for r in runs if "cuda_device" in r), machine.get("gpu", "?"))
        out["mfu_training"] = training_mfu(row, out, prepared, gpu)
    return out


def training_mfu(row: dict, summary: dict, prepared: dict, gpu: str) -> dict:
    """Model FLOPs utilisation of the PPO update phase, each side, from its median update seconds."""
    peak = os.environ.get("BENCH_PEAK_TFLOPS")
    if peak is None:
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    if peak is None:
        return {"note": "unknown GPU peak; set BENCH_PEAK_TFLOPS"}
    spec, info = row["spec"], prepared["models"][row["model"]]
    per_step = (
        flops_per_sample(
            info["flops"], prepared["mean_prompt_tokens"][row["model"]], spec["ppo"]["response_length"]
        )
        * spec["ppo"]["rollout_size"]
        * spec["ppo"]["ppo_epochs"]
    )
    out = {"peak_tflops": float(peak), "training_tflop_per_step": per_step / 1e12}
    for side in ("ours", "theirs"):
        phase = summary.get(f"{side}_phase_seconds_per_step")
        if phase and phase["training"]:
            out[side] = per_step / phase["training"] / (float(peak) * 1e12)
    return out


def fmt(x, spec: str = ".1f", none: str = "—") -> str:
    return none if x is None else format(x, spec)


def fmt_rate(x: float | None) -> str:
    """A rate with at least three significant digits (0.123, 4.56, 78.9, 1234.5)."""
    if x is None:
        return "—"
    return format(x, ".3g") if abs(x) < 100 else format(x, ".1f")


def write_markdown(path: Path, results: dict) -> None:
    m, s = results["machine"], results["settings"]
    v = results["versions"]
    lines = [
        "# Benchmark: rlhf against Hugging Face TRL",
        "",
        "Ours (`rlhf`) and TRL train the same model on the same data with the same batch size, sequence",
        "lengths, number of steps, dtype and thread count, on the same machine, one measurement per fresh",
        "process, alternating ours, theirs, ours, theirs, ...; the tables give medians over the repeats.",
        "",
        "- **What is timed.** TRL: `trainer.train()` only (model loading and TRL's dataset tokenisation,",
        "  done in the trainer's constructor, are outside; nothing is saved). Ours: the whole",
        "  `train_sft` / `train_rm` / `train_ppo` call, which also loads the model and tokenizer, tokenises",
        "  the data and writes the final model (and, for the reward model, `reward_stats.json` over 2",
        "  responses): conservative for us. *ours, loop only* is our rate over the training loop alone",
        "  (the clock of our `metrics.jsonl`, which starts once the model and data are ready).",
        "- **Work.** SFT: non-padding tokens through the training forwards (counted by one hook on the",
        "  model's backbone on both sides). Reward model: preference pairs (steps × batch). PPO: prompts",
        "  sampled and trained on (steps × rollout batch).",
        "- **Switched off on both sides** as far as each allows: evaluation, checkpoints, logging",
        "  integrations, progress bars, gradient checkpointing and bf16 on CPU (TRL turns both on by",
        "  default). TRL still computes its per-step metrics; ours writes one metrics line (PPO: one per step).",
        "- **Batching**, each side at its defaults: ours takes each SFT step's examples from",
        "  length-sorted windows of shuffled examples (`group_by_length`) and packs reward-model",
        "  micro-batches end to end without padding (`padding_free`); TRL pads each batch to its longest",
        '  sequence, in random order (its `train_sampling_strategy="group_by_length"` is off by default;',
        "  `run.py --trl-group-by-length` turns it on for TRL's SFT).",
        "- **PPO** (TRL 1.12 `trl.experimental.ppo`): the same rollout batch, response length (sampling",
        "  stops at EOS, which random weights rarely pick, so responses are ~full length on both sides),",
        "  minibatches, PPO epochs, temperature, fixed KL coefficient, clip ranges and value coefficient;",
        "  the reward model and the critic start from the same sequence-classification folder. TRL takes",
        "  the old log-probs from the sampling logits; ours recomputes them with a policy forward (one more",
        "  forward per rollout, in *scoring*). Neither clips gradients here (TRL's PPO loop never does).",
        "- **Peak RSS**: `ru_maxrss` of the measurement's own process at its end (model loading and each",
        "  side's imports included: TRL's process also imports datasets, accelerate, pandas, ...).",
        "- **Ratios** are ours / TRL: a rate ratio above 1 means ours is faster; an RSS ratio below 1 means",
        "  ours uses less memory.",
        "",
        "Run it: `make bench` (creates `bench/.venv-trl116` and `bench/.venv-trl112` on first use, then",
        "`python bench/run.py`). Options: `--steps N` (all rows), `--repeats N`, `--threads N`,",
        "`--tasks sft,rm,ppo`; `BENCH_SMOLLM2=1` (or `--smollm2`) adds the slow SmolLM2-135M rows;",
        "`BENCH_ARGS='...' make bench` passes options through make. The GPU variant is `bench/gpu.sh`.",
        "",
        f"- **Date**: {results['date']}",
        f"- **Machine**: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable)"
        + (f", {m['memory_gib']} GiB" if "memory_gib" in m else "")
        + (f"; GPU: {m['gpu']}" if "gpu" in m else "")
        + f"; {m['platform']}",
        f"- **Threads**: torch.set_num_threads({s['threads']}) and OMP_NUM_THREADS={s['threads']} on both sides;"
        f" device {s['device']}, {'bf16 autocast' if s['bf16'] else 'fp32'}",
        f"- **Repeats**: {s['repeats']} per side and row"
        + (f" (SmolLM2 rows: {s['smollm2_repeats']})" if s.get("smollm2") else ""),
        f"- **Ours**: rlhf {v.get('rlhf', '-')} (git {v.get('git', '-')}), torch {v.get('torch', '-')},"
        f" transformers {v.get('transformers', '-')}",
    ]
    if s["bf16"]:
        lines += [
            "- **GPU precision**: fp32 weights with bf16 autocast on both sides. Ours autocasts the whole",
            "  step (generation, scoring, update). TRL 1.12's PPO autocasts its update only (through its",
            "  Accelerator, told by ACCELERATE_MIXED_PRECISION=bf16); its generation and rollout forwards",
            "  run in the weights' dtype (fp32), as TRL does with fp32 weights.",
            "- **Training MFU**: model FLOPs of the update phase (6 × parameters × tokens for the policy, its",
            "  LM head included, and the critic, plus causal attention; prompt + full-length response tokens;",
            "  rollout × PPO epochs samples per step) / (median update seconds per step × the GPU's dense",
            "  bf16 peak; `BENCH_PEAK_TFLOPS` overrides).",
        ]
    for key, label in (("trl116", "TRL for SFT / reward model"), ("trl112", "TRL for PPO")):
        if key in v:
            p = v[key]
            lines.append(
                f"- **{label}**: trl {p.get('trl')}, transformers {p.get('transformers')}, torch {p.get('torch')},"
                f" accelerate {p.get('accelerate')}, datasets {p.get('datasets')}"
                + (f" ({v[key + '_note']})" if v.get(key + "_note") else "")
            )
    lines += ["", "## Results", ""]
    lines.append(
        "| row | model | metric | ours | TRL | ours/TRL | ours, loop only | peak RSS ours (MiB) "
        "| peak RSS TRL (MiB) | RSS ours/TRL | runs ok (ours/TRL) |"
    )
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results["rows"]:
        lines.append(
            f"| {r['row']} | {r['model']} | {r['metric']} | {fmt_rate(r['ours_rate'])} | {fmt_rate(r['theirs_rate'])} "
            f"| {fmt(r['rate_ratio'], '.2f')} | {fmt_rate(r['ours_loop_rate'])} | {fmt(r['ours_peak_rss_mib'], '.0f')} "
            f"| {fmt(r['theirs_peak_rss_mib'], '.0f')} | {fmt(r['rss_ratio'], '.2f')} "
            f"| {r['runs_ok']['ours']}/{r['runs_ok']['theirs']} |"
        )
    ppo_rows = [
        r
        for r in results["rows"]
        if r.get("ours_phase_seconds_per_step") or r.get("theirs_phase_seconds_per_step")
    ]
    if ppo_rows:
        lines += [
            "", "## PPO phases (median seconds per PPO step)", "",
            "Ours: from our `metrics.jsonl` (`time/generation`, `time/scoring`, `time/training`). TRL: its",
            "`batch_generation` call; scoring = from its end to the first training forward; training = from",
            "there to the next generation (the step's logging included).", "",
            "| row | side | generation | scoring | training | training MFU |",
            "|---|---|---:|---:|---:|---:|",
        ]  # fmt: skip
        for r in ppo_rows:
            for side, label in (("ours", "ours"), ("theirs", "TRL")):
                p = r.get(f"{side}_phase_seconds_per_step")
                if not p:
                    continue
                mfu = (r.get("mfu_training") or {}).get(side)
                lines.append(
                    f"| {r['row']} | {label} | {p['generation']:.3f} | {p['scoring']:.3f} | {p['training']:.3f} "
                    f"| {fmt(mfu * 100 if mfu is not None else None, '.1f')}{'%' if mfu is not None else ''} |"
                )
    lines += ["", "## Settings per row", ""]
    for row in results["row_specs"]:
        sp = row["spec"]
        text = (
            f"steps {sp['steps']}, micro-batch {sp['batch_size']}, grad_accum {sp['grad_accum']}, "
            f"max_length {sp['max_length']}, lr {sp['lr']} (constant, no warmup, AdamW, weight decay 0)"
        )
        if "ppo" in sp:
            p = sp["ppo"]
            text += (
                f"; rollout {p['rollout_size']} prompts, minibatch {sp['batch_size'] * sp['grad_accum']}, "
                f"{p['ppo_epochs']} PPO epochs, responses up to {p['response_length']} tokens at temperature "
                f"{p['temperature']}, kl_coef {p['kl_coef']} (fixed), missing-EOS penalty {p['missing_eos_penalty']}"
            )
        if sp.get("trl_group_by_length") and row["task"] == "sft":
            text += "; TRL with `train_sampling_strategy=group_by_length`"
        lines.append(f"- **{row['name']}** ({row['model']}): {text}")
    described = {
        "tiny": "a Llama with random weights and the lab tokenizer",
        "qwen2.5-0.5b": "Qwen2.5-0.5B's shape (24 layers, hidden 896) with random weights and the lab "
        "tokenizer's 1,024-token vocabulary (Qwen's is 151,936)",
        "smollm2": "SmolLM2-135M-Instruct, dequantised to fp32 from its Q4_1 GGUF file",
    }
    lines += ["", "Models: " + "; ".join(
        f"`{k}`: {described.get(k, k)}, {v['policy']['params'] / 1e6:.2f}M parameters"
        for k, v in results["prepared"]["models"].items()
    ) + f". Lab tokenizer: `{results['prepared']['tokenizer']}`."]  # fmt: skip
    if any(r["runs_failed"] for r in results["rows"]):
        lines += ["", "Some runs failed: see `runs` in results.json for their logs."]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="optimiser / PPO steps of every row (default: per row)")
    ap.add_argument("--repeats", type=int, default=5, help="measurements per side and row (default 5)")
    ap.add_argument("--smollm2-repeats", type=int, default=3, help="at most this many for the SmolLM2 rows")
    ap.add_argument("--threads", type=int, help="torch threads of both sides (default: the usable cores)")
    ap.add_argument("--tasks", default="sft,rm,ppo", help="comma-separated subset of sft,rm,ppo")
    ap.add_argument("--smollm2", action="store_true", default=os.environ.get("BENCH_SMOLLM2", "") not in ("", "0"),
                    help="add the SmolLM2-135M rows (slow; also BENCH_SMOLLM2=1)")  # fmt: skip
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    ap.add_argument("--shape", default="tiny", help="model shape of the main rows (prepare.py SHAPES)")
    ap.add_argument("--settings", default=None, help="row settings: cpu (default on CPU) or gpu (on CUDA)")
    ap.add_argument("--tokenizer", help="lab tokenizer folder, or 'train' to train the lab tokenizer alone "
                    "(default: the lab base model's, rlhf.lab.base.build_base_model())")  # fmt: skip
    ap.add_argument(
        "--trl-group-by-length",
        action="store_true",
        help="TRL's SFT with train_sampling_strategy=group_by_length (its default: random batches)",
    )
    ap.add_argument("--sides", default="ours,theirs", help="ours,theirs (default) or one of them")
    ap.add_argument("--workdir", default=str(HERE / ".work"), help="models, data, logs (default bench/.work)")
    ap.add_argument("--out", default=str(HERE), help="folder for the results files (default bench/)")
    ap.add_argument("--tag", default="", help="suffix of the results files: results<-tag>.json")
    ap.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--trl116-python", default=str(HERE / ".venv-trl116" / "bin" / "python"))
    ap.add_argument("--trl112-python", default=str(HERE / ".venv-trl112" / "bin" / "python"))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before one measurement is killed")
    ap.add_argument("--time-budget", type=float, help="start no new repeat after this many seconds (each row "
                    "still gets one measurement per side)")  # fmt: skip
    args = ap.parse_args()

    started = time.perf_counter()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or usable
    bf16 = args.device.startswith("cuda")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        sys.exit(f"unknown tasks {sorted(unknown)}; choose from {sorted(TASKS)}")
    pythons = {"ours": args.ours_python, "trl116": args.trl116_python, "trl112": args.trl112_python}
    sides = [x.strip() for x in args.sides.split(",") if x.strip()]
    if not sides or set(sides) - {"ours", "theirs"}:
        sys.exit("--sides: ours, theirs, or ours,theirs")
    needed = {"ours"} | ({TASKS[t]["peer"] for t in tasks} if "theirs" in sides else set())
    missing = [f"{k}: {pythons[k]}" for k in sorted(needed) if not shutil.which(pythons[k])]
    if missing:
        sys.exit("missing interpreters (run bench/setup.sh first):\n  " + "\n  ".join(missing))
    env = child_env(threads, workdir)

    # 1. Models and data (the project's Python: it needs rlhf for the lab).
    print(f"[bench] preparing models and data in {workdir}", flush=True)
    cmd = [pythons["ours"], str(HERE / "prepare.py"), "--workdir", str(workdir), "--shape", args.shape]
    cmd += ["--smollm2"] if args.smollm2 else []
    cmd += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    prepared = json.loads((workdir / "prepared.json").read_text())

    # Warm the page cache of each interpreter's libraries, so that no first measurement pays for it.
    for key in sorted(needed):
        mods = "torch, transformers" + (", trl" if key != "ours" else ", rlhf")
        subprocess.run([pythons[key], "-c", f"import {mods}"], env=env, check=False, capture_output=True)

    # 2. The rows, in order; within a row, ours and theirs alternate.
    settings_name = args.settings or ("gpu" if bf16 else "cpu")
    rows = []
    models = [args.shape] + (["smollm2"] if args.smollm2 else [])
    for model in models:
        table = ROW_SETTINGS["smollm2" if model == "smollm2" else settings_name]
        for task in tasks:
            if task not in table:
                continue
            spec = json.loads(json.dumps(table[task]))  # a deep copy
            if args.steps:
                spec["steps"] = args.steps
            m = prepared["models"][model]
            spec.update(
                task=task, model=m["policy"]["path"], rm_model=m["reward"]["path"], data=prepared["data"][task],
                threads=threads, seed=0, device=args.device, bf16=bf16, trl_group_by_length=args.trl_group_by_length,
            )  # fmt: skip
            repeats = min(args.repeats, args.smollm2_repeats) if model == "smollm2" else args.repeats
            rows.append(
                {"name": f"{task}-{model}", "task": task, "model": model, "spec": spec, "repeats": repeats}
            )

    all_runs, summaries = [], []
    for row in rows:
        peer = TASKS[row["task"]]["peer"]
        print(f"[bench] {row['name']}: {row['repeats']} x ({', '.join(sides)}; TRL from {peer})", flush=True)
        runs = []
        for i in range(row["repeats"]):
            if i and args.time_budget and time.perf_counter() - started > args.time_budget:
                print(f"[bench]   time budget spent: {i} repeat(s) of {row['name']}", flush=True)
                break
            for side, python, script in (
                ("ours", pythons["ours"], "ours.py"),
                ("theirs", pythons[peer], "theirs.py"),
            ):
                if side not in sides:
                    continue
                tag = f"{row['name']}-{side}-{i}"
                spec = dict(row["spec"], output_dir=str(workdir / "runs" / tag))
                result = run_one(python, script, spec, workdir, tag, env, args.timeout)
                result.update(side=side, row=row["name"], repeat=i)
                runs.append(result)
                if "error" not in result:
                    print(
                        f"[bench]   {side:6s} #{i}: {result['rate']:10.1f} {result['unit']}/s  "
                        f"{result['seconds']:7.2f} s  peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True,
                    )  # fmt: skip
        all_runs += runs
        summaries.append(summarise(row, runs, prepared, machine_info()))

    # 3. Results.
    machine = machine_info()
    versions = {"git": git_revision()}
    for r in all_runs:
        if "versions" not in r:
            continue
        if r["side"] == "ours":
            versions.update(
                {k: v for k, v in r["versions"].items() if k in ("python", "torch", "transformers", "rlhf")}
            )
        else:
            peer = TASKS[r["task"]]["peer"]
            versions[peer] = r["versions"]
            note = venv_pins(pythons[peer])
            if note:
                versions[peer + "_note"] = " ".join(x for x in note.splitlines() if x.startswith("#")).lstrip(
                    "# "
                )
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "versions": versions,
        "settings": {"threads": threads, "repeats": args.repeats, "device": args.device, "bf16": bf16,
                     "steps_override": args.steps, "settings": settings_name, "smollm2": args.smollm2,
                     "smollm2_repeats": min(args.repeats, args.smollm2_repeats)},
        "prepared": prepared,
        "row_specs": rows,
        "rows": summaries,
        "runs": all_runs,
        "total_seconds": time.perf_counter() - started,
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    (out / f"results{suffix}.json").write_text(json.dumps(results, indent=2))
    write_markdown(out / f"RESULTS{suffix}.md", results)
    print(f"[bench] wrote {out / f'results{suffix}.json'} and {out / f'RESULTS{suffix}.md'} "
          f"in {results['total_seconds'] / 60:.1f} min", flush=True)  # fmt: skip
    print((out / f"RESULTS{suffix}.md").read_text())
    failed = sum(r["runs_failed"] for r in summaries)
    if failed:
        sys.exit(f"[bench] {failed} measurement(s) failed: see the logs in {workdir / 'logs'}")


if __name__ == "__main__":
    main()
