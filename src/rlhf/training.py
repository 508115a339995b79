"""Training infrastructure shared by every stage: device and precision, optimiser and schedule,
atomic checkpoints with full training state, resumption, and metrics.

Nothing here knows about a particular stage; the stage loops (``rlhf.stages.sft``, ...) compose these parts.
Rank-awareness: :func:`is_main_process` is True unless ``torch.distributed`` is initialised on a
rank other than 0, and only the main process writes metrics and checkpoints.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, Field

from rlhf import guards
from rlhf.config import StageConfig
from rlhf.guards import atomic_dir, atomic_file
from rlhf.modeling import LoraSettings, model_for_saving
from rlhf.preflight import check_device, check_stage

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------
# Settings shared by the stage configs
# ---------------------------------------------------------------------------------------------------


class OptimSettings(BaseModel):
    """AdamW with warmup then decay, gradient clipping and accumulation."""

    model_config = {"extra": "forbid"}

    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    warmup_steps: int = Field(10, ge=0, description="linear warmup from 0 to lr over this many steps")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the decay ends at lr * min_lr_ratio")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="clip the global gradient norm (null: no clipping)"
    )


class RunSettings(BaseModel):
    """Where and how often a run writes, and how it uses the hardware."""

    model_config = {"extra": "forbid"}

    output_dir: str = Field("runs/sft", description="run folder: metrics, checkpoints, final model")
    seed: int = Field(0, description="seed of data order, initialisation and sampling")
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda, cuda:1, mps")
    bf16: Literal["auto", True, False] = Field("auto", description="bf16 autocast (auto: on for CUDA)")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    log_every: int = Field(10, ge=1, description="steps between metric lines")
    eval_every: int = Field(50, ge=0, description="steps between evaluations (0: only at the end)")
    save_every: int = Field(100, ge=0, description="steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (older ones are deleted)")
    resume: bool = Field(
        True, description="continue from the newest complete checkpoint in output_dir (false: start over)"
    )
    tensorboard: bool = Field(False, description="also write TensorBoard events (needs `tensorboard`)")
    progress: bool = Field(True, description="show a progress bar")


# A dataset, or a list of them read one after the other (say, preference pairs of two collection rounds).
Sources = str | Annotated[list[str], Field(min_length=1)]


class TrainConfig(StageConfig):
    """The fields every training stage's config has; a stage adds its own and may change defaults."""

    model: str = Field("lab", description="lab, smollm2, a local folder, or a hub name")
    gguf_file: str | None = Field(None, description="a GGUF file inside the `model` folder to load")
    data: Sources = Field(
        "lab", description="the dataset: a file, a saved dataset folder, a hub name, or a list"
    )
    split: str = Field("train", description="split of a hub or saved dataset")
    eval_data: Sources | None = Field(
        None, description="evaluation dataset(s) (null: hold out eval_fraction of data)"
    )
    eval_fraction: float = Field(
        0.05, ge=0, lt=1, description="share of data held out when eval_data is null"
    )
    limit: int | None = Field(None, ge=1, description="use at most this many training rows")
    on_error: Literal["raise", "skip"] = Field("raise", description="bad rows: stop, or skip and count")
    max_length: int = Field(256, ge=8, description="longest tokenised prompt + response")
    batch_size: int = Field(16, ge=1, description="rows per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    max_steps: int | None = Field(None, ge=1, description="optimiser steps (null: use epochs)")
    epochs: float = Field(1.0, gt=0, description="passes over the data when max_steps is null")
    group_by_length: bool = Field(
        True,
        description="steps of examples of similar length, sorted into micro-batches (less padding; see Stream)",
    )
    optim: OptimSettings = Field(default_factory=OptimSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    run: RunSettings = Field(default_factory=RunSettings)

    @property
    def rows_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def total_steps(self, n_rows: int) -> int:
        """``max_steps``, or enough steps for ``epochs`` passes over ``n_rows``."""
        return self.max_steps or max(1, math.ceil(self.epochs * n_rows / self.rows_per_step))


def load_sources(sources: Sources, load, cfg: TrainConfig, log) -> list:
    """The records of one dataset, or of each dataset of a list, in order, through ``load``."""
    records = []
    for source in [sources] if isinstance(sources, str) else sources:
        rows, report = load(source, split=cfg.split, on_error=cfg.on_error)
        log(f"{source}: {report.summary()}")
        records += rows
    return records


def load_splits(cfg: TrainConfig, load, log) -> tuple[list, list]:
    """Training and evaluation records through ``load`` (a ``rlhf.data`` loader): evaluation from
    ``eval_data``, or else a seeded random ``eval_fraction`` of ``data``; training capped at ``limit``.
    ``data`` and ``eval_data`` may each be a list of datasets, concatenated in order."""
    train = load_sources(cfg.data, load, cfg, log)
    if cfg.eval_data:
        evals = load_sources(cfg.eval_data, load, cfg, log)
    else:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.run.seed)).tolist()
        n_eval = int(len(train) * cfg.eval_fraction)
        train, evals = [train[i] for i in sorted(order[n_eval:])], [train[i] for i in order[:n_eval]]
    return train[: cfg.limit] if cfg.limit else train, evals


