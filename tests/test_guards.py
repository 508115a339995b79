"""The safeguards of rlhf.guards: the NaN guard, the run lock, the settings fingerprint, reward models
that must be reward models, torn files, and the small input checks (duplicate YAML keys, deep JSON, BOM)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from rlhf import guards
from rlhf.cli import _RUN_STAGES, main
from rlhf.config import ConfigError, load_config
from rlhf.errors import DivergedError, NotARewardModelError, RunLockedError, SettingsChangedError, StateError
from rlhf.modeling import load_causal_lm, load_reward_model
from rlhf.pipeline import STAGES, RunConfig, run_pipeline, stage_configs
from rlhf.scoring import Scorer
from rlhf.stages.collect import CollectConfig
from rlhf.stages.ppo import PPOConfig, RewardModelSpec, train_ppo
from rlhf.stages.rm import RMConfig, train_rm
from rlhf.stages.sft import SFTConfig, train_sft
from rlhf.training import list_checkpoints, read_metrics

SRC = Path(__file__).resolve().parents[1] / "src"
QUIET = {"log": lambda *_: None}


def _sft_args(tmp_path, base, name="sft", **kw) -> list[str]:
    """A tiny SFT run's overrides (two steps on 32 lab demonstrations)."""
    overrides = {
        "model": base, "lab_examples": 32, "batch_size": 4, "max_length": 64, "lab_eval_prompts": 0,
        "eval_fraction": 0, "max_steps": 2, "optim.warmup_steps": 0, "run.progress": False,
        "run.save_every": 0, "run.output_dir": tmp_path / name, **kw,
    }  # fmt: skip
    return [f"{k}={v}" for k, v in overrides.items()]


def _sft(tmp_path, base, name="sft", **kw) -> SFTConfig:
    return load_config(SFTConfig, None, _sft_args(tmp_path, base, name, **kw))


