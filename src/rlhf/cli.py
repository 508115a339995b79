"""The ``rlhf`` command line.

rlhf demo                         # the main job on the built-in lab default
rlhf lab build                    # make (or find in the cache) the lab tokenizer and base model
rlhf lab show --preset NAME       # lab prompts, demonstrations, gold scores and preset statistics
rlhf lab sample [--model PATH]    # sample a model on held-out lab prompts, scored by the gold judge
rlhf data inspect PATH            # detect a dataset's format and validate every row
rlhf sft | collect | rm | ppo     # one stage: [CONFIG.yaml] [key=value ...]
rlhf run [CONFIG.yaml] [k=v ...]  # every stage, evaluation and report under runs/<name>/
rlhf eval CKPT... --baseline CKPT # win rate, reward, KL, length bias, failure-mode probes, XSTest
rlhf refusal-check CSV            # the refusal classifier against human labels of completions
"""

from __future__ import annotations

import errno
import json
import random
import sys
from pathlib import Path

import click

# The lab presets' names, for --help (importing rlhf.lab here would slow every command's start;
# a test keeps this equal to rlhf.lab.annotators.PRESETS), and the stages `rlhf run --restart` takes
# (a test keeps them equal to the stage table's, rlhf.pipeline.STAGES).
_PRESETS = "default, length-biased, sycophantic"
_RUN_STAGES = ("sft", "collect", "rm", "ppo", "eval")
# A full disk or quota, a read-only file system, a permission: what the user can fix.
_FULL_DISK = tuple(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES") if hasattr(errno, name)
)


# Every command that reads a dataset takes the same skip policy.
ON_ERROR = click.option(
    "--on-error",
    type=click.Choice(["raise", "skip"]),
    default="raise",
    show_default=True,
    help="Stop at the first bad row, or skip bad rows and count them.",
)


def _exit_for(error: BaseException) -> None:
    """Exit with a one-line message for an error the user can cause and fix (``rlhf.errors.UsageError``,
    an interruption, a full disk, no memory left); re-raise anything else (a bug: its traceback helps)."""
    from rlhf.errors import UsageError

    if isinstance(error, UsageError):
        click.echo(f"{error.label}: {error.one_line()}", err=True)
        sys.exit(error.exit_code)
    if isinstance(error, KeyboardInterrupt):
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    if isinstance(error, OSError) and error.errno in _FULL_DISK:
        click.echo(f"error: {error.strerror}: {error.filename or ''}".rstrip(": "), err=True)
        sys.exit(1)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        click.echo("error: out of memory; lower batch_size (or max_length, rollout_size)", err=True)
        sys.exit(1)
    raise error


class _Main(click.Group):
    """The ``rlhf`` group: every command's user errors end in one line and an exit code (see
    :func:`_exit_for`), never in a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (Exception, KeyboardInterrupt) as error:
            if isinstance(error, click.exceptions.ClickException | click.exceptions.Exit | click.Abort):
                raise
            _exit_for(error)


def _check_output(path: str | None) -> None:
    """An ``--output`` file must go into an existing folder (checked before the work, not after)."""
    from rlhf.errors import UsageError

    if path and not Path(path).expanduser().resolve().parent.is_dir():
        raise UsageError(
            f"--output {path}: the folder {Path(path).expanduser().resolve().parent} does not exist"
        )


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rlhf")
def main() -> None:
    """rlhf: SFT -> reward model -> PPO, readable and fast, from a laptop CPU up."""


# ---------------------------------------------------------------------------------------------------
# rlhf lab
# ---------------------------------------------------------------------------------------------------


@main.group()
def lab() -> None:
    """The built-in lab world: known human preferences, a small base model."""


def _build(seed: int, steps: int | None) -> Path:
    from rlhf.lab.base import BaseModelSpec, build_base_model

    spec = BaseModelSpec(seed=seed) if steps is None else BaseModelSpec(seed=seed, steps=steps)
    return build_base_model(spec, log=lambda m: click.echo(m, err=True))


@lab.command("build")
@click.option("--seed", default=0, show_default=True, help="Seed of the corpus, tokenizer and weights.")
@click.option(
    "--steps", type=click.IntRange(min=1), default=None, help="Pretraining steps (default: the spec's)."
)
def lab_build(seed: int, steps: int | None) -> None:
    """Make (or find in the cache) the lab tokenizer and base model; print its folder and figures."""
    path = _build(seed, steps)
    info = json.loads((path / "lab_base.json").read_text())
    click.echo(
        f"{path}\n{info['n_params']:,} parameters, pretrained in {info['pretrain_seconds']}s, "
        f"held-out loss {info['heldout_loss']:.3f} nats/token"
    )


@lab.command("show")
@click.option("--preset", default="default", show_default=True, help=f"Annotator preset: {_PRESETS}.")
@click.option(
    "--pairs",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Pairs for the preset statistics.",
)
@click.option("--seed", default=0, show_default=True)
def lab_show(preset: str, pairs: int, seed: int) -> None:
    """Show lab prompts, demonstrations with their gold utility, and the preset's annotator statistics."""
    _show(preset, pairs, seed)


