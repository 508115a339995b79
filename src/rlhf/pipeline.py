"""``rlhf run``: base model -> SFT -> preference collection -> reward model -> PPO -> evaluation -> report.

    rlhf run                                  # the lab default, under runs/lab
    rlhf run --preset length-biased name=lab-length
    rlhf run my_run.yaml ppo.max_steps=40 ppo.kl_coef=0   # a YAML file of the keys below

Every stage writes under ``runs/<name>/`` (``sft/``, ``prefs/``, ``rm/``, ``ppo/``, ``eval.json``,
``report.html``). A stage whose output is complete is skipped on a rerun; an interrupted training
stage resumes from its newest checkpoint. Each stage's section of the config holds overrides of that
stage's own config (``rlhf.sft.SFTConfig``, ``rlhf.collect.CollectConfig``, ``rlhf.reward.RMConfig``,
``rlhf.ppo.PPOConfig``); the paths that connect the stages are set here, and a section that sets one
of them is an error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from rlhf.config import ConfigError, StageConfig, merge_trees, validate_config
from rlhf.guards import prepare_run, read_json_state, release_lock
from rlhf.lab.annotators import PresetName
from rlhf.training import atomic_file

STAGES = ("sft", "collect", "rm", "ppo", "eval", "report")

# What `rlhf run` changes in each stage's own defaults (sized for a laptop CPU); a run config's
# sections go on top of these.
RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"max_steps": 200, "max_length": 128, "lab_eval_prompts": 0},
    "collect": {},
    "rm": {"max_length": 128, "epochs": 2, "optim": {"lr": 1e-3, "warmup_steps": 10}},
    "ppo": {"max_steps": 20, "eval_prompts": 0},
}


class EvalSettings(StageConfig):
    """The evaluation stage (the lab's gold judge and probes; see ``rlhf.evaluate``)."""

    prompts: int = Field(240, ge=1, description="held-out lab prompts for win rate, reward, KL and length")
    best_of_n: list[int] = Field([1, 2, 4, 8, 16], description="n of the best-of-n curve")
    best_of_n_prompts: int = Field(48, ge=1, description="prompts sampled max(best_of_n) times each")
    xstest: str | None = Field(None, description="XSTest prompts CSV (real models)")
    samples_shown: int = Field(12, ge=0, description="responses shown side by side in the report")


class RunConfig(StageConfig):
    """``rlhf run`` settings: the run's name, the base model, the lab preset, and each stage's overrides."""

    name: str = Field("lab", description="the run folder is runs/<name>")
    runs_dir: str = Field("runs", description="parent of the run folder")
    model: str = Field("lab", description="the base model: lab, smollm2, a folder or a hub name")
    preset: PresetName = Field("default", description="lab annotator preset for preference collection")
    seed: int = Field(0, description="seed of every stage")
    sft: dict[str, Any] = Field(default_factory=dict, description="overrides of rlhf.sft.SFTConfig")
    collect: dict[str, Any] = Field(
        default_factory=dict, description="overrides of rlhf.collect.CollectConfig"
    )
    rm: dict[str, Any] = Field(default_factory=dict, description="overrides of rlhf.reward.RMConfig")
    ppo: dict[str, Any] = Field(default_factory=dict, description="overrides of rlhf.ppo.PPOConfig")
    eval: EvalSettings = Field(default_factory=EvalSettings)

    @property
    def dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def stage_configs(cfg: RunConfig) -> dict[str, Any]:
    """Every stage's validated config, wired together (built before anything runs, so that a typo in
    any stage's section stops the run at once)."""
    from rlhf.collect import CollectConfig
    from rlhf.ppo import PPOConfig
    from rlhf.reward import RMConfig
    from rlhf.sft import SFTConfig

    d = cfg.dir
    sft_final, rm_final = str(d / "sft" / "final"), str(d / "rm" / "final")

    wired: dict[str, dict[str, Any]] = {
        "sft": {"model": cfg.model},
        "collect": {"policy": sft_final, "preset": cfg.preset},
        "rm": {
            "model": sft_final,
            "data": str(d / "prefs" / "train.jsonl"),
            "eval_data": str(d / "prefs" / "eval.jsonl"),
        },
        "ppo": {"model": sft_final, "reward_models": [{"path": rm_final}]},
    }
    # Where each stage writes: collection's output_dir is a top-level key, the trainers' is under run.
    out_dirs = {
        "sft": str(d / "sft"),
        "collect": str(d / "prefs"),
        "rm": str(d / "rm"),
        "ppo": str(d / "ppo"),
    }

    def make(cls, section: str) -> Any:
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
        if trainer:
            run = merge_trees({"seed": cfg.seed}, user.get("run", {}))
            run["output_dir"] = out_dirs[section]
            values = merge_trees(
                {k: v for k, v in user.items() if k != "run"}, {**wired[section], "run": run}
            )
        else:
            values = merge_trees(
                {"seed": cfg.seed}, {**user, **wired[section], "output_dir": out_dirs[section]}
            )
        return validate_config(cls, values, f"run config, section `{section}`")

    return {
        "sft": make(SFTConfig, "sft"),
        "collect": make(CollectConfig, "collect"),
        "rm": make(RMConfig, "rm"),
        "ppo": make(PPOConfig, "ppo"),
    }


def is_done(stage: str, cfg: RunConfig) -> bool:
    d = cfg.dir
    return {
        "sft": (d / "sft" / "final").is_dir(),
        "collect": (d / "prefs" / "summary.json").exists(),
        "rm": (d / "rm" / "final").is_dir(),
        "ppo": (d / "ppo" / "final").is_dir(),
        "eval": (d / "eval.json").exists(),
        "report": False,  # cheap: always remade
    }[stage]


def run_pipeline(
    cfg: RunConfig, log=print, stop_after: dict[str, int] | None = None, restart: tuple[str, ...] = ()
) -> Path:
    """Run every stage not yet complete; return the report's path. ``stop_after``: ``{stage: step}``
    ends that training stage after that step as if interrupted (the next call resumes it). ``restart``:
    stages to start over (each, and every later stage); see ``rlhf.guards.prepare_run``."""
    from rlhf.collect import collect
    from rlhf.modeling import resolve_model
    from rlhf.ppo import train_ppo
    from rlhf.reward import train_rm
    from rlhf.sft import train_sft

    stages = stage_configs(cfg)
    prepare_run(cfg, stages, restart, log)  # every check, the run's lock, changed settings
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

    if cfg.model == "lab" and "base" not in timings:
        timed("base", lambda: resolve_model("lab"))
    for stage in STAGES:
        if is_done(stage, cfg):
            log(f"== {stage}: done, skipped ==")
            continue
        log(f"== {stage} ==")
        t0 = time.perf_counter()
        if stage == "sft":
            fn = lambda: train_sft(stages["sft"], stop_after=stop_after.get("sft"), log=log)  # noqa: E731
        elif stage == "collect":
            fn = lambda: collect(stages["collect"], log=log)  # noqa: E731
        elif stage == "rm":
            fn = lambda: train_rm(stages["rm"], stop_after=stop_after.get("rm"), log=log)  # noqa: E731
        elif stage == "ppo":
            fn = lambda: train_ppo(stages["ppo"], stop_after=stop_after.get("ppo"), log=log)  # noqa: E731
        elif stage == "eval":
            from rlhf.run_eval import evaluate_run

            fn = lambda: evaluate_run(cfg, stages, log=log)  # noqa: E731
        else:
            from rlhf.report import write_report

            fn = lambda: write_report(cfg, stages)  # noqa: E731
        timed(stage, fn)
        if stage in ("sft", "rm", "ppo") and not is_done(stage, cfg):
            # Interrupted (stop_after): keep the time spent, stop here; a rerun resumes.
            timings[f"{stage}_partial"] = timings.pop(stage)
            with atomic_file(timings_file) as f:
                json.dump(timings, f, indent=2)
            log(f"{stage} stopped before the end after {time.perf_counter() - t0:.0f} s; run again to resume")
            release_lock(d)
            return d
    release_lock(d)
    return d / "report.html"
