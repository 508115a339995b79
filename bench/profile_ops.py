"""Where the time goes: each side's benchmark workloads under ``torch.profiler``, with FLOPs counted.

    python bench/profile_ops.py [--tasks sft,rm,ppo] [--workdir bench/.work]   # after `make bench`

(PPO: two steps instead of the row's six, since the profiler holds every op event in memory.)
    python bench/profile_ops.py --one SIDE SPEC.json OUT.json                   # one workload (internal)

For every row it reuses the spec ``run.py`` wrote for the first measurement of each side
(``<workdir>/specs/<row>-<side>-0.json``), runs that workload once more in a fresh process of the same
venv and thread count, with the profiler on, and sums the ops' own CPU time into classes: matrix
multiplies (``mm``, ``addmm``, ``bmm``, ...), attention (``scaled_dot_product_*``), the optimiser step,
and everything else (elementwise, copies, indexing, Python-side glue). With the matmul FLOPs the
profiler counts, it gives the rate the matmuls ran at, against the best rate this machine reaches on a
matmul of the model's own shape (measured here, same threads). The profiler slows every op a little, so
use the shares and rates, not the profiled seconds, next to ``RESULTS.md``.

Writes ``bench/profile.json`` and ``bench/PROFILE.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_mm"}
OPTIMIZER = "Optimizer.step"
PPO_STEPS = 2


def classify(name: str) -> str:
    if name in MATMUL:
        return "matmul"
    if "scaled_dot_product" in name:
        return "attention"
    return "other"


def profile_one(side: str, spec_path: Path, out_path: Path) -> None:
    """Run one workload of ``side`` (ours.py / theirs.py's runner) under the profiler; write the sums."""
    import torch
    from common import TokenCounter, set_threads
    from torch.profiler import ProfilerActivity, profile

    spec = json.loads(spec_path.read_text())
    set_threads(spec["threads"])
    module = __import__("ours" if side == "ours" else "theirs")
    runner = {"sft": module.run_sft, "rm": module.run_rm, "ppo": lambda s, c: module.run_ppo(s)}[spec["task"]]
    model = json.loads((Path(spec["model"]) / "config.json").read_text())
    peak = peak_matmul_gflops(model["hidden_size"], model["intermediate_size"], spec["threads"])
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        out = runner(spec, TokenCounter())
    wall = time.perf_counter() - t0
    seconds = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    flops = {"matmul": 0.0, "all": 0.0}
    optimizer = 0.0
    for e in prof.key_averages():
        if e.key.startswith(OPTIMIZER):
            optimizer += e.cpu_time_total / 1e6  # its ops are also counted in their own classes
            continue
        seconds[classify(e.key)] += e.self_cpu_time_total / 1e6
        flops["all"] += e.flops or 0
        if classify(e.key) == "matmul":
            flops["matmul"] += e.flops or 0
    result = {
        "side": side, "task": spec["task"], "wall_seconds": wall, "timed_seconds": out["seconds"],
        "work": out["work"], "unit": out["unit"], "self_seconds": seconds, "optimizer_seconds": optimizer,
        "flops": flops, "threads": spec["threads"], "torch": torch.__version__, "peak_matmul_gflops": peak,
    }  # fmt: skip
    out_path.write_text(json.dumps(result, indent=2))


def peak_matmul_gflops(hidden: int, intermediate: int, threads: int) -> float:
    """Best GFLOP/s of the model's own matmuls here (fp32): ``(tokens, hidden) @ (hidden, intermediate)``,
    its transposes and ``(tokens, hidden) @ (hidden, hidden)``, for several token counts."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for tokens in (512, 544, 1024, 2048):
        for k, n in ((hidden, intermediate), (intermediate, hidden), (hidden, hidden)):
            a, b = torch.randn(tokens, k), torch.randn(n, k)
            for _ in range(3):
                a @ b.T
            t0, reps = time.perf_counter(), 30
            for _ in range(reps):
                a @ b.T
            best = max(best, 2 * tokens * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs=3, metavar=("SIDE", "SPEC", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--tasks", default="sft,rm,ppo")
    ap.add_argument("--workdir", default=str(HERE / ".work"))
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    if args.one:
        profile_one(args.one[0], Path(args.one[1]), Path(args.one[2]))
        return

    from run import ROOT, TASKS, child_env

    workdir = Path(args.workdir)
    pythons = {
        "ours": str(ROOT / ".venv" / "bin" / "python"),
        "trl116": str(HERE / ".venv-trl116" / "bin" / "python"),
        "trl112": str(HERE / ".venv-trl112" / "bin" / "python"),
    }
    for task in args.tasks.split(","):
        for side in ("ours", "theirs"):
            spec_path = workdir / "specs" / f"{task}-tiny-{side}-0.json"
            if not spec_path.exists():
                sys.exit(f"{spec_path}: missing; run `make bench` first")
            spec = json.loads(spec_path.read_text())
            spec["output_dir"] = str(workdir / "runs" / f"profile-{task}-{side}")
            if task == "ppo":  # the profiler keeps every op event in memory: two PPO steps, not six
                spec["steps"] = min(spec["steps"], PPO_STEPS)
            prof_spec, out = (
                workdir / "specs" / f"profile-{task}-{side}.json",
                workdir / f"profile-{task}-{side}.json",
            )
            prof_spec.write_text(json.dumps(spec, indent=2))
            python = pythons["ours" if side == "ours" else TASKS[task]["peer"]]
            print(f"[profile] {task} {side}", flush=True)
            subprocess.run(
                [python, __file__, "--one", side, str(prof_spec), str(out)],
                check=True, env=child_env(spec["threads"], workdir), cwd=workdir,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
    # The table: every row profiled so far (this call's, and earlier calls' for the other tasks).
    rows = [
        json.loads(f.read_text())
        for task in ("sft", "rm", "ppo")
        for side in ("ours", "theirs")
        if (f := workdir / f"profile-{task}-{side}.json").exists()
    ]
    (Path(args.out) / "profile.json").write_text(json.dumps({"rows": rows}, indent=2))
    write_markdown(Path(args.out) / "PROFILE.md", rows)
    print((Path(args.out) / "PROFILE.md").read_text())


def write_markdown(path: Path, rows: list[dict]) -> None:
    lines = [
        "# Benchmark profile: where each side's time goes",
        "",
        "`python bench/profile_ops.py` (after `make bench`): each row's workload run once more per side under",
        "`torch.profiler` (CPU, FLOPs counted), with the benchmark's spec, venv and threads (PPO: 2 steps).",
        "Own CPU time of the ops, summed by class; the profiler's own cost inflates *other*, so read shares",
        "and rates, not seconds. Matmul rate = the matmul FLOPs the profiler counts / their time. Best here:",
        "the fastest of the model's own fp32 matmuls (512 to 2,048 tokens) alone in a loop, same threads,",
        "measured in the same process just before its workload.",
        "",
        "| row | side | matmul share | attention share | other share | optimizer s | matmul GFLOP/s | best here "
        "| of best | matmul GFLOP per unit of work |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per_unit = {}
    for r in rows:
        s = r["self_seconds"]
        total = sum(s.values())
        rate = r["flops"]["matmul"] / max(s["matmul"], 1e-9) / 1e9
        per_unit[(r["task"], r["side"])] = (r["flops"]["matmul"] / r["work"], rate)
        lines.append(
            f"| {r['task']} | {r['side']} | {s['matmul'] / total:.0%} | {s['attention'] / total:.0%} "
            f"| {s['other'] / total:.0%} | {r['optimizer_seconds']:.2f} | {rate:.1f} | {r['peak_matmul_gflops']:.1f} "
            f"| {rate / r['peak_matmul_gflops']:.0%} "
            f"| {r['flops']['matmul'] / 1e9 / r['work']:.4f} per {r['unit'].rstrip('s')} |"
        )
    lines += ["", "Theirs / ours, per unit of work: matmul FLOPs, and the rate they ran at:", ""]
    for task in ("sft", "rm", "ppo"):
        if (task, "ours") in per_unit and (task, "theirs") in per_unit:
            (f_o, r_o), (f_t, r_t) = per_unit[(task, "ours")], per_unit[(task, "theirs")]
            lines.append(f"- {task}: FLOPs {f_t / f_o:.2f}x, matmul rate {r_t / r_o:.2f}x")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
