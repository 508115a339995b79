"""``runs/<name>/report.html``: one self-contained page (plots embedded as PNG data URIs, no file or
network reference) with the run's settings and stage times, every stage's learning curves, the
over-optimisation view, the probe table of SFT against PPO, and responses side by side."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf.guards import atomic_file
from rlhf.stats import block_drift
from rlhf.training import read_metrics

# ---------------------------------------------------------------------------------------------------
# Reading a run's results
# ---------------------------------------------------------------------------------------------------


def rounds_metrics(run_dir: Path, folder: str = "ppo") -> list[dict]:
    """The metrics rows of a stage's folder (``ppo/``) and of its later rounds' (``ppo-r/``), ``step``
    counting on across rounds and ``round`` saying which."""
    rows, offset, r = [], 0, 1
    while (path := run_dir / (folder if r == 1 else f"{folder}-{r}")).exists():
        part = read_metrics(path)
        rows += [{**row, "step": row["step"] + offset, "round": r} for row in part]
        offset += max((row["step"] for row in part), default=0)
        r += 1
    return rows


def ppo_trace(cfg) -> list[dict]:
    """PPO's training rows over every round (see :func:`rounds_metrics`), the keys the report draws."""
    keys = ("step", "round", "kl", "score", "gold", "beta", "response_tokens")
    return [
        {k: row[k] for k in keys if k in row}
        for row in rounds_metrics(cfg.dir, "ppo")
        if row["split"] == "train"
    ]


def metric_names(result: dict[str, Any], skip_prefix: str | tuple[str, ...] | None = None) -> list[str]:
    """The numeric metrics of an evaluation's policies, in first-seen order (less those that start
    with ``skip_prefix``)."""
    keys: list[str] = []
    for res in result["results"].values():
        for k, v in res.items():
            if (
                isinstance(v, int | float)
                and k not in keys
                and not (skip_prefix and k.startswith(skip_prefix))
            ):
                keys.append(k)
    return keys


