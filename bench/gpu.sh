#!/usr/bin/env bash
# The GPU benchmark: PPO on a model of Qwen2.5-0.5B's shape (24 layers, hidden 896, random weights, the
# lab tokenizer's vocabulary), bf16 autocast, ours against TRL 1.12's PPO when its wheel is carried.
# Reports PPO samples/s, the seconds of each phase (generation, scoring, training) per PPO step, the
# training phase's MFU, and peak RSS / CUDA memory. Sized to finish within 8 minutes on one H100
# (a time budget stops further repeats at ~5.5 minutes).
#
# Needs a Python with a CUDA build of torch and transformers (>= 5.0); nothing is downloaded. Missing
# packages come from bench/wheels/, which you fill beforehand, where pip can reach PyPI, with
#     bash bench/fetch_wheels.sh [PYTHON_VERSION]     # trl==1.12.0, datasets, pydantic, ... (~20 MB)
# Without a TRL wheel only ours runs.
#
#     bash bench/gpu.sh                 # results in bench/ (or in $OUT when that is set)
#     PYTHON=/path/to/python3 REPEATS=2 STEPS=3 bash bench/gpu.sh
#
# Dry run of the same path on a CPU-only machine (tiny model, one step):
#     bash bench/fetch_wheels.sh 3.11   # the wheels for that Python
#     DEVICE=cpu SHAPE=tiny STEPS=1 REPEATS=1 THREADS=1 PYTHON=.venv/bin/python bash bench/gpu.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
# An absolute path (the launchers below run from another folder); a venv's python keeps its own path.
if [[ "$PY" == */* ]]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; else PY="$(command -v "$PY")"; fi
DEVICE="${DEVICE:-cuda}"
SHAPE="${SHAPE:-qwen2.5-0.5b}"
REPEATS="${REPEATS:-3}"
BUDGET="${BUDGET:-330}"           # seconds after which no new repeat starts
RESULTS="${OUT:-$HERE}"           # $OUT: the folder the device machine sends back
WORK="${BENCH_WORKDIR:-/tmp/rlhf-bench-gpu}"
SITE="$WORK/site"                 # the carried wheels, installed here (never into the system Python)
STEPS_ARG=()
[[ -n "${STEPS:-}" ]] && STEPS_ARG=(--steps "$STEPS")
T0=$SECONDS

echo "[gpu.sh] python: $PY"
if [[ "$DEVICE" == cuda* ]]; then
    "$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("[gpu.sh]", torch.cuda.get_device_name(0), "torch", torch.__version__)'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
fi

# 1. Carried wheels (pure-Python trl, datasets, pydantic, ...) into a private folder on PYTHONPATH.
mkdir -p "$WORK" "$SITE"
shopt -s nullglob
wheels=("$HERE"/wheels/*.whl)
if ((${#wheels[@]})); then
    echo "[gpu.sh] installing ${#wheels[@]} carried wheels into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --upgrade \
        --target "$SITE" "${wheels[@]}"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# 2. One launcher per side: ours imports rlhf from src/; TRL from the carried wheels.
OURS_PY="$WORK/python-ours"
TRL_PY="$WORK/python-trl"
cat >"$OURS_PY" <<EOF
#!/usr/bin/env bash
export PYTHONPATH="$ROOT/src:$PYTHONPATH"
exec "$PY" "\$@"
EOF
cat >"$TRL_PY" <<EOF
#!/usr/bin/env bash
export PYTHONPATH="$PYTHONPATH"
exec "$PY" "\$@"
EOF
chmod +x "$OURS_PY" "$TRL_PY"

"$OURS_PY" -c 'import rlhf.ppo' || { echo "[gpu.sh] ours cannot be imported (missing packages? see bench/fetch_wheels.sh)" >&2; exit 1; }
SIDES="ours,theirs"
if ! "$TRL_PY" -c 'from trl.experimental.ppo import PPOTrainer' 2>/dev/null; then
    echo "[gpu.sh] TRL 1.12 is not importable (no wheel in bench/wheels?): measuring ours only" >&2
    SIDES="ours"
fi

# 3. The measurements: PPO only, alternating ours and TRL, medians, MFU of the update phase.
THREADS="${THREADS:-$("$PY" -c 'import os; print(min(8, len(os.sched_getaffinity(0))))')}"
"$PY" "$HERE/run.py" \
    --device "$DEVICE" --shape "$SHAPE" --settings gpu --tasks ppo --sides "$SIDES" \
    --repeats "$REPEATS" ${STEPS_ARG[@]+"${STEPS_ARG[@]}"} --threads "$THREADS" --tokenizer train \
    --ours-python "$OURS_PY" --trl112-python "$TRL_PY" \
    --workdir "$WORK" --out "$RESULTS" --tag gpu --time-budget "$BUDGET" --timeout 240
echo "[gpu.sh] done in $((SECONDS - T0)) s: $RESULTS/RESULTS-gpu.md, $RESULTS/results-gpu.json"
