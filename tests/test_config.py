"""Stage configs: YAML + dotted overrides, validated with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.config import ConfigError, load_config, parse_overrides
from rlhf.stages.collect import CollectConfig
from rlhf.stages.ppo import PPOConfig
from rlhf.stages.rm import RMConfig
from rlhf.stages.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "examples").glob("*.yaml"))
STAGES = {"sft": SFTConfig, "rm": RMConfig, "collect": CollectConfig, "ppo": PPOConfig}


def test_there_are_shipped_configs():
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cls = STAGES[path.name.split("_")[0]]
    cfg = load_config(cls, path)
    output_dir = cfg.output_dir if cls is CollectConfig else cfg.run.output_dir
    assert output_dir.startswith("runs/")


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["a.b=8", "c=true", "d=null", "e=[1, 2]", "f=3e-4"]) == {
        "a": {"b": 8},
        "c": True,
        "d": None,
        "e": [1, 2],
        "f": 3e-4,
    }
    cfg = load_config(SFTConfig, ROOT / "configs/sft_lab.yaml", ["optim.lr=5e-4", "lora.r=8", "max_steps=7"])
    assert (cfg.optim.lr, cfg.lora.r, cfg.max_steps) == (5e-4, 8, 7)
    assert cfg.optim.warmup_steps == 10  # untouched keys keep the file's values


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "message"),
    [
        ("optim:\n  lrr: 0.1\n", [], r"unknown key 'optim.lrr'; did you mean optim.lr"),
        ("batch_size: big\n", [], r"'batch_size': .*integer.*'big'"),
        ("optim:\n  lr: -1\n", [], r"'optim.lr': .*greater than 0"),
        ("truncation: middle\n", [], r"'truncation': .*'left' or 'drop'"),
        ("- a\n- b\n", [], r"expected a mapping"),
        ("model: [unclosed\n", [], r"not valid YAML"),
        ("{}", ["max_steps"], r"expected key=value"),
        ("{}", ["max_steps.x=1"], r"unknown key 'max_steps'|'max_steps'"),
        ("{}", ["gguf_file=x.gguf"], r"gguf_file needs"),
    ],
)
def test_malformed_configs_give_clear_errors(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(SFTConfig, path, overrides)
    assert "bad.yaml" in str(info.value) or "override" in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(SFTConfig, tmp_path / "nope.yaml")


def test_cli_reports_config_errors_and_data_errors(tmp_path):
    from click.testing import CliRunner

    from rlhf.cli import main

    result = CliRunner().invoke(main, ["sft", "optim.lrr=1"])
    assert result.exit_code == 2
    assert "unknown key 'optim.lrr'; did you mean optim.lr" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "there"}\n{"prompt": "hi", "completion": 7}\n')
    result = CliRunner().invoke(main, ["data", "inspect", str(bad)])
    assert result.exit_code == 1
    assert "bad.jsonl:2" in result.output and "completion" in result.output
    result = CliRunner().invoke(main, ["data", "inspect", str(bad), "--on-error", "skip"])
    assert result.exit_code == 0 and "loaded 1 of 2 rows" in result.output
    assert "--on-error skip" in CliRunner().invoke(main, ["data", "inspect", str(bad)]).output
    # A line cut short (33 characters): the error is at column 34 of that line, where the JSON ends.
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"prompt": "hi", "completion": "there"}\n{"prompt": "x", "completion": "a"\n')
    result = CliRunner().invoke(main, ["data", "inspect", str(cut)])
    assert "cut.jsonl:2: bad JSON: Expecting ',' delimiter (column 34)" in result.output
    # A missing or empty file is no row to skip: no hint about skipping rows.
    (tmp_path / "empty.jsonl").write_text("")
    for name in ("nope.jsonl", "empty.jsonl"):
        result = CliRunner().invoke(main, ["data", "inspect", str(tmp_path / name)])
        assert result.exit_code == 1 and str(tmp_path / name) in result.output
        assert "--on-error" not in result.output


def test_stage_commands_report_bad_data_and_missing_models_without_a_traceback(tmp_path, lab_base_path):
    from click.testing import CliRunner

    from rlhf.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "hi", "chosen": "a"}\n')
    out = f"run.output_dir={tmp_path / 'rm'}"
    result = CliRunner().invoke(
        main, ["rm", f"model={lab_base_path}", f"data={bad}", "eval_data=null", "max_steps=1", out]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{bad}:2: field 'rejected': missing required field" in result.output
    missing = tmp_path / "no" / "such" / "model"
    result = CliRunner().invoke(
        main, ["sft", f"model={missing}", "max_steps=1", f"run.output_dir={tmp_path / 's'}"]
    )
    assert result.exit_code == 1 and f"no such folder ({missing} does not exist)" in result.output


def test_run_config_checks_every_stage_section_before_anything_runs():
    from rlhf.pipeline import RunConfig, stage_configs

    cfg = load_config(RunConfig, None, ["ppo.max_stepz=3"])
    with pytest.raises(ConfigError, match=r"section `ppo`.*max_stepz"):
        stage_configs(cfg)
    stages = stage_configs(load_config(RunConfig, None, ["name=x", "ppo.max_steps=7", "rm.optim.lr=2e-3"]))
    assert stages["ppo"].max_steps == 7 and stages["ppo"].model == "runs/x/sft/final"
    assert stages["ppo"].reward_models[0].path == "runs/x/rm/final"
    assert stages["rm"].optim.lr == 2e-3 and stages["rm"].optim.warmup_steps == 10  # run defaults kept
    assert stages["sft"].max_length == 128 and stages["collect"].policy == "runs/x/sft/final"
    # The collection keeps its own defaults, takes the run's seed unless its section sets one, and writes
    # where the reward model reads.
    assert stages["collect"].prompts == CollectConfig().prompts and stages["collect"].seed == 0
    assert stages["collect"].output_dir == "runs/x/prefs" and stages["rm"].data == "runs/x/prefs/train.jsonl"
    # With ties on, the reward model reads each split's tied pairs beside its decisive ones.
    tied = stage_configs(load_config(RunConfig, None, ["name=x", "collect.tie_prob=0.2"]))
    assert tied["rm"].data == ["runs/x/prefs/train.jsonl", "runs/x/prefs/train_ties.jsonl"]
    assert tied["rm"].eval_data == ["runs/x/prefs/eval.jsonl", "runs/x/prefs/eval_ties.jsonl"]
    seeded = stage_configs(load_config(RunConfig, None, ["name=x", "seed=3", "collect.seed=5"]))
    assert seeded["collect"].seed == 5 and seeded["sft"].run.seed == 3
    # A key that connects the stages is the run's: setting it in a section is an error, not ignored.
    for override, key in [
        ("collect.output_dir=elsewhere", "output_dir"),
        ("rm.data=other.jsonl", "data"),
        ("sft.run.output_dir=elsewhere", "run.output_dir"),
        ("ppo.model=other", "model"),
    ]:
        with pytest.raises(
            ConfigError, match=rf"section `{override.split('.')[0]}`: {key} is set by rlhf run"
        ):
            stage_configs(load_config(RunConfig, None, ["name=x", override]))


def test_an_unknown_preset_fails_validation_before_anything_runs():
    from click.testing import CliRunner

    from rlhf.cli import _PRESETS, main
    from rlhf.lab.annotators import PRESETS
    from rlhf.pipeline import RunConfig

    assert _PRESETS.split(", ") == list(PRESETS)  # the names --help lists
    for cls in (RunConfig, CollectConfig):
        with pytest.raises(ConfigError, match=r"unknown lab preset 'lenght'; expected one of \['default'"):
            load_config(cls, None, ["preset=lenght"])
    result = CliRunner().invoke(main, ["run", "--preset", "lenght", "name=x"])
    assert result.exit_code == 2 and "config error" in result.output and "Traceback" not in result.output


def test_run_section_errors_are_config_errors_on_the_command_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from rlhf.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", "name=x", "sft.max_step=5"])
    assert result.exit_code == 2 and "did you mean max_steps" in result.output
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_partial_section_keeps_the_stage_defaults_of_the_rest():
    from rlhf.stages.ppo import PPOConfig

    cfg = load_config(PPOConfig, None, ["optim.lr=1e-4", "run.output_dir=runs/x"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.schedule == "constant" and cfg.optim.warmup_steps == 0
    assert cfg.run.output_dir == "runs/x" and cfg.run.log_every == 1  # PPO's run defaults, not RunSettings'
