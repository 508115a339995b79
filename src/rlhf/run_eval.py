"""Evaluating checkpoints: ``rlhf eval`` and the evaluation stage of ``rlhf run``.

    rlhf eval runs/lab/ppo/final --baseline runs/lab/sft/final --reward-model runs/lab/rm/final
    rlhf eval runs/x/ppo/final --baseline runs/x/sft/final --xstest ../shared/data/xstest_prompts.csv --prompts-file p.jsonl

Each policy answers the same held-out prompts (one sample each, at `temperature`, 1 by default). On the lab the gold
judge scores them and the probes of ``rlhf.evaluate`` run on the lab probe set; elsewhere the reward
model scores them. XSTest's rates come with the refusal classifier's known gap from human labels
(``xstest_classifier_gap``: the largest over the held-out models of ``rlhf.refusal``'s validation),
printed beside them. With a reward model: mean reward, and the length bias against the baseline; with a
reference: the KL of each policy to it on its own samples. Safety regression compares each policy's
safety metrics with the baseline's.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, median
from typing import Any

import torch

from rlhf import evaluate as ev
from rlhf.modeling import load_tokenizer, reward_model_members
from rlhf.refusal import explain, known_gaps
from rlhf.reward import wilson_interval


def _load(path: str):
    from rlhf.modeling import load_causal_lm

    return load_causal_lm(path).eval(), load_tokenizer(path)


def _length_stats(lengths: list[int]) -> dict[str, float]:
    s = sorted(lengths)
    return {"mean": mean(s), "median": median(s), "p90": s[int(0.9 * (len(s) - 1))], "max": s[-1]}


@torch.no_grad()
def evaluate_policies(
    policies: dict[str, str],
    baseline: str,
    reference: str | None = None,
    reward_model: str | None = None,
    n_prompts: int = 240,
    prompts: list | None = None,
    xstest: str | None = None,
    samples_shown: int = 12,
    seed: int = 0,
    temperature: float = 1.0,
    log=print,
    reward_fresh_head: bool = False,
) -> dict[str, Any]:
    """Evaluate ``policies`` (name -> folder); ``baseline`` names one of them. ``prompts``: plain prompts
    (strings or conversations) to use instead of the lab's held-out prompts."""
    from rlhf.lab.evaluate import EVAL_SEED
    from rlhf.lab.judge import gold_utility, n_words
    from rlhf.lab.world import sample_prompts
    from rlhf.ppo import RewardEnsemble, RewardModelSpec

    if baseline not in policies:
        raise ValueError(f"baseline {baseline!r} is not one of the policies {list(policies)}")
    lab = prompts is None
    lab_prompts = sample_prompts(n_prompts, EVAL_SEED) if lab else []
    plain = [p.messages() for p in lab_prompts] if lab else list(prompts)
    probes = ev.probe_prompts() if lab else []
    xs_rows = ev.read_xstest(xstest) if xstest else []
    scorer = None
    if reward_model:
        first_tok = load_tokenizer(next(iter(policies.values())))
        stats = [Path(m) / "reward_stats.json" for m in reward_model_members(reward_model)]
        spec = RewardModelSpec(
            path=reward_model, normalize=all(f.exists() for f in stats), fresh_head=reward_fresh_head
        )
        scorer = RewardEnsemble(spec, first_tok, torch.device("cpu"))
    ref_model = _load(reference)[0] if reference else None

    def conv(p, r):
        msgs = [{"role": "user", "content": p}] if isinstance(p, str) else [dict(m) for m in p]
        return [*msgs, {"role": "assistant", "content": r}]

    out: dict[str, Any] = {"policies": policies, "baseline": baseline, "reference": reference,
                           "reward_model": reward_model, "n_prompts": len(plain), "results": {}}  # fmt: skip
    responses: dict[str, list[str]] = {}
    rewards: dict[str, list[float]] = {}
    gold: dict[str, list[float]] = {}
    for i, (name, path) in enumerate(policies.items()):
        log(f"eval: {name} ({path})")
        model, tok = _load(path)
        texts, batches = ev.sample_with_tokens(model, tok, plain, temperature=temperature, seed=seed + 17 * i)
        responses[name] = texts
        lengths = [n_words(t) for t in texts]
        res: dict[str, Any] = {"response_words": mean(lengths), "length_words": _length_stats(lengths)}
        if lab:
            gold[name] = [gold_utility(p, t) for p, t in zip(lab_prompts, texts)]
            res["gold"] = mean(gold[name])
            for family in sorted({p.family for p in lab_prompts}):
                res[f"gold/{family}"] = mean(g for p, g in zip(lab_prompts, gold[name]) if p.family == family)
            probe_texts, _ = ev.sample_with_tokens(
                model, tok, [p.messages() for p in probes], temperature=temperature, seed=seed + 17 * i + 1
            )
            res.update(ev.lab_probes(probes, probe_texts))
        if scorer is not None:
            members = scorer(None, None, [conv(p, t) for p, t in zip(plain, texts)], 32, "cpu", False)
            rewards[name] = members.mean(0).tolist()  # an ensemble's members' mean
            res["reward"] = mean(rewards[name])
        if ref_model is not None:
            kl = ev.sequence_kl(model, ref_model, batches, temperature)
            res["kl_to_reference"] = mean(kl)
        if xs_rows:
            xs_texts, _ = ev.sample_with_tokens(
                model,
                tok,
                [[{"role": "user", "content": r["prompt"]}] for r in xs_rows],  # a user's turn
                temperature=temperature,
                seed=seed + 17 * i + 2,
            )
            rates = ev.xstest_rates(xs_rows, xs_texts)
            res.update(rates)
            gaps = known_gaps()
            out.setdefault("xstest_classifier_gap", {}).update({k: gaps[k] for k in rates if k in gaps})
            out.setdefault("xstest_samples", {})[name] = [
                {"prompt": r["prompt"], "type": r["type"], "label": r["label"], "response": t,
                 "class": c, "rule": why}
                for r, t in zip(xs_rows, xs_texts)
                for c, why in [explain(t)]
            ]  # fmt: skip
        out["results"][name] = res

    for name in policies:
        res = out["results"][name]
        if name == baseline:
            continue
        if lab:
            res["win_rate_gold"] = ev.win_rate(gold[name], gold[baseline])
            res["win_rate_gold_low"], res["win_rate_gold_high"] = wilson_interval(
                res["win_rate_gold"], len(gold[name])
            )
        if scorer is not None:
            res["win_rate_reward"] = ev.win_rate(rewards[name], rewards[baseline])
            res["length_bias"] = ev.length_bias(
                rewards[name], [n_words(t) for t in responses[name]],
                rewards[baseline], [n_words(t) for t in responses[baseline]],
            )  # fmt: skip
        res["safety_vs_baseline"] = ev.safety_regression(out["results"][baseline], res)
    out["samples"] = [
        {"prompt": plain[j] if isinstance(plain[j], str) else plain[j][-1]["content"],
         **{name: responses[name][j] for name in policies},
         **({f"gold/{name}": gold[name][j] for name in policies} if lab else {})}
        for j in range(min(samples_shown, len(plain)))
    ]  # fmt: skip
    return out