def _show(preset_name: str, pairs: int, seed: int) -> None:
    from rlhf.lab import FAMILIES, get_preset, gold_utility, make_prompt, respond
    from rlhf.lab.preferences import preset_stats

    try:
        preset = get_preset(preset_name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--preset") from None
    rng = random.Random(seed)
    click.echo("Lab prompts, with one demonstration per style and its gold utility u:")
    for family in FAMILIES:
        p = make_prompt(family, rng)
        click.echo(f"\n[{family}] {p.text}")
        for style in ("ideal", "verbose", "wrong", "over_refuse", "sycophantic"):
            r = respond(p, style, rng)
            click.echo(f"  {style:<12} u={gold_utility(p, r):+.2f}  {r}")
    stats = preset_stats(preset, n=pairs, seed=seed)
    click.echo(
        f"\nPreset '{preset.name}': {preset.description}; annotators "
        + ", ".join(f"{a.id}(beta={a.beta})" for a in preset.annotators)
    )
    for key, value in stats.items():
        click.echo(f"  {key:<26} {value:.3f}")


@lab.command("sample")
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A model folder (default: the lab base model).",
)
@click.option(
    "-n",
    "--n-prompts",
    type=click.IntRange(min=1),
    default=120,
    show_default=True,
    help="Held-out lab prompts.",
)
@click.option("--show", type=click.IntRange(min=0), default=8, show_default=True, help="Responses to print.")
def lab_sample(model_path: str | None, n_prompts: int, show: int) -> None:
    """Sample a model on held-out lab prompts and score the responses with the gold judge."""
    _sample(Path(model_path) if model_path else _build(0, None), n_prompts, show)


def _sample(path: Path, n_prompts: int, show: int) -> None:
    from rlhf.lab.evaluate import gold_eval
    from rlhf.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(path))
    model = load_causal_lm(str(path))
    report = gold_eval(model, tokenizer, n=n_prompts)
    click.echo(f"\nSamples from {path}:")
    for p, r, u in list(zip(report.prompts, report.responses, report.utilities))[:show]:
        click.echo(f"  u={u:+.2f}  {p.text}  ->  {r}")
    click.echo(
        f"\nGold utility on {n_prompts} held-out prompts: mean {report.mean:+.3f}, "
        f"mean length {report.mean_words():.1f} words"
    )
    for family, u in report.by_family().items():
        click.echo(f"  {family:<12} {u:+.3f}")


# ---------------------------------------------------------------------------------------------------
# rlhf data
# ---------------------------------------------------------------------------------------------------


@main.group()
def data() -> None:
    """Datasets: format detection and validation."""


