"""Helpers shared by the two workload scripts (``ours.py`` in the project's venv, ``theirs.py`` in a TRL
venv). Only the standard library and torch: nothing here imports ``rlhf`` or ``trl``.

A workload is one subprocess: ``python bench/<side>.py SPEC.json RESULT.json``. The spec (written by
``run.py``) names the task, the model and data files and every shared setting; the workload sets the
thread count, builds its trainer, times the training call only, and writes a result with the work done,
the seconds, and the peak RSS of its own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any


def read_spec() -> tuple[dict[str, Any], Path]:
    """``(spec, result_path)`` from the command line: ``SPEC.json RESULT.json``."""
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} SPEC.json RESULT.json")
    return json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])


def set_threads(n: int) -> None:
    """The same intra-op (and inter-op) thread count on both sides. ``run.py`` also sets OMP_NUM_THREADS
    and MKL_NUM_THREADS in the subprocess's environment, before torch is imported."""
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only allowed before any parallel work: then harmless
        torch.set_num_interop_threads(n)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if platform.system() == "Darwin" else rss / 1024


class TokenCounter:
    """Counts the non-padding tokens that go through a model's *training* forwards (grad enabled, training
    mode), from the ``attention_mask`` keyword. Registered the same way on both sides, so the SFT tokens/s
    of ours and theirs are counted by one rule, whatever each trainer logs."""

    def __init__(self) -> None:
        self.tokens = 0
        self.forwards = 0

    def attach(self, model) -> None:
        """Hook the transformer backbone (``model.model`` for Llama/Qwen2), which every path reaches:
        a plain ``model(...)`` call, and ours' reward and value heads that call the backbone directly."""
        backbone = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
        backbone.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        import torch

        if not (module.training and torch.is_grad_enabled()):
            return
        mask = kwargs.get("attention_mask")
        if mask is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.tokens += int(ids.numel()) if ids is not None else 0
        else:
            self.tokens += int(mask.sum())
        self.forwards += 1


class Clock:
    """Wall-clock seconds of a block; on CUDA the device is synchronised at both ends."""

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def __enter__(self) -> Clock:
        self._sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self.t0


def versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def write_result(path: Path, spec: dict[str, Any], seconds: float, work: float, unit: str, **extra) -> None:
    """Write the measurement: ``work`` units (tokens, pairs, samples) in ``seconds`` of the training call."""
    import torch

    result = {
        "task": spec["task"],
        "seconds": seconds,
        "work": work,
        "unit": unit,
        "rate": work / seconds if seconds > 0 else float("nan"),
        "peak_rss_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
        **extra,
    }
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_device"] = torch.cuda.get_device_name(0)
    path.write_text(json.dumps(result, indent=2))


def run_measurement(runners: dict, side: str, version_names: tuple[str, ...]) -> None:
    """The body of ours.py / theirs.py: read the spec, set the threads, run the task's measurement and
    write its result file."""
    spec, result_path = read_spec()
    set_threads(spec["threads"])
    if spec["task"] not in runners:
        sys.exit(f"unknown task {spec['task']!r}")
    out = runners[spec["task"]](spec, TokenCounter())
    seconds, work, unit = out.pop("seconds"), out.pop("work"), out.pop("unit")
    write_result(result_path, spec, seconds, work, unit, side=side, versions=versions(*version_names), **out)
