"""Safeguards that keep a run from going silently wrong.

- **NaN guard** (:func:`check_finite`, :func:`non_finite_weight`): every trainer checks its loss,
  gradient norm, rewards and reward statistics each step, and the weights before every save; the first
  non-finite value stops the run with a :class:`DivergedError` naming the stage, the step, the value and
  the likely cause. Nothing is logged or saved after it, so the newest checkpoint on disk is the last
  finite one, and a model loaded with nan or inf weights is refused.
- **Run lock** (:func:`acquire_lock`): one process per run folder (and per stage output folder). The
  lock is a kernel ``flock`` on ``<folder>/.rlhf.lock``, which holds the holder's pid: a second process
  exits at once naming that pid, and a lock left by a killed process (``kill -9``) is free again, so the
  next run takes it over and says so.
- **Settings fingerprint** (:func:`check_settings`): each stage's settings are stored beside its
  outputs (``fingerprint.json``); a rerun with other settings refuses, listing the keys that differ,
  unless the stage is started over (``--restart``; a stage alone also with ``run.resume=false``) or the
  keys are in :data:`SAFE_TO_CHANGE`.
- **Torn files** (:func:`read_jsonl`, :func:`read_json_state`, :func:`readable_checkpoints`): a torn
  last line of ``metrics.jsonl`` is dropped with a warning, a truncated JSON state file counts as
  missing, an unreadable checkpoint is removed and the previous one used, and the ``.tmp-*`` leftovers
  of interrupted atomic writes are removed (:func:`remove_leftovers`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rlhf.errors import DivergedError, RunLockedError, SettingsChangedError, StateError, UsageError

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------
# Atomic writes: a file or folder is complete, or not there
# ---------------------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it is renamed to ``final`` in one step,
    so a crash mid-write never leaves a folder that looks complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual permissions
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Any]:
    """Write a text file through a temporary file in the same folder, renamed over ``final`` at the end."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".tmp-{final.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# NaN / inf guard
# ---------------------------------------------------------------------------------------------------


def _likely_cause(key: str, lr: float | None) -> str:
    if key.startswith(("score", "reward/")):
        return "the reward model or a reward function gives non-finite scores (check reward_stats.json)"
    lr_text = f" (optim.lr={lr:g})" if lr is not None else ""
    return f"the learning rate{lr_text} is too high for this model and data; lower optim.lr"


def _stopped(
    stage: str, step: int, what: str, cause: str, newest: Callable[[], Path | None] | None
) -> DivergedError:
    folder = newest() if newest is not None else None
    kept = f"newest checkpoint {folder}" if folder else "no checkpoint"
    return DivergedError(
        f"{stage} step {step}: {what}; stopped, nothing saved after it ({kept}); likely cause: {cause}, "
        "then rerun with --restart"
    )


def check_finite(
    stage: str, step: int, values: dict[str, Any], newest: Callable[[], Path | None] | None = None,
    lr: float | None = None,
    model=None,
) -> None:  # fmt: skip
    """Raise :class:`DivergedError` at the first value of ``values`` (numbers; others are ignored) that
    is nan or inf, or, with ``model``, at its first non-finite weight. ``newest``: a function that finds
    the newest checkpoint on disk (called only to write the message); ``lr`` the peak learning rate, for
    the likely cause."""
    for key, value in values.items():
        if isinstance(value, int | float) and not math.isfinite(value):
            raise _stopped(stage, step, f"{key} is {value}", _likely_cause(key, lr), newest)
    if model is not None:
        bad = non_finite_weight(model)
        if bad:
            raise _stopped(stage, step, f"weight {bad} is not finite", _likely_cause("weight", lr), newest)


def non_finite_weight(model) -> str | None:
    """The name of the first parameter of ``model`` (a module, or a dict of modules) that holds nan or
    inf, or None."""
    import torch

    modules = model.items() if isinstance(model, dict) else [("", model)]
    for prefix, module in modules:
        if module is None:
            continue
        for name, p in module.named_parameters():
            if not bool(torch.isfinite(p).all()):
                return f"{prefix}.{name}" if prefix else name
    return None


def folder_problem(folder: Path) -> str | None:
    """Why a saved model folder (``final/``) cannot count as done: a weight file that is unreadable or
    holds nan or inf, or a ``reward_stats.json`` that is not finite; None when it is sound."""
    import torch
    from safetensors import safe_open

    for shard in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(shard), "pt") as f:
                for key in f.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                    if not bool(torch.isfinite(f.get_tensor(key)).all()):
                        return f"{shard} holds nan or inf ({key})"
        except Exception as e:  # noqa: BLE001 - any failure to read the file makes it unusable
            return f"{shard} is unreadable ({e})"
    stats = folder / "reward_stats.json"
    if stats.exists():
        try:
            read_reward_stats(stats)
        except StateError as e:
            return str(e)
    return None


