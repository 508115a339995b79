"""The ``rlhf`` command line.

rlhf demo                         # the main job on the built-in lab default
rlhf lab build                    # make (or find in the cache) the lab tokenizer and base model
rlhf lab show --preset NAME       # lab prompts, demonstrations, gold scores and preset statistics
rlhf lab sample [--model PATH]    # sample a model on held-out lab prompts, scored by the gold judge
rlhf data inspect PATH            # detect a dataset's format and validate every row
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--steps", type=int, default=None, help="Pretraining steps (default: the spec's).")
def lab_build(seed: int, steps: int | None) -> None:
    """Make (or find in the cache) the lab tokenizer and base model; print its folder and figures."""
    path = _build(seed, steps)
    info = json.loads((path / "lab_base.json").read_text())
    click.echo(
        f"{path}\n{info['n_params']:,} parameters, pretrained in {info['pretrain_seconds']}s, "
        f"held-out loss {info['heldout_loss']:.3f} nats/token"
    )


@lab.command("show")
@click.option("--preset", default="default", show_default=True, help="Annotator preset.")
@click.option("--pairs", default=2000, show_default=True, help="Pairs used for the preset statistics.")
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
@click.option("-n", "--n-prompts", default=120, show_default=True, help="Held-out lab prompts.")
@click.option("--show", default=8, show_default=True, help="Responses to print.")
def lab_sample(model_path: str | None, n_prompts: int, show: int) -> None:
    """Sample a model on held-out lab prompts and score the responses with the gold judge."""
    _sample(Path(model_path) if model_path else _build(0, None), n_prompts, show)


def _sample(path: Path, n_prompts: int, show: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.lab.evaluate import gold_eval

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
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
@click.option(
    "--on-error",
    type=click.Choice(["raise", "skip"]),
    default="raise",
    show_default=True,
    help="Stop at the first bad row, or skip bad rows and count them.",
)
@click.option("--show", default=1, show_default=True, help="Records to print.")
def data_inspect(source: str, split: str, on_error: str, show: int) -> None:
    """Detect SOURCE's format (a file, a saved dataset folder, or a hub name) and validate every row."""
    from rlhf import data as rdata

    loader = {
        "preference": rdata.load_preferences,
        "implicit_preference": rdata.load_preferences,
        "prompt_only": rdata.load_prompts,
    }
    try:
        first = next(iter(rdata.read_rows(source, split=split)))[1]
        load = loader.get(rdata.detect_format(first), rdata.load_sft)
        records, report = load(source, split=split, on_error=on_error)
    except rdata.DataError as e:
        hint = "" if on_error == "skip" else " (--on-error skip skips bad rows and counts them)"
        click.echo(f"error: {e}{hint}", err=True)
        sys.exit(1)
    click.echo(report.summary())
    for record in records[:show]:
        click.echo(json.dumps(rdata.to_row(record), ensure_ascii=False, indent=2))


# ---------------------------------------------------------------------------------------------------
# Training stages
# ---------------------------------------------------------------------------------------------------


def _stage_config(cls, args: tuple[str, ...]):
    """``[CONFIG.yaml] [key=value ...]`` -> a validated config (errors exit with the message)."""
    from rlhf.config import ConfigError, load_config

    path = args[0] if args and "=" not in args[0] else None
    overrides = list(args[1:] if path else args)
    try:
        return load_config(cls, path, overrides)
    except ConfigError as e:
        click.echo(f"config error:\n{e}", err=True)
        sys.exit(2)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
