"""Checks made before anything runs, so that a mistake stops a command at once with a one-line
:class:`~rlhf.errors.UsageError` instead of a traceback after the earlier stages have trained.

``rlhf run`` calls :func:`check_run` (every stage's devices, data paths, reward functions and critic,
the base model's folder, the evaluation's settings and XSTest file) before its first stage; each
stage calls :func:`check_stage` on its own config; ``rlhf eval`` calls :func:`check_xstest`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rlhf import metrics as ev
from rlhf.data import named_source
from rlhf.errors import DeviceError, RewardFunctionError, UsageError
from rlhf.modeling import check_model_folder, is_made_model, resolve_model, reward_model_members
from rlhf.scoring import load_reward_function

_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".gz", ".csv", ".txt", ".arrow")


def check_device(name: str, key: str = "run.device") -> None:
    """``name`` must be a device this machine has (``auto`` always is)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{key}={name!r}: not a device (auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device (or a CPU-only PyTorch)"
            raise DeviceError(f"{key}={name!r}: this machine has {have}; use {key}=auto or cpu")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{key}={name!r}: MPS is not available here; use {key}=auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(
            f"{key}={name!r}: devices of type {device.type!r} are not supported (cpu, cuda, mps)"
        )


def _looks_local(name: str) -> bool:
    first = name.split("/")[0]
    return (
        name.startswith(("/", ".", "~"))
        or name.lower().endswith(_DATA_SUFFIXES)
        or (bool(first) and Path(first).expanduser().is_dir())
    )


def check_data_path(source: str, key: str, produced: tuple[str, ...] = ()) -> None:
    """A dataset named like a local path must exist (a data source such as ``lab``, hub names and the paths an earlier
    stage of ``rlhf run`` makes, ``produced``, are left alone)."""
    if (
        named_source(source) is not None
        or any(source.startswith(p) for p in produced)
        or not _looks_local(source)
    ):
        return
    if not Path(source).expanduser().exists():
        raise UsageError(f"{key}={source!r}: no such file or folder ({Path(source).expanduser().resolve()})")


def check_model_path(name: str, key: str, produced: tuple[str, ...] = ()) -> None:
    """A model named like a local path must be a model folder (``rlhf.modeling.resolve_model``)."""
    if name == "smollm2" or is_made_model(name) or any(name.startswith(p) for p in produced):
        return
    path = Path(name).expanduser()
    if path.exists():
        check_model_folder(name, path)
    elif _looks_local(name) or name.count("/") > 1:
        resolve_model(name)  # raises ModelNotFoundError naming the folder


def check_reward_functions(specs: list[Any], key: str = "reward_functions") -> None:
    """Every ``module:function`` must import and be callable."""
    for i, spec in enumerate(specs):
        try:
            load_reward_function(spec.function)
        except RewardFunctionError as e:
            raise RewardFunctionError(f"{key}.{i}: {e}") from None


def _sources(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def check_stage(cfg, produced: tuple[str, ...] = ()) -> None:
    """A stage's config: its device, its data and model paths, and (PPO) its reward functions and
    critic. ``produced``: path prefixes that earlier stages of ``rlhf run`` will make."""
    run = getattr(cfg, "run", None)
    if run is not None:
        check_device(run.device)
    for field in ("data", "eval_data"):
        for source in _sources(getattr(cfg, field, None)):
            check_data_path(source, field, produced)
    for field in ("model", "policy"):
        if isinstance(getattr(cfg, field, None), str):
            check_model_path(getattr(cfg, field), field, produced)
    if hasattr(cfg, "reward_functions"):
        check_reward_functions(cfg.reward_functions)
        for i, spec in enumerate(cfg.reward_models):
            for path in reward_model_members(spec.path):  # an ensemble's members, or the folder itself
                check_model_path(path, f"reward_models.{i}.path", produced)
        if cfg.critic not in ("reward", "policy_head"):
            check_model_path(cfg.critic, "critic", produced)


def check_xstest(path: str, key: str = "--xstest") -> int:
    """An XSTest prompts CSV must be readable, UTF-8, with the ``prompt``, ``type`` and ``label``
    columns on every row and at least one row; returns the number of rows."""
    if not Path(path).expanduser().is_file():
        raise UsageError(f"{key} {path}: no such file")
    try:
        rows = ev.read_xstest(Path(path).expanduser())
    except UnicodeDecodeError as e:
        raise UsageError(f"{key} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (ValueError, KeyError, OSError) as e:
        raise UsageError(f"{key} {e}" if str(e).startswith(str(path)) else f"{key} {path}: {e}") from None
    if not rows:
        raise UsageError(f"{key} {path}: no prompts (XSTest needs prompt, type and label columns)")
    return len(rows)


def check_run(cfg, stages: dict[str, Any]) -> None:
    """Everything ``rlhf run`` can check before its first stage: the base model, each stage's config
    (:func:`check_stage`, the run's own folders counted as made by earlier stages) and the evaluation's
    settings."""
    produced = (os.fspath(cfg.dir),)
    check_model_path(cfg.model, "model")
    for name, stage_cfg in stages.items():
        try:
            check_stage(stage_cfg, produced)
        except UsageError as e:
            raise type(e)(f"run config, section `{name}`: {e}") from None
    if not cfg.eval.best_of_n or min(cfg.eval.best_of_n) < 1:
        raise UsageError(f"run config: 'eval.best_of_n': a list of n >= 1 (got {cfg.eval.best_of_n})")
    if cfg.eval.xstest:
        check_xstest(cfg.eval.xstest, "eval.xstest")