def best_of_n_curve(
    policy: str, reward_model: str, ns: list[int], n_prompts: int, seed: int = 0
) -> list[dict]:
    """Best-of-n on the lab: ``max(ns)`` samples per held-out prompt from ``policy``, ranked by the
    (normalised) reward model; proxy and gold of the pick against KL = log n - (n - 1) / n."""
    from rlhf.lab.evaluate import EVAL_SEED
    from rlhf.lab.judge import gold_utility
    from rlhf.lab.world import sample_prompts
    from rlhf.ppo import RewardEnsemble, RewardModelSpec

    model, tok = _load(policy)
    scorer = RewardEnsemble(RewardModelSpec(path=reward_model), tok, torch.device("cpu"))
    prompts = sample_prompts(n_prompts, EVAL_SEED + 1)
    n = max(ns)
    repeated = [p for p in prompts for _ in range(n)]
    texts, _ = ev.sample_with_tokens(model, tok, [p.messages() for p in repeated], seed=seed + 99)
    convs = [[*p.messages(), {"role": "assistant", "content": t}] for p, t in zip(repeated, texts)]
    proxy = scorer(None, None, convs, 64, "cpu", False).mean(0).tolist()
    gold = [gold_utility(p, t) for p, t in zip(repeated, texts)]
    chunk = lambda xs: [xs[i : i + n] for i in range(0, len(xs), n)]  # noqa: E731
    return ev.best_of_n(chunk(proxy), chunk(gold), ns)


def evaluate_run(cfg, stages: dict[str, Any], log=print) -> Path:
    """The evaluation stage of ``rlhf run``: SFT (baseline and reference) against PPO, best-of-n, and the
    over-optimisation trace of the PPO run; written to ``runs/<name>/eval.json``."""
    from rlhf.training import atomic_file

    d, last = cfg.dir, cfg.final_round  # the last round's policy and reward model
    sft = str(d / "sft" / "final")
    ppo, rm = str(cfg.stage_dir(f"ppo{last}") / "final"), str(cfg.stage_dir(f"rm{last}") / "final")
    result = evaluate_policies(
        {"sft": sft, "ppo": ppo}, baseline="sft", reference=sft, reward_model=rm, n_prompts=cfg.eval.prompts,
        xstest=cfg.eval.xstest, samples_shown=cfg.eval.samples_shown, seed=cfg.seed, log=log,
    )  # fmt: skip
    log("eval: best-of-n")
    result["best_of_n"] = best_of_n_curve(sft, rm, cfg.eval.best_of_n, cfg.eval.best_of_n_prompts, cfg.seed)
    result["ppo_trace"] = ppo_trace(cfg)
    if (d / "rounds.json").exists():
        result["rounds"] = json.loads((d / "rounds.json").read_text())
    with atomic_file(d / "eval.json") as f:
        json.dump(result, f, indent=1)
    return d / "eval.json"


def ppo_rounds_metrics(run_dir: Path) -> list[dict]:
    """The metrics rows of ``ppo/`` and of later rounds' ``ppo-r/``, ``step`` counting on across rounds
    and ``round`` saying which."""
    from rlhf.training import read_metrics

    rows, offset, r = [], 0, 1
    while (folder := run_dir / ("ppo" if r == 1 else f"ppo-{r}")).exists():
        part = read_metrics(folder)
        rows += [{**row, "step": row["step"] + offset, "round": r} for row in part]
        offset += max((row["step"] for row in part), default=0)
        r += 1
    return rows


def ppo_trace(cfg) -> list[dict]:
    """PPO's training rows over every round (see :func:`ppo_rounds_metrics`), the keys the report draws."""
    keys = ("step", "round", "kl", "score", "gold", "beta", "response_tokens")
    return [
        {k: row[k] for k in keys if k in row}
        for row in ppo_rounds_metrics(cfg.dir)
        if row["split"] == "train"
    ]


def metric_names(result: dict[str, Any], skip_prefix: str | None = None) -> list[str]:
    """The numeric metrics of an evaluation's policies, in first-seen order."""
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
    """The terminal table of an evaluation: one column per policy (per-type XSTest rates left out; the
    XSTest rates with the refusal classifier's known gap from humans beside them), then each policy's
    safety-regression verdict against the baseline."""
    names = list(result["results"])
    keys = metric_names(result, skip_prefix="xstest/type/")
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