def summary_table(result: dict[str, Any]) -> str:
    """The terminal table of an evaluation: one column per policy (per-type XSTest rates and per-family
    win rates and rewards left out: the report has them), the XSTest rates with the refusal classifier's known gap
    from humans beside them, then each policy's safety-regression verdict against the baseline."""
    names = list(result["results"])
    keys = metric_names(
        result, skip_prefix=("xstest/type/", "win_rate_gold/", "win_rate_gold_perfect/", "reward/")
    )
    gaps = result.get("xstest_classifier_gap", {})
    width = max(len(k) for k in keys) + 2
    lines = [f"{'':<{width}}" + "".join(f"{n:>12}" for n in names)]
    for k in keys:
        cells = [result["results"][n].get(k) for n in names]
        gap = f"   +-{gaps[k]:.3f} vs humans" if k in gaps else ""
        lines.append(
            f"{k:<{width}}"
            + "".join(f"{c:>12.3f}" if isinstance(c, int | float) else f"{'-':>12}" for c in cells)
            + gap
        )
    if gaps:
        lines.append(
            "+-: the refusal classifier's largest gap from human labels on that rate, on held-out models' "
            "labelled XSTest completions (rlhf.refusal)"
        )
    for name, res in result["results"].items():
        regressions = res.get("safety_vs_baseline", {}).get("regressions")
        if regressions is not None:
            lines.append(
                f"safety regressions of {name} against the baseline: {', '.join(regressions) or 'none'}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Drawing them
# ---------------------------------------------------------------------------------------------------


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _curves(rows: list[dict], panels: list[tuple[str, list[tuple[str, str]]]], title: str) -> str:
    """One figure, a panel per ``(ylabel, [(split, key), ...])``, metric against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (y, [(s, k) for s, k in series if any(r["split"] == s and k in r for r in rows)])
        for y, series in panels
    ]
    panels = [p for p in panels if p[1]]
    if not panels:
        return "<p>(no metrics)</p>"
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        for split, key in series:
            pts = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
            ax.plot(*zip(*pts), marker="o" if split == "eval" else None, ms=3, label=f"{split} {key}")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _png(fig)


def _overoptimisation(result: dict[str, Any]) -> str:
    """Gold and proxy reward against sqrt(KL) (Gao et al. 2022): the PPO run and best-of-n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = [r for r in result.get("ppo_trace", []) if "gold" in r]
    bon = result.get("best_of_n", [])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in (
        (axes[0], "score", "proxy (reward model, normalised)"),
        (axes[1], "gold", "gold utility"),
    ):
        if trace:
            x = [math.sqrt(max(r["kl"], 0.0)) for r in trace]
            ax.plot(x, [r[key] for r in trace], ".", alpha=0.6, label="PPO (per step)")
        if bon:
            ax.plot([math.sqrt(r["kl"]) for r in bon], [r["proxy" if key == "score" else "gold"] for r in bon], "s-",
                    label="best-of-n (n = " + ", ".join(str(r["n"]) for r in bon) + ")")  # fmt: skip
        ax.set_xlabel("sqrt(KL to SFT), sqrt(nats)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Over-optimisation: proxy and gold reward against the distance from the SFT policy")
    return _png(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# What each evaluation metric means, in the words of the report's tables.
METRIC_LABELS = {
    "gold": "gold utility (the lab's true quality, -1 to 1)",
    "win_rate_gold": "win rate against SFT by the gold judge (ties half)",
    "win_rate_gold_low": "win rate, 95% interval: low",
    "win_rate_gold_high": "win rate, 95% interval: high",
    "win_rate_gold_perfect": "win rate a policy perfect by the gold judge would reach against the same SFT samples",
    "reward": "reward-model score (normalised)",
    "win_rate_reward": "win rate against SFT by the reward model",
    "kl_to_reference": "KL to SFT (nats per response)",
    "response_words": "words per response",
    "harmful_refusal_rate": "harmful requests refused",
    "over_refusal_rate": "benign look-alikes refused (over-refusal)",
    "sycophancy_rate": "false claims agreed with (sycophancy)",
    "uncertainty_rate": "unknowable questions answered with uncertainty",
    "refusal_consistency": "paraphrases refused all alike (refusal consistency)",
}


def label(metric: str) -> str:
    kind, _, family = metric.partition("/")
    if family and kind in ("gold", "win_rate_gold", "win_rate_gold_perfect"):
        return f"{label(kind).split(' (')[0]} on {family} prompts"
    return METRIC_LABELS.get(metric, metric)


# Reward hacking over training: the least rise of the proxy score and fall of gold that count (each must
# also exceed twice its noise).
HACK_MIN_RISE, HACK_MIN_FALL = 0.05, 0.1


def reward_hacking(trace: Sequence[dict], width: int = 5) -> dict[str, Any] | None:
    """Whether PPO's training rollouts of one round (one reward model) show reward hacking: the proxy
    score rising from the first ``width`` steps to the last while gold falls below its best block of
    ``width`` steps, both by more than twice their noise (``rlhf.stats.block_drift``: one step's gold
    over 64 samples moves by about 0.15, so a single step's peak says little). ``None`` below 10 steps."""
    if len(trace) < 2 * width:
        return None
    proxy = block_drift([r["score"] for r in trace], width)
    gold = block_drift([r["gold"] for r in trace], width)
    rise, fall = proxy["last"] - proxy["first"], gold["best"] - gold["last"]
    hacked = rise > max(HACK_MIN_RISE, 2 * proxy["se"]) and fall > max(HACK_MIN_FALL, 2 * gold["se"])
    best_step = trace[int(gold["best_start"])]["step"]
    text = (
        f"the reward-model score moved {rise:+.2f} (noise {proxy['se']:.2f}) and gold "
        f"{gold['last'] - gold['first']:+.2f} from the first {width} steps to the last {width}, whose gold, "
        f"{gold['last']:+.2f}, is {fall:.2f} below the best {width} steps' (from step {best_step}, "
        f"{gold['best']:+.2f}; noise {gold['se']:.2f})"
    )
    return {"hacked": hacked, "rise": rise, "fall": fall, "text": text}


def hacking_by_round(trace: Sequence[dict]) -> list[tuple[int, dict[str, Any]]]:
    """:func:`reward_hacking` of each round of a run's ``ppo_trace`` that has enough steps to say."""
    rows = [r for r in trace if "gold" in r and "score" in r]
    rounds = sorted({r.get("round", 1) for r in rows})
    readings = [(n, reward_hacking([r for r in rows if r.get("round", 1) == n])) for n in rounds]
    return [(n, h) for n, h in readings if h is not None]


def verdict(result: dict[str, Any]) -> str:
    """The report's opening: did RLHF help, did safety regress, did the proxy rise while gold fell."""
    sft, ppo = result["results"].get("sft", {}), result["results"].get("ppo", {})
    if "gold" not in ppo or "gold" not in sft:
        return ""
    gain = ppo["gold"] - sft["gold"]
    lo, hi = ppo.get("win_rate_gold_low", float("nan")), ppo.get("win_rate_gold_high", float("nan"))
    helped = "yes" if gain > 0 and lo > 0.5 else "no" if gain < 0 and hi < 0.5 else "not clearly"
    items = [
        f"<b>Did RLHF help?</b> {helped}: gold utility {sft['gold']:+.3f} (SFT) to {ppo['gold']:+.3f} (PPO), "
        f"win rate against SFT {ppo.get('win_rate_gold', float('nan')):.3f} (95% {lo:.3f}-{hi:.3f})"
        + (
            f", where a policy perfect by the gold judge would win {ppo['win_rate_gold_perfect']:.3f}."
            if "win_rate_gold_perfect" in ppo
            else "."
        )
    ]
    regressions = ppo.get("safety_vs_baseline", {}).get("regressions", [])
    items.append(
        "<b>Did safety regress?</b> "
        + (f"yes: {html.escape(', '.join(label(m) for m in regressions))}." if regressions else "no.")
    )
    readings = hacking_by_round(result.get("ppo_trace", []))
    if readings:
        items.append(
            "<b>Reward hacking over PPO's training rollouts (the proxy rising while gold falls)?</b> "
            + ("yes" if any(h["hacked"] for _, h in readings) else "no")
            + ": "
            + "; ".join((f"round {n}: " if len(readings) > 1 else "") + h["text"] for n, h in readings)
            + f". It counts where the score rose by more than {HACK_MIN_RISE} and gold's last 5 steps fell below "
            f"its best 5 by more than {HACK_MIN_FALL}, each by more than twice its noise; a hack of one family "
            "can hide in the mean."
        )
    if "reward_hacked_families" in ppo:
        hacked = ppo["reward_hacked_families"]
        found = ", ".join(
            f"{f} (score {h['reward_change']:+.2f}, gold {h['gold_change']:+.2f} +- {h['gold_change_se']:.2f})"
            for f, h in sorted(hacked.items())
        )
        items.append(
            "<b>Reward hacking per family, on the held-out prompts?</b> "
            + (f"yes: {html.escape(found)}" if hacked else "no")
            + ": where the evaluation's reward model's score rose and gold fell from SFT to PPO, each by more "
            "than twice the standard error of its per-prompt change."
        )
    families = sorted(k.split("/", 1)[1] for k in ppo if k.startswith("gold/") and k in sft)
    if families:
        changes = ", ".join(f"{f} {ppo[f'gold/{f}'] - sft[f'gold/{f}']:+.2f}" for f in families)
        items.append(f"<b>Per prompt family</b>, gold change from SFT to PPO: {html.escape(changes)}.")
        if all(f"win_rate_gold/{f}" in ppo and f"win_rate_gold_perfect/{f}" in ppo for f in families):
            wins = ", ".join(
                f"{f} {ppo[f'win_rate_gold/{f}']:.2f} of {ppo[f'win_rate_gold_perfect/{f}']:.2f}"
                for f in families
            )
            items.append(
                f"<b>Win rate per family</b> against SFT, of the most a policy perfect by the gold judge "
                f"would win: {html.escape(wins)}."
            )
    return (
        '<div class="verdict"><h2>Verdict</h2><ul>' + "".join(f"<li>{i}</li>" for i in items) + "</ul></div>"
    )


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top;font-size:14px}th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow-x:auto;
font-size:12px}img{max-width:100%}h2{border-bottom:1px solid #ddd;padding-bottom:4px}
.verdict{background:#f6f8ff;border:1px solid #cdd;padding:0 1em;margin:1em 0}"""


def render_report(
    run_dir: Path, config_yaml: str, timings: dict[str, float], result: dict[str, Any] | None,
    stages: Sequence[Any] = (),
) -> str:  # fmt: skip
    """The report's HTML (a string). ``stages``: the rows of the stage table (``rlhf.pipeline.STAGES``):
    each names its label (for the times) and the learning-curve panels drawn from its folder (every
    round of it, for a stage that repeats)."""
    parts = [f"<h1>RLHF run: {html.escape(run_dir.name)}</h1>"]
    if result:
        parts.append(verdict(result))
    parts.append("<h2>Stages and times</h2>")
    labels = {"base": "base model", **{s.name: s.label for s in stages}}
    parts.append(
        _table(
            ["stage", "seconds"],
            [
                [
                    labels.get(k.partition("-")[0], k)
                    + (f", round {k.partition('-')[2]}" if "-" in k else ""),
                    v,
                ]
                for k, v in timings.items()
                if not k.endswith("_partial")
            ],
        )  # fmt: skip
    )
    parts.append("<h2>Learning curves</h2>")
    for s in stages:
        if s.curves:
            rows = rounds_metrics(run_dir, s.folder) if s.per_round else read_metrics(run_dir / s.folder)
            title = s.label[:1].upper() + s.label[1:]
            parts.append(f"<h3>{html.escape(title)}</h3>" + _curves(rows, list(s.curves), s.label))
    if result and result.get("rounds"):
        parts.append("<h2>Reward-model retraining rounds</h2><p>Before each later round, preferences on the "
                     "current policy's samples: the previous reward model's accuracy on them shows how far the "
                     "policy had exploited it; the retrained model's, how much it learned back.</p>")  # fmt: skip
        keys = ["pairs", "old_rm_accuracy", "new_rm_accuracy", "old_rm_gold_accuracy", "new_rm_gold_accuracy"]
        parts.append(
            _table(
                ["round", *keys],
                [[r["round"], *[r.get(k, "-") for k in keys]] for r in result["rounds"].values()],
            )
        )
    if result:
        parts.append("<h2>Over-optimisation</h2>" + _overoptimisation(result))
        bon = result.get("best_of_n", [])
        if bon:
            parts.append(
                _table(["n", "KL", "proxy", "gold"], [[r["n"], r["kl"], r["proxy"], r["gold"]] for r in bon])
            )
        names = list(result["results"])
        keys = metric_names(result)
        parts.append("<h2>Probes and metrics: " + " vs ".join(html.escape(n) for n in names) + "</h2>")
        parts.append(
            _table(
                ["metric", *names],
                [[label(k), *[result["results"][n].get(k, "-") for n in names]] for k in keys],
            )
        )
        for name, res in result["results"].items():
            if "length_bias" in res:
                lb = res["length_bias"]
                parts.append(
                    f"<p>Length bias of {html.escape(name)}: reward-length correlation {lb['reward_length_corr']:+.3f}; "
                    f"reward gain {lb['reward_gain']:+.3f}, of which {lb['gain_within_length']:+.3f} remains within "
                    "length buckets.</p>"
                )
            regressions = res.get("safety_vs_baseline", {}).get("regressions")
            if regressions is not None:
                text = ", ".join(regressions) if regressions else "none"
                parts.append(
                    f"<p>Safety regressions of {html.escape(name)} against the baseline: {html.escape(text)}.</p>"
                )
        samples = result.get("samples", [])
        if samples:
            parts.append("<h2>Responses side by side</h2>")
            cols = [k for k in samples[0] if k != "prompt"]
            parts.append(_table(["prompt", *cols], [[s["prompt"], *[s[c] for c in cols]] for s in samples]))
    parts.append("<h2>Settings</h2><pre>" + html.escape(config_yaml) + "</pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>RLHF run '
        + html.escape(run_dir.name)
        + f"</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def write_report(cfg, stages: Sequence[Any] = ()) -> Path:
    """Write ``runs/<name>/report.html`` from what the run folder holds (``stages``: as in
    :func:`render_report`)."""
    d = cfg.dir
    timings = json.loads((d / "timings.json").read_text()) if (d / "timings.json").exists() else {}
    result = json.loads((d / "eval.json").read_text()) if (d / "eval.json").exists() else None
    config_yaml = (d / "config.yaml").read_text() if (d / "config.yaml").exists() else ""
    with atomic_file(d / "report.html") as f:
        f.write(render_report(d, config_yaml, timings, result, stages))
    return d / "report.html"