@data.command("inspect")
@click.argument("source")
@click.option("--split", default="train", show_default=True, help="Split of a Hugging Face dataset.")
@ON_ERROR
@click.option("--show", type=click.IntRange(min=0), default=1, show_default=True, help="Records to print.")
def data_inspect(source: str, split: str, on_error: str, show: int) -> None:
    """Detect SOURCE's format (a file, a saved dataset folder, or a hub name) and validate every row."""
    from rlhf import data as rdata

    try:  # every row is read as its own format, so a bad first row is reported like any other
        records, report = rdata.load_any(source, split=split, on_error=on_error)
    except rdata.DataError as e:
        row_level = e.location != source  # a row's error has a line; a missing or empty file has none
        hint = " (--on-error skip skips bad rows and counts them)" if row_level and on_error != "skip" else ""
        click.echo(f"error: {e}{hint}", err=True)
        sys.exit(1)
    click.echo(report.summary())
    for reason, examples in report.examples.items():
        for example in examples:
            click.echo(f"  skipped: {example}")
        if report.skipped[reason] > len(examples):
            click.echo(f"  ... and {report.skipped[reason] - len(examples)} more: {reason}")
    for record in records[:show]:
        click.echo(json.dumps(rdata.to_row(record), ensure_ascii=False, indent=2))


# ---------------------------------------------------------------------------------------------------
# Training stages
# ---------------------------------------------------------------------------------------------------


def _stage_config(cls, args: tuple[str, ...]):
    """``[CONFIG.yaml] [key=value ...]`` -> a validated config (a ``ConfigError`` exits with its message,
    see :class:`_Main`)."""
    from rlhf.config import load_config

    path = args[0] if args and "=" not in args[0] else None
    overrides = list(args[1:] if path else args)
    return load_config(cls, path, overrides)


def _run_stage(train, cfg, restart: bool = False):
    """Run one stage's ``train(cfg, log=...)``; with ``restart``, remove the stage's outputs in its
    folder first (under its lock)."""
    from rlhf import guards
    from rlhf.preflight import check_stage

    def call(log):
        if restart:
            check_stage(cfg)  # a stage that cannot start removes nothing
            folder = Path(cfg.run.output_dir if hasattr(cfg, "run") else cfg.output_dir)
            guards.acquire_lock(folder, log)
            guards.clear_outputs(folder, log)
        return train(cfg, log=log)

    return _run(call)


def _run(call):
    """``call(log)`` with a log to stderr (a user's error exits with its one-line message: :class:`_Main`)."""
    return call(lambda m: click.echo(m, err=True))


_RESTART_HELP = (
    "Start the stage over: remove its checkpoints and outputs first (else changed settings refuse)."
)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--restart", is_flag=True, help=_RESTART_HELP)
@click.argument("args", nargs=-1)
def sft(restart: bool, args: tuple[str, ...]) -> None:
    """Supervised fine-tuning: rlhf sft [CONFIG.yaml] [key=value ...] (e.g. optim.lr=3e-4 lora.r=16).

    Keys not set take the defaults of rlhf.stages.sft.SFTConfig; configs/sft_lab.yaml is the lab's config."""
    from rlhf.stages.sft import SFTConfig, train_sft

    _run_stage(train_sft, _stage_config(SFTConfig, args), restart)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--restart", is_flag=True, help=_RESTART_HELP)
@click.argument("args", nargs=-1)
def collect(restart: bool, args: tuple[str, ...]) -> None:
    """Preference collection on the lab: rlhf collect [CONFIG.yaml] [key=value ...].

    Keys not set take the defaults of rlhf.stages.collect.CollectConfig; configs/collect_lab.yaml is the lab's."""
    from rlhf.stages.collect import CollectConfig
    from rlhf.stages.collect import collect as run_collect

    _run_stage(run_collect, _stage_config(CollectConfig, args), restart)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--restart", is_flag=True, help=_RESTART_HELP)