# ---------------------------------------------------------------------------------------------------
# Device and precision
# ---------------------------------------------------------------------------------------------------


def is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def resolve_device(name: str) -> torch.device:
    check_device(name)  # a device this machine lacks is a one-line DeviceError
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, s: OptimSettings) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norms (1-d tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # The fused kernel (one pass over all tensors) where the parameters' device has it.
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=s.lr, betas=s.betas, fused=fused or None)


def lr_factor(step: int, total_steps: int, s: OptimSettings) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warmup, then cosine/linear/constant decay."""
    if step < s.warmup_steps:
        return (step + 1) / (s.warmup_steps + 1)
    if s.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - s.warmup_steps) / max(1, total_steps - s.warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if s.schedule == "cosine" else 1 - progress
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * decay


def make_scheduler(
    opt: torch.optim.Optimizer, total_steps: int, s: OptimSettings
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total_steps, s))


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.pt"


def save_pretrained(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    """``save_pretrained`` of the model (a peft model saves its adapters) and of the tokenizer."""
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``run_dir/checkpoints/step-N`` atomically: the model (``save_pretrained``; a dict of models
    goes to one subfolder each), and the training state (optimiser, scheduler, RNG, plus ``state``: data
    position, counters); keep the newest ``keep``."""
    final = run_dir / "checkpoints" / f"step-{step:07d}"
    with atomic_dir(final) as tmp:
        for i, (sub, module) in enumerate(_parts(model).items()):
            save_pretrained(module, tokenizer if i == 0 else None, tmp / sub)
        torch.save(
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "state": state,
            },
            tmp / STATE_FILE,
        )
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted writes are ignored)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_RE.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)


