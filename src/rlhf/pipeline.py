"""``rlhf run``: base model -> SFT -> preference collection -> reward model -> PPO -> evaluation -> report.

    rlhf run                                  # the lab default, under runs/lab
    rlhf run --preset length-biased name=lab-length
    rlhf run my_run.yaml ppo.max_steps=40 ppo.kl_coef=0   # a YAML file of the keys below
    rlhf run rounds=1 rm.members=1 name=plain  # one round against one reward model

Every stage writes under ``runs/<name>/`` (``sft/``, ``prefs/``, ``rm/``, ``ppo/``, ``eval.json``,
``report.html``). With ``rounds: N > 1`` (iterated RLHF, periodic reward-model retraining), round r >= 2
adds ``prefs-r/`` (preferences on the round r-1 policy's samples, from the same annotators), ``rm-r/``
(a reward model retrained from SFT on all pairs so far) and ``ppo-r/`` (PPO continued from the round r-1
policy, the reference staying the SFT model); ``rounds.json`` gives, per round, the old reward model's
accuracy on the new pairs (how far the policy had exploited it) and the new one's. A stage whose output is complete is skipped on a rerun; an interrupted training
stage resumes from its newest checkpoint. Each stage's section of the config holds overrides of that
stage's own config (``rlhf.stages.sft.SFTConfig``, ``rlhf.stages.collect.CollectConfig``,
``rlhf.stages.rm.RMConfig``, ``rlhf.stages.ppo.PPOConfig``); the paths that connect the stages are set here, and a section that sets one
of them is an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rlhf.config import ConfigError, StageConfig, merge_trees, validate_config
from rlhf.guards import atomic_file, prepare_run, read_json_state, release_lock
from rlhf.lab.annotators import PresetName
from rlhf.lab.base import lab_seed
from rlhf.modeling import resolve_model, reward_model_members
from rlhf.preflight import check_run
from rlhf.report import ppo_trace, write_report
from rlhf.stages.collect import CollectConfig, collect, tie_file
from rlhf.stages.eval import best_of_n_curve, evaluate_policies
from rlhf.stages.ppo import PPOConfig, train_ppo
from rlhf.stages.rm import RMConfig, evaluate_saved, train_rm
from rlhf.stages.sft import SFTConfig, train_sft

# What `rlhf run` changes in each stage's own defaults (sized for a laptop CPU); a run config's
# sections go on top of these.
RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"max_steps": 200, "max_length": 128, "lab_eval_prompts": 0},
    "collect": {},
    "rm": {"max_length": 128, "epochs": 2, "optim": {"lr": 1e-3, "warmup_steps": 10}},
    "ppo": {"max_steps": 20, "eval_prompts": 0},
}


class EvalSettings(StageConfig):
    """The evaluation stage (the lab's gold judge and probes; see ``rlhf.metrics``)."""

    prompts: int = Field(240, ge=1, description="held-out lab prompts for win rate, reward, KL and length")
    best_of_n: list[int] = Field([1, 2, 4, 8, 16], description="n of the best-of-n curve")
    best_of_n_prompts: int = Field(48, ge=1, description="prompts sampled max(best_of_n) times each")
    xstest: str | None = Field(None, description="XSTest prompts CSV (real models)")
    samples_shown: int = Field(12, ge=0, description="responses shown side by side in the report")


class RunConfig(StageConfig):
    """``rlhf run`` settings: the run's name, the base model, the lab preset, and each stage's overrides."""

    name: str = Field("lab", description="the run folder is runs/<name>")
    runs_dir: str = Field("runs", description="parent of the run folder")
    model: str = Field(
        "lab",
        description="the base model: lab (the lab base model of the run's seed), lab:N, smollm2, a folder or a hub name",
    )
    preset: PresetName = Field("default", description="lab annotator preset for preference collection")
    seed: int = Field(0, description="seed of every stage, and of the lab base model when model is lab")
    rounds: int = Field(
        2,
        ge=1,
        description="PPO rounds; before each after the first, new preferences on the current policy "
        "and a reward model retrained on all pairs so far",
    )
    reward: Literal["learned", "gold"] = Field(
        "learned",
        description="PPO's reward: the learned reward model(s), or (the ceiling) the lab's gold judge "
        "itself (rlhf.lab.judge:gold_reward; the critic still starts from the reward model)",
    )
    round_prompts: int | None = Field(
        750, ge=2, description="prompts of each later round's collection (null: the collect section's)"
    )
    sft: dict[str, Any] = Field(default_factory=dict, description="overrides of rlhf.stages.sft.SFTConfig")
    collect: dict[str, Any] = Field(
        default_factory=dict, description="overrides of rlhf.stages.collect.CollectConfig"
    )
    rm: dict[str, Any] = Field(default_factory=dict, description="overrides of rlhf.stages.rm.RMConfig")
    ppo: dict[str, Any] = Field(default_factory=dict, description="overrides of rlhf.stages.ppo.PPOConfig")
    eval: EvalSettings = Field(default_factory=EvalSettings)

    @property
    def dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def stage_dir(self, stage: str) -> Path:
        """Where a stage writes: sft, prefs, rm, ppo for round 1; prefs-r, rm-r, ppo-r for round r."""
        kind, _, r = stage.partition("-")
        folder = STAGES[kind].folder
        return self.dir / (f"{folder}-{r}" if r else folder)

    @property
    def final_round(self) -> str:
        """The suffix of the last round's stages ("" or "-N")."""
        return f"-{self.rounds}" if self.rounds > 1 else ""

    @property
    def base_model(self) -> str:
        """The model SFT starts from: ``lab`` is the lab base model of the run's seed (``lab:<seed>``)."""
        return f"lab:{self.seed}" if self.model == "lab" else self.model


def stage_names(cfg: RunConfig) -> list[str]:
    """The run's stages in order: the table's rows up to the last that repeats per round (sft, collect,
    rm, ppo), then those that repeat, as NAME-r for each later round (collect-r, rm-r, ppo-r), then the
    rest (eval, report)."""
    names = list(STAGES)
    last = max(i for i, s in enumerate(STAGES.values()) if s.per_round)
    later = [f"{s}-{r}" for r in range(2, cfg.rounds + 1) for s in names[: last + 1] if STAGES[s].per_round]
    return [*names[: last + 1], *later, *names[last + 1 :]]


def stage_configs(cfg: RunConfig) -> dict[str, Any]:
    """Every stage's validated config, wired together (built before anything runs, so that a typo in
    any stage's section stops the run at once)."""
    d = cfg.dir
    sft_final = str(d / "sft" / "final")
    final = {s: str(cfg.stage_dir(s) / "final") for s in stage_names(cfg) if s not in ("eval", "report")}

    # The keys that connect the stages, for round 1 (a section must not set them).
    wired: dict[str, dict[str, Any]] = {
        "sft": {"model": cfg.base_model},
        "collect": {"policy": sft_final, "preset": cfg.preset},
        "rm": {
            "model": sft_final,
            "data": str(d / "prefs" / "train.jsonl"),
            "eval_data": str(d / "prefs" / "eval.jsonl"),
        },
        "ppo": {"model": sft_final, "reward_models": [{"path": final["rm"]}]},
    }

    def reward(rm_stage: str) -> dict[str, Any]:
        """PPO's reward keys: the stage's reward model, or the gold judge with the critic from it."""
        if cfg.reward == "learned":
            return {"reward_models": [{"path": final[rm_stage]}]}
        members = int(merge_trees(RUN_DEFAULTS["rm"], cfg.rm).get("members", 1))
        critic = cfg.stage_dir(rm_stage) / ("member-0/final" if members > 1 else "final")
        return {
            "reward_models": [],
            "reward_functions": [{"function": "rlhf.lab.judge:gold_reward"}],
            "critic": str(critic),
        }

    def make(cls, section: str, stage: str | None = None, extra: dict[str, Any] | None = None) -> Any:
        """``section``'s config for ``stage`` (default: the section's round-1 stage), ``extra`` on top of
        the wired keys; the stage's seed is the run's plus 1,000 per round."""
        stage = stage or section
        r = stage.partition("-")[2]
        offset = 1000 * (int(r) - 1 if r else 0)  # each round draws other prompts and samples
        user = getattr(cfg, section)
        trainer = section != "collect"
        taken = [k for k in wired[section] if k in user]
        taken += ["run.output_dir"] if trainer and "output_dir" in user.get("run", {}) else []
        taken += ["output_dir"] if not trainer and "output_dir" in user else []
        if taken:
            top = {"sft": "model", "collect": "preset"}.get(section)  # the run's own keys feed these
            hint = f"set `{top}` at the top level" if taken == [top] else f"run `rlhf {section}` on its own"
            raise ConfigError(
                f"run config, section `{section}`: {', '.join(taken)} is set by rlhf run, which connects the "
                f"stages under {d}/; to choose it, {hint}"
            )
        user = merge_trees(RUN_DEFAULTS[section], user)
        keys = {**wired[section], **(extra or {})}
        out_dir = str(cfg.stage_dir(stage))
        if trainer:
            run = merge_trees({"seed": cfg.seed}, user.get("run", {}))
            run["seed"] += offset  # a section's own seed moves on by round too
            run["output_dir"] = out_dir
            values = merge_trees({k: v for k, v in user.items() if k != "run"}, {**keys, "run": run})
        else:
            values = merge_trees({"seed": cfg.seed}, user)
            values["seed"] += offset
            values = {**values, **keys, "output_dir": out_dir}
        return validate_config(cls, values, f"run config, section `{section}`")

    collect = make(CollectConfig, "collect")

    def pairs(prefs: list[Path], split: str) -> list[str]:
        """The pair files of collections (with ``tie_prob > 0`` the tied pairs too, written beside them)."""
        names = [f"{split}.jsonl", *([tie_file(split)] if collect.tie_prob else [])]
        return [str(p / n) for p in prefs for n in names]

    if collect.tie_prob:
        wired["rm"]["data"], wired["rm"]["eval_data"] = (
            pairs([d / "prefs"], "train"),
            pairs([d / "prefs"], "eval"),
        )
    stages = {
        "sft": make(SFTConfig, "sft"),
        "collect": collect,
        "rm": make(RMConfig, "rm"),
        "ppo": make(PPOConfig, "ppo", extra=reward("rm")),
    }
    for r in range(2, cfg.rounds + 1):
        prev = "" if r == 2 else f"-{r - 1}"
        prefs = [cfg.stage_dir("collect" if q == 1 else f"collect-{q}") for q in range(1, r + 1)]
        more = {"prompts": cfg.round_prompts} if cfg.round_prompts else {}
        stages[f"collect-{r}"] = make(
            CollectConfig, "collect", f"collect-{r}", {"policy": final[f"ppo{prev}"], **more}
        )
        stages[f"rm-{r}"] = make(RMConfig, "rm", f"rm-{r}", {
            "data": pairs(prefs, "train"), "eval_data": pairs(prefs, "eval"),
        })  # fmt: skip
        stages[f"ppo-{r}"] = make(PPOConfig, "ppo", f"ppo-{r}", {
            "model": final[f"ppo{prev}"], "reference": sft_final, **reward(f"rm-{r}"),
        })  # fmt: skip
    return stages


def is_done(stage: str, cfg: RunConfig) -> bool:
    """Whether a stage's output is complete (its row's ``done`` file exists), so a rerun skips it."""
    kind = stage.partition("-")[0]
    row = STAGES[kind]
    if row.done is None:
        return False  # cheap: always remade
    if kind == "rm" and stage != "rm":  # a later round's reward model, and its accuracies in rounds.json
        return (cfg.stage_dir(stage) / row.done).is_dir() and stage in read_rounds(cfg)
    return (cfg.stage_dir(stage) / row.done).exists()


def read_rounds(cfg: RunConfig) -> dict[str, dict[str, float]]:
    path = cfg.dir / "rounds.json"
    return json.loads(path.read_text()) if path.exists() else {}


def round_accuracies(cfg: RunConfig, stage: str, max_length: int, log=print) -> dict[str, float]:
    """After round r's reward model (``stage`` = rm-r): the previous reward model's and the new one's
    pairwise accuracy on round r's held-out pairs, sampled from the policy the previous one trained
    (an ensemble: its members' mean accuracy); written to ``rounds.json`` under ``stage``."""
    r = int(stage.partition("-")[2])
    old = cfg.stage_dir("rm" if r == 2 else f"rm-{r - 1}") / "final"
    new = cfg.stage_dir(stage) / "final"
    pairs = str(cfg.stage_dir(f"collect-{r}") / "eval.jsonl")

    def accuracy(folder: Path) -> dict[str, float]:
        runs = [
            evaluate_saved(m, pairs, max_length=max_length, log=lambda *_: None)[0]
            for m in reward_model_members(str(folder))
        ]
        keys = ("accuracy", "gold_accuracy", "bayes_accuracy", "pairs")
        return {k: sum(v[k] for v in runs) / len(runs) for k in keys if all(k in v for v in runs)}

    before, after = accuracy(old), accuracy(new)
    row = {"round": r, "pairs": before.get("pairs", 0.0), **{f"old_rm_{k}": v for k, v in before.items() if k != "pairs"},
           **{f"new_rm_{k}": v for k, v in after.items() if k != "pairs"}}  # fmt: skip
    log(f"round {r}: the round {r - 1} reward model's accuracy on the new policy's pairs {row['old_rm_accuracy']:.3f}, "
        f"the retrained one's {row['new_rm_accuracy']:.3f} ({int(row['pairs'])} pairs)")  # fmt: skip
    rounds = {**read_rounds(cfg), stage: row}
    with atomic_file(cfg.dir / "rounds.json") as f:
        json.dump(rounds, f, indent=2)
    return row


def run_pipeline(
    cfg: RunConfig, log=print, stop_after: dict[str, int] | None = None, restart: tuple[str, ...] = ()
) -> Path:
    """Run every stage not yet complete; return the report's path. ``stop_after``: ``{stage: step}``
    ends that training stage after that step as if interrupted (the next call resumes it). ``restart``:
    stages to start over (each, and every later stage); see ``rlhf.guards.prepare_run``."""
    stages = stage_configs(cfg)
    check_run(cfg, stages)  # every check first: a mistake stops the run before anything is written
    prepare_run(cfg, stages, restart, log)  # the run's lock, changed settings, --restart
    d = cfg.dir
    d.mkdir(parents=True, exist_ok=True)
    with atomic_file(d / "config.yaml") as f:
        f.write(cfg.to_yaml())
    timings_file = d / "timings.json"
    timings: dict[str, float] = read_json_state(timings_file, log) or {}
    stop_after = stop_after or {}

    def timed(stage: str, fn) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[stage] = round(timings.get(f"{stage}_partial", 0.0) + time.perf_counter() - t0, 1)
        timings.pop(f"{stage}_partial", None)
        with atomic_file(timings_file) as f:
            json.dump(timings, f, indent=2)
        return result

    def run_stage(stage: str) -> Any:
        row = STAGES[stage.partition("-")[0]]
        return row.run(cfg, stage, stages, stop_after.get(stage), log)

    if lab_seed(cfg.base_model) is not None and "base" not in timings:
        timed("base", lambda: resolve_model(cfg.base_model))
    for stage in stage_names(cfg):
        if is_done(stage, cfg):
            log(f"== {stage}: done, skipped ==")
            continue
        log(f"== {stage} ==")
        t0 = time.perf_counter()
        kind = stage.partition("-")[0]
        timed(stage, lambda stage=stage: run_stage(stage))
        if STAGES[kind].trains and not is_done(stage, cfg):
            # Interrupted (stop_after): keep the time spent, stop here; a rerun resumes.
            timings[f"{stage}_partial"] = timings.pop(stage)
            with atomic_file(timings_file) as f:
                json.dump(timings, f, indent=2)
            log(f"{stage} stopped before the end after {time.perf_counter() - t0:.0f} s; run again to resume")
            release_lock(d)
            return d
    release_lock(d)
    return d / "report.html"


def evaluate_run(cfg, stages: dict[str, Any], log=print) -> Path:
    """The evaluation stage of ``rlhf run``: SFT (baseline and reference) against PPO, best-of-n, and the
    over-optimisation trace of the PPO run; written to ``runs/<name>/eval.json``."""
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


# ---------------------------------------------------------------------------------------------------
# The stage table: what `rlhf run`, the report and the CLI know of each stage
# ---------------------------------------------------------------------------------------------------

Curves = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (y label, ((split, metric), ...)) panels


@dataclass(frozen=True)
class Stage:
    """One row of the stage table. A new stage of ``rlhf run`` is one row here (and its wiring in
    :func:`stage_configs`)."""

    name: str  # as ``--restart`` names it; a later round's is NAME-r
    label: str  # what the report calls it
    folder: str  # its folder under the run (NAME-r for round r); "." for the run folder itself
    run: Callable[..., Any]  # (run config, stage name, every stage's config, stop_after, log) -> output
    done: (
        str | None
    )  # the file or folder under ``folder`` whose presence marks it complete (None: always rerun)
    trains: bool = False  # a training stage: it resumes, and ``stop_after`` applies
    per_round: bool = False  # repeated in every round after the first
    curves: Curves = ()  # learning-curve panels the report draws from its metrics


def _sft(cfg, stage, stages, stop, log):
    return train_sft(stages[stage], stop_after=stop, log=log)


def _collect(cfg, stage, stages, stop, log):
    return collect(stages[stage], log=log)


def _rm(cfg, stage, stages, stop, log):
    final = train_rm(stages[stage], stop_after=stop, log=log)
    if stage != "rm" and final.name == "final":  # a later round: how far the policy had exploited it
        round_accuracies(cfg, stage, stages[stage].max_length, log)
    return final


def _ppo(cfg, stage, stages, stop, log):
    return train_ppo(stages[stage], stop_after=stop, log=log)


def _eval(cfg, stage, stages, stop, log):
    return evaluate_run(cfg, stages, log=log)


def _report(cfg, stage, stages, stop, log):
    return write_report(cfg, list(STAGES.values()))


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("sft", "SFT", "sft", _sft, "final", trains=True,
              curves=(("loss (nats/token)", (("train", "loss"), ("eval", "loss"))),)),
        Stage("collect", "preference collection", "prefs", _collect, "summary.json", per_round=True),
        Stage("rm", "reward model", "rm", _rm, "final", trains=True, per_round=True,
              curves=(("Bradley-Terry loss", (("train", "loss"),)),
                      ("pairwise accuracy", (("train", "accuracy"), ("eval", "accuracy"),
                                             ("eval", "bayes_accuracy"), ("eval", "gold_accuracy"))))),
        Stage("ppo", "PPO", "ppo", _ppo, "final", trains=True, per_round=True,
              curves=(("reward-model score", (("train", "score"),)),
                      ("gold utility", (("train", "gold"), ("eval", "gold"))),
                      ("KL to SFT (nats)", (("train", "kl"),)), ("beta", (("train", "beta"),)),
                      ("reward-model disagreement (std)", (("train", "ensemble_std/final"),)),
                      ("response tokens", (("train", "response_tokens"),)))),
        Stage("eval", "evaluation", ".", _eval, "eval.json"),
        Stage("report", "report", ".", _report, None),
    )
}  # fmt: skip
