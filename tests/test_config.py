"""Stage configs: YAML + dotted overrides, validated with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.collect import CollectConfig
from rlhf.config import ConfigError, load_config, parse_overrides
from rlhf.ppo import PPOConfig
from rlhf.reward import RMConfig
from rlhf.sft import SFTConfig

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


def test_a_partial_section_keeps_the_stage_defaults_of_the_rest():
    from rlhf.ppo import PPOConfig

    cfg = load_config(PPOConfig, None, ["optim.lr=1e-4", "run.output_dir=runs/x"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.schedule == "constant" and cfg.optim.warmup_steps == 0
    assert cfg.run.output_dir == "runs/x" and cfg.run.log_every == 1  # PPO's run defaults, not RunSettings'