def read_reward_stats(path: Path) -> dict[str, float]:
    """A reward model's ``reward_stats.json``; a :class:`StateError` if it is unreadable or not finite."""
    try:
        stats = json.loads(Path(path).read_text())
        mean, std = float(stats["mean"]), float(stats["std"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StateError(
            f"{path}: unreadable reward statistics ({e}); train the reward model again"
        ) from None
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise StateError(f"{path}: reward statistics are not finite (mean {mean}, std {std}); train it again")
    return stats


# ---------------------------------------------------------------------------------------------------
# Run lock
# ---------------------------------------------------------------------------------------------------

LOCK_FILE = ".rlhf.lock"
_HELD: dict[str, int] = {}  # resolved folder -> open descriptor of its lock file (this process's locks)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except ValueError:
        return {}


def acquire_lock(folder: str | Path, log: Log | None = _stderr) -> None:
    """Hold the lock of ``folder`` until :func:`release_lock` or the end of the process (a no-op if this
    process holds it already). Another live holder: :class:`RunLockedError` naming its pid. A lock file
    left by a process that is gone is taken over, with a note."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _HELD:
        return
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            since = time.strftime("%H:%M:%S", time.localtime(holder["time"])) if "time" in holder else "?"
            raise RunLockedError(
                f"{folder}: in use by another process (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {since}); wait for it to finish or stop it"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed the file as we opened it: lock the new one
            break
        os.close(fd)
    previous = _holder(fd)
    pid = previous.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and log is not None:
        state = "is no longer running" if not _pid_alive(pid) else "no longer holds it"
        log(f"{folder}: taking over the lock of pid {pid}, which {state}")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode())
    _HELD[key] = fd


def release_lock(folder: str | Path) -> None:
    """Release this process's lock of ``folder`` (and remove the lock file); a no-op if not held."""
    folder = Path(folder)
    fd = _HELD.pop(str(folder.resolve()), None)
    if fd is None:
        return
    try:
        (folder / LOCK_FILE).unlink(missing_ok=True)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def release_all() -> None:
    """Release every lock this process holds."""
    for key in list(_HELD):
        release_lock(key)


atexit.register(release_all)  # a normal exit (an error's included) leaves no lock file behind


# ---------------------------------------------------------------------------------------------------
# Settings fingerprint
# ---------------------------------------------------------------------------------------------------

FINGERPRINT = "fingerprint.json"

# Keys that change how a run reports, not what it computes: a rerun may change them freely. (max_steps
# is not among them: the cosine and linear schedules depend on it, and a finished stage keeps no
# checkpoint at its last step to extend from; ask for more steps with --restart.)
SAFE_TO_CHANGE = (
    "run.progress",
    "run.log_every",
    "run.eval_every",
    "run.save_every",
    "run.keep_checkpoints",
    "run.tensorboard",
    "run.resume",
)
_WHERE = ("run.output_dir", "output_dir")  # the folder itself: a moved folder is the same run


def flat_settings(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_of(cfg) -> dict[str, Any]:
    """A config's settings as flat JSON values (a pydantic config, or a mapping)."""
    tree = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else json.loads(json.dumps(cfg))
    return flat_settings(tree)


def settings_diff(
    old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """``key (old -> new)`` for every key whose value differs, keys in :data:`SAFE_TO_CHANGE` (and the
    output folder's own path) left out. ``defaults``: the config's defaults; a key the old settings lack
    that holds its default (a setting added by a later version of the project) is no change."""
    defaults = defaults or {}
    keys = [k for k in dict.fromkeys([*old, *new]) if k not in SAFE_TO_CHANGE + _WHERE]
    keys = [k for k in keys if k in old or k not in defaults or defaults[k] != new.get(k)]
    missing = "(unset)"
    return [f"{k} ({old.get(k, missing)} -> {new.get(k, missing)})" for k in keys if old.get(k) != new.get(k)]


# What the stages write into their output folders (a restart removes these, and nothing else).
OUTPUTS = (
    "checkpoints", "final", "critic", "tensorboard", "metrics.jsonl", "calibration.json",
    "eval_reference.json", "eval_samples.json", "config.yaml", FINGERPRINT,
    "train.jsonl", "eval.jsonl", "summary.json",
)  # fmt: skip


def has_outputs(folder: Path) -> bool:
    """Whether ``folder`` holds what a stage made: a checkpoint, a final model, or collected pairs."""
    checkpoints = folder / "checkpoints"
    made = checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir())
    return made or any((folder / name).exists() for name in ("final", "summary.json", "train.jsonl"))


def stored_settings(folder: Path, log: Log | None = _stderr) -> dict[str, Any] | None:
    """The settings stored in ``folder/fingerprint.json`` (None if missing or unreadable)."""
    stored = read_json_state(folder / FINGERPRINT, log)
    return stored.get("settings") if isinstance(stored, dict) else None


def folder_settings(folder: Path, cfg) -> dict[str, Any]:
    """``cfg``'s settings as stored for ``folder``: paths inside the folder's parent (the run folder of
    ``rlhf run``'s stages) are written relative to it, so a run folder moved or copied whole is the same run."""
    root = f"{Path(folder).parent}/"

    def relative(v: Any) -> Any:
        if isinstance(v, str):
            return f"{{run}}/{v[len(root) :]}" if v.startswith(root) else v
        if isinstance(v, list):
            return [relative(x) for x in v]
        return {k: relative(x) for k, x in v.items()} if isinstance(v, dict) else v

    return {k: relative(v) for k, v in settings_of(cfg).items()}


def settings_problem(folder: Path, cfg, log: Log | None = _stderr) -> list[str]:
    """The differing keys between ``cfg`` and the settings ``folder``'s outputs were made with (empty
    when they agree, or when there are no outputs or no stored settings to compare with)."""
    if not has_outputs(folder):
        return []
    old = stored_settings(folder, log)
    if old is None:
        return []
    defaults = settings_of(type(cfg).model_construct()) if hasattr(cfg, "model_construct") else None
    return settings_diff(old, folder_settings(folder, cfg), defaults)


def check_settings(folder: Path, stage: str, cfg, how_to_restart: str, log: Log | None = _stderr) -> None:
    """Refuse (:class:`SettingsChangedError`) when ``cfg`` differs from the settings of ``folder``'s
    outputs; otherwise store ``cfg`` as the folder's settings."""
    diff = settings_problem(folder, cfg, log)
    if diff:
        raise SettingsChangedError(
            f"{folder}: the {stage} settings differ from those its outputs were made with: {', '.join(diff)}; "
            f"{how_to_restart} (keys safe to change on a rerun: {', '.join(SAFE_TO_CHANGE)})"
        )
    write_settings(folder, stage, cfg)


def write_settings(folder: Path, stage: str, cfg) -> None:

    with atomic_file(folder / FINGERPRINT) as f:
        json.dump({"stage": stage, "settings": folder_settings(folder, cfg)}, f, indent=1)


def clear_outputs(folder: Path, log: Log | None = _stderr) -> None:
    """Start a stage over: remove what it wrote into ``folder`` (:data:`OUTPUTS` only)."""
    removed = []
    for name in OUTPUTS:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed and log is not None:
        log(f"{folder}: starting over, removed {', '.join(removed)}")


# ---------------------------------------------------------------------------------------------------
# Torn and leftover files
# ---------------------------------------------------------------------------------------------------


def remove_leftovers(folder: Path, log: Log | None = None) -> None:
    """Remove the temporary files and folders of interrupted atomic writes (``.tmp-*``, ``.*.tmp``) in
    ``folder`` and its ``checkpoints/`` (call it holding the folder's lock: nobody else writes there)."""
    for where in (folder, folder / "checkpoints"):
        if not where.is_dir():
            continue
        for path in where.iterdir():
            if not (
                path.name.startswith(".tmp-") or (path.name.startswith(".") and path.name.endswith(".tmp"))
            ):
                continue
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            if log is not None:
                log(f"removed {path}, left by an interrupted write")


def read_jsonl(path: Path, log: Log | None = _stderr) -> list[dict[str, Any]]:
    """The rows of an append-only JSON-lines log; a line that is not a JSON object (a torn last line
    after a crash or a full disk) is dropped with a warning."""
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif log is not None:
            log(
                f"warning: {path}:{i}: dropped a torn line ({len(line)} characters) that is not a JSON object"
            )
    return rows


def read_json_state(path: Path, log: Log | None = _stderr) -> Any:
    """A JSON state file, or None if it is missing or cannot be parsed (truncated: counted as missing,
    with a warning, so the state is made again)."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        if log is not None:
            log(f"warning: {path}: unreadable ({e}); treated as missing")
        return None


def checkpoint_problem(checkpoint: Path, state_file: str) -> str | None:
    """Why a checkpoint folder cannot be resumed from (a truncated weight, state or JSON file), or None.
    Reads only the files' headers and directories, not the tensors."""
    from safetensors import safe_open

    state = checkpoint / state_file
    if not zipfile.is_zipfile(state):
        return f"{state} is truncated or not a saved training state"
    for path in sorted(checkpoint.rglob("*")):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt"):
                    pass
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as e:  # noqa: BLE001 - any failure to read the file makes it unusable
            return f"{path} is unreadable ({e})"
    return None


def readable_checkpoints(checkpoints: Iterable[Path], state_file: str, log: Log) -> list[Path]:
    """``checkpoints`` (oldest first) up to the newest readable one; newer unreadable ones are removed
    with a note (a newer one kept would outrank every later save)."""
    kept = list(checkpoints)
    while kept:
        problem = checkpoint_problem(kept[-1], state_file)
        if problem is None:
            return kept
        log(f"warning: {problem}: removing {kept[-1].name} and resuming from the previous checkpoint")
        shutil.rmtree(kept.pop(), ignore_errors=True)
    return kept


# ---------------------------------------------------------------------------------------------------
# Entering a stage, and a whole run
# ---------------------------------------------------------------------------------------------------


def enter_stage(folder: Path, stage: str, cfg, log: Log = _stderr, main_process: bool = True) -> None:
    """What a stage does first, before writing anything, once its devices and inputs are checked
    (``rlhf.preflight.check_stage``): take the lock of its output folder, remove leftovers of
    interrupted writes, and check its settings against those of the folder's outputs (a stage alone with
    ``run.resume=false`` starts over instead). Under ``torch.distributed`` only the main process locks
    and compares (the others pass ``main_process=False``)."""
    if not main_process:  # the main process locks and writes; the other ranks only read
        return
    acquire_lock(folder, log)
    remove_leftovers(folder, log)
    run = getattr(cfg, "run", None)
    if run is not None and not run.resume and has_outputs(folder):
        log(f"{stage}: run.resume=false, so the stage starts over")
        clear_outputs(folder, log)
    how = f"to start it over, rerun with --restart (rlhf {stage}), or --restart {stage} (rlhf run)"
    check_settings(folder, stage, cfg, how, log)


EVAL_FINGERPRINT = "eval.fingerprint.json"


def _eval_settings(cfg) -> dict[str, Any]:
    return {"eval": cfg.eval.model_dump(mode="json"), "seed": cfg.seed}


def prepare_run(cfg, stages: dict[str, Any], restart: Iterable[str] = (), log: Log = _stderr) -> None:
    """What ``rlhf run`` does before its first stage, once everything it can check is checked
    (``rlhf.preflight.check_run``): take the run folder's lock, remove leftovers of interrupted writes,
    count a torn done-marker (``prefs/summary.json``, ``eval.json``) as missing, refuse settings that
    differ from those of a stage's outputs and a finished model that is not finite, then start over from
    the earliest stage in ``restart`` (it and every later stage, which are made from it; those are not
    compared). Nothing is removed before every check has passed."""
    restart = list(restart)
    order = [*stages, "eval"]  # the stages in the order they run (later rounds' too), then the evaluation
    unknown = [s for s in restart if s not in order]
    if unknown:
        raise UsageError(f"--restart {unknown[0]}: not a stage of rlhf run ({', '.join(order)})")
    d = Path(cfg.dir)
    acquire_lock(d, log)
    remove_leftovers(d, log)
    folders = {
        name: Path(c.run.output_dir if hasattr(c, "run") else c.output_dir) for name, c in stages.items()
    }
    markers = [folders[n] / "summary.json" for n in folders if n.startswith("collect")]
    for marker in (*markers, d / "eval.json"):
        if marker.exists() and read_json_state(marker, log) is None:
            marker.unlink()
    kept = order[: min(order.index(s) for s in restart)] if restart else order
    changed = []
    for stage in kept:
        if stage in folders:
            diff = settings_problem(folders[stage], stages[stage], log)
        else:
            old = read_json_state(d / EVAL_FINGERPRINT, log) if (d / "eval.json").exists() else None
            diff = settings_diff(flat_settings(old), settings_of(_eval_settings(cfg))) if old else []
        if diff:
            changed.append(f"{stage}: {', '.join(diff)}")
    if changed:
        first = changed[0].split(":")[0]  # the earliest stage whose settings changed
        raise SettingsChangedError(
            f"{d}: the settings differ from those its stages were made with ({'; '.join(changed)}); rerun "
            f"with --restart {first} to start over from {first} (and every later stage), or keep the old "
            f"values (keys safe to change on a rerun: {', '.join(SAFE_TO_CHANGE)})"
        )
    for stage in [s for s in kept if s in folders]:
        final = folders[stage] / "final"
        problem = folder_problem(final) if final.is_dir() else None
        if problem:
            raise StateError(f"{final} cannot count as done: {problem}; rerun with --restart {stage}")
    for stage in order[len(kept) :]:
        if stage in folders:
            clear_outputs(folders[stage], log)
        else:
            for name in ("eval.json", EVAL_FINGERPRINT):
                (d / name).unlink(missing_ok=True)
    if not (d / "eval.json").exists():
        with atomic_file(d / EVAL_FINGERPRINT) as f:
            json.dump(_eval_settings(cfg), f, indent=1)
