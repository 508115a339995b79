# make demo   -- set up .venv (if missing) and run the main job on the built-in lab default
# make test   -- set up .venv (if missing) and run the test suite
# make seed-sweep -- the figure tests over 5 lab base-model seeds x 2 test seeds (runs/seed-sweep/RESULTS.md)
# make bench  -- ours against Hugging Face TRL, side by side (bench/RESULTS.md; not part of `make test`)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; installed before the project so that no CUDA build is pulled.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow seed-sweep lint clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhf demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Not part of `make test`: builds up to 5 base models (about 90 s each) and runs the figure tests 10 times.
seed-sweep: $(STAMP)
	$(BIN)/python tests/seed_sweep.py

# The peers' venvs (bench/.venv-trl116, bench/.venv-trl112) are made on first use and then reused.
# Options through BENCH_ARGS, e.g. BENCH_ARGS='--repeats 3 --tasks sft'; BENCH_SMOLLM2=1 adds SmolLM2-135M.
BENCH_ARGS ?=
bench: $(STAMP)
	MAIN_VENV=$(abspath $(VENV)) TORCH_SPEC="$(TORCH_SPEC)" bash bench/setup.sh
	$(BIN)/python bench/run.py --ours-python $(abspath $(BIN))/python $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
