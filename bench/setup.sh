#!/usr/bin/env bash
# Create (or reuse) the virtual environments of the peers the benchmark compares us with:
#
#   bench/.venv-trl116   TRL 1.16.0  -> SFT and reward-model rows
#   bench/.venv-trl112   TRL 1.12.0  -> PPO row (the last release with `trl.experimental.ppo`)
#
# Each gets the CPU build of torch first (the same version as the project's .venv, so that plain
# `torch` never pulls a multi-GB CUDA build), then `trl==X` with the transformers version of the
# project's .venv. If pip cannot resolve that pair, the transformers pin is dropped and pip picks one;
# what was installed is written to <venv>/bench-pins.txt and reported in bench/RESULTS.md.
#
# A venv is reused when its stamp matches what would be installed; delete the folder to rebuild it.
# Usage: bash bench/setup.sh            (MAIN_VENV=/path/to/.venv to use another project venv)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
MAIN_VENV="${MAIN_VENV:-$ROOT/.venv}"
MAIN_PY="$MAIN_VENV/bin/python"

if [[ ! -x "$MAIN_PY" ]]; then
    echo "setup.sh: $MAIN_PY not found; run 'make test' (or 'make demo') first to create the project's venv" >&2
    exit 1
fi

# The base interpreter of the project's venv: the peers run on the same Python version.
BASE_PY="$("$MAIN_PY" -c 'import sys; print(sys._base_executable)')"
TORCH_VERSION="$("$MAIN_PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
TF_VERSION="$("$MAIN_PY" -c 'import transformers; print(transformers.__version__)')"

# The torch requirement: the Makefile's TORCH_SPEC (the CPU build) or the version of ours.
TORCH_SPEC="${TORCH_SPEC:-torch==$TORCH_VERSION}"

# pip, without the index-location warnings some machines' pip configuration prints for every package.
pip_quiet() {
    "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

make_venv() {
    local dir="$1" trl="$2"
    local want="$TORCH_SPEC trl==$trl transformers==$TF_VERSION"
    local stamp="$dir/.bench-installed"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "setup.sh: reusing $dir ($(cat "$dir/bench-pins.txt" 2>/dev/null | tr '\n' ' '))"
        return
    fi
    echo "setup.sh: creating $dir (trl==$trl)"
    rm -rf "$dir"
    "$BASE_PY" -m venv "$dir"
    local py="$dir/bin/python"
    pip_quiet "$py" -m pip install -q --upgrade pip
    # 1. torch first: the CPU build, same version as ours.
    pip_quiet "$py" -m pip install -q "$TORCH_SPEC"
    # 2. TRL with our transformers version, or (if the resolver refuses) whatever TRL accepts.
    local note="transformers pinned to ours ($TF_VERSION)"
    if ! pip_quiet "$py" -m pip install -q "trl==$trl" "transformers==$TF_VERSION" "$TORCH_SPEC"; then
        note="transformers==$TF_VERSION refused by pip's resolver: pip's choice kept"
        echo "setup.sh: $note" >&2
        pip_quiet "$py" -m pip install -q "trl==$trl" "$TORCH_SPEC"
    fi
    # 3. Record what is there (the orchestrator copies this into results.json).
    "$py" - "$note" >"$dir/bench-pins.txt" <<'EOF'
import sys
from importlib.metadata import version
for name in ("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers"):
    print(f"{name}=={version(name)}")
print(f"# {sys.argv[1]}")
EOF
    echo "$want" >"$stamp"
    echo "setup.sh: $dir ready: $(tr '\n' ' ' <"$dir/bench-pins.txt")"
}

make_venv "$HERE/.venv-trl116" 1.16.0
make_venv "$HERE/.venv-trl112" 1.12.0
