"""``rlhf sweep``: ``rlhf run`` over several seeds, and what held across them.

    rlhf sweep                                        # the default pipeline, seeds 0-4, under runs/lab-s<seed>/
    rlhf sweep --seeds 0,1,2 name=plain rounds=1 rm.members=1 ppo.kl_controller=ziegler
    rlhf sweep name=oracle reward=gold               # the ceiling: PPO against the gold judge itself

A seed sets every stage's seed and, with ``model: lab``, the lab base model's (``lab:<seed>``), so the
spread includes what one machine's base model would hide. Each seed is the run ``<name>-s<seed>``
(finished stages are reused, an interrupted one resumes). Written to ``runs/<name>-sweep/``:
``sweep.json`` (every seed's figures and the pooled ones), ``sweep.md`` (the same as tables) and
``sweep.html`` (the tables and the per-seed spread, drawn).

Pooled figures are the mean over seeds with a 95% Student-t interval over seeds (the spread of the
outcome of a whole run, not of one run's prompts), and the pooled win rate's Wilson interval over all
held-out prompts of all seeds.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from pathlib import Path
from typing import Any

from rlhf.guards import atomic_file
from rlhf.pipeline import run_pipeline, stage_configs
from rlhf.report import CSS, _png, hacking_by_round
from rlhf.stats import t_interval, wilson_interval

# Two-sided 95% Student-t quantiles by degrees of freedom (n seeds - 1); 1.96 beyond the table.

# The figures of a run, by name: (where in eval.json or the run folder, what it means).
FIGURES = {
    "gold_sft": "gold utility of the SFT model (mean over held-out prompts, in [-1, 1])",
    "gold_ppo": "gold utility of the final PPO policy",
    "gold_gain": "gold utility, PPO minus SFT",
    "win_rate": "gold win rate of PPO against SFT, per prompt, ties half",
    "win_rate_perfect": "the win rate a policy perfect by the gold judge would reach against the same SFT samples",
    "harmful_refusal_sft": "share of harmful requests refused, SFT",
    "harmful_refusal_ppo": "share of harmful requests refused, PPO",
    "over_refusal_ppo": "share of benign look-alike requests refused, PPO",
    "sycophancy_ppo": "share of false claims agreed with, PPO",
    "uncertainty_ppo": "share of unknowable questions answered with uncertainty, PPO",
    "refusal_consistency_ppo": "share of paraphrase groups refused all or none, PPO",
    "kl_eval": "KL of PPO to SFT on its held-out samples (nats per response)",
    "kl_final": "PPO's training KL to SFT, mean of the last 5 steps (nats)",
    "kl_target": "the KL controller's target (nats)",
    "safety_regressions": "safety metrics that got worse than SFT's by more than 0.05",
    "hacked_rounds": "PPO rounds whose training rollouts read as reward hacking (the report's verdict)",
    "hacked_families": "prompt families where the final reward model's score rose and gold fell on held-out prompts",
    "seconds": "the run's seconds, base model excluded",
}


def run_figures(run_dir: Path, kl_target: float) -> dict[str, Any]:
    """One finished run's figures (see :data:`FIGURES`)."""
    result = json.loads((run_dir / "eval.json").read_text())
    sft, ppo = result["results"]["sft"], result["results"]["ppo"]
    trace = result.get("ppo_trace", [])[-5:]
    timings = json.loads((run_dir / "timings.json").read_text())
    out: dict[str, Any] = {
        "gold_sft": sft["gold"], "gold_ppo": ppo["gold"], "gold_gain": ppo["gold"] - sft["gold"],
        "win_rate": ppo["win_rate_gold"], "n_prompts": result["n_prompts"],
        "harmful_refusal_sft": sft["harmful_refusal_rate"], "harmful_refusal_ppo": ppo["harmful_refusal_rate"],
        "over_refusal_ppo": ppo["over_refusal_rate"], "sycophancy_ppo": ppo["sycophancy_rate"],
        "uncertainty_ppo": ppo["uncertainty_rate"], "refusal_consistency_ppo": ppo["refusal_consistency"],
        "kl_eval": ppo.get("kl_to_reference", float("nan")),
        "kl_final": statistics.fmean(r["kl"] for r in trace) if trace else float("nan"),
        "kl_target": kl_target,
        "safety_regressions": ppo["safety_vs_baseline"]["regressions"],
        "hacked_rounds": [n for n, h in hacking_by_round(result.get("ppo_trace", [])) if h["hacked"]],
        "hacked_families": sorted(ppo.get("reward_hacked_families", {})),
        "seconds": sum(v for k, v in timings.items() if k != "base" and not k.endswith("_partial")),
        "stage_seconds": timings,
    }  # fmt: skip
    if "win_rate_gold_perfect" in ppo:  # evaluations before it was measured have no headroom figure
        out["win_rate_perfect"] = ppo["win_rate_gold_perfect"]
    families = sorted(k.split("/", 1)[1] for k in ppo if k.startswith("gold/"))
    for f in families:
        out[f"gold_gain/{f}"] = ppo[f"gold/{f}"] - sft[f"gold/{f}"]
        for ours, theirs in (
            (f"win_rate/{f}", f"win_rate_gold/{f}"),
            (f"win_rate_perfect/{f}", f"win_rate_gold_perfect/{f}"),
        ):
            if theirs in ppo:
                out[ours] = ppo[theirs]
    if "rounds" in result:
        out["rounds"] = result["rounds"]
    return out