def _parts(model: torch.nn.Module | dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """A model as ``{subfolder: module}``: ``{"": model}``, or the dict itself."""
    return dict(model) if isinstance(model, dict) else {"": model}


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load the weights ``save_pretrained`` wrote to ``folder`` into ``model``, in place.

    A peft model gets its adapters (and ``modules_to_save``) back; a plain model its full weights.
    """
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        return
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (an lm_head that is the embedding matrix) are saved once.
    config = getattr(model, "config", None)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(
            f"{folder}: weights do not match the model (missing {missing}, unexpected {unexpected})"
        )


def resume_from(checkpoint: Path, model, optimizer, scheduler, stream: Stream) -> tuple[int, dict[str, Any]]:
    """Load the weights (of a model, or of a dict of models), optimiser, schedule, RNG and data position
    of ``checkpoint``; return its step and the saved ``state``."""
    for sub, module in _parts(model).items():
        load_weights(module, checkpoint / sub)
    saved = load_training_state(checkpoint)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    stream.seek(**saved["state"]["stream"])
    return int(saved["step"]), saved["state"]


def clip_gradients(model: torch.nn.Module, max_norm: float | None) -> float:
    """Clip the global gradient norm to ``max_norm`` (None: no clipping); return the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


# ---------------------------------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------------------------------


class Stream:
    """The training examples in a seeded order, reshuffled every epoch; its position is saved in
    checkpoints so a resumed run sees exactly the examples it would have seen.

    With ``lengths`` and ``group`` (the rows of one optimiser step), the order is length-grouped, to cut
    padding: each window of ``group * GROUP_WINDOW`` shuffled examples is sorted by length and cut into
    runs of ``group`` examples (the steps), and the runs are shuffled. Every example is still seen once
    per epoch in a seeded order; only which examples share a step changes (examples of similar length
    do), as with ``group_by_length`` in transformers' Trainer. A stage then sorts a step's rows by length
    before cutting them into micro-batches, which leaves the step's gradient unchanged, so
    ``batch_size`` x ``grad_accum`` splits of the same step still make the same update.
    """

    GROUP_WINDOW = 32  # steps per sorted window

    def __init__(
        self, n: int, seed: int, epoch: int = 0, index: int = 0,
        lengths: Sequence[int] | None = None, group: int = 1,
    ) -> None:  # fmt: skip
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"Stream: {len(lengths)} lengths for {n} examples")
        self.n, self.seed, self.epoch, self.index = n, seed, epoch, index
        self.lengths, self.group = (list(lengths) if lengths is not None else None), group
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is None or self.group < 2:
            return order
        window = self.group * self.GROUP_WINDOW
        runs = []
        for start in range(0, self.n, window):
            chunk = sorted(order[start : start + window], key=lambda i: -self.lengths[i])
            runs += [chunk[i : i + self.group] for i in range(0, len(chunk), self.group)]
        return [i for r in torch.randperm(len(runs), generator=g).tolist() for i in runs[r]]

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self._order[self.index])
            self.index += 1
        return out

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def seek(self, epoch: int, index: int) -> None:
        self.epoch, self.index = epoch, index
        self._order = self._permutation()


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------


class MetricsLogger:
    """Appends one JSON object per line to ``run_dir/metrics.jsonl`` (and TensorBoard, if asked).

    Lines carry ``step``, ``split`` ("train"/"eval") and ``time`` (seconds since the run started).
    A run resumed from the checkpoint of step ``resume_step`` first drops the lines logged after it, so
    the file reads as one uninterrupted run.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False, resume_step: int = 0, log=None) -> None:
        self.enabled = is_main_process()
        self.path = run_dir / "metrics.jsonl"
        self.start = time.perf_counter()
        self.tb = None
        if self.enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            kept = [row for row in read_metrics(run_dir, log) if row["step"] <= resume_step]
            with atomic_file(self.path) as f:
                f.writelines(json.dumps(row) + "\n" for row in kept)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, split: str, **values: float) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, "time": round(time.perf_counter() - self.start, 3), **values}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path, log=None) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl``; a torn line (a crash mid-write) is dropped with a warning
    to ``log`` (default: stderr)."""
    path = Path(run_dir) / "metrics.jsonl"
    return guards.read_jsonl(path, log) if log is not None else guards.read_jsonl(path)


# ---------------------------------------------------------------------------------------------------
# The one backward path
# ---------------------------------------------------------------------------------------------------