def sft(args: tuple[str, ...]) -> None:
    """Supervised fine-tuning: rlhf sft [CONFIG.yaml] [key=value ...] (e.g. optim.lr=3e-4 lora.r=16)."""
    from rlhf.sft import SFTConfig, train_sft

    train_sft(_stage_config(SFTConfig, args), log=lambda m: click.echo(m, err=True))


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
def collect(args: tuple[str, ...]) -> None:
    """Preference collection on the lab: rlhf collect [CONFIG.yaml] [key=value ...]."""
    from rlhf.collect import CollectConfig
    from rlhf.collect import collect as run_collect

    run_collect(_stage_config(CollectConfig, args), log=lambda m: click.echo(m, err=True))


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
def rm(args: tuple[str, ...]) -> None:
    """Reward model: rlhf rm [CONFIG.yaml] [key=value ...] (e.g. lora.r=16 center_coef=0.01)."""
    from rlhf.reward import RMConfig, train_rm

    train_rm(_stage_config(RMConfig, args), log=lambda m: click.echo(m, err=True))


# ---------------------------------------------------------------------------------------------------
# rlhf demo
# ---------------------------------------------------------------------------------------------------


@main.command()
@click.option("--preset", default="default", show_default=True, help="Lab annotator preset.")
@click.option("--output-dir", default="runs/demo", show_default=True, help="Where the demo's runs go.")
def demo(preset: str, output_dir: str) -> None:
    """The main job on the built-in default: the lab world and its base model; SFT on the lab's
    demonstrations, judged by the gold judge against the base model; preference collection from the SFT
    model and a reward model trained on it. A rerun skips the stages whose final output exists."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.collect import CollectConfig, collect
    from rlhf.lab.evaluate import gold_eval
    from rlhf.reward import RMConfig, train_rm
    from rlhf.sft import SFTConfig, train_sft
    from rlhf.training import OptimSettings, RunSettings, read_metrics

    echo = lambda m: click.echo(m, err=True)  # noqa: E731
    out = Path(output_dir)
    base = _build(0, None)
    _show(preset, 2000, 0)

    click.echo("\n== Stage 1: SFT on 2,000 lab demonstrations ==")
    sft_model = out / "sft" / "final"
    if not sft_model.exists():
        train_sft(
            SFTConfig(max_length=128, run=RunSettings(output_dir=str(out / "sft"), save_every=0)), log=echo
        )
    rows = {}
    for name, path in (("base", base), ("sft", sft_model)):
        model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        rows[name] = gold_eval(model, tokenizer, n=240)
    click.echo("\nGold utility on 240 held-out lab prompts (one sample each):")
    families = list(rows["base"].by_family())
    click.echo(f"  {'model':<6} {'mean':>7} " + " ".join(f"{f:>11}" for f in families) + "   words")
    for name, report in rows.items():
        by = report.by_family()
        click.echo(f"  {name:<6} {report.mean:+7.3f} " + " ".join(f"{by[f]:+11.3f}" for f in families)
                   + f"   {report.mean_words():5.1f}")  # fmt: skip

    click.echo(
        f"\n== Preference collection: the SFT model answers 1,000 prompts 4 times; '{preset}' annotators label =="
    )
    prefs = out / "prefs"
    if not (prefs / "summary.json").exists():
        collect(
            CollectConfig(policy=str(sft_model), preset=preset, prompts=1000, output_dir=str(prefs)), log=echo
        )
    bayes = json.loads((prefs / "summary.json").read_text())["eval"]["bayes_accuracy"]

    click.echo("\n== Stage 2: the reward model (Bradley-Terry) ==")
    rm_dir = out / "rm"
    if not (rm_dir / "final").exists():
        cfg = RMConfig(
            model=str(sft_model), data=str(prefs / "train.jsonl"), eval_data=str(prefs / "eval.jsonl"),
            max_length=128, batch_size=32, optim=OptimSettings(lr=1e-3, warmup_steps=10),
            run=RunSettings(output_dir=str(rm_dir), save_every=0, eval_every=0),
        )  # fmt: skip
        train_rm(cfg, log=echo)
    final = [row for row in read_metrics(rm_dir) if row["split"] == "eval"][-1]
    click.echo(
        f"  held-out pairwise accuracy {final['accuracy']:.3f} (Bayes-optimal {bayes:.3f}), "
        f"calibration error {final['ece']:.3f}, reward-length correlation {final['reward_length_corr']:+.2f}"
    )