def _pairs_file(tmp_path) -> Path:
    rows = [
        {"prompt": f"What is {i} + 1?", "chosen": f"{i} + 1 = {i + 1}.", "rejected": "No idea, sorry."}
        for i in range(16)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------------
# NaN guard
# ---------------------------------------------------------------------------------------------------


def test_sft_stops_at_the_first_nan_and_keeps_only_finite_checkpoints(tmp_path, lab_base_path):
    cfg = _sft(tmp_path, lab_base_path, **{"optim.lr": 1e9, "max_steps": 4, "run.save_every": 1})
    with pytest.raises(DivergedError, match=r"sft step 2: loss is nan.*learning rate \(optim.lr=1e\+09\)"):
        train_sft(cfg, **QUIET)
    out = Path(cfg.run.output_dir)
    assert not (out / "final").exists()
    checkpoints = list_checkpoints(out)
    assert [c.name for c in checkpoints] == ["step-0000001"]  # nothing saved from step 2 on
    assert all(guards.folder_problem(c) is None for c in checkpoints)
    # The command says so in one line, with the exit code of a divergence.
    args = _sft_args(tmp_path, lab_base_path, "cli", **{"optim.lr": 1e9, "max_steps": 4})
    result = CliRunner().invoke(main, ["sft", *args])
    assert result.exit_code == 3 and result.output.splitlines()[-1].startswith("diverged: sft step 2")


def test_rm_and_ppo_stop_at_the_first_non_finite_value(tmp_path, lab_base_path):
    rm = load_config(RMConfig, None, [
        f"model={lab_base_path}", f"data={_pairs_file(tmp_path)}", "eval_data=null", "eval_fraction=0",
        "optim.lr=1e9", "optim.warmup_steps=0", "max_steps=4", "batch_size=4", "max_length=64",
        "run.progress=false", "run.save_every=1", f"run.output_dir={tmp_path / 'rm'}",
    ])  # fmt: skip
    with pytest.raises(DivergedError, match=r"rm step \d: loss is nan"):
        train_rm(rm, **QUIET)
    assert not (tmp_path / "rm" / "final").exists()
    assert all(guards.folder_problem(c) is None for c in list_checkpoints(tmp_path / "rm"))
    ppo = load_config(PPOConfig, None, [
        f"model={lab_base_path}", "optim.lr=1e9", "max_steps=3", "lab_prompts=8", "eval_prompts=0",
        "rollout_size=4", "batch_size=4", "max_new_tokens=8", "reward_models=[]", "critic=policy_head",
        'reward_functions=[{"function": "rlhf.rewards:length_penalty"}]', "run.save_every=1",
        "run.progress=false", f"run.output_dir={tmp_path / 'ppo'}",
    ])  # fmt: skip
    with pytest.raises(DivergedError, match=r"ppo step 1: .* is nan.*no checkpoint"):
        train_ppo(ppo, **QUIET)
    assert list_checkpoints(tmp_path / "ppo") == [] and not (tmp_path / "ppo" / "final").exists()
    # Reward statistics and rewards: the message names the value and the reward as the likely cause.
    with pytest.raises(DivergedError, match=r"rm step 5: reward_std is nan"):
        guards.check_finite("rm", 5, {"reward_mean": 0.1, "reward_std": float("nan")})
    with pytest.raises(DivergedError, match=r"score/rm is inf.*reward model or a reward function"):
        guards.check_finite("ppo", 3, {"score/rm": float("inf")})


def _nan_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    first = next(iter(weights))
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_a_non_finite_model_is_never_done_nor_loaded(tmp_path, lab_base_path):
    cfg = load_config(RunConfig, None, [f"runs_dir={tmp_path}", "name=x", f"model={lab_base_path}"])
    _nan_copy(lab_base_path, tmp_path / "x" / "sft" / "final")
    with pytest.raises(StateError, match=r"sft/final cannot count as done: .*nan or inf.*--restart sft"):
        run_pipeline(cfg, **QUIET)
    guards.prepare_run(cfg, stage_configs(cfg), restart=("sft",), **QUIET)  # starting over is the way out
    assert not (tmp_path / "x" / "sft" / "final").exists()
    _nan_copy(lab_base_path, tmp_path / "x" / "sft" / "final")
    guards.release_lock(tmp_path / "x")
    with pytest.raises(StateError, match="holds nan or inf"):
        load_causal_lm(str(tmp_path / "x" / "sft" / "final"))
    stats = tmp_path / "reward_stats.json"
    stats.write_text('{"mean": NaN, "std": 1.0}')
    with pytest.raises(StateError, match="not finite"):
        guards.read_reward_stats(stats)
    # optim.lr must be finite: pydantic's gt=0 alone lets inf through.
    with pytest.raises(ConfigError, match=r"'optim.lr': must be a finite number \(got inf\)"):
        load_config(SFTConfig, None, ["optim.lr=inf"])


# ---------------------------------------------------------------------------------------------------
# Run lock
# ---------------------------------------------------------------------------------------------------


def test_a_second_process_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, lab_base_path):
    folder = tmp_path / "runs" / "x"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from rlhf.guards import acquire_lock
            acquire_lock({str(folder)!r}); print("held", flush=True); time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by another process \(pid {holder.pid} "):
            guards.acquire_lock(folder)
        # `rlhf run` on the same folder exits at once, naming the holder (before any stage starts).
        cfg = load_config(
            RunConfig, None, [f"runs_dir={tmp_path / 'runs'}", "name=x", f"model={lab_base_path}"]
        )
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            run_pipeline(cfg, **QUIET)
        # A stage alone on a locked folder: exit code 4 and one line.
        result = CliRunner().invoke(main, ["sft", f"model={lab_base_path}", f"run.output_dir={folder}"])
        assert result.exit_code == 4 and f"pid {holder.pid}" in result.output.splitlines()[-1]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    notes: list[str] = []
    guards.acquire_lock(folder, notes.append)  # the holder is gone: its lock is free again
    assert notes == [f"{folder}: taking over the lock of pid {holder.pid}, which is no longer running"]
    assert json.loads((folder / guards.LOCK_FILE).read_text())["pid"] == os.getpid()
    guards.release_lock(folder)
    assert not (folder / guards.LOCK_FILE).exists()


# ---------------------------------------------------------------------------------------------------
# Settings fingerprint
# ---------------------------------------------------------------------------------------------------


def test_a_stage_rerun_with_other_settings_refuses_unless_restarted(tmp_path, lab_base_path):
    cfg = _sft(tmp_path, lab_base_path)
    assert train_sft(cfg, stop_after=1, **QUIET) == Path(cfg.run.output_dir)  # interrupted at step 1
    changed = _sft(tmp_path, lab_base_path, **{"optim.lr": 3e-4})
    with pytest.raises(SettingsChangedError, match=r"optim.lr \(0.001 -> 0.0003\).*--restart"):
        train_sft(changed, **QUIET)
    # A key documented as safe to change resumes: the log interval and the progress bar.
    safe = _sft(tmp_path, lab_base_path, **{"run.log_every": 1, "run.keep_checkpoints": 3})
    assert train_sft(safe, **QUIET).name == "final"
    # --restart starts the stage over with the new settings, which the folder then records.
    args = _sft_args(tmp_path, lab_base_path, **{"optim.lr": 3e-4})
    assert CliRunner().invoke(main, ["sft", *args]).exit_code == 1  # refused: the command says so too
    # A restart that cannot start (no such device) removes nothing.
    assert CliRunner().invoke(main, ["sft", "--restart", *args, "run.device=cuda:99"]).exit_code == 1
    assert list_checkpoints(Path(cfg.run.output_dir)) and (Path(cfg.run.output_dir) / "final").is_dir()
    result = CliRunner().invoke(main, ["sft", "--restart", *args])
    assert result.exit_code == 0, result.output
    assert "starting over, removed checkpoints, final" in result.output
    assert guards.stored_settings(Path(cfg.run.output_dir))["optim.lr"] == 3e-4


def test_rlhf_run_compares_every_stage_before_the_first_and_restarts_from_one(tmp_path, lab_base_path):
    def config(*extra):
        cfg = load_config(
            RunConfig, None, [f"runs_dir={tmp_path}", "name=x", f"model={lab_base_path}", *extra]
        )
        return cfg, stage_configs(cfg)

    cfg, stages = config("collect.prompts=48")
    d = cfg.dir
    for stage, folder, marker in (("sft", "sft", "final"), ("collect", "prefs", "summary.json")):
        (d / folder / marker).parent.mkdir(parents=True, exist_ok=True)
        (d / folder / marker).mkdir() if marker == "final" else (d / folder / marker).write_text("{}")
        guards.write_settings(d / folder, stage, stages[stage])
    (d / "sft" / "final").rmdir()  # a finished collection only
    guards.prepare_run(cfg, stages, **QUIET)  # the same settings: accepted
    more, more_stages = config("collect.prompts=96")
    with pytest.raises(SettingsChangedError, match=r"collect: prompts \(48 -> 96\).*--restart collect"):
        guards.prepare_run(more, more_stages, **QUIET)
    (d / "eval.json").write_text("{}")  # a finished evaluation, with the settings it was made with
    evals, evals_stages = config("collect.prompts=96", "eval.prompts=24")
    with pytest.raises(SettingsChangedError, match=r"eval: eval.prompts \(240 -> 24\)"):
        guards.prepare_run(evals, evals_stages, **QUIET)
    # A restart of a later stage does not hide the collection's change, and removes nothing.
    with pytest.raises(SettingsChangedError, match="collect: prompts"):
        guards.prepare_run(more, more_stages, restart=("ppo",), **QUIET)
    assert (d / "prefs" / "summary.json").exists() and (d / "eval.json").exists()
    # Starting over from the collection removes it and every later stage's outputs.
    (d / "eval.json").write_text("{}")
    guards.prepare_run(more, more_stages, restart=("collect",), **QUIET)
    assert not (d / "prefs" / "summary.json").exists() and not (d / "eval.json").exists()
    assert (d / "sft").is_dir()  # the stage before is kept
    # The stages `rlhf run --restart` offers are the stage table's that leave an output.
    assert list(_RUN_STAGES) == [name for name, row in STAGES.items() if row.done]
    guards.release_lock(d)


# ---------------------------------------------------------------------------------------------------
# Reward models must be reward models
# ---------------------------------------------------------------------------------------------------


def test_a_reward_model_must_have_a_reward_head_unless_a_fresh_one_is_asked_for(tmp_path, lab_base_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with pytest.raises(NotARewardModelError, match="LlamaForCausalLM with no score head"):
        load_reward_model(str(lab_base_path))
    assert load_reward_model(str(lab_base_path), fresh_head=True).config.num_labels == 1
    two = tmp_path / "two"
    AutoModelForSequenceClassification.from_pretrained(lab_base_path, num_labels=2).save_pretrained(two)
    AutoTokenizer.from_pretrained(lab_base_path).save_pretrained(two)
    with pytest.raises(NotARewardModelError, match="a classifier with 2 labels"):
        load_reward_model(str(two))
    assert load_reward_model(str(two), fresh_head=True).score.out_features == 1
    rm = tmp_path / "rm"
    load_reward_model(str(lab_base_path), fresh_head=True).save_pretrained(rm)
    AutoTokenizer.from_pretrained(lab_base_path).save_pretrained(rm)
    assert load_reward_model(str(rm)).config.num_labels == 1  # a one-label classifier: a reward model
    tok = AutoTokenizer.from_pretrained(lab_base_path)
    with pytest.raises(NotARewardModelError):  # PPO's and rlhf eval's scorer too
        Scorer(RewardModelSpec(path=str(lab_base_path), normalize=False), tok, torch.device("cpu"))
    Scorer(
        RewardModelSpec(path=str(lab_base_path), normalize=False, fresh_head=True), tok, torch.device("cpu")
    )


# ---------------------------------------------------------------------------------------------------
# Torn files and leftovers
# ---------------------------------------------------------------------------------------------------


def test_resume_survives_a_torn_log_a_truncated_checkpoint_and_leftovers(tmp_path, lab_base_path):
    cfg = _sft(tmp_path, lab_base_path, **{"max_steps": 4, "run.save_every": 1, "run.log_every": 1})
    train_sft(cfg, stop_after=3, **QUIET)
    out = Path(cfg.run.output_dir)
    assert [c.name for c in list_checkpoints(out)] == ["step-0000002", "step-0000003"]
    state = out / "checkpoints" / "step-0000003" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # a power cut mid-write of the newest state
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "split": "tr')  # a torn last line
    (out / ".tmp-final-abc").mkdir()
    (out / "checkpoints" / ".tmp-step-0000009-xyz").mkdir()
    logs: list[str] = []
    assert train_sft(cfg, log=logs.append).name == "final"
    text = "\n".join(logs)
    assert "removing step-0000003 and resuming from the previous checkpoint" in text
    assert "resumed from" in text and "step-0000002 at step 2" in text
    assert "metrics.jsonl:4: dropped a torn line" in text
    assert (
        not (out / ".tmp-final-abc").exists() and not (out / "checkpoints" / ".tmp-step-0000009-xyz").exists()
    )
    steps = [r["step"] for r in read_metrics(out) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]
    # A truncated JSON state file counts as missing.
    torn = tmp_path / "timings.json"
    torn.write_text('{"sft": 1')
    notes: list[str] = []
    assert guards.read_json_state(torn, notes.append) is None and "treated as missing" in notes[0]


def test_duplicate_yaml_keys_deep_json_and_a_bom(tmp_path):
    from rlhf import data as rdata

    dup = tmp_path / "dup.yaml"
    dup.write_text("max_steps: 3\nrun:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:4: key 'seed' is given twice \(first on line 3\)"):
        load_config(SFTConfig, dup)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfmax_steps: 3\n")
    assert load_config(SFTConfig, bom).max_steps == 3
    row = json.dumps({"prompt": "a", "completion": "b"})
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + row.encode() + b"\n")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf[" + row.encode() + b"]")
    for name in ("bom.jsonl", "bom.json"):
        assert rdata.load_sft(tmp_path / name)[1].n_loaded == 1
    deep = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "completion": "x"}'
    (tmp_path / "deep.jsonl").write_text(row + "\n" + deep + "\n")
    records, report = rdata.load_sft(tmp_path / "deep.jsonl", on_error="skip")
    assert len(records) == 1 and report.skipped == {"nested too deeply": 1}
    with pytest.raises(rdata.DataError, match="deep.jsonl:2: bad JSON: nested too deeply"):
        rdata.load_sft(tmp_path / "deep.jsonl")