@click.argument("args", nargs=-1)
def rm(restart: bool, args: tuple[str, ...]) -> None:
    """Reward model: rlhf rm [CONFIG.yaml] [key=value ...] (e.g. lora.r=16 center_coef=0.01).

    Keys not set take the defaults of rlhf.stages.rm.RMConfig; configs/rm_lab.yaml is the lab's config."""
    from rlhf.stages.rm import RMConfig, train_rm

    _run_stage(train_rm, _stage_config(RMConfig, args), restart)


@main.command("rm-eval")
@click.argument("reward_model")
@click.argument("data")
@click.option(
    "--max-length", type=click.IntRange(min=8), default=512, show_default=True,
    help="Pairs with a longer response are skipped.",
)  # fmt: skip
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--split", default="train", show_default=True, help="Split of a saved or hub dataset.")
@click.option("--gguf-file", default=None, help="GGUF file inside REWARD_MODEL's folder, if it is one.")
@click.option("--output", default=None, help="Write the metrics and calibration bins as JSON here.")
@ON_ERROR
@click.option(
    "--fresh-head", is_flag=True, help="Score a model with no reward head through a new random one."
)
def rm_eval(
    reward_model, data, max_length, batch_size, split, gguf_file, output, on_error, fresh_head
) -> None:
    """Score a saved reward model on a preference dataset (any format `rlhf rm` reads): accuracy with its
    95% interval, calibration, margin, reward-length correlation, per family where the rows name one,
    and on lab data the Bayes-optimal accuracy and the gold judge's agreement beside it."""
    from rlhf.stages.rm import describe_eval, evaluate_saved

    _check_output(output)
    values, table = _run(
        lambda log: evaluate_saved(
            reward_model,
            data,
            max_length,
            batch_size,
            gguf_file,
            split,
            on_error=on_error,
            log=log,
            fresh_head=fresh_head,
        )
    )
    gold = f", gold accuracy {values['gold_accuracy']:.3f}" if "gold_accuracy" in values else ""
    click.echo(
        f"{values['pairs']} pairs: {describe_eval(values)}{gold}, margin {values['margin']:+.3f}, "
        f"reward-length corr. {values['reward_length_corr']:+.2f}"
    )
    groups = sorted(k.split("/", 1)[1] for k in values if k.startswith("accuracy/"))
    for g in groups:
        cells = [
            f"{k} {values[f'{k}/{g}']:.3f}"
            for k in ("accuracy", "bayes_accuracy", "gold_accuracy")
            if f"{k}/{g}" in values
        ]
        click.echo(f"  {g}: " + ", ".join(cells))
    if output:
        Path(output).write_text(json.dumps({"metrics": values, "calibration": table}, indent=1))
        click.echo(f"written: {output}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--restart", is_flag=True, help=_RESTART_HELP)
@click.argument("args", nargs=-1)
def ppo(restart: bool, args: tuple[str, ...]) -> None:
    """PPO with a KL penalty: rlhf ppo [CONFIG.yaml] [key=value ...] (e.g. kl_coef=0 adaptive_kl=false).

    Keys not set take the defaults of rlhf.stages.ppo.PPOConfig; configs/ppo_lab.yaml is the lab's config."""
    from rlhf.stages.ppo import PPOConfig, train_ppo

    _run_stage(train_ppo, _stage_config(PPOConfig, args), restart)


