#!/usr/bin/env bash
# Fill bench/wheels/ with what bench/gpu.sh needs on a GPU machine that cannot reach PyPI and whose
# Python has torch, transformers, accelerate, peft, pyarrow, pandas, ... but not TRL or the rest:
# TRL 1.12.0 (the last release with PPO), datasets and its small dependencies, and pydantic (ours).
# Versions are those of the project's .venv where it has them. Run it where pip works:
#
#     bash bench/fetch_wheels.sh            # for Python 3.12 on x86-64 Linux
#     bash bench/fetch_wheels.sh 3.11       # another Python version
#
# The wheels (*.whl) are git-ignored: copy or carry bench/wheels along with the working tree.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYVER="${1:-3.12}"
MAIN_PY="${MAIN_PY:-$ROOT/.venv/bin/python}"
DEST="$HERE/wheels"
mkdir -p "$DEST"

# name==version of each package as the project's venv has it (name alone if it lacks it).
pins="$("$MAIN_PY" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version
for name in ("datasets", "dill", "multiprocess", "xxhash", "pydantic", "pydantic-core", "annotated-types",
             "typing-inspection"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)"

# shellcheck disable=SC2086
"$MAIN_PY" -m pip download --no-deps --only-binary=:all: -d "$DEST" \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    trl==1.12.0 $pins
ls -la "$DEST"
du -sh "$DEST"