def test_settings_inside_the_run_folder_are_stored_relative_to_it(tmp_path):
    """A run folder copied or moved whole keeps its stages' settings: the wired paths inside it are
    compared relative to it, paths elsewhere as they are."""
    from rlhf.guards import folder_settings

    def cfg(run: str) -> dict:
        return {"model": str(tmp_path / run / "sft" / "final"), "data": "/data/prefs.jsonl", "optim": {"lr": 1e-3},
                "reward_models": [{"path": str(tmp_path / run / "rm" / "final")}]}  # fmt: skip

    a, b = folder_settings(tmp_path / "a" / "rm", cfg("a")), folder_settings(tmp_path / "b" / "rm", cfg("b"))
    assert a == b == {"model": "{run}/sft/final", "data": "/data/prefs.jsonl", "optim.lr": 1e-3,
                      "reward_models": [{"path": "{run}/rm/final"}]}  # fmt: skip
    assert folder_settings(tmp_path / "b" / "rm", cfg("a"))["model"] == str(tmp_path / "a" / "sft" / "final")


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from rlhf.training import atomic_dir, atomic_file

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "a.txt") as f:
            f.write("x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_a_setting_added_later_at_its_default_is_no_change():
    """A run folder made before a setting existed stays usable while that setting holds its default;
    set to anything else, it is a change like any other."""
    old = {"temperature": 1.0, "prompts": 100}
    defaults = {"temperature": 1.0, "prompts": 1500, "stop_strings": []}
    assert guards.settings_diff(old, {**old, "stop_strings": []}, defaults) == []
    assert guards.settings_diff(old, {**old, "stop_strings": ["\n"]}, defaults) == [
        "stop_strings ((unset) -> ['\\n'])"
    ]
    assert guards.settings_diff(old, {**old, "prompts": 200}, defaults) == ["prompts (100 -> 200)"]
    assert guards.settings_diff(old, {**old, "stop_strings": []}) == [
        "stop_strings ((unset) -> [])"
    ]  # no defaults given
    # With a real config: CollectConfig's defaults come from the class.
    defaults = guards.settings_of(CollectConfig.model_construct())
    assert defaults["stop_strings"] == [] and defaults["prompts"] == 1500