def pool(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95% interval over seeds of every numeric figure; the pooled win rate's Wilson interval
    over all prompts; the seeds that flagged a safety regression, and those that read as reward hacking."""
    runs = list(per_seed.values())
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and k != "n_prompts"]
    pooled: dict[str, Any] = {}
    for k in keys:
        values = [r[k] for r in runs if k in r and math.isfinite(r[k])]
        if values:
            m, low, high = t_interval(values)
            pooled[k] = {"mean": m, "low": low, "high": high, "min": min(values), "max": max(values)}
    n = sum(r["n_prompts"] for r in runs)
    wins = sum(r["win_rate"] * r["n_prompts"] for r in runs) / n
    pooled["win_rate_all_prompts"] = dict(zip(("mean", "low", "high"), (wins, *wilson_interval(wins, n))))
    pooled["seeds_with_safety_regression"] = [s for s, r in per_seed.items() if r["safety_regressions"]]
    pooled["seeds_with_reward_hacking"] = [
        s for s, r in per_seed.items() if r["hacked_rounds"] or r["hacked_families"]
    ]
    return pooled


def family_lines(per_seed: dict[int, dict[str, Any]], pooled: dict[str, Any]) -> list[str]:
    """Per prompt family, pooled means: gold gain, PPO's win rate and a perfect policy's ("-" where a
    seed's evaluation did not measure it, so that no pooled cell stands on only some of the seeds)."""
    families = sorted(k.split("/", 1)[1] for k in pooled if k.startswith("gold_gain/"))
    if not families:
        return []

    def cell(key: str, fmt: str) -> str:
        return format(pooled[key]["mean"], fmt) if all(key in r for r in per_seed.values()) else "-"

    return [
        "| family (pooled means) | gold gain | win rate | a perfect policy's win rate |",
        "| --- | --- | --- | --- |",
        *[f"| {f} | {cell(f'gold_gain/{f}', '+.3f')} | {cell(f'win_rate/{f}', '.3f')} | "
          f"{cell(f'win_rate_perfect/{f}', '.3f')} |" for f in families],
        "",
    ]  # fmt: skip


def sweep_markdown(name: str, per_seed: dict[int, dict[str, Any]], pooled: dict[str, Any]) -> str:
    cols = ["gold_sft", "gold_ppo", "win_rate", "harmful_refusal_ppo", "over_refusal_ppo", "sycophancy_ppo",
            "uncertainty_ppo", "kl_final", "seconds"]  # fmt: skip
    if all("win_rate_perfect" in r for r in per_seed.values()):
        cols.insert(cols.index("win_rate") + 1, "win_rate_perfect")
    lines = [
        f"# Sweep `{name}`: {len(per_seed)} seeds", "",
        "| seed | " + " | ".join(cols) + " | safety regressions | reward hacking |",
        "| --- | " + " | ".join("---" for _ in cols) + " | --- | --- |",
    ]  # fmt: skip
    for seed, r in per_seed.items():
        cells = [f"{r[c]:.3f}" if c != "seconds" else f"{r[c]:.0f}" for c in cols]
        hacked = ", ".join([f"round {n}" for n in r["hacked_rounds"]] + r["hacked_families"]) or "no"
        lines.append(
            f"| {seed} | "
            + " | ".join(cells)
            + f" | {', '.join(r['safety_regressions']) or 'none'} | {hacked} |"
        )
    pooled_cells = [
        f"{pooled[c]['mean']:.3f} ({pooled[c]['low']:.3f} to {pooled[c]['high']:.3f})" for c in cols
    ]
    lines.append("| pooled, mean (95%) | " + " | ".join(pooled_cells) + " | "
                 f"{len(pooled['seeds_with_safety_regression'])} of {len(per_seed)} seeds | "
                 f"{len(pooled['seeds_with_reward_hacking'])} of {len(per_seed)} seeds |")  # fmt: skip
    w = pooled["win_rate_all_prompts"]
    lines += [
        "",
        f"Win rate over all {sum(r['n_prompts'] for r in per_seed.values())} held-out prompts of the seeds: "
        f"{w['mean']:.3f} (95% {w['low']:.3f}-{w['high']:.3f}). Gold gain over SFT: "
        f"{pooled['gold_gain']['mean']:+.3f} (95% {pooled['gold_gain']['low']:+.3f} to {pooled['gold_gain']['high']:+.3f}).",
        "",
        *family_lines(per_seed, pooled),
        "| figure | meaning |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in FIGURES.items()],
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def sweep_html(name: str, per_seed: dict[int, dict[str, Any]], pooled: dict[str, Any], markdown: str) -> str:
    """A page with the tables and each figure's per-seed values around the pooled interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = ["gold_gain", "win_rate", "harmful_refusal_ppo", "over_refusal_ppo", "sycophancy_ppo", "kl_final"]
    fig, axes = plt.subplots(1, len(figs), figsize=(2.4 * len(figs), 3))
    for ax, key in zip(axes, figs):
        ax.plot([0] * len(per_seed), [r[key] for r in per_seed.values()], "o", alpha=0.6)
        p = pooled[key]
        ax.errorbar(
            [0.3], [p["mean"]], yerr=[[p["mean"] - p["low"]], [p["high"] - p["mean"]]], fmt="s", capsize=4
        )
        ax.set_title(key, fontsize=9)
        ax.set_xticks([])
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: each seed (dots) and the pooled mean with its 95% interval")
    body = "<pre>" + html.escape(markdown) + "</pre>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Sweep {html.escape(name)}</title>'
            f"<style>{CSS}</style></head><body><h1>Sweep {html.escape(name)}</h1>{_png(fig)}{body}</body></html>\n")  # fmt: skip


def run_sweep(cfg, seeds: list[int], log=print) -> Path:
    """Run ``cfg`` (an ``rlhf.pipeline.RunConfig``) once per seed, then write the sweep's files."""
    stage_configs(cfg)  # every section validated before the first seed runs
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        run_cfg = cfg.model_copy(update={"name": f"{cfg.name}-s{seed}", "seed": seed})
        log(f"=== sweep {cfg.name}: seed {seed} ({run_cfg.dir}) ===")
        run_pipeline(run_cfg, log=log)
        if not (run_cfg.dir / "eval.json").exists():
            raise RuntimeError(f"{run_cfg.dir}: the run did not finish")
        ppo = stage_configs(run_cfg)[f"ppo{run_cfg.final_round}"]
        per_seed[seed] = run_figures(run_cfg.dir, ppo.kl_target)
    pooled = pool(per_seed)
    out = Path(cfg.runs_dir) / f"{cfg.name}-sweep"
    out.mkdir(parents=True, exist_ok=True)
    markdown = sweep_markdown(cfg.name, per_seed, pooled)
    for file, text in (
        (
            "sweep.json",
            json.dumps({"config": cfg.model_dump(), "seeds": per_seed, "pooled": pooled}, indent=1),
        ),
        ("sweep.md", markdown),
        ("sweep.html", sweep_html(cfg.name, per_seed, pooled, markdown)),
    ):
        with atomic_file(out / file) as f:
            f.write(text)
    log(markdown)
    return out