def count_over_processes(n: T) -> T:
    """A loss normaliser (tokens, pairs) summed over every process of a distributed run, so that each
    process's gradient is its share of the whole step's loss; on one process ``n`` itself."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return n
    total = torch.as_tensor(n, dtype=torch.float64).clone()
    torch.distributed.all_reduce(total)
    return type(n)(total.item()) if isinstance(n, int | float) else total.to(n.dtype)


def backward(
    micro_batches: Iterable[Any], loss_fn: Callable[[Any, Any], tuple[torch.Tensor, dict]], count: T
) -> dict[str, float]:
    """Forward and backward every micro-batch of one optimiser step. ``count``: what normalises the
    step's loss on this process (its loss tokens, its pairs), summed over processes here
    (:func:`count_over_processes`); ``loss_fn(batch, normalizer)`` returns the micro-batch's loss,
    divided by that normaliser, and its statistics. The gradients accumulate; the statistics are summed
    over the micro-batches. Every stage's update goes through here, then through
    :meth:`StageRun.optimizer_step`."""
    normalizer = count_over_processes(count)
    totals: dict[str, float] = defaultdict(float)
    for batch in micro_batches:
        loss, stats = loss_fn(batch, normalizer)
        loss.backward()
        for k, v in stats.items():
            totals[k] += float(v)
    return dict(totals)


# ---------------------------------------------------------------------------------------------------
# What every stage's loop shares
# ---------------------------------------------------------------------------------------------------


class StageRun:
    """The parts of a training loop that are not the stage's own: the run folder, seeds and device;
    resuming; metrics and the progress bar; when to log, evaluate and checkpoint; the final save.

    A stage's loop reads top-down with it::

        run = StageRun(cfg, "sft", log)                   # 1. folder, config.yaml, seeds, device
        ...                                                # 2-3. model, data (the stage's own)
        optimizer, scheduler, stream, step = run.start(model, cfg, len(rows))  # 4. resume
        while step < run.total_steps:
            ...                                            # 5. the stage's update
            step += 1
            if run.due(step, settings.log_every): run.metrics.log(step, "train", ...)
            run.checkpoint(step, ...)                     # 6. on its cadence
            if run.interrupted(step): return run.dir
        final = run.finish(model, tokenizer, lora)         # 7. the final model
    """

    def __init__(self, cfg: Any, name: str, log=print, stop_after: int | None = None) -> None:
        self.settings: RunSettings = cfg.run
        self.name = name
        self.dir = Path(self.settings.output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # Device and inputs checked, the folder locked, leftovers removed, the settings compared.
        check_stage(cfg)
        guards.enter_stage(self.dir, name, cfg, log, main_process=is_main_process())
        self.lr = getattr(getattr(cfg, "optim", None), "lr", None)
        if is_main_process():
            with atomic_file(self.dir / "config.yaml") as f:
                f.write(cfg.to_yaml())
        seed_everything(self.settings.seed)
        # transformers' own bars (loading and saving weights) follow the stage's progress setting.
        from transformers.utils import logging as hf_logging

        (hf_logging.enable_progress_bar if self.settings.progress else hf_logging.disable_progress_bar)()
        self.device = resolve_device(self.settings.device)
        self.log = log if is_main_process() else (lambda *_: None)
        self.stop_after = stop_after
        self.total_steps = 0
        self.metrics: MetricsLogger | None = None
        self.bar = None
        self.resumed_state: dict[str, Any] = {}

    def start(self, model, cfg: TrainConfig, n_rows: int, lengths: Sequence[int] | None = None):
        """Make the optimiser, schedule and data stream for ``n_rows`` training rows (length-grouped when
        ``cfg.group_by_length`` and the rows' ``lengths`` are given: see ``Stream``); resume them (and the
        weights, and ``resumed_state``) from the newest complete checkpoint if ``resume``; open metrics
        and the progress bar. ``model``: a module, or a dict of modules trained together (checkpointed
        in one subfolder each). Returns ``(optimizer, scheduler, stream, step)``."""
        from tqdm.auto import tqdm

        self.total_steps = cfg.total_steps(n_rows)
        trained = torch.nn.ModuleDict(model) if isinstance(model, dict) else model
        optimizer = make_optimizer(trained, cfg.optim)
        scheduler = make_scheduler(optimizer, self.total_steps, cfg.optim)
        grouped = lengths if cfg.group_by_length else None
        stream, step = Stream(n_rows, self.settings.seed, lengths=grouped, group=cfg.rows_per_step), 0
        checkpoints = list_checkpoints(self.dir) if self.settings.resume else []
        checkpoints = guards.readable_checkpoints(checkpoints, STATE_FILE, self.log)
        if checkpoints:
            step, self.resumed_state = resume_from(checkpoints[-1], model, optimizer, scheduler, stream)
            self.log(f"resumed from {checkpoints[-1]} at step {step}")
        self.metrics = MetricsLogger(self.dir, self.settings.tensorboard, resume_step=step, log=self.log)
        show = self.settings.progress and is_main_process()
        self.bar = tqdm(total=self.total_steps, initial=step, desc=self.name, disable=not show)
        self.step = step
        return optimizer, scheduler, stream, step

    def check_finite(self, step: int, model=None, **values: float) -> None:
        """Stop the run at a non-finite value (or, with ``model``, weight): ``rlhf.guards.check_finite``."""
        newest = lambda: (list_checkpoints(self.dir) or [None])[-1]  # noqa: E731 (listed only to report)
        guards.check_finite(self.name, step, values, newest, self.lr, model)

    def optimizer_step(
        self, model, optimizer, max_grad_norm: float | None, scheduler=None, **values: float
    ) -> float:
        """Clip, step the optimiser (and ``scheduler``, if given), clear the gradients; return the norm
        before clipping. A non-finite value among ``values`` (the step's loss) or a non-finite norm stops
        the run before the step."""
        grad_norm = clip_gradients(model, max_grad_norm)
        self.check_finite(self.step + 1, **values, grad_norm=grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def advance(self) -> int:
        """One step done (of ``total_steps``): move the count and the progress bar; return the step."""
        self.step += 1
        self.bar.update(1)
        return self.step

    def due(self, step: int, every: int) -> bool:
        """True every ``every`` steps (0: never) and at the last step."""
        return bool(every and step % every == 0) or step == self.total_steps

    def checkpoint(
        self, step: int, model, tokenizer, optimizer, scheduler, stream: Stream, extra: dict | None = None
    ) -> None:
        """Save a checkpoint on the ``save_every`` cadence, and where ``stop_after`` stops the run;
        ``extra`` (a stage's own counters) comes back as ``resumed_state`` on resume."""
        s = self.settings
        periodic = s.save_every and step % s.save_every == 0 and step < self.total_steps
        if is_main_process() and (periodic or step == self.stop_after):
            self.check_finite(step, model=model)  # never save a non-finite model
            state = {**(extra or {}), "stream": stream.position()}
            save_checkpoint(self.dir, step, model, tokenizer, optimizer, scheduler, state, s.keep_checkpoints)

    def interrupted(self, step: int) -> bool:
        """True when ``stop_after`` ends the run here (as if interrupted; resume picks it up)."""
        if self.stop_after is None or step < self.stop_after or step >= self.total_steps:
            return False
        self.close()
        self.log(f"stopped after step {step}; run again to resume")
        return True

    def finish(self, model, tokenizer, lora: LoraSettings, extra_files: dict[str, str] | None = None) -> Path:
        """Write ``final/`` atomically (merged LoRA if ``merge_on_save``), with ``extra_files``."""
        final = self.dir / "final"
        if is_main_process():
            self.check_finite(self.total_steps, model=model)  # never save a non-finite model
            with atomic_dir(final) as tmp:
                save_pretrained(model_for_saving(model, lora), tokenizer, tmp)
                for name, text in (extra_files or {}).items():
                    (tmp / name).write_text(text)
        self.close()
        self.log(f"final model: {final}")
        return final

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        guards.release_lock(self.dir)
