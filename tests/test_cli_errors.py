"""A table of bad invocations of every command: each must exit non-zero with a one-line message that
names the file, line, key or path, and never with a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from rlhf.cli import main

LABELS = ("error:", "config error:", "diverged:", "locked:", "Error:")  # ours, then click's own


@pytest.fixture(scope="module")
def files(tmp_path_factory, lab_base_path) -> dict[str, str]:
    """Bad inputs of every kind, and two folders that are models but not reward models."""
    d = tmp_path_factory.mktemp("bad")
    deep = "[" * 100_000 + "]" * 100_000
    texts = {
        "empty.jsonl": "",
        "bad.jsonl": '{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "hi", "chosen": "a"}\n',
        "deep.jsonl": '{"prompt": "a", "completion": "b"}\n{"prompt": ' + deep + ', "completion": "x"}\n',
        "notjson.jsonl": "not json\nnor this\n",
        "pairs.jsonl": '{"prompt": "hi", "chosen": "a", "rejected": "b"}\n',
        "data.xyz": "x",
        "file.txt": "not a model",
        "bad.yaml": "max_steps: [1,\n",
        "dup.yaml": "max_steps: 3\noptim:\n  lr: 1.0e-3\n  lr: 2.0e-3\n",
        "list.yaml": "- 1\n- 2\n",
        "xs_nocols.csv": "text,kind\nhello,safe\n",
        "xs_empty.csv": "prompt,type,label\n",
    }
    for name, text in texts.items():
        (d / name).write_text(text)
    (d / "emptydir").mkdir()
    (d / "tokless").mkdir()
    shutil.copy(lab_base_path / "config.json", d / "tokless" / "config.json")
    two = d / "twolabels"
    shutil.copytree(lab_base_path, two)
    config = json.loads((two / "config.json").read_text())
    config.update(architectures=["LlamaForSequenceClassification"], id2label={"0": "neg", "1": "pos"})
    config["label2id"] = {"neg": 0, "pos": 1}
    (two / "config.json").write_text(json.dumps(config))
    out = {name: str(d / name) for name in [*texts, "emptydir", "tokless", "twolabels"]}
    return {**out, "base": str(lab_base_path), "nope": str(d / "nope" / "x" / "y")}


NO_RM = ["reward_models=[]", "critic=policy_head", "model={base}"]
BAD_FN = '[{"function": "nosuchmod:fn"}]'

# (command line with {placeholders} from `files`, a fragment the message must hold)
CASES = [
    # the group, lab and demo
    (["nosuch"], "No such command"),
    (["lab", "show", "--preset", "nope"], "nope"),
    (["lab", "show", "--pairs", "0"], "--pairs"),
    (["lab", "build", "--steps", "0"], "--steps"),
    (["lab", "sample", "--model", "{nope}"], "does not exist"),
    (["lab", "sample", "--model", "{emptydir}"], "not a model folder"),
    (["lab", "sample", "--model", "{tokless}"], "no tokenizer"),
    (["lab", "sample", "-n", "0"], "--n-prompts"),
    (["demo", "--preset", "nope"], "nope"),
    # data inspect
    (["data", "inspect", "{nope}.jsonl"], "does not exist"),
    (["data", "inspect", "{empty.jsonl}"], "empty.jsonl: no rows"),
    (["data", "inspect", "{bad.jsonl}"], "bad.jsonl:2: field 'rejected'"),
    (["data", "inspect", "{deep.jsonl}"], "deep.jsonl:2: bad JSON: nested too deeply"),
    (["data", "inspect", "{notjson.jsonl}", "--on-error", "skip"], "notjson.jsonl: no usable rows"),
    (["data", "inspect", "{data.xyz}"], "unsupported file type"),
    (["data", "inspect", "{bad.jsonl}", "--on-error", "bogus"], "--on-error"),
    (["data", "inspect", "{bad.jsonl}", "--show", "-1"], "--show"),
    # sft: settings, files, models, devices
    (["sft", "optim.lrr=1"], "unknown key 'optim.lrr'"),
    (["sft", "optim.lr=inf"], "'optim.lr': must be a finite number"),
    (["sft", "optim.lr=.nan"], "'optim.lr'"),
    (["sft", "optim.lr=-1"], "'optim.lr'"),
    (["sft", "max_steps=0"], "'max_steps'"),
    (["sft", "lora.r=-1"], "'lora.r'"),
    (["sft", "batch_size=x"], "'batch_size'"),
    (["sft", "=3"], "expected key=value"),
    (["sft", "optim=3"], "'optim'"),
    (["sft", "run.device=cuda:99"], "run.device='cuda:99'"),
    (["sft", "run.device=gpu"], "run.device='gpu': not a device"),
    (["sft", "model={nope}"], "no such folder"),
    (["sft", "model={emptydir}"], "not a model folder"),
    (["sft", "model={file.txt}"], "is a file, not a model folder"),
    (["sft", "model={tokless}"], "no tokenizer"),
    (["sft", "data={nope}.jsonl"], "data="),
    (["sft", "gguf_file=x.gguf"], "gguf_file"),
    (["sft", "{nope}.yaml"], "cannot read the config file"),
    (["sft", "{bad.yaml}"], "bad.yaml: not valid YAML"),
    (["sft", "{dup.yaml}"], "dup.yaml:4: key 'lr' is given twice"),
    (["sft", "{list.yaml}"], "expected a mapping"),
    (["sft", "model={base}", "data={empty.jsonl}", "run.output_dir=out/sft"], "empty.jsonl: no rows"),
    # collect
    (["collect", "prompts=1"], "'prompts'"),
    (["collect", "preset=nope"], "'preset'"),
    (["collect", "k=1"], "'k'"),
    (["collect", "tie_prob=1.5"], "'tie_prob'"),
    (["collect", "policy={nope}"], "no such folder"),
    (["collect", "policy={emptydir}"], "not a model folder"),
    # rm
    (["rm"], "runs/prefs-lab/train.jsonl"),
    (["rm", "center_coef=-1"], "'center_coef'"),
    (["rm", "ties=maybe"], "'ties'"),
    (["rm", "data=[]"], "'data.list[str]'"),
    (["rm", "model={emptydir}", "data={pairs.jsonl}", "eval_data=null"], "not a model folder"),
    (["rm", "model={base}", "data={bad.jsonl}", "eval_data=null", "run.output_dir=out/rm"], "bad.jsonl:2"),
    # rm-eval
    (["rm-eval", "{nope}", "{pairs.jsonl}"], "no such folder"),
    (["rm-eval", "{base}", "{pairs.jsonl}"], "LlamaForCausalLM with no score head, not a reward model"),
    (["rm-eval", "{twolabels}", "{pairs.jsonl}"], "a classifier with 2 labels"),
    (["rm-eval", "{emptydir}", "{pairs.jsonl}"], "not a model folder"),
    (["rm-eval", "{base}", "{pairs.jsonl}", "--batch-size", "0"], "--batch-size"),
    (["rm-eval", "{base}", "{pairs.jsonl}", "--output", "{nope}/out.json"], "--output"),
    (["rm-eval", "{base}"], "Missing argument"),
    # ppo
    (["ppo", f"reward_functions={BAD_FN}", *NO_RM], "cannot import 'nosuchmod'"),
    (["ppo", 'reward_functions=[{"function": "rlhf.rewards:nosuch"}]', *NO_RM], "no callable 'nosuch'"),
    (["ppo", 'reward_functions=[{"function": "nocolon"}]', *NO_RM], "expected 'module:function'"),
    (["ppo", "rollout_size=10", "batch_size=3"], "must be a multiple"),
    (["ppo", *NO_RM], "no reward"),
    (["ppo", "temperature=0"], "'temperature'"),
    (["ppo", "kl_estimator=k9"], "'kl_estimator'"),
    (["ppo", "run.device=cuda:99"], "run.device='cuda:99'"),
    (["ppo", "model={emptydir}"], "not a model folder"),
    (["ppo", 'reward_models=[{"path": "{nope}"}]'], "no such folder"),
    (["ppo", "critic={nope}"], "no such folder"),
    # run: everything checked before the first stage
    (["run", "eval.best_of_n=[]"], "'eval.best_of_n'"),
    (["run", "eval.best_of_n=[0, 2]"], "'eval.best_of_n'"),
    (["run", "eval.prompts=0"], "'eval.prompts'"),
    (["run", "eval.xstest={nope}.csv"], "eval.xstest"),
    (["run", "eval.xstest={xs_nocols.csv}"], "missing `prompt`"),
    (["run", "eval.xstest={xs_empty.csv}"], "no prompts"),
    (["run", "sft.run.output_dir=x"], "run.output_dir is set by rlhf run"),
    (["run", "sft.max_stepz=3"], "section `sft`: unknown key 'max_stepz'"),
    (["run", f"ppo.reward_functions={BAD_FN}"], "section `ppo`: reward_functions.0"),
    (["run", "ppo.run.device=cuda:99"], "section `ppo`"),
    (["run", "sft.data={nope}.jsonl"], "section `sft`: data="),
    (["run", "model={emptydir}"], "not a model folder"),
    (["run", "model={nope}"], "no such folder"),
    (["run", "--preset", "nope"], "'preset'"),
    (["run", "--restart", "nope"], "--restart"),
    # eval
    (["eval", "{nope}", "--baseline", "{nope}"], "no such folder"),
    (["eval", "{base}", "--baseline", "{base}", "--n", "0"], "--n"),
    (["eval", "{base}", "--baseline", "{base}", "--temperature", "0"], "--temperature"),
    (["eval", "{base}", "--baseline", "{base}", "--temperature", "-1"], "--temperature"),
    (["eval", "{base}", "--baseline", "{base}", "--prompts", "{empty.jsonl}"], "empty.jsonl: no rows"),
    (["eval", "{base}", "--baseline", "{base}", "--prompts", "{notjson.jsonl}"], "notjson.jsonl:1: bad JSON"),
    (["eval", "{base}", "--baseline", "{base}", "--prompts", "{nope}.jsonl"], "does not exist"),
    (["eval", "{base}", "--baseline", "{base}", "--xstest", "{xs_nocols.csv}"], "missing `prompt`"),
    (["eval", "{base}", "--baseline", "{base}", "--xstest", "{xs_empty.csv}"], "no prompts"),
    (["eval", "{base}", "--baseline", "{base}", "--xstest", "{nope}.csv"], "no such file"),
    (["eval", "{base}", "--baseline", "{base}", "--reward-model", "{base}"], "not a reward model"),
    (["eval", "{base}", "--baseline", "{base}", "--reward-model", "{emptydir}"], "not a model folder"),
    (["eval", "{emptydir}", "--baseline", "{base}"], "not a model folder"),
    (["eval", "{base}", "--baseline", "{twolabels}"], "LlamaForSequenceClassification"),
    (["lab", "sample", "--model", "{twolabels}"], "not a language model"),
    (["eval", "{base}", "--baseline", "{base}", "--output", "{nope}/x.json"], "--output"),
    (["eval", "{base}"], "Missing option '--baseline'"),
    (["eval"], "Missing argument"),
]


def _fill(arg: str, files: dict[str, str]) -> str:
    for name, value in files.items():
        arg = arg.replace("{" + name + "}", value)
    return arg


def test_the_table_has_at_least_60_cases_of_every_command():
    commands = {case[0][0] for case in CASES}
    assert len(CASES) >= 60
    assert {"lab", "data", "sft", "collect", "rm", "rm-eval", "ppo", "run", "eval", "demo"} <= commands


@pytest.mark.parametrize("args, fragment", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_a_bad_invocation_exits_with_one_clear_line(args, fragment, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative run folders (runs/...) land in a fresh folder
    result = CliRunner().invoke(main, [_fill(a, files) for a in args])
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught error
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    labelled = [line for line in lines if line.startswith(LABELS)]
    assert len(labelled) == 1 and labelled[0] == lines[-1], result.output  # one line, the last
    assert _fill(fragment, files) in lines[-1], lines[-1]