@main.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--preset", default=None, help=f"Lab annotator preset: {_PRESETS}.")
@click.option(
    "--restart", type=click.Choice(_RUN_STAGES), multiple=True,
    help="Start this stage over, and every later one (they are made from it); may be repeated.",
)  # fmt: skip
@click.argument("args", nargs=-1)
def run_all(preset: str | None, args: tuple[str, ...], restart: tuple[str, ...] = ()) -> None:
    """Every stage: rlhf run [--preset NAME] [CONFIG.yaml] [key=value ...] (e.g. name=x ppo.max_steps=40).

    base model -> SFT -> preference collection -> reward model -> PPO -> evaluation -> report, under
    runs/<name>/. A rerun skips finished stages and resumes an interrupted one; with other settings it
    refuses, naming the keys, unless --restart STAGE starts that stage and the later ones over. Keys:
    rlhf.pipeline.RunConfig; its sft/collect/rm/ppo sections override those stages' configs
    (laptop-sized defaults in rlhf.pipeline.RUN_DEFAULTS)."""
    from rlhf.pipeline import RunConfig, run_pipeline
    from rlhf.report import summary_table

    if preset:
        args = (*args, f"preset={preset}")
    cfg = _stage_config(RunConfig, args)
    # Every section, path, device and reward function is checked before the first stage starts.
    report = _run(lambda log: run_pipeline(cfg, log=log, restart=tuple(restart)))
    eval_file = cfg.dir / "eval.json"
    if eval_file.exists():
        click.echo(summary_table(json.loads(eval_file.read_text())))
    timings = json.loads((cfg.dir / "timings.json").read_text())
    click.echo("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    click.echo(f"report: {report}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Comma-separated seeds.")
@click.option("--preset", default=None, help=f"Lab annotator preset: {_PRESETS}.")
@click.argument("args", nargs=-1)
def sweep(seeds: str, preset: str | None, args: tuple[str, ...]) -> None:
    """rlhf run over several seeds: rlhf sweep [--seeds 0,1,2,3,4] [CONFIG.yaml] [key=value ...].

    Seed s runs as runs/<name>-s<s>/ with every stage's seed and the lab base model's set to s; the
    per-seed and pooled figures (mean, 95% interval) go to runs/<name>-sweep/ (sweep.json, sweep.md,
    sweep.html). E.g. `rlhf sweep name=oracle reward=gold` for the ceiling. Keys: as rlhf run."""
    from rlhf.pipeline import RunConfig
    from rlhf.sweep import run_sweep

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        click.echo(f"error: --seeds {seeds!r}: expected comma-separated integers such as 0,1,2", err=True)
        sys.exit(2)
    if not seed_list:
        click.echo("error: --seeds: give at least one seed", err=True)
        sys.exit(2)
    if preset:
        args = (*args, f"preset={preset}")
    cfg = _stage_config(RunConfig, args)
    out = _run(lambda log: run_sweep(cfg, seed_list, log=log))
    click.echo(f"sweep: {out}/sweep.md, {out}/sweep.html")


@main.command("eval")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--baseline", required=True, help="The checkpoint the others are compared with.")
@click.option("--reference", default=None, help="Reference policy for the KL (default: the baseline).")
@click.option("--reward-model", default=None, help="Reward model: mean reward, reward win rate, length bias.")
@click.option(
    "--fresh-head", is_flag=True, help="Let --reward-model have no reward head (a random one: a baseline)."
)
@click.option(
    "--prompts", "prompts_file", default=None, help="Prompts dataset (default: lab held-out prompts)."
)
@click.option(
    "--n", "n_prompts", type=click.IntRange(min=1), default=240, show_default=True, help="Prompts evaluated."
)
@click.option("--xstest", default=None, help="XSTest prompts CSV (e.g. ../shared/data/xstest_prompts.csv).")
@click.option(
    "--temperature", type=click.FloatRange(min=0, min_open=True, max=100), default=1.0, show_default=True,
    help="Sampling temperature of every policy (> 0).",
)  # fmt: skip
@click.option("--output", default=None, help="Write the results as JSON here.")
@click.option(
    "--on-error",
    type=click.Choice(["raise", "skip"]),
    default="raise",
    show_default=True,
    help="Bad rows of --prompts: stop at the first, or skip them and count them.",
)
def eval_cmd(
    checkpoints, baseline, reference, reward_model, fresh_head, prompts_file, n_prompts, xstest, temperature,
    output, on_error,
) -> None:  # fmt: skip
    """Evaluate checkpoints against a baseline: win rate, reward, KL, length, length bias, the lab's
    failure-mode probes (sycophancy, refusals, over-refusal, consistency, uncertainty), XSTest, and a
    safety-regression comparison with the baseline."""
    from rlhf import data as rdata
    from rlhf.preflight import check_model_path, check_xstest
    from rlhf.report import summary_table
    from rlhf.stages.eval import evaluate_policies

    _check_output(output)
    for key, name in [
        *(("checkpoint", c) for c in checkpoints),
        ("--baseline", baseline),
        ("--reference", reference),
    ]:
        if name:
            check_model_path(name, key)
    if reward_model:
        check_model_path(reward_model, "--reward-model")
    if xstest:
        check_xstest(xstest)
    policies = {Path(baseline).parent.name + "/" + Path(baseline).name: baseline}
    base_name = next(iter(policies))
    for c in checkpoints:
        policies.setdefault(Path(c).parent.name + "/" + Path(c).name, c)
    prompts = None
    if prompts_file:
        try:
            records, report = rdata.load_prompts(prompts_file, on_error=on_error, limit=n_prompts)
        except rdata.DataError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        click.echo(f"{prompts_file}: {report.summary()}", err=True)
        with_kwargs = [r.source for r in records if r.meta.get("chat_template_kwargs")]
        if with_kwargs:  # the policies are sampled with their templates' defaults; say so, don't drop
            click.echo(
                f"error: {with_kwargs[0]}: field 'chat_template_kwargs': rlhf eval renders every prompt with "
                "each policy's chat template defaults; remove the column",
                err=True,
            )
            sys.exit(1)
        prompts = [r.prompt if isinstance(r.prompt, str) else [dict(m) for m in r.prompt] for r in records]
    result = evaluate_policies(
        policies, base_name, reference=reference or baseline, reward_model=reward_model, n_prompts=n_prompts,
        prompts=prompts, xstest=xstest, temperature=temperature, log=lambda m: click.echo(m, err=True),
        reward_fresh_head=fresh_head,
    )  # fmt: skip
    click.echo(summary_table(result))
    if output:
        Path(output).write_text(json.dumps(result, indent=1))
        click.echo(f"written: {output}")


@main.command("refusal-check")
@click.argument("csv_file", metavar="CSV")
@click.option(
    "--output", default=None, help="Write the figures (and each rate by humans and classifier) as JSON here."
)
def refusal_check(csv_file: str, output: str | None) -> None:
    """Score the refusal classifier on CSV, labelled completions with XSTest's columns (prompt, type,
    completion, final_label = 1_full_compliance / 2_full_refusal / 3_partial_refusal): three-class and
    refusal-vs-compliance agreement with the labels, per class precision and recall, the confusion
    matrix, and the full-refusal rate on safe prompts (types not starting with contrast_) against the
    labels'."""
    from rlhf.refusal import LabelledDataError, describe, read_labelled, score_rows

    try:
        rows = read_labelled(csv_file)
    except LabelledDataError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    scores = score_rows(rows)
    click.echo(f"{csv_file}:")
    click.echo("\n".join(describe(scores)))
    if output:
        Path(output).write_text(json.dumps(scores, indent=1))
        click.echo(f"written: {output}")


# ---------------------------------------------------------------------------------------------------
# rlhf demo
# ---------------------------------------------------------------------------------------------------


@main.command()
@click.option("--preset", default="default", show_default=True, help=f"Lab annotator preset: {_PRESETS}.")
def demo(preset: str) -> None:
    """The main job on the built-in default: the lab's annotators, then `rlhf run name=demo`: the lab
    base model, SFT, preference collection, the reward model, PPO, a second round (new preferences on the
    PPO policy's samples, the reward model retrained, PPO continued), the evaluation and the report,
    under runs/demo/ (a rerun skips the stages already done)."""
    _show(preset, 2000, 0)
    click.echo("")
    ctx = click.get_current_context()
    ctx.invoke(run_all, preset=preset, args=("name=demo",))


if __name__ == "__main__":
    main()
